"""``pynba.stacked.globals`` as pynba 0.5.5 had it."""

from pynba.globals import LocalProxy

__all__ = ["LocalProxy"]
