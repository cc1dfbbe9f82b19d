"""What every classic entry point reads from the configuration, read so that a bad environment
never keeps the app from starting.

A value given in code that cannot work raises at once (a programmer sees it on the first run).
A value from the environment that cannot work (a typo in ``PINBA_SERVER``, ``PINBA_ENABLED=maybe``)
is logged once, as an error naming the variable, and Pinba is off for that app: the app starts
and serves, unmeasured, as the OpenTelemetry bridge does with the same variables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pynba_exporter import MemoryTransport, Transport, config
from pynba_exporter.log import errors

__all__ = ["configured"]


def configured(
    who: str,
    make_transport: Callable[[], Transport],
    timer_rusage: bool | None,
    enabled: bool | None,
) -> tuple[Transport, bool, bool]:
    """(transport, timer_rusage, enabled) for the entry point ``who``."""
    try:
        transport = make_transport()
        rusage: bool = config.value("timer_rusage", timer_rusage)
        on: bool = config.value("enabled", enabled)
    except config.ConfigError as exc:
        errors.log(
            ("config", who, str(exc)),
            f"pynba: {exc}; Pinba is off for this {who} (it runs unmeasured)",
            level=logging.ERROR,
        )
        # Nothing is sent; a transport all the same, for the reporter's stats() and
        # raise_on_fail that user code may read.
        off: Any = MemoryTransport(max_packet_size=config.OPTIONS["max_packet_size"].default,
                                   packed=False)  # fmt: skip
        return off, bool(timer_rusage), False
    return transport, rusage, on
