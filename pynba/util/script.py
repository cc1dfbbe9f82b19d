"""``pynba.util.script`` as pynba 0.5.5 had it."""

from pynba.util import ScriptMonitor

__all__ = ["ScriptMonitor"]
