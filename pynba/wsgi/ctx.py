"""``pynba.wsgi.ctx`` as pynba 0.5.5 had it."""

from pynba.ctx import RequestContext

__all__ = ["RequestContext"]
