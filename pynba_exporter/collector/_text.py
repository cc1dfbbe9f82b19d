"""Text that came from a packet, made safe to print on a terminal.

Names are chosen by whoever sends packets, and through a monitored app's URL path by any
anonymous HTTP client: a script name may hold ``ESC]52;...`` (writes the operator's
clipboard), ``ESC[2J``, a carriage return that hides what precedes it, or bidi overrides that
reorder what is shown. Every text output of the collector (tables, logs, errors) passes such
names through :func:`printable`; JSON output stays exact (``json.dumps`` escapes them itself).

Names may also be 60 KB long. Every name that leaves by an HTTP endpoint (the JSON API, the
page, ``/metrics``) is first cut here to :data:`MAX_TEXT` characters (:func:`cut`), so what an
endpoint answers and what it keeps are bounded by the number of rows, not by what the packets
carry; :func:`label` makes a ``/metrics`` label value of it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_TEXT", "cut", "label", "printable", "sql_text"]

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


#: Characters of a name an HTTP endpoint shows or keeps at most (a cut name ends in "...").
MAX_TEXT: Final = 256
# ASCII, not an ellipsis character: one character above U+00FF makes Python store the whole
# string, and every /metrics line holding it, at 2 bytes a character (a scrape's lines and
# their join took twice the memory).
_MORE: Final = "..."


def cut(s: str) -> str:
    """``s``, or its first characters and "..." when longer than :data:`MAX_TEXT` (a cut name
    cut again is unchanged, so a name the page got back finds its script)."""
    if len(s) <= MAX_TEXT:
        return s
    return s[: MAX_TEXT - len(_MORE)] + _MORE


def sql_text(s: str) -> str:
    """``s`` as SQLite can hold it: a name with bytes that were not UTF-8 (kept by the decoder
    as surrogates) gets U+FFFD in their place, instead of failing the whole batch."""
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return s


def label(s: str) -> str:
    """A ``/metrics`` label value: cut; U+FFFD for bytes that were not UTF-8 (kept by the
    decoder as lone surrogates, which the exposition cannot encode); control and bidi
    characters written as escapes, as in every text output (newlines, backslashes and quotes
    are the format's own to escape, and a parser gives them back exactly)."""
    s = cut(s)
    try:
        s = s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate no decoder made (a name from the Python API)
        s = s.encode("utf-8", "replace").decode("utf-8")
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() or c == "\n" else f"\\u{ord(c):04x}" for c in s)
