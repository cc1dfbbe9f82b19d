"""``DataCollector`` and ``Timer`` as pynba 0.4.3 had them (``pynba.core`` in 0.5.5).

The code lives in :mod:`pynba._compat.collector`.
"""

from pynba._compat.collector import DataCollector, Timer

__all__ = ["DataCollector", "Timer"]
