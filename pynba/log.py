"""``logger`` as pynba 0.4.3 had it (``pynba.core.logger`` in 0.5.5): the ``pynba`` logger,
where the library reports its own failures (a repeated one at most once a minute)."""

from pynba_exporter.log import logger

__all__ = ["logger"]
