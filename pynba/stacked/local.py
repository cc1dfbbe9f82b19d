"""``pynba.stacked.local`` as pynba 0.5.5 had it."""

from pynba.local import LOCAL_STACK, LocalStack

__all__ = ["LOCAL_STACK", "LocalStack"]
