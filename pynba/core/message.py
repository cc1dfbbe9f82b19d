"""``pynba.core.message`` as pynba 0.5.5 had it."""

from pynba.message import cast, dumps

__all__ = ["cast", "dumps"]
