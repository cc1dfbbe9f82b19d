"""``pynba.core.log`` as pynba 0.5.5 had it."""

from pynba.log import logger

__all__ = ["logger"]
