"""``PynbaMiddleware`` as pynba 0.4.3 had it: ``from pynba.middleware import PynbaMiddleware``
is :class:`pynba.PynbaMiddleware`."""

from pynba._wsgi import PynbaMiddleware

__all__ = ["PynbaMiddleware"]
