"""``pynba.core.collector`` as pynba 0.5.5 had it."""

from pynba.collector import DataCollector, Timer

__all__ = ["DataCollector", "Timer"]
