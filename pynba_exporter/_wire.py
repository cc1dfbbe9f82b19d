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

``encode(..., packed=True)`` writes the repeated numeric fields packed: same content, about 30%
smaller with many timers, accepted by pinba_engine and pinba2 alike.

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
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

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
    if x != x:
        return "NAN"
    if x == math.inf:
        return "INF"
    if x == -math.inf:
        return "-INF"
    if x == 0.0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    # zend_gcvt switches to exponent form exactly where %G does (exponent < -4 or >= precision),
    # but writes a one-digit mantissa as "1.0" and the exponent without padding.
    s = "%.14G" % x
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
        raise PinbaEncodeError(
            where, f"str() of a {type(value).__name__} failed: {exc!r}"
        ) from exc


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
        if value != value:
            return 0
        value = UINT32_MAX if value > UINT32_MAX else int(value) if value > 0 else 0
    elif not isinstance(value, int):
        try:
            value = int(value)  # type: ignore[call-overload]
        except Exception as exc:
            raise PinbaEncodeError(where, f"expected an integer, got {value!r}") from exc
    return 0 if value < 0 else UINT32_MAX if value > UINT32_MAX else int(value)


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
    if v > 4294967295.0:
        v = 4294967295.0  # the reference client keeps timer seconds in a 32-bit int
    sec = int(v)
    return sec * 1_000_000 + int((v - sec) * 1000000.0)


def _usec_to_float(us: int) -> float:
    # timeval_to_float: (float)tv_sec + (float)tv_usec / 1000000.0, computed in double.
    sec, usec = divmod(us, 1_000_000)
    v = sec + usec / 1000000.0
    return FLT_MAX if v > FLT_MAX else v


# --------------------------------------------------------------------------------------------
# Encoding

# Dictionary entries (key 15, length, bytes) of the strings seen recently. Tag names and values
# repeat from request to request, so most requests find all of theirs here.
_ENTRY_CACHE: dict[str, bytes] = {}
_ENTRY_CACHE_MAX: Final = 4096
_ENTRY_CACHEABLE_LEN: Final = 256


def _entry(s: str) -> bytes:
    e = _ENTRY_CACHE.get(s)
    if e is None:
        raw = _utf8(s)
        e = b"\x7a" + _varint(len(raw)) + raw
        if len(s) <= _ENTRY_CACHEABLE_LEN:
            if len(_ENTRY_CACHE) >= _ENTRY_CACHE_MAX:
                _ENTRY_CACHE.clear()
            _ENTRY_CACHE[s] = e
    return e


_HEAD_FLOATS: Final = struct.Struct("<BfBfBf")
_FLOAT_RUNS: dict[int, struct.Struct] = {}


def _floats_struct(n: int) -> struct.Struct:
    st = _FLOAT_RUNS.get(n)
    if st is None:
        st = struct.Struct(f"<{n}f")
        if n <= 64:
            _FLOAT_RUNS[n] = st
    return st


def _rep_varints(key: bytes, values: list[int], packed: bool) -> bytes:
    n = len(values)
    small = max(values) < 0x80
    if packed:
        payload = bytes(values) if small else b"".join(map(_varint, values))
        return key + _varint(len(payload)) + payload
    if small and len(key) == 1:
        out = bytearray(key * n * 2)
        out[1::2] = values
        return bytes(out)
    return b"".join([key + _varint(v) for v in values])


def _rep_floats(key: bytes, values: list[float], packed: bool) -> bytes:
    n = len(values)
    data = _floats_struct(n).pack(*values)
    if packed:
        return key + _varint(4 * n) + data
    k = len(key)
    step = k + 4
    out = bytearray(key * n + data)  # right size; then interleave key, value, key, value...
    for j in range(k):
        out[j::step] = key[j : j + 1] * n
    for j in range(4):
        out[k + j :: step] = data[j::4]
    return bytes(out)


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

_Pairs = tuple[tuple[str, str], ...]


class _Merged:
    """One timer after merging, times in whole microseconds."""

    __slots__ = ("hits", "pairs", "ru_stime", "ru_utime", "value")

    def __init__(self, pairs: _Pairs, hits: int, value: int, ru_utime: int, ru_stime: int):
        self.pairs = pairs
        self.hits = hits
        self.value = value
        self.ru_utime = ru_utime
        self.ru_stime = ru_stime


def _tag_pairs(tags: object, where: str) -> list[tuple[str, str]]:
    try:
        items = list(tags.items())  # type: ignore[attr-defined]
    except Exception as exc:
        raise PinbaEncodeError(
            where, f"expected a mapping of tag names to values, got {type(tags).__name__}"
        ) from exc
    for j, (name, value) in enumerate(items):
        if type(name) is not str or type(value) is not str:
            items[j] = (_text(name, f"{where} name {name!r}"), _text(value, f"{where}[{name!r}]"))
    items.sort()
    return items


def _merge(timers: Sequence[PinbaTimer]) -> list[_Merged]:
    """Timers with identical tag sets merged into the first of them, in creation order."""
    merged: dict[_Pairs, _Merged] = {}
    for i, t in enumerate(timers):
        try:
            tags, value, hits, ru_u, ru_s = t.tags, t.value, t.hit_count, t.ru_utime, t.ru_stime
        except AttributeError as exc:
            raise PinbaEncodeError(
                f"timers[{i}]", f"expected a PinbaTimer, got {type(t).__name__}"
            ) from exc
        pairs = tuple(_tag_pairs(tags, f"timers[{i}].tags"))
        if not pairs:
            raise PinbaEncodeError(f"timers[{i}].tags", "a timer needs at least one tag")
        us = _usec(value, f"timers[{i}].value")
        u = _usec(ru_u, f"timers[{i}].ru_utime") if ru_u else 0
        s = _usec(ru_s, f"timers[{i}].ru_stime") if ru_s else 0
        hits = _u32(hits, f"timers[{i}].hit_count") or 1
        m = merged.get(pairs)
        if m is None:
            merged[pairs] = _Merged(pairs, hits, us, u, s)
        else:
            m.hits = min(m.hits + hits, UINT32_MAX)
            m.value += us
            m.ru_utime += u
            m.ru_stime += s
    return list(merged.values())


def _head(r: PinbaRequest) -> bytes:
    """Fields 1 to 9."""
    host = _str_bytes(r.hostname, "hostname")
    server = _str_bytes(r.server_name, "server_name")
    script = _str_bytes(r.script_name, "script_name")
    return b"".join(
        (
            b"\x0a",
            _varint(len(host)),
            host,
            b"\x12",
            _varint(len(server)),
            server,
            b"\x1a",
            _varint(len(script)),
            script,
            b"\x20",
            _varint(_u32(r.request_count, "request_count")),
            b"\x28",
            _varint(_u32(r.document_size, "document_size")),
            b"\x30",
            _varint(_u32(r.memory_peak, "memory_peak")),
            _HEAD_FLOATS.pack(
                0x3D,
                _seconds(r.request_time, "request_time"),
                0x45,
                _seconds(r.ru_utime, "ru_utime"),
                0x4D,
                _seconds(r.ru_stime, "ru_stime"),
            ),
        )
    )


def _assemble(
    r: PinbaRequest,
    head: bytes,
    request_tags: list[tuple[str, str]],
    timers: list[_Merged],
    packed: bool,
) -> bytes:
    """The packet, from its parts: ``head`` is fields 1-9, the rest comes from ``r``."""
    index: dict[str, int] = {}
    entries: list[bytes] = []
    p = 1 if packed else 0

    def idx(s: str) -> int:
        i = index.get(s)
        if i is None:
            i = index[s] = len(entries)
            entries.append(_entry(s))
        return i

    parts = [head]
    tag_names: list[int] = []
    tag_values: list[int] = []
    for name, value in request_tags:
        tag_values.append(idx(value))  # the reference client adds the value first
        tag_names.append(idx(name))
    if timers:
        counts: list[int] = []
        names: list[int] = []
        values: list[int] = []
        for m in timers:
            counts.append(len(m.pairs))
            for name, value in m.pairs:
                names.append(idx(name))
                values.append(idx(value))
        parts.append(_rep_varints(_K10[p], [m.hits for m in timers], packed))
        parts.append(_rep_floats(_K11[p], [_usec_to_float(m.value) for m in timers], packed))
        parts.append(_rep_varints(_K12[p], counts, packed))
        parts.append(_rep_varints(_K13[p], names, packed))
        parts.append(_rep_varints(_K14[p], values, packed))
    parts.extend(entries)
    parts.append(b"\x80\x01")
    parts.append(_varint(_u32(r.status, "status")))
    parts.append(b"\x88\x01")
    parts.append(_varint(_u32(r.memory_footprint, "memory_footprint")))
    if r.requests:
        nested = r.requests
        if isinstance(nested, (str, bytes, Mapping)) or not isinstance(nested, Iterable):
            raise PinbaEncodeError("requests", "expected a sequence of PinbaRequest")
        for i, sub in enumerate(nested):
            if not isinstance(sub, PinbaRequest):
                raise PinbaEncodeError(
                    f"requests[{i}]", f"expected a PinbaRequest, got {type(sub).__name__}"
                )
            data = encode(sub, packed=packed)
            parts.append(b"\x92\x01" + _varint(len(data)))
            parts.append(data)
    if r.schema:
        schema = _str_bytes(r.schema, "schema")
        parts.append(b"\x9a\x01" + _varint(len(schema)))
        parts.append(schema)
    if tag_names:
        parts.append(_rep_varints(_K20[p], tag_names, packed))
        parts.append(_rep_varints(_K21[p], tag_values, packed))
    if timers:
        parts.append(_rep_floats(_K22[p], [_usec_to_float(m.ru_utime) for m in timers], packed))
        parts.append(_rep_floats(_K23[p], [_usec_to_float(m.ru_stime) for m in timers], packed))
    return b"".join(parts)


def _timer_list(r: PinbaRequest) -> Sequence[PinbaTimer]:
    timers = r.timers
    if isinstance(timers, (str, bytes, Mapping)) or not isinstance(timers, Iterable):
        raise PinbaEncodeError("timers", f"expected a sequence of PinbaTimer, got {timers!r}")
    return timers


def encode(request: PinbaRequest, *, packed: bool = False) -> bytes:
    """The Pinba packet for ``request``: byte for byte the reference client's when not ``packed``.

    Raises :class:`PinbaEncodeError` (a ``ValueError`` and a ``TypeError``) naming the field when
    the request holds something that has no text form or is not of the expected kind.
    """
    if not isinstance(request, PinbaRequest):
        raise PinbaEncodeError("request", f"expected a PinbaRequest, got {type(request).__name__}")
    head = _head(request)
    tags = request.tags
    request_tags = _tag_pairs(tags, "tags") if tags else []
    timers = request.timers
    merged = _merge(_timer_list(request)) if timers else []
    return _assemble(request, head, request_tags, merged, packed)


# --------------------------------------------------------------------------------------------
# Decoding

_F32 = struct.Struct("<f")
_INF = math.inf

# field number -> expected wire type, for the fields of the schema
_SCALAR_WIRE: Final = {1: 2, 2: 2, 3: 2, 4: 0, 5: 0, 6: 0, 7: 5, 8: 5, 9: 5, 16: 0, 17: 0, 19: 2}
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
    return v != v or v == _INF or v == -_INF or (v != 0.0 and -FLT_MIN_NORMAL < v < FLT_MIN_NORMAL)


def _decode(buf: bytes, depth: int) -> PinbaRequest:
    end = len(buf)
    pos = 0
    scalars: dict[int, Any] = {}
    reps: dict[int, list[Any]] = {}
    dictionary: list[bytes] = []
    nested: list[PinbaRequest] = []
    while pos < end:
        b = buf[pos]
        if b < 0x80:
            key = b
            pos += 1
        else:
            key, pos = _read_varint(buf, pos)
        field = key >> 3
        wire = key & 7
        if wire == 0:
            b = buf[pos]
            if b < 0x80:
                val: Any = b
                pos += 1
            else:
                val, pos = _read_varint(buf, pos)
        elif wire == 5:
            if pos + 4 > end:
                raise PinbaDecodeError(f"truncated: field {field} needs 4 bytes at offset {pos}")
            val = _F32.unpack_from(buf, pos)[0]
            pos += 4
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > end:
                raise PinbaDecodeError(
                    f"truncated: field {field} declares {n} bytes, {end - pos} left"
                )
            val = buf[pos : pos + n]
            pos += n
        elif wire == 1:
            if pos + 8 > end:
                raise PinbaDecodeError(f"truncated: field {field} needs 8 bytes at offset {pos}")
            val = None
            pos += 8
        else:
            raise PinbaDecodeError(f"unsupported wire type {wire} for field {field}")
        if field == 0:
            raise PinbaDecodeError("field number 0 is invalid")
        if field == 15:
            if wire != 2:
                raise PinbaDecodeError(f"field 15 (dictionary) has wire type {wire}")
            dictionary.append(val)
        elif field in _REPEATED_VARINT:
            lst = reps.setdefault(field, [])
            if wire == 0:
                lst.append(val & UINT32_MAX)
            elif wire == 2:
                p, e = 0, len(val)
                while p < e:
                    x, p = _read_varint(val, p)
                    lst.append(x & UINT32_MAX)
            else:
                raise PinbaDecodeError(f"field {field} has wire type {wire}")
        elif field in _REPEATED_FLOAT:
            lst = reps.setdefault(field, [])
            if wire == 5:
                lst.append(val)
            elif wire == 2:
                if len(val) % 4:
                    raise PinbaDecodeError(f"packed field {field} length {len(val)} not a multiple of 4")
                lst.extend(struct.unpack(f"<{len(val) // 4}f", val))
            else:
                raise PinbaDecodeError(f"field {field} has wire type {wire}")
        elif field == 18:
            if wire != 2:
                raise PinbaDecodeError(f"field 18 (requests) has wire type {wire}")
            if depth >= MAX_NESTING:
                raise PinbaDecodeError(f"nested requests deeper than {MAX_NESTING} levels")
            try:
                nested.append(_decode(bytes(val), depth + 1))
            except PinbaDecodeError as exc:
                raise PinbaDecodeError(f"nested request {len(nested)}: {exc.reason}") from None
        else:
            expected = _SCALAR_WIRE.get(field)
            if expected is None:
                continue  # unknown field: skipped, as protobuf parsers do
            if wire != expected:
                raise PinbaDecodeError(f"field {field} has wire type {wire}, expected {expected}")
            scalars[field] = val
    return _build(scalars, reps, dictionary, nested)


def _s(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _build(
    scalars: dict[int, Any],
    reps: dict[int, list[Any]],
    dictionary: list[bytes],
    nested: list[PinbaRequest],
) -> PinbaRequest:
    missing = [f for f in _REQUIRED if f not in scalars]
    if missing:
        raise PinbaDecodeError(f"missing required field(s) {', '.join(map(str, missing))}")
    for f in (7, 8, 9):
        if _bad_float(scalars[f]):
            raise PinbaDecodeError(f"field {f} is not a finite normal float: {scalars[f]!r}")
    hits = reps.get(10, [])
    values = reps.get(11, [])
    counts = reps.get(12, [])
    names = reps.get(13, [])
    tvalues = reps.get(14, [])
    if not len(hits) == len(values) == len(counts):
        raise PinbaDecodeError(
            f"timer arrays differ in length: hit_count {len(hits)}, value {len(values)}, "
            f"tag_count {len(counts)}"
        )
    total = sum(counts)
    if total != len(names) or total != len(tvalues):
        raise PinbaDecodeError(
            f"timer tag counts add up to {total} but there are {len(names)} tag names and "
            f"{len(tvalues)} tag values"
        )
    rnames = reps.get(20, [])
    rvalues = reps.get(21, [])
    if len(rnames) != len(rvalues):
        raise PinbaDecodeError(
            f"{len(rnames)} request tag names but {len(rvalues)} request tag values"
        )
    words = [_s(w) for w in dictionary]
    n = len(words)
    for label, lst in (("timer tag", names), ("timer tag", tvalues), ("request tag", rnames),
                       ("request tag", rvalues)):
        if lst and max(lst) >= n:
            raise PinbaDecodeError(
                f"{label} dictionary index {max(lst)} out of range (dictionary has {n} entries)"
            )
    if hits and min(hits) == 0:
        raise PinbaDecodeError(f"timer {hits.index(0)} has hit_count 0")
    for i, v in enumerate(values):
        if _bad_float(v) or v < 0:
            raise PinbaDecodeError(f"timer {i} value is not a finite non-negative float: {v!r}")
    ru_u = reps.get(22, [])
    ru_s = reps.get(23, [])
    for f, lst in ((22, ru_u), (23, ru_s)):
        for v in lst:
            if _bad_float(v):
                raise PinbaDecodeError(f"field {f} holds a non-finite or subnormal float: {v!r}")
    timers = []
    off = 0
    nu, ns = len(ru_u), len(ru_s)
    for i in range(len(hits)):
        c = counts[i]
        tags = {words[names[off + j]]: words[tvalues[off + j]] for j in range(c)}
        off += c
        timers.append(
            PinbaTimer(
                tags,
                values[i],
                hits[i],
                ru_u[i] if i < nu else 0.0,
                ru_s[i] if i < ns else 0.0,
            )
        )
    return PinbaRequest(
        _s(scalars[1]),
        _s(scalars[2]),
        _s(scalars[3]),
        request_count=scalars[4] & UINT32_MAX,
        document_size=scalars[5] & UINT32_MAX,
        memory_peak=scalars[6] & UINT32_MAX,
        request_time=scalars[7],
        ru_utime=scalars[8],
        ru_stime=scalars[9],
        status=scalars.get(16, 0) & UINT32_MAX,
        memory_footprint=scalars.get(17, 0) & UINT32_MAX,
        schema=_s(scalars.get(19, b"")),
        tags={words[a]: words[b] for a, b in zip(rnames, rvalues)},
        timers=tuple(timers),
        requests=tuple(nested),
    )


def decode(data: bytes | bytearray | memoryview) -> PinbaRequest:
    """The request in one Pinba packet. Raises only :class:`PinbaDecodeError`, never hangs."""
    try:
        return _decode(bytes(data), 0)
    except PinbaDecodeError:
        raise
    except IndexError:
        raise PinbaDecodeError("truncated packet: a varint runs past the end") from None
    except Exception as exc:  # a bug of ours must still surface as a decode error, not a crash
        raise PinbaDecodeError(f"malformed packet ({type(exc).__name__}: {exc})") from None
