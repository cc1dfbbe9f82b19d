"""``pynba.stacked`` as pynba 0.5.5 had it: ``LocalProxy``, ``LocalStack``, ``LOCAL_STACK``."""

from pynba.globals import LocalProxy
from pynba.local import LOCAL_STACK, LocalStack

__all__ = ["LOCAL_STACK", "LocalProxy", "LocalStack"]
