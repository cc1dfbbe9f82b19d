"""The Pinba wire codec: ``PinbaRequest`` <-> the bytes of one UDP datagram. No I/O here.

``encode`` builds exactly what the reference client (the PHP ``pinba`` extension) builds for the
same data, so real Pinba servers take our packets as they take PHP's:

- fields in ascending number order, hostname first (pinba2 drops a packet that does not start
  with field 1); fields 1-9, 16 and 17 always written, 19 only when non-empty, 18 only for nested
  requests;
- one dictionary shared by request tags and timer tags, filled in first-use order: request tags
  sorted by name, each VALUE before its NAME; then timers, each timer's tags sorted by name, NAME
  before VALUE;
- timers with identical tag sets merged into the first of them (hit counts, values and CPU summed);
- timer values and timer CPU times in whole microseconds, converted the way the reference client
  converts a ``double`` to a ``struct timeval`` (truncation, not rounding); request-level times
  written as float32 of the given value;
- tag values that are not strings written as PHP writes them: ``True`` -> ``"1"``, ``False`` ->
  ``""``, ints in decimal, floats with PHP's 14 significant digits (``0.1``, ``1.0E+20``).

``encode(..., packed=True)`` writes each repeated numeric field packed wherever that is smaller
(never for a single value): same content, about 30% smaller with many timers, accepted by
pinba_engine, pinba2 and every conforming protobuf parser.

``encode`` never writes what a server drops: negative, NaN or infinite floats become 0 (infinite
and too large ones the largest float32), float32 subnormals 0, integers are clamped to uint32,
hit counts to at least 1. What cannot be repaired (a tag mapping that is not a mapping, ``None``
for a name or tag value, an object whose ``str()`` raises, a timer without tags) raises
:class:`PinbaEncodeError`, naming the field.

``decode`` reads what any Pinba client sends (packed or not, any field order, unknown fields,
nested requests, strings that are not UTF-8: kept with ``surrogateescape``, so
``s.encode("utf-8", "surrogateescape")`` gives the original bytes back) and raises
:class:`PinbaDecodeError` for exactly what the servers reject.

Round trip: ``decode(encode(r)) == r`` once ``r`` is normalised the way ``encode`` normalises it:
tag values as text, identical timers merged, timer values to whole microseconds, floats to
float32.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import repeat
from operator import attrgetter, methodcaller, mul, truediv
from typing import Any, Final, NamedTuple

from pynba_exporter._model import PinbaRequest, PinbaTimer

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "PinbaDecodeError",
    "PinbaEncodeError",
    "decode",
    "encode",
]

UINT32_MAX: Final = 0xFFFFFFFF
FLT_MAX: Final = 3.4028234663852886e38
FLT_MIN_NORMAL: Final = 1.1754943508222875e-38
#: The largest UDP payload over IPv4; both servers read with a 64 KiB buffer.
DEFAULT_MAX_PACKET_SIZE: Final = 65507
#: Nested requests deeper than this are refused by ``decode`` (servers read one level).
MAX_NESTING: Final = 8


class PinbaEncodeError(ValueError, TypeError):
    """A request that cannot be turned into a packet; ``field`` names the culprit.

    It is both a ``ValueError`` and a ``TypeError`` so that callers can catch whichever fits.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class PinbaDecodeError(ValueError):
    """Bytes that a Pinba server would reject; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


# --------------------------------------------------------------------------------------------
# Text: how values become the strings of the dictionary


def _php_float(x: float) -> str:
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
    s = f"{x:.14G}"
    mantissa, e, exponent = s.partition("E")
    if not e:
        return s
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}E{exponent[0]}{int(exponent[1:])}"


def _text(value: object, where: str) -> str:
    """A tag name or value as text, the way the reference client converts PHP scalars."""
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "1" if value else ""
    if isinstance(value, int):
        return int.__repr__(value)  # not str(): an IntEnum would give its name on 3.10
    if isinstance(value, float):
        return _php_float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "surrogateescape")
    if value is None:
        raise PinbaEncodeError(where, "None is not a valid tag name or value")
    try:
        return str(value)
    except Exception as exc:
        raise PinbaEncodeError(where, f"str() of a {type(value).__name__} failed: {exc!r}") from exc


def _utf8(s: str) -> bytes:
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        pass
    try:
        # Strings decoded from bytes with surrogateescape (ours, os.fsdecode) get their bytes back.
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace")  # lone surrogates: never valid on the wire


def _str_bytes(value: object, where: str) -> bytes:
    if type(value) is str:
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            return _utf8(value)
    if isinstance(value, str):
        return _utf8(str.__str__(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise PinbaEncodeError(where, f"expected a string, got {type(value).__name__}")


# --------------------------------------------------------------------------------------------
# Numbers


def _varint(v: int) -> bytes:
    if v < 0x80:
        return _SMALL[v]
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


_SMALL: Final = [bytes((i,)) for i in range(128)]


def _u32(value: object, where: str) -> int:
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


def _seconds(value: object, where: str) -> float:
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


def _usec(value: object, where: str) -> int:
    """Seconds -> whole microseconds, as the reference client's ``float_to_timeval`` does."""
    v = _seconds(value, where)
    v = min(v, 4294967295.0)  # the reference client keeps timer seconds in a 32-bit int
    sec = int(v)
    return sec * 1_000_000 + int((v - sec) * 1000000.0)


# --------------------------------------------------------------------------------------------
# Encoding
#
# encode() runs on every request of the host app, so the common case is made cheap by caching
# what repeats between requests. An app sends the same few shapes of request over and over: the
# same names, the same request tag names, the same timer tag sets in the same order. The
# "layout" of a request (its dictionary and every index field: 12, 13, 14, 15, 20, 21, plus how
# its timers merge) depends only on that shape, so it is computed once by the careful path and
# then found by one dict lookup; only the numbers (fields 4-11, 16-17, 22-23) are written anew.
# A layout is cached only when every tag name and value was a plain str: then equality of the
# raw shape implies equality of the text (False == 0, but "" != "0").

_CACHE_MAX: Final = 4096
_CACHEABLE_LEN: Final = 256
_US: Final = 1000000


def _cache_put(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()  # a burst of new shapes: start over rather than grow or track recency
    cache[key] = value


# (hostname, server_name, script_name) -> fields 1 to 3.
_NAMES_CACHE: dict[tuple[object, object, object], bytes] = {}


def _names(r: PinbaRequest) -> bytes:
    """Fields 1 to 3."""
    key = (r.hostname, r.server_name, r.script_name)
    try:
        cached = _NAMES_CACHE.get(key)
    except TypeError:  # unhashable: _str_bytes below says what is wrong
        cached = None
    if cached is not None:
        return cached
    host = _str_bytes(r.hostname, "hostname")
    server = _str_bytes(r.server_name, "server_name")
    script = _str_bytes(r.script_name, "script_name")
    out = b"".join(
        (b"\x0a", _varint(len(host)), host, b"\x12", _varint(len(server)), server,
         b"\x1a", _varint(len(script)), script)
    )  # fmt: skip
    if len(out) <= 3 * _CACHEABLE_LEN and all(type(x) is str for x in key):
        _cache_put(_NAMES_CACHE, key, out)
    return out


_HEAD_FLOATS: Final = struct.Struct("<BfBfBf")
_STRUCTS: dict[tuple[int, int], struct.Struct] = {}


def _interleaved(keylen: int, n: int) -> struct.Struct:
    """A struct writing n floats, each after ``keylen`` key bytes (0: packed, no keys)."""
    st = _STRUCTS.get((keylen, n))
    if st is None:
        st = struct.Struct("<" + ("B" * keylen + "f") * n)
        if n <= 256:
            _STRUCTS[(keylen, n)] = st
    return st


def _rep_varints(key: bytes, values: list[int], packed: bool) -> bytes:
    """A repeated uint32 field, unpacked (one key per value) or packed."""
    small = max(values) < 0x80
    if packed:
        payload = bytes(values) if small else b"".join(map(_varint, values))
        size = _varint(len(payload))
        # Packed costs a length and saves a key per value after the first: pack only when
        # that makes the field smaller (never for one value).
        if len(size) < (len(values) - 1) * len(key):
            return _PACKED_KEY[key] + size + payload
        key = _UNPACKED_KEY[key]
    if small and len(key) == 1:
        out = [key[0]] * (2 * len(values))
        out[1::2] = values
        return bytes(out)
    return b"".join([key + _varint(v) for v in values])


def _rep_floats(key: bytes, values: list[float], packed: bool) -> bytes:
    """A repeated float field, unpacked (one key per value) or packed."""
    n = len(values)
    if packed:
        size = _varint(4 * n)
        if len(size) < (n - 1) * len(key):
            st = _STRUCTS.get((0, n)) or _interleaved(0, n)
            return _PACKED_KEY[key] + size + st.pack(*values)
        key = _UNPACKED_KEY[key]
    k = len(key)
    st = _STRUCTS.get((k, n)) or _interleaved(k, n)
    args: list[Any] = [*key, 0.0] * n
    args[k :: k + 1] = values
    return st.pack(*args)


# Keys of the repeated fields: (unpacked, packed)
_K10 = (b"\x50", b"\x52")
_K11 = (b"\x5d", b"\x5a")
_K12 = (b"\x60", b"\x62")
_K13 = (b"\x68", b"\x6a")
_K14 = (b"\x70", b"\x72")
_K20 = (b"\xa0\x01", b"\xa2\x01")
_K21 = (b"\xa8\x01", b"\xaa\x01")
_K22 = (b"\xb5\x01", b"\xb2\x01")
_K23 = (b"\xbd\x01", b"\xba\x01")
_FIELD_KEYS = (_K10, _K11, _K12, _K13, _K14, _K20, _K21, _K22, _K23)
# Either key of a repeated field -> its packed key, its unpacked key.
_PACKED_KEY: Final = {k: pair[1] for pair in _FIELD_KEYS for k in pair}
_UNPACKED_KEY: Final = {k: pair[0] for pair in _FIELD_KEYS for k in pair}

_Pairs = tuple[tuple[str, str], ...]


class _Layout:
    """What a request's shape decides: fields 12 to 15, fields 20 and 21, how timers merge."""

    __slots__ = (
        "cpu_args",
        "cpu_struct",
        "dictionary",
        "n",
        "plan",
        "request_tags",
        "timer_args",
        "timer_struct",
    )

    def __init__(self, dictionary: bytes, request_tags: bytes, n: int, plan: list[int] | None):
        self.dictionary = dictionary  # fields 12, 13, 14, 15
        self.request_tags = request_tags  # fields 20, 21
        self.n = n  # timers after merging
        self.plan = plan  # merged slot of each timer; None when no two timers merge
        self.cpu_struct: struct.Struct | None = None  # fields 22 and 23 unpacked, in one go
        self.cpu_args: list[Any] = []
        self.timer_struct: struct.Struct | None = None  # fields 10 and 11 unpacked, in one go
        self.timer_args: list[Any] = []


def _make_layout(
    request_tags: Sequence[tuple[str, str]], keys: Sequence[_Pairs], plan: list[int] | None,
    packed: bool,
) -> _Layout:  # fmt: skip
    """The dictionary in order of first use: request tags (value, then name), then timer tags
    (name, then value); and the index fields that point into it."""
    index: dict[str, int] = {}
    words: list[str] = []
    for name, value in request_tags:
        words.append(value)
        words.append(name)
    n_req = len(words)
    for key in keys:
        for name, value in key:
            words.append(name)
            words.append(value)
    for w in words:
        if w not in index:
            index[w] = len(index)
    ids = [index[w] for w in words]
    p = 1 if packed else 0
    parts = []
    if keys:
        parts.append(_rep_varints(_K12[p], [len(k) for k in keys], packed))
        parts.append(_rep_varints(_K13[p], ids[n_req::2], packed))
        parts.append(_rep_varints(_K14[p], ids[n_req + 1 :: 2], packed))
    parts.extend(map(_entry, index))
    tags = b""
    if n_req:
        tags = _rep_varints(_K20[p], ids[1:n_req:2], packed) + _rep_varints(
            _K21[p], ids[0:n_req:2], packed
        )
    return _Layout(b"".join(parts), tags, len(keys), plan)


def _entry(s: str) -> bytes:
    raw = _utf8(s)
    return b"\x7a" + _varint(len(raw)) + raw


# (packed, raw request tag items, raw timer tag items of each timer) -> _Layout
_LAYOUTS: dict[tuple[bool, tuple[Any, ...], tuple[Any, ...]], _Layout] = {}
_DICT_ITEMS = dict.items


def _tag_pairs(tags: object, where: str) -> list[tuple[str, str]]:
    """Tags as text, sorted by name."""
    try:
        items = list(tags.items())  # type: ignore[attr-defined]
    except Exception as exc:
        raise PinbaEncodeError(
            where, f"expected a mapping of tag names to values, got {type(tags).__name__}"
        ) from exc
    pairs: list[tuple[str, str]] = []
    for name, value in items:
        if type(name) is str and type(value) is str:
            pairs.append((name, value))
        elif isinstance(value, (tuple, list)):
            # A tag with several values: the name once per value, as the original pynba sent it.
            text = _text(name, f"{where} name {name!r}")
            pairs.extend((text, _text(v, f"{where}[{name!r}]")) for v in value)
        else:
            pairs.append(
                (_text(name, f"{where} name {name!r}"), _text(value, f"{where}[{name!r}]"))
            )
    items = pairs
    # By UTF-8 bytes, as the reference client's strcmp(); code point order is the same except
    # for surrogate-escaped bytes.
    items.sort(key=lambda pair: (_utf8(pair[0]), _utf8(pair[1])))
    return items


def _all_str(items: Iterable[tuple[object, object]]) -> bool:
    return all(type(a) is str and type(b) is str for a, b in items)


class _Merged:
    """A request's timers after merging, as columns; times in whole microseconds."""

    __slots__ = ("cacheable", "hits", "keys", "plan", "ru_stime", "ru_utime", "values")

    def __init__(self) -> None:
        self.keys: list[_Pairs] = []
        self.hits: list[int] = []
        self.values: list[int] = []
        self.ru_utime: list[int] = []
        self.ru_stime: list[int] = []
        self.plan: list[int] | None = None
        self.cacheable = True


# A timer is anything with these attributes: PinbaTimer, or the span model's timer lines, which
# the classic API hands over as they are rather than copying them into records first.
_TIMER_ATTRIBUTES: Final = ("tags", "value", "hit_count", "ru_utime", "ru_stime")


def _merge(timers: object) -> _Merged:
    """The careful path: every timer checked and converted, identical tag sets merged."""
    if isinstance(timers, (str, bytes, Mapping)) or not isinstance(timers, Iterable):
        raise PinbaEncodeError("timers", f"expected a sequence of PinbaTimer, got {timers!r}")
    m = _Merged()
    slots: dict[_Pairs, int] = {}
    plan = []
    for i, t in enumerate(timers):
        if not all(hasattr(t, a) for a in _TIMER_ATTRIBUTES):
            raise PinbaEncodeError(f"timers[{i}]", f"expected a PinbaTimer, got {t!r}")
        key = tuple(_tag_pairs(t.tags, f"timers[{i}].tags"))
        if not key:
            raise PinbaEncodeError(f"timers[{i}].tags", "a timer needs at least one tag")
        if m.cacheable and not (type(t.tags) is dict and _all_str(t.tags.items())):
            m.cacheable = False
        hits = _u32(t.hit_count, f"timers[{i}].hit_count") or 1
        us = _usec(t.value, f"timers[{i}].value")
        u = _usec(t.ru_utime, f"timers[{i}].ru_utime")
        s = _usec(t.ru_stime, f"timers[{i}].ru_stime")
        slot = slots.get(key)
        if slot is None:
            slot = slots[key] = len(m.keys)
            m.keys.append(key)
            m.hits.append(hits)
            m.values.append(us)
            m.ru_utime.append(u)
            m.ru_stime.append(s)
        else:
            m.hits[slot] = min(m.hits[slot] + hits, UINT32_MAX)
            m.values[slot] += us
            m.ru_utime[slot] += u
            m.ru_stime[slot] += s
        plan.append(slot)
    if len(m.keys) < len(plan):
        m.plan = plan
    return m


def _usecs(col: Sequence[Any]) -> list[int] | None:
    """float_to_timeval() of the reference client (truncation to whole microseconds) over a
    column of plain numbers; None when one needs the careful path (negative, NaN, huge...)."""
    n = len(col)
    if not any(col):
        return [0] * n
    total = sum(col)
    if not (total < 4294967296.0 and min(col) >= 0):  # NaN and inf fail the first test
        return None
    if max(col) < 1.0:  # tv_sec == 0, so (v - tv_sec) * 1e6 is v * 1e6
        return list(map(int, map(mul, col, repeat(1000000.0, n))))
    return [int(v) * _US + int((v - int(v)) * 1000000.0) for v in col]


def _summed(plan: list[int], n: int, col: list[int]) -> list[int]:
    out = [0] * n
    for slot, v in zip(plan, col):
        out[slot] += v
    return out


def _f32s(usecs: list[int]) -> list[float]:
    # timeval_to_float(): (float)tv_sec + (float)tv_usec / 1000000.0, computed in double. Below
    # one second that is exactly us / 1e6.
    n = len(usecs)
    if not any(usecs):
        return [0.0] * n
    if max(usecs) < _US:
        return list(map(truediv, usecs, repeat(1000000.0, n)))
    return [us // _US + (us % _US) / 1000000.0 for us in usecs]


def _head(r: PinbaRequest) -> bytes:
    """Fields 4 to 9."""
    rc, ds, mp = r.request_count, r.document_size, r.memory_peak
    if type(rc) is not int or not 0 <= rc < 0x80:
        rc = _u32(rc, "request_count")
    if type(ds) is not int or not 0 <= ds <= UINT32_MAX:
        ds = _u32(ds, "document_size")
    if type(mp) is not int or not 0 <= mp <= UINT32_MAX:
        mp = _u32(mp, "memory_peak")
    rt, ru, rs = r.request_time, r.ru_utime, r.ru_stime
    if not (type(rt) is float and FLT_MIN_NORMAL <= rt <= FLT_MAX):
        rt = _seconds(rt, "request_time")
    if not (type(ru) is float and FLT_MIN_NORMAL <= ru <= FLT_MAX):
        ru = _seconds(ru, "ru_utime")
    if not (type(rs) is float and FLT_MIN_NORMAL <= rs <= FLT_MAX):
        rs = _seconds(rs, "ru_stime")
    return b"".join(
        (b"\x20", _SMALL[rc] if rc < 0x80 else _varint(rc),
         b"\x28", _SMALL[ds] if ds < 0x80 else _varint(ds),
         b"\x30", _SMALL[mp] if mp < 0x80 else _varint(mp),
         _HEAD_FLOATS.pack(0x3D, rt, 0x45, ru, 0x4D, rs))
    )  # fmt: skip


def _timer_fields(layout: _Layout, hits: list[int], values: list[float]) -> bytes:
    """Fields 10 and 11 unpacked, by one struct call, for hit counts below 128 (one byte)."""
    st = layout.timer_struct
    n = layout.n
    if st is None:
        st = layout.timer_struct = struct.Struct("<" + "BB" * n + "Bf" * n)
        layout.timer_args = [0x50, 1] * n + [0x5D, 0.0] * n
    args = layout.timer_args.copy()
    args[1 : 2 * n : 2] = hits
    args[2 * n + 1 :: 2] = values
    return st.pack(*args)


def _cpu_fields(layout: _Layout, ru_utime: list[float], ru_stime: list[float]) -> bytes:
    """Fields 22 and 23 unpacked, by one struct call (they are the last fields, and the
    reference client always writes both)."""
    st = layout.cpu_struct
    n = layout.n
    if st is None:
        st = layout.cpu_struct = struct.Struct("<" + "BBf" * (2 * n))
        layout.cpu_args = [0xB5, 0x01, 0.0] * n + [0xBD, 0x01, 0.0] * n
    args = layout.cpu_args.copy()
    args[2 : 3 * n : 3] = ru_utime
    args[3 * n + 2 :: 3] = ru_stime
    return st.pack(*args)


def _assemble(  # noqa: PLR0917 - internal, called from two places with every column
    r: PinbaRequest,
    names: bytes,
    layout: _Layout,
    hits: list[int],
    values: list[float],
    ru_utime: list[float],
    ru_stime: list[float],
    packed: bool,
) -> bytes:
    """The packet, in field order: 1-3 ``names``, 4-9 from r, 10-11 the timers' numbers, 12-15
    the layout's, 16-19 from r, 20-21 the layout's, 22-23 the timers' CPU."""
    p = 1 if packed else 0
    parts = [names, _head(r)]
    if layout.n:
        if packed or max(hits) >= 0x80:
            parts.append(_rep_varints(_K10[p], hits, packed))
            parts.append(_rep_floats(_K11[p], values, packed))
        else:
            parts.append(_timer_fields(layout, hits, values))
    parts.append(layout.dictionary)
    st, fp = r.status, r.memory_footprint
    if type(st) is not int or not 0 <= st <= UINT32_MAX:
        st = _u32(st, "status")
    if type(fp) is not int or not 0 <= fp <= UINT32_MAX:
        fp = _u32(fp, "memory_footprint")
    parts.append(b"\x80\x01")
    parts.append(_SMALL[st] if st < 0x80 else _varint(st))
    parts.append(b"\x88\x01")
    parts.append(_SMALL[fp] if fp < 0x80 else _varint(fp))
    if r.requests:
        parts.extend(_nested(r.requests, packed))
    if r.schema:
        schema = _str_bytes(r.schema, "schema")
        parts.append(b"\x9a\x01" + _varint(len(schema)) + schema)
    parts.append(layout.request_tags)
    if layout.n:
        if packed:
            parts.append(_rep_floats(_K22[1], ru_utime, True))
            parts.append(_rep_floats(_K23[1], ru_stime, True))
        else:
            parts.append(_cpu_fields(layout, ru_utime, ru_stime))
    return b"".join(parts)


def _nested(requests: object, packed: bool) -> list[bytes]:
    if isinstance(requests, (str, bytes, Mapping)) or not isinstance(requests, Iterable):
        raise PinbaEncodeError("requests", "expected a sequence of PinbaRequest")
    parts = []
    for i, sub in enumerate(requests):
        if not isinstance(sub, PinbaRequest):
            raise PinbaEncodeError(
                f"requests[{i}]", f"expected a PinbaRequest, got {type(sub).__name__}"
            )
        data = encode(sub, packed=packed)
        parts.append(b"\x92\x01" + _varint(len(data)))
        parts.append(data)
    return parts


def _seconds_col(col: Sequence[Any]) -> list[float] | None:
    """What the reference client writes for a column of durations: float_to_timeval() then
    timeval_to_float(), i.e. whole microseconds; None when a value needs the careful path."""
    if not any(col):
        return [0.0] * len(col)
    if min(col) >= 0 and max(col) < 1.0:
        # tv_sec == 0, so the reference's (v - tv_sec) * 1e6 is v * 1e6. A NaN that slipped
        # past min() and max() makes int() raise, and the caller takes the careful path.
        return [int(v * 1000000.0) / 1000000.0 for v in col]
    us_list = _usecs(col)
    return None if us_list is None else _f32s(us_list)


def _encode_fast(r: PinbaRequest, names: bytes, packed: bool) -> bytes | None:
    """The packet from a cached layout, or None when there is none or a value is unusual."""
    tags, timers = r.tags, r.timers
    raw_tags: tuple[Any, ...] = tuple(_DICT_ITEMS(tags)) if tags else ()  # type: ignore[arg-type]  # TypeError unless a dict
    if not timers:
        layout = _LAYOUTS.get((packed, raw_tags, ()))
        if layout is None:
            return None
        return _assemble(r, names, layout, [], [], [], [], packed)
    # Columns by comprehension: cheaper than zip(*map(attrgetter(...))) for small requests.
    raw_keys = tuple([tuple(t.tags.items()) for t in timers])
    layout = _LAYOUTS.get((packed, raw_tags, raw_keys))
    if layout is None:
        return None
    hits = [t.hit_count for t in timers]
    if not (min(hits) > 0 and max(hits) <= UINT32_MAX):
        return None
    value_col = [t.value for t in timers]
    ru_u_col = [t.ru_utime for t in timers]
    ru_s_col = [t.ru_stime for t in timers]
    plan = layout.plan
    if plan is None:
        # One conversion over the three columns at once: fewer passes than one per column.
        n = len(hits)
        both = _seconds_col(value_col + ru_u_col + ru_s_col)
        if both is None:
            return None
        return _assemble(r, names, layout, hits, both[:n], both[n : 2 * n], both[2 * n :], packed)
    us = _usecs(value_col)
    u = _usecs(ru_u_col)
    s = _usecs(ru_s_col)
    if us is None or u is None or s is None:
        return None
    n = layout.n
    hits = [min(h, UINT32_MAX) for h in _summed(plan, n, hits)]
    return _assemble(
        r, names, layout, hits,
        _f32s(_summed(plan, n, us)), _f32s(_summed(plan, n, u)), _f32s(_summed(plan, n, s)),
        packed,
    )  # fmt: skip


def _encode_careful(r: PinbaRequest, names: bytes, packed: bool) -> bytes:
    """Every value checked and converted; the layout computed, and cached when it may be."""
    tags, timers = r.tags, r.timers
    request_tags = _tag_pairs(tags, "tags") if tags else []
    m = _merge(timers) if timers else _Merged()
    layout = _make_layout(request_tags, m.keys, m.plan, packed)
    if m.cacheable and (not tags or (type(tags) is dict and _all_str(tags.items()))):
        raw_tags = tuple(tags.items()) if tags else ()
        raw_keys = tuple(tuple(t.tags.items()) for t in timers) if timers else ()
        if sum(map(len, raw_keys)) <= 1024:
            _cache_put(_LAYOUTS, (packed, raw_tags, raw_keys), layout)
    return _assemble(
        r, names, layout, m.hits, _f32s(m.values), _f32s(m.ru_utime), _f32s(m.ru_stime), packed
    )


def encode(request: PinbaRequest, *, packed: bool = False) -> bytes:
    """The Pinba packet for ``request``: byte for byte the reference client's when not ``packed``.

    Raises :class:`PinbaEncodeError` (a ``ValueError`` and a ``TypeError``) naming the field when
    the request holds something that has no text form or is not of the expected kind.
    """
    # Duck-typed on purpose: the span model's requests are encoded as they are, without being
    # copied into a PinbaRequest first (a frozen dataclass costs microseconds to build).
    try:
        names = _names(request)
    except AttributeError:
        raise PinbaEncodeError(
            "request", f"expected a PinbaRequest, got {type(request).__name__}"
        ) from None
    try:
        data = _encode_fast(request, names, packed)
    except Exception:  # anything unusual in the shape or the numbers: the careful path decides
        data = None
    if data is None:
        data = _encode_careful(request, names, packed)
    return data


# --------------------------------------------------------------------------------------------
# Packet size

#: The request tag that marks a request shrunk to fit, and the timer its timers were folded into.
TRUNCATED_TAG: Final = "pynba_truncated"
FOLDED_TIMER_TAGS: Final = {"group": "pynba::truncated"}
#: The smallest max_packet_size accepted: room for the names cut short and a few numbers.
MIN_PACKET_SIZE: Final = 256


@dataclass(frozen=True, slots=True)
class Fitted:
    """The packets of one request (several only when nested requests had to travel apart) and
    what had to go to keep each one within the size limit."""

    packets: list[bytes]
    folded_timers: int = 0  # timers (after merging) folded into one "pynba::truncated" timer
    cut_strings: int = 0  # strings cut short
    dropped_tags: int = 0  # request tags left out

    @property
    def shrunk(self) -> bool:
        return bool(self.folded_timers or self.cut_strings or self.dropped_tags)


def _as_record(r: Any) -> PinbaRequest:
    """A PinbaRequest with the fields of a request-like object."""
    return PinbaRequest(
        r.hostname, r.server_name, r.script_name,
        request_count=r.request_count, document_size=r.document_size,
        memory_peak=r.memory_peak, request_time=r.request_time, ru_utime=r.ru_utime,
        ru_stime=r.ru_stime, status=r.status, memory_footprint=r.memory_footprint,
        schema=r.schema, tags=r.tags, requests=r.requests,
        timers=[PinbaTimer(t.tags, t.value, t.hit_count, t.ru_utime, t.ru_stime) for t in r.timers],
    )  # fmt: skip


def _cut(raw: str, limit: int) -> str:
    b = _utf8(raw)
    if len(b) <= limit:
        return raw
    return b[:limit].decode("utf-8", "ignore")  # never half a character


def fit(request: PinbaRequest, max_size: int, *, packed: bool = False) -> Fitted:
    """``request`` as packets of at most ``max_size`` bytes, never splitting one request.

    When the timers do not fit, the request still goes out: the timers with the largest total
    time are kept (in their order), the others are folded into one timer tagged
    ``group=pynba::truncated``, and the request tag ``pynba_truncated`` says what was done
    (``timers``, ``strings`` when names or tags over 255 bytes had to be cut, ``tags`` when
    request tags had to be left out). Nested requests that do not fit with their parent leave
    as packets of their own (they are requests of their own to the servers).
    """
    if max_size < MIN_PACKET_SIZE:
        raise ValueError(f"max_size must be at least {MIN_PACKET_SIZE}, got {max_size}")
    data = encode(request, packed=packed)
    if len(data) <= max_size:
        return Fitted([data])
    if not isinstance(request, PinbaRequest):  # a request-like object (a span): copy it
        request = _as_record(request)
    if request.requests:
        parts = [fit(replace(request, requests=()), max_size, packed=packed)]
        parts.extend(fit(sub, max_size, packed=packed) for sub in request.requests)
        return Fitted(
            [p for f in parts for p in f.packets],
            sum(f.folded_timers for f in parts),
            sum(f.cut_strings for f in parts),
            sum(f.dropped_tags for f in parts),
        )
    return _shrink(request, max_size, packed)


def _shrink(r: PinbaRequest, max_size: int, packed: bool) -> Fitted:
    tags = _tag_pairs(r.tags, "tags") if r.tags else []
    m = _merge(r.timers) if r.timers else _Merged()
    n = len(m.keys)
    # Largest total time first; ties keep creation order.
    by_time = sorted(range(n), key=lambda i: -m.values[i])
    timer_keys = m.keys

    def build(head: PinbaRequest, tags: list[tuple[str, str]], keep: int, mark: str) -> bytes:
        kept = sorted(by_time[:keep])
        rest = by_time[keep:]
        keys = [timer_keys[i] for i in kept]
        cols = [[col[i] for i in kept] for col in (m.hits, m.values, m.ru_utime, m.ru_stime)]
        if rest:
            folded = tuple(FOLDED_TIMER_TAGS.items())
            sums = [
                min(sum(m.hits[i] for i in rest), UINT32_MAX),
                *(sum(col[i] for i in rest) for col in (m.values, m.ru_utime, m.ru_stime)),
            ]
            if folded in keys:  # merge, as the reference client would
                j = keys.index(folded)
                for col, v in zip(cols, sums):
                    col[j] += v
                cols[0][j] = min(cols[0][j], UINT32_MAX)
            else:
                keys.append(folded)
                for col, v in zip(cols, sums):
                    col.append(v)
        marked = sorted([*(t for t in tags if t[0] != TRUNCATED_TAG), (TRUNCATED_TAG, mark)])
        layout = _make_layout(marked, keys, None, packed)
        return _assemble(
            head, _names(head), layout, cols[0], _f32s(cols[1]) if keys else [],
            _f32s(cols[2]) if keys else [], _f32s(cols[3]) if keys else [], packed,
        )  # fmt: skip

    def most_timers(
        head: PinbaRequest, tags: list[tuple[str, str]], mark: str
    ) -> tuple[bytes, int] | None:
        # Binary search on how many timers to keep; every answer is checked by its real size.
        best = None
        lo, hi = 0, n
        while lo <= hi:
            mid = (lo + hi) // 2
            data = build(head, tags, mid, mark)
            if len(data) <= max_size:
                best, lo = (data, n - mid), mid + 1
            else:
                hi = mid - 1
        return best

    found = most_timers(r, tags, "timers")
    if found is not None:
        return Fitted([found[0]], folded_timers=found[1])
    for limit in (255, 32):
        head = replace(
            r,
            hostname=_cut(_text(r.hostname, "hostname"), limit),
            server_name=_cut(_text(r.server_name, "server_name"), limit),
            script_name=_cut(_text(r.script_name, "script_name"), limit),
            schema=_cut(_text(r.schema, "schema"), min(limit, 16)),
            requests=(),
        )
        cut_tags = [(_cut(a, limit), _cut(b, limit)) for a, b in tags]
        cut = sum(
            len(_utf8(_text(x, "name"))) > limit
            for x in (r.hostname, r.server_name, r.script_name, *(y for t in tags for y in t))
        )
        cut_tags = sorted(dict(cut_tags).items())
        # Cut timer tags may coincide; servers take repeated tag sets and add them up.
        timer_keys = [tuple((_cut(a, limit), _cut(b, limit)) for a, b in k) for k in m.keys]
        cut += sum(len(_utf8(x)) > limit for k in m.keys for pair in k for x in pair)
        found = most_timers(head, cut_tags, "strings")
        if found is not None:
            return Fitted([found[0]], found[1], cut)
        for keep in range(len(cut_tags) - 1, -1, -1):
            data = build(head, cut_tags[:keep], 0, "tags")
            if len(data) <= max_size:
                return Fitted([data], n, cut, len(cut_tags) - keep)
    raise AssertionError("unreachable: a request without tags or timers always fits")


# --------------------------------------------------------------------------------------------
# Decoding

_F32 = struct.Struct("<f")

# field number -> expected wire type, for the fields of the schema
_REPEATED_VARINT: Final = frozenset((10, 12, 13, 14, 20, 21))
_REPEATED_FLOAT: Final = frozenset((11, 22, 23))
_REQUIRED: Final = (1, 2, 3, 4, 5, 6, 7, 8, 9)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        b = buf[pos]  # IndexError on truncation: reported as such by decode()
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise PinbaDecodeError(f"varint longer than 10 bytes at offset {pos}")


def _bad_float(v: float) -> bool:
    """NaN, infinite or float32-subnormal: pinba2 drops a packet holding one."""
    return not math.isfinite(v) or (v != 0.0 and -FLT_MIN_NORMAL < v < FLT_MIN_NORMAL)


# Unpacked repeated fields come as runs of equal keys: [key, value, key, value, ...]. A run of
# floats, or of varints below 128, has a fixed stride, so it is read with a few C-level slice
# operations instead of a Python iteration per element (a packet of the reference client is
# mostly such runs). First key byte -> (field, key length, is float).
_RUNS: Final = {
    0x50: (10, 1, False), 0x5D: (11, 1, True), 0x60: (12, 1, False), 0x68: (13, 1, False),
    0x70: (14, 1, False), 0xA0: (20, 2, False), 0xA8: (21, 2, False), 0xB5: (22, 2, True),
    0xBD: (23, 2, True),
}  # fmt: skip
_BYTES: Final = [bytes((i,)) for i in range(256)]
_HIGH_BYTE: Final = re.compile(rb"[\x80-\xff]")
_RUN_STRUCTS: dict[tuple[int, int], struct.Struct] = {}


def _run(buf: bytes, pos: int, key: int, klen: int, is_float: bool) -> tuple[Any, int]:
    """The values of the run of ``key`` starting at ``pos``, and the run's length in bytes;
    ((), 0) when the element at ``pos`` is not of the simple fixed-stride kind."""
    stride = klen + (4 if is_float else 1)
    count = (len(buf) - pos) // stride
    firsts = buf[pos : pos + stride * count : stride]
    n = count - len(firsts.lstrip(_BYTES[key]))
    if klen == 2:
        seconds = buf[pos + 1 : pos + stride * n : stride]
        n = min(n, len(seconds) - len(seconds.lstrip(b"\x01")))
    if n == 0:
        return (), 0
    if is_float:
        st = _RUN_STRUCTS.get((klen, n))
        if st is None:
            st = struct.Struct("<" + ("x" * klen + "f") * n)
            if n <= 256:
                _RUN_STRUCTS[(klen, n)] = st
        return st.unpack_from(buf, pos), stride * n
    values = buf[pos + klen : pos + stride * n : stride]
    big = _HIGH_BYTE.search(values)
    if big is not None:  # a value of two or more bytes: the run ends before it
        n = big.start()
        values = values[:n]
    return values, stride * n


# What to do with each key (field number and wire type) of the schema. Anything not here is an
# unknown field (skipped) or a known field with the wrong wire type (rejected, as protobuf-c does).
_SCALAR_VARINT, _SCALAR_FLOAT, _SCALAR_BYTES, _WORD, _REP_VARINT, _REP_VARINTS = range(6)
_REP_FLOAT, _REP_FLOATS, _NESTED = range(6, 9)
_ACTIONS: Final[dict[int, tuple[int, int]]] = {
    **{(f << 3) | 0: (_SCALAR_VARINT, f) for f in (4, 5, 6, 16, 17)},
    **{(f << 3) | 5: (_SCALAR_FLOAT, f) for f in (7, 8, 9)},
    **{(f << 3) | 2: (_SCALAR_BYTES, f) for f in (1, 2, 3, 19)},
    (15 << 3) | 2: (_WORD, 15),
    **{(f << 3) | 0: (_REP_VARINT, f) for f in _REPEATED_VARINT},
    **{(f << 3) | 2: (_REP_VARINTS, f) for f in _REPEATED_VARINT},
    **{(f << 3) | 5: (_REP_FLOAT, f) for f in _REPEATED_FLOAT},
    **{(f << 3) | 2: (_REP_FLOATS, f) for f in _REPEATED_FLOAT},
    (18 << 3) | 2: (_NESTED, 18),
}
_KNOWN_FIELDS: Final = frozenset(f for _, f in _ACTIONS.values())


def _decode(buf: bytes, depth: int) -> Packet:
    end = len(buf)
    pos = 0
    scalars: dict[int, Any] = {}
    reps: dict[int, list[Any]] = {}
    dictionary: list[bytes] = []
    nested: list[Packet] = []
    runs = _RUNS
    actions = _ACTIONS
    while pos < end:
        b = buf[pos]
        run = runs.get(b)
        if run is not None:
            values, size = _run(buf, pos, b, run[1], run[2])
            if size:
                lst = reps.get(run[0])
                if lst is None:
                    reps[run[0]] = list(values)
                else:
                    lst.extend(values)
                pos += size
                continue
        if b == 0x7A:
            # The dictionary: the most numerous fields of a packet, one after another. Short
            # entries are read here, without the general path's dispatch.
            start = pos
            while pos + 1 < end and buf[pos] == 0x7A:
                n = buf[pos + 1]
                if n >= 0x80 or pos + 2 + n > end:
                    break  # a long or a truncated entry: the general path reads it
                pos += 2
                dictionary.append(buf[pos : pos + n])
                pos += n
            if pos != start:
                continue
        if b < 0x80:
            key = b
            pos += 1
        else:
            key, pos = _read_varint(buf, pos)
        action = actions.get(key)
        if action is None:
            pos = _skip(buf, pos, key)
            continue
        code, field = action
        if code >= _REP_VARINTS or code in (_WORD, _SCALAR_BYTES):
            n = buf[pos]
            if n < 0x80:
                pos += 1
            else:
                n, pos = _read_varint(buf, pos)
            if pos + n > end:
                raise PinbaDecodeError(
                    f"truncated: field {field} declares {n} bytes, {end - pos} left"
                )
            val = buf[pos : pos + n]
            pos += n
            if code == _WORD:
                dictionary.append(val)
            elif code == _SCALAR_BYTES:
                scalars[field] = val
            elif code == _REP_VARINTS:
                lst = reps.setdefault(field, [])
                p = 0
                while p < n:
                    x, p = _read_varint(val, p)
                    lst.append(x & UINT32_MAX)
            elif code == _REP_FLOATS:
                if n % 4:
                    raise PinbaDecodeError(
                        f"packed field {field} length {n} is not a multiple of 4"
                    )
                reps.setdefault(field, []).extend(struct.unpack(f"<{n // 4}f", val))
            else:  # nested request
                if depth >= MAX_NESTING:
                    raise PinbaDecodeError(f"nested requests deeper than {MAX_NESTING} levels")
                try:
                    nested.append(_decode(val, depth + 1))
                except PinbaDecodeError as exc:
                    raise PinbaDecodeError(f"nested request {len(nested)}: {exc.reason}") from None
        elif code in (_SCALAR_FLOAT, _REP_FLOAT):
            if pos + 4 > end:
                raise PinbaDecodeError(f"truncated: field {field} needs 4 bytes at offset {pos}")
            val = _F32.unpack_from(buf, pos)[0]
            pos += 4
            if code == _SCALAR_FLOAT:
                scalars[field] = val
            else:
                reps.setdefault(field, []).append(val)
        else:  # a varint, scalar or one element of a repeated field
            number = buf[pos]
            if number < 0x80:
                pos += 1
            else:
                number, pos = _read_varint(buf, pos)
            if code == _SCALAR_VARINT:
                scalars[field] = number
            else:
                reps.setdefault(field, []).append(number & UINT32_MAX)
    return _build(scalars, reps, dictionary, nested)


def _skip(buf: bytes, pos: int, key: int) -> int:
    """Past an unknown field; a known field with an unexpected wire type is refused."""
    field, wire = key >> 3, key & 7
    if field == 0:
        raise PinbaDecodeError("field number 0 is invalid")
    if field in _KNOWN_FIELDS:
        raise PinbaDecodeError(f"field {field} has unexpected wire type {wire}")
    if wire == 0:
        return _read_varint(buf, pos)[1]
    if wire == 1:
        size = 8
    elif wire == 5:
        size = 4
    elif wire == 2:
        size, pos = _read_varint(buf, pos)
    else:
        raise PinbaDecodeError(f"unsupported wire type {wire} for field {field}")
    if pos + size > len(buf):
        raise PinbaDecodeError(f"truncated: field {field} needs {size} bytes at offset {pos}")
    return pos + size


_SURROGATE_DECODE: Final = methodcaller("decode", "utf-8", "surrogateescape")


def _bad_column(column: list[float]) -> bool:
    """Some value is NaN, infinite or a float32 subnormal (C-level passes over the column)."""
    if not math.isfinite(sum(column)):
        return True
    smallest = min(map(abs, filter(None, column)), default=1.0)
    return smallest < FLT_MIN_NORMAL


# Decoded records are built without the frozen dataclasses' __init__ (which goes through
# object.__setattr__ once per field, checks included): straight through the slots, whose values
# the decoder has already made right. This halves the cost of a decoded timer.
_new = object.__new__
_TIMER_SLOTS: Final = tuple(
    PinbaTimer.__dict__[f].__set__ for f in ("tags", "value", "hit_count", "ru_utime", "ru_stime")
)


def _timer(tags: dict[str, Any], value: float, hits: int, ru_u: float, ru_s: float) -> PinbaTimer:
    t = _new(PinbaTimer)
    set_tags, set_value, set_hits, set_u, set_s = _TIMER_SLOTS
    set_tags(t, tags)
    set_value(t, value)
    set_hits(t, hits)
    set_u(t, ru_u)
    set_s(t, ru_s)
    return t


def _multi(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Tags where a name comes several times: that name maps to the tuple of its values."""
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name not in out:
            out[name] = value
        elif isinstance(out[name], tuple):
            out[name] = (*out[name], value)
        else:
            out[name] = (out[name], value)
    return out


def _s(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


_NONE: Final[list[Any]] = []


def _build(
    scalars: dict[int, Any],
    reps: dict[int, list[Any]],
    dictionary: list[Any],
    nested: list[Packet],
) -> Packet:
    """The fields of a packet, checked against the servers' rules (whichever parser read
    them), as plain values. Written for the collector's rate: checks run on whole columns
    with C-level built-ins, and the exact culprit is only looked for once one fails."""
    try:
        rt, ru, rs = scalars[7], scalars[8], scalars[9]
        hostname, server, script = scalars[1], scalars[2], scalars[3]
        request_count, document_size, memory_peak = scalars[4], scalars[5], scalars[6]
    except KeyError:
        missing = [f for f in _REQUIRED if f not in scalars]
        raise PinbaDecodeError(
            f"missing required field(s) {', '.join(map(str, missing))}"
        ) from None
    if _bad_column([rt, ru, rs]):
        f, v = next((f, scalars[f]) for f in (7, 8, 9) if _bad_float(scalars[f]))
        raise PinbaDecodeError(f"field {f} is not a finite normal float: {v!r}")
    get = reps.get
    hits = get(10, _NONE)
    values = get(11, _NONE)
    counts = get(12, _NONE)
    names = get(13, _NONE)
    tvalues = get(14, _NONE)
    rnames = get(20, _NONE)
    rvalues = get(21, _NONE)
    n_timers = len(hits)
    if not n_timers == len(values) == len(counts):
        raise PinbaDecodeError(
            f"timer arrays differ in length: hit_count {len(hits)}, value {len(values)}, "
            f"tag_count {len(counts)}"
        )
    total = sum(counts) if counts else 0
    if total != len(names) or total != len(tvalues):
        raise PinbaDecodeError(
            f"timer tag counts add up to {total} but there are {len(names)} tag names and "
            f"{len(tvalues)} tag values"
        )
    if len(rnames) != len(rvalues):
        raise PinbaDecodeError(
            f"{len(rnames)} request tag names but {len(rvalues)} request tag values"
        )
    words = list(map(_SURROGATE_DECODE, dictionary))
    n = len(words)
    if (names and max(max(names), max(tvalues)) >= n) or (
        rnames and max(max(rnames), max(rvalues)) >= n
    ):
        for label, lst in (("timer tag", names), ("timer tag", tvalues),
                           ("request tag", rnames), ("request tag", rvalues)):  # fmt: skip
            if lst and max(lst) >= n:
                raise PinbaDecodeError(
                    f"{label} dictionary index {max(lst)} out of range (dictionary has {n} entries)"
                )
    timers: list[tuple[list[tuple[str, str]], float, int, float, float]] = []
    if n_timers:
        if min(hits) == 0:
            raise PinbaDecodeError(f"timer {hits.index(0)} has hit_count 0")
        if _bad_column(values) or min(values) < 0:
            for i, v in enumerate(values):
                if _bad_float(v) or v < 0:
                    raise PinbaDecodeError(
                        f"timer {i} value is not a finite non-negative float: {v!r}"
                    )
        ru_u = get(22, _NONE)
        ru_s = get(23, _NONE)
        for f, lst in ((22, ru_u), (23, ru_s)):
            if lst and _bad_column(lst):
                bad = next(v for v in lst if _bad_float(v))
                raise PinbaDecodeError(f"field {f} holds a non-finite or subnormal float: {bad!r}")
        if len(ru_u) < n_timers:
            ru_u = [*ru_u, *([0.0] * (n_timers - len(ru_u)))]
        if len(ru_s) < n_timers:
            ru_s = [*ru_s, *([0.0] * (n_timers - len(ru_s)))]
        pairs = list(zip(map(words.__getitem__, names), map(words.__getitem__, tvalues)))
        if max(counts) == min(counts):  # the usual case: every timer has as many tags
            c = counts[0]
            groups = [pairs[i : i + c] for i in range(0, total, c)] if c else [[]] * n_timers
        else:
            groups = []
            off = 0
            for c in counts:
                groups.append(pairs[off : off + c])
                off += c
        timers = list(zip(groups, values, hits, ru_u, ru_s))
    else:
        for f in (22, 23):
            lst = get(f, _NONE)
            if lst and _bad_column(lst):
                bad = next(v for v in lst if _bad_float(v))
                raise PinbaDecodeError(f"field {f} holds a non-finite or subnormal float: {bad!r}")
    return Packet(
        _s(hostname),
        _s(server),
        _s(script),
        request_count & UINT32_MAX,
        document_size & UINT32_MAX,
        memory_peak & UINT32_MAX,
        rt,
        ru,
        rs,
        scalars.get(16, 0) & UINT32_MAX,
        scalars.get(17, 0) & UINT32_MAX,
        _s(scalars.get(19, b"")),
        [(words[a], words[b]) for a, b in zip(rnames, rvalues)] if rnames else [],
        timers,
        nested,
    )


class Packet(NamedTuple):
    """A valid packet as plain values (what the collector aggregates without building the
    records): tags as (name, value) pairs, timers as (tag pairs, value, hits, ru_utime,
    ru_stime), nested packets in ``requests``."""

    hostname: str
    server_name: str
    script_name: str
    request_count: int
    document_size: int
    memory_peak: int
    request_time: float
    ru_utime: float
    ru_stime: float
    status: int
    memory_footprint: int
    schema: str
    tags: list[tuple[str, str]]
    timers: list[tuple[list[tuple[str, str]], float, int, float, float]]
    requests: list[Packet]


# -- the protobuf runtime as a faster parser, when it is installed
#
# The official runtime (upb, in C) reads a packet in a few microseconds where the pure-Python
# loop above takes tens. It is only a parser here: what it reads goes through the same _build
# (the servers' rules) as the pure decoder's output. Whenever it reads something the pure decoder
# might judge differently (anything it keeps as unknown fields: unknown fields, known fields
# with an unexpected wire type, groups), or refuses the bytes, the pure decoder decides, so
# results and error messages are the same with or without it.

_RUNTIME: Any = None  # the message class; False once known to be unavailable


def _runtime() -> Any:
    global _RUNTIME
    if _RUNTIME is None:
        try:
            _RUNTIME = _message_class()
        except Exception:  # not installed, or an incompatible version
            _RUNTIME = False
    return _RUNTIME


def _message_class() -> Any:
    from google.protobuf import (  # noqa: PLC0415 - optional, and only when first used
        descriptor_pb2,
        descriptor_pool,
        message_factory,
        unknown_fields,
    )

    f = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="pynba_wire_pinba.proto", package="PynbaWire", syntax="proto2"
    )
    msg = fdp.message_type.add(name="Request")
    required, repeated, optional = f.LABEL_REQUIRED, f.LABEL_REPEATED, f.LABEL_OPTIONAL
    # Strings as bytes: the runtime must not judge UTF-8; _build decodes them.
    fields = [
        (1, f.TYPE_BYTES, required), (2, f.TYPE_BYTES, required), (3, f.TYPE_BYTES, required),
        (4, f.TYPE_UINT32, required), (5, f.TYPE_UINT32, required), (6, f.TYPE_UINT32, required),
        (7, f.TYPE_FLOAT, required), (8, f.TYPE_FLOAT, required), (9, f.TYPE_FLOAT, required),
        (10, f.TYPE_UINT32, repeated), (11, f.TYPE_FLOAT, repeated),
        (12, f.TYPE_UINT32, repeated), (13, f.TYPE_UINT32, repeated),
        (14, f.TYPE_UINT32, repeated), (15, f.TYPE_BYTES, repeated),
        (16, f.TYPE_UINT32, optional), (17, f.TYPE_UINT32, optional),
        (18, f.TYPE_MESSAGE, repeated), (19, f.TYPE_BYTES, optional),
        (20, f.TYPE_UINT32, repeated), (21, f.TYPE_UINT32, repeated),
        (22, f.TYPE_FLOAT, repeated), (23, f.TYPE_FLOAT, repeated),
    ]  # fmt: skip
    for number, ftype, label in fields:
        fd = msg.field.add(name=f"f{number}", number=number, type=ftype, label=label)
        if ftype == f.TYPE_MESSAGE:
            fd.type_name = ".PynbaWire.Request"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("PynbaWire.Request"))
    cls._pynba_unknown = unknown_fields.UnknownFieldSet
    return cls


_REPEATED_FIELDS: Final = (10, 11, 12, 13, 14, 20, 21, 22, 23)
_REPEATED_GETTER: Final = attrgetter(*(f"f{n}" for n in _REPEATED_FIELDS))


def _from_runtime(m: Any, depth: int) -> Packet | None:
    """The packet the runtime read, or None if the pure decoder must decide."""
    if not m.IsInitialized() or len(type(m)._pynba_unknown(m)):
        return None  # a required field missing, or something only the pure decoder judges
    nested = []
    if len(m.f18):
        if depth >= MAX_NESTING:
            return None
        for sub in m.f18:
            packet = _from_runtime(sub, depth + 1)
            if packet is None:
                return None
            nested.append(packet)
    scalars: dict[int, Any] = {
        1: m.f1, 2: m.f2, 3: m.f3, 4: m.f4, 5: m.f5, 6: m.f6, 7: m.f7, 8: m.f8, 9: m.f9,
    }  # fmt: skip
    if m.HasField("f16"):
        scalars[16] = m.f16
    if m.HasField("f17"):
        scalars[17] = m.f17
    if m.HasField("f19"):
        scalars[19] = m.f19
    reps = {
        number: list(values)
        for number, values in zip(_REPEATED_FIELDS, _REPEATED_GETTER(m))
        if len(values)
    }
    return _build(scalars, reps, list(m.f15), nested)


def parse(data: bytes | bytearray | memoryview) -> Packet:
    """The packet as plain values, checked as ``decode`` checks it (the collector's path).
    Raises only :class:`PinbaDecodeError`."""
    buf = bytes(data)
    cls = _RUNTIME if _RUNTIME is not None else _runtime()
    try:
        if cls:
            try:
                m = cls.FromString(buf)
            except Exception:
                m = None  # refused: the pure decoder says why
            if m is not None:
                packet = _from_runtime(m, 0)
                if packet is not None:
                    return packet
        return _decode(buf, 0)
    except PinbaDecodeError:
        raise
    except IndexError:
        raise PinbaDecodeError("truncated packet: a varint runs past the end") from None
    except Exception as exc:  # a bug of ours must still surface as a decode error, not a crash
        raise PinbaDecodeError(f"malformed packet ({type(exc).__name__}: {exc})") from None


def _record(p: Packet) -> PinbaRequest:
    timers = []
    for pairs, value, hits, ru_u, ru_s in p.timers:
        tags = dict(pairs)
        if len(tags) < len(pairs):  # a name given several values
            tags = _multi(pairs)
        timers.append(_timer(tags, value, hits, ru_u, ru_s))
    return PinbaRequest(
        p.hostname, p.server_name, p.script_name,
        request_count=p.request_count, document_size=p.document_size,
        memory_peak=p.memory_peak, request_time=p.request_time, ru_utime=p.ru_utime,
        ru_stime=p.ru_stime, status=p.status, memory_footprint=p.memory_footprint,
        schema=p.schema, tags=dict(p.tags), timers=tuple(timers),
        requests=tuple(_record(sub) for sub in p.requests),
    )  # fmt: skip


def decode(data: bytes | bytearray | memoryview) -> PinbaRequest:
    """The request in one Pinba packet. Raises only :class:`PinbaDecodeError`, never hangs."""
    packet = parse(data)
    try:
        return _record(packet)
    except Exception as exc:
        raise PinbaDecodeError(f"malformed packet ({type(exc).__name__}: {exc})") from None
