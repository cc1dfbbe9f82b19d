"""``pynba`` and ``LocalProxy`` as pynba 0.4.3 had them (``pynba.wsgi.pynba`` and

The code lives in :mod:`pynba._compat.globals`.
"""

from pynba._compat.globals import LocalProxy, pynba

__all__ = ["LocalProxy", "pynba"]
