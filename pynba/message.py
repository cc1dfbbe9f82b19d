"""``dumps`` and ``cast`` as pynba 0.4.3 had them (``pynba.core`` in 0.5.5).

The code lives in :mod:`pynba._compat.message`.
"""

from pynba._compat.message import cast, dumps

__all__ = ["cast", "dumps"]
