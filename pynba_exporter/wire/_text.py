"""Text and number rules: how values become what the reference client writes.

Tag names and values become text the way the PHP extension converts PHP scalars (``True`` ->
``"1"``, floats with PHP's 14 significant digits); strings become UTF-8 bytes, giving back the
bytes of strings decoded with ``surrogateescape``; numbers are clamped to what the servers keep
(uint32, non-negative finite float32 normals) and timer times truncated to whole microseconds as
the reference client's ``pinba_timer_add()`` does.
"""

from __future__ import annotations

import math
from typing import Final

from pynba_exporter.wire._errors import FLT_MAX, FLT_MIN_NORMAL, UINT32_MAX, PinbaEncodeError

__all__ = [
    "MAX_TIMER_SECONDS",
    "SMALL_VARINTS",
    "c_string",
    "php_float",
    "php_text",
    "seconds",
    "str_bytes",
    "u32",
    "usec",
    "utf8",
    "varint",
]


def php_float(x: float) -> str:
    """A float as PHP turns it into a string (``precision=14``): 0.1, 1.0E+20, 1.0E-5, -0."""
    if math.isnan(x):
        return "NAN"
    if x == math.inf:
        return "INF"
    if x == -math.inf:
        return "-INF"
    if x == 0.0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    # zend_gcvt switches to exponent form exactly where %G does (exponent < -4 or >= precision),
    # but writes a one-digit mantissa as "1.0" and the exponent without padding.
    if 1e14 <= abs(x) < 1e15 and x.is_integer():
        # zend_dtoa's path for integers below 1e15, on an exact tie at the 14th digit rounded
        # to even downwards, keeps the zeros it ends with: 969142230832005.0 is
        # "9.6914223083200E+14" (and 969142230832004.0 "9.691422308320E+14", as %G writes it).
        head, last = divmod(int(abs(x)), 10)
        if last == 5 and not head & 1:
            digits = str(head)
            return f"{'-' if x < 0 else ''}{digits[0]}.{digits[1:]}E+14"
    s = f"{x:.14G}"
    mantissa, e, exponent = s.partition("E")
    if not e:
        return s
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}E{exponent[0]}{int(exponent[1:])}"


def php_text(value: object, where: str) -> str:
    """A tag name or value as text, the way the reference client converts PHP scalars."""
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "1" if value else ""
    if isinstance(value, int):
        return int.__repr__(value)  # not str(): an IntEnum would give its name on 3.10
    if isinstance(value, float):
        return php_float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "surrogateescape")
    if value is None:
        return ""  # PHP's null as a string
    try:
        return str(value)
    except Exception as exc:
        raise PinbaEncodeError(where, f"str() of a {type(value).__name__} failed: {exc!r}") from exc


def c_string(raw: bytes) -> bytes:
    """``raw`` up to its first NUL byte: the reference client writes names and tags as C
    strings, so "a\\0b" is sent as "a" (in a dictionary entry of its own: see _make_layout)."""
    return raw[: raw.index(0)] if 0 in raw else raw


def utf8(s: str) -> bytes:
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        pass
    try:
        # Strings decoded from bytes with surrogateescape (ours, os.fsdecode) get their bytes back.
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace")  # lone surrogates: never valid on the wire


def str_bytes(value: object, where: str) -> bytes:
    if type(value) is str:
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            return utf8(value)
    if isinstance(value, str):
        return utf8(str.__str__(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise PinbaEncodeError(where, f"expected a string, got {type(value).__name__}")


# --------------------------------------------------------------------------------------------
# Numbers


def varint(v: int) -> bytes:
    if v < 0x80:
        return SMALL_VARINTS[v]
    if v < 0x4000:
        return bytes((v & 0x7F | 0x80, v >> 7))
    if v < 0x200000:
        return bytes((v & 0x7F | 0x80, (v >> 7) & 0x7F | 0x80, v >> 14))
    if v < 0x10000000:
        return bytes((v & 0x7F | 0x80, (v >> 7) & 0x7F | 0x80, (v >> 14) & 0x7F | 0x80, v >> 21))
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


#: The varints of 0 to 127, one byte each, ready-made.
SMALL_VARINTS: Final = [bytes((i,)) for i in range(128)]


def u32(value: object, where: str) -> int:
    if type(value) is int and 0 <= value <= UINT32_MAX:
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return 0
        number = UINT32_MAX if value > UINT32_MAX else int(value) if value > 0 else 0
    else:
        try:
            number = int(value)  # type: ignore[call-overload]
        except Exception as exc:
            raise PinbaEncodeError(where, f"expected an integer, got {value!r}") from exc
    return 0 if number < 0 else min(number, UINT32_MAX)


def seconds(value: object, where: str) -> float:
    """A non-negative finite float that float32 can hold as a normal number (or 0)."""
    if type(value) is not float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)  # type: ignore[arg-type]
            except Exception as exc:
                raise PinbaEncodeError(where, f"expected a number, got {value!r}") from exc
        else:
            value = float(value)
    if not value >= FLT_MIN_NORMAL:  # negative, NaN, zero or subnormal in float32
        return 0.0
    if value > FLT_MAX:
        return FLT_MAX
    return value


#: The longest timer time sent, in seconds: the reference client keeps timer seconds in a 32-bit
#: int, and wraps above it (to negative times that servers drop); pynba caps instead.
MAX_TIMER_SECONDS: Final = 4294967295.0


def usec(value: object, where: str) -> int:
    """Seconds -> whole microseconds, truncated, as the reference client's ``pinba_timer_add()``
    takes a time: ``(long)(value * 1000000)``. Negative and NaN times are 0, as it makes them.

    (Its ``PinbaClient::addTimer()`` converts with ``float_to_timeval()`` instead, seconds and
    fraction apart, which is 1 us lower for about one value in five of a second or more: 3.9 s
    -> 3,899,999 us. pynba follows the function every PHP app's timers go through; see
    docs/wire.md.)"""
    return int(min(seconds(value, where), MAX_TIMER_SECONDS) * 1000000.0)
