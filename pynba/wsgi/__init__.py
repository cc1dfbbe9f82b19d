"""``pynba.wsgi`` as pynba 0.5.5 had it.

    from pynba.wsgi import monitor, pynba, PynbaMiddleware

The same objects as ``from pynba import monitor, pynba, PynbaMiddleware``;
``RequestContext`` is :class:`pynba.ctx.RequestContext`.
"""

from pynba._proxy import pynba
from pynba._wsgi import PynbaMiddleware, monitor
from pynba.ctx import RequestContext

__all__ = ["PynbaMiddleware", "RequestContext", "monitor", "pynba"]
