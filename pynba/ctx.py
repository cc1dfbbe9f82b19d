"""``RequestContext`` as pynba 0.4.3 had it (``pynba.wsgi.RequestContext`` in 0.5.5).

The code lives in :mod:`pynba._compat.ctx`.
"""

from pynba._compat.ctx import RequestContext

__all__ = ["RequestContext"]
