"""``pynba.wsgi.middleware`` as pynba 0.5.5 had it."""

from pynba._wsgi import PynbaMiddleware

__all__ = ["PynbaMiddleware"]
