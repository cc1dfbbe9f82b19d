"""``LOCAL_STACK`` as pynba 0.4.3 had it (``pynba.stacked`` in 0.5.5).

The code lives in :mod:`pynba._compat.local`.
"""

from pynba._compat.local import LOCAL_STACK, LocalStack

__all__ = ["LOCAL_STACK", "LocalStack"]
