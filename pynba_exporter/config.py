"""Every option of pynba in one table: its environment names, its default, how it is read.

Order everywhere: the argument given in code, then the environment, then the default. Each
option has an OpenTelemetry-style name, read first (``OTEL_EXPORTER_PINBA_<NAME>``, so every
option can be given to ``opentelemetry-instrument`` too), and the older ``PINBA_<NAME>`` as an
alias. One rule for booleans: ``1``/``true``/``yes``/``on`` and ``0``/``false``/``no``/``off``,
in any case; an empty value is unset; anything else is a :class:`ConfigError` naming the
variable, never a silent guess.

    from pynba_exporter import config
    config.value("timer_rusage")              # True, or what the environment says
    config.value("max_packet_size", 1432)     # the argument wins
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["OPTIONS", "ConfigError", "Option", "parse_bool", "value"]

DEFAULT_PORT: Final = 30002


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names where it came from."""


_TRUE: Final = frozenset(("1", "true", "yes", "on"))
_FALSE: Final = frozenset(("0", "false", "no", "off"))


def parse_bool(text: str) -> bool:
    """The one boolean rule (see the module's documentation)."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected one of 1/true/yes/on or 0/false/no/off, got {text!r}")


@dataclass(frozen=True, slots=True)
class Option:
    """One option: its name in code, its environment names (first found wins), its default,
    the parser of its text, and what it does (for the documentation)."""

    name: str
    env: tuple[str, ...]
    default: Any
    parse: Callable[[str], Any]
    doc: str


def _servers(text: str) -> str:
    """Server addresses, checked now: a bad one is an error naming its variable, not a
    surprise at the first send."""
    from pynba_exporter.address import parse_addresses  # noqa: PLC0415 - address imports config

    parse_addresses(text.strip())
    return text.strip()


def _count(text: str) -> int:
    number = int(text)
    if number < 0:
        raise ValueError(f"expected a number of 0 or more, got {number}")
    return number


def _positive(text: str) -> float:
    number = float(text)
    if not 0.0 < number < float("inf"):
        raise ValueError(f"expected a positive number of seconds, got {text!r}")
    return number


def _seconds_or_off(text: str) -> float:
    number = float(text)
    if not 0.0 <= number < float("inf"):
        raise ValueError(f"expected a number of seconds (0: off), got {text!r}")
    return number


def _packet_size(text: str) -> int:
    size = int(text)
    if not 256 <= size <= 65507:
        raise ValueError(f"expected a size from 256 to 65507, got {size}")
    return size


def _option(name: str, default: Any, parse: Callable[[str], Any], doc: str, *more: str) -> Option:
    upper = name.upper()
    return Option(name, (f"OTEL_EXPORTER_PINBA_{upper}", *more, f"PINBA_{upper}"), default,
                  parse, doc)  # fmt: skip


#: Every option, by its name in code.
OPTIONS: Final[dict[str, Option]] = {
    o.name: o
    for o in (
        Option(
            "server",
            ("OTEL_EXPORTER_PINBA_ENDPOINT", "PINBA_SERVER"),
            f"127.0.0.1:{DEFAULT_PORT}",
            _servers,
            "the Pinba server(s): host, host:port, [v6]:port, several separated by commas",
        ),
        _option("enabled", True, parse_bool, "report requests at all (0: a pass-through)"),
        _option("timer_rusage", True, parse_bool, "measure each timer's CPU (two clock reads)"),
        _option("span_rusage", False, parse_bool, "measure each OTel child span's CPU too"),
        _option("packed", False, parse_bool, "write repeated fields packed: smaller packets"),
        _option("max_packet_size", 65507, _packet_size,
                "largest datagram (256 to 65507); larger shrink"),
        _option("resolve_interval", 60.0, _positive, "seconds a looked-up server address is kept"),
        _option("max_script_names", 1000, _count, "distinct script names per process (see naming)"),
        _option("max_server_names", 100, _count, "distinct server names per process (see naming)"),
        _option("asgi_events", False, parse_bool,
                "OTel: the ASGI instrumentation's http send/receive spans as timers"),
        _option("max_spans", 100_000, _count, "OTel: unfinished spans followed at once"),
        _option("max_age", 300.0, _positive,
                "OTel: seconds an unfinished span is followed, then evicted and counted"),
        _option("max_traces", 10_000, _count, "OTel exporter: traces waiting for their root"),
        _option("idle_warning", 60.0, _seconds_or_off,
                "zero-code: warn once if no request span came in that many seconds (0: never)"),
    )
}  # fmt: skip


def _environment(option: Option) -> tuple[str, str] | None:
    for name in option.env:
        text = os.environ.get(name)
        if text is not None and text.strip():
            return name, text
    return None


def value(name: str, given: Any = None) -> Any:
    """The value of option ``name``: ``given`` unless None, else the environment's, else the
    default. Raises :class:`ConfigError` for an environment value that does not parse."""
    if given is not None:
        return given
    option = OPTIONS[name]
    found = _environment(option)
    if found is None:
        return option.default
    variable, text = found
    try:
        return option.parse(text)
    except ValueError as exc:
        raise ConfigError(f"environment variable {variable}={text!r}: {exc}") from None
