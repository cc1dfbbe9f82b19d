"""``Reporter`` and ``flattener`` as pynba 0.4.3 had them (``pynba.core`` in 0.5.5).

The code lives in :mod:`pynba._compat.reporter`.
"""

from pynba._compat.reporter import Reporter, flattener

__all__ = ["Reporter", "flattener"]
