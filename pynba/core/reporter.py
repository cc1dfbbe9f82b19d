"""``pynba.core.reporter`` as pynba 0.5.5 had it."""

from pynba.reporter import Reporter, flattener

__all__ = ["Reporter", "flattener"]
