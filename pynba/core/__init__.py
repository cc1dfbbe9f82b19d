"""``pynba.core`` as pynba 0.5.5 had it: the collector, the timer, the codec and the reporter."""

from pynba.collector import DataCollector, Timer
from pynba.log import logger
from pynba.message import cast, dumps
from pynba.reporter import Reporter, flattener

__all__ = ["DataCollector", "Reporter", "Timer", "cast", "dumps", "flattener", "logger"]
