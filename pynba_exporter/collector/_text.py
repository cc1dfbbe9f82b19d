"""Text that came from a packet, made safe to print on a terminal.

Names are chosen by whoever sends packets, and through a monitored app's URL path by any
anonymous HTTP client: a script name may hold ``ESC]52;...`` (writes the operator's
clipboard), ``ESC[2J``, a carriage return that hides what precedes it, or bidi overrides that
reorder what is shown. Every text output of the collector (tables, logs, errors) passes such
names through :func:`printable`; JSON output stays exact (``json.dumps`` escapes them itself).
"""

from __future__ import annotations

from typing import Final

__all__ = ["printable"]

# Non-printable by str.isprintable() but harmless and expected inside a name.
_KEEP: Final = frozenset(" ")


def _escape(c: str) -> str:
    n = ord(c)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def printable(value: object) -> str:
    """``value`` as text where every control, format (bidi, zero-width), separator other than
    space, surrogate (an undecodable byte) or unassigned character is written as an escape
    (``\\x1b``, ``\\u202e``), and backslashes are doubled so an escape cannot be forged."""
    s = str(value)
    if s.isprintable() and "\\" not in s:
        return s
    return "".join(
        "\\\\" if c == "\\" else c if c.isprintable() or c in _KEEP else _escape(c) for c in s
    )
