"""The pure-Python decoder: bytes -> :class:`Packet`, with exactly the servers' rejection rules."""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from math import isfinite
from operator import methodcaller
from typing import Any, Final, NamedTuple

from pynba_exporter._model import PinbaTimer
from pynba_exporter.wire._errors import (
    FLT_MIN_NORMAL,
    INDEX_RANGE,
    INVALID_FLOAT,
    MALFORMED,
    MAX_NESTING,
    MISSING_FIELD,
    NESTED,
    REQUEST_TAG_COUNTS,
    TIMER_ARRAYS,
    TIMER_TAG_COUNTS,
    TRUNCATED,
    UINT32_MAX,
    WIRE_TYPE,
    ZERO_HITS,
    PinbaDecodeError,
)

__all__ = ["Packet", "decode_packet"]

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
            raise PinbaDecodeError(f"varint longer than 10 bytes at offset {pos}", MALFORMED)


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


def decode_packet(buf: bytes, depth: int) -> Packet:
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
                    f"truncated: field {field} declares {n} bytes, {end - pos} left", TRUNCATED
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
                        f"packed field {field} length {n} is not a multiple of 4", MALFORMED
                    )
                reps.setdefault(field, []).extend(struct.unpack(f"<{n // 4}f", val))
            else:  # nested request
                if depth >= MAX_NESTING:
                    raise PinbaDecodeError(
                        f"nested requests deeper than {MAX_NESTING} levels", NESTED
                    )
                try:
                    nested.append(decode_packet(val, depth + 1))
                except PinbaDecodeError as exc:
                    raise PinbaDecodeError(
                        f"nested request {len(nested)}: {exc.reason}", NESTED
                    ) from None
        elif code in (_SCALAR_FLOAT, _REP_FLOAT):
            if pos + 4 > end:
                raise PinbaDecodeError(
                    f"truncated: field {field} needs 4 bytes at offset {pos}", TRUNCATED
                )
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
        raise PinbaDecodeError("field number 0 is invalid", MALFORMED)
    if field in _KNOWN_FIELDS:
        raise PinbaDecodeError(f"field {field} has unexpected wire type {wire}", WIRE_TYPE)
    if wire == 0:
        return _read_varint(buf, pos)[1]
    if wire == 1:
        size = 8
    elif wire == 5:
        size = 4
    elif wire == 2:
        size, pos = _read_varint(buf, pos)
    else:
        raise PinbaDecodeError(f"unsupported wire type {wire} for field {field}", WIRE_TYPE)
    if pos + size > len(buf):
        raise PinbaDecodeError(
            f"truncated: field {field} needs {size} bytes at offset {pos}", TRUNCATED
        )
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


def _multi(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
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
            f"missing required field(s) {', '.join(map(str, missing))}", MISSING_FIELD
        ) from None
    # _bad_column on the three times, inlined (it runs for every packet): float32 sums
    # cannot overflow a double, so a non-finite sum means a non-finite value.
    if not isfinite(rt + ru + rs) or (
        min(abs(rt) or 1.0, abs(ru) or 1.0, abs(rs) or 1.0) < FLT_MIN_NORMAL
    ):
        f, v = next((f, scalars[f]) for f in (7, 8, 9) if _bad_float(scalars[f]))
        raise PinbaDecodeError(f"field {f} is not a finite normal float: {v!r}", INVALID_FLOAT)
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
            f"tag_count {len(counts)}",
            TIMER_ARRAYS,
        )
    total = sum(counts) if counts else 0
    if total != len(names) or total != len(tvalues):
        raise PinbaDecodeError(
            f"timer tag counts add up to {total} but there are {len(names)} tag names and "
            f"{len(tvalues)} tag values",
            TIMER_TAG_COUNTS,
        )
    if len(rnames) != len(rvalues):
        raise PinbaDecodeError(
            f"{len(rnames)} request tag names but {len(rvalues)} request tag values",
            REQUEST_TAG_COUNTS,
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
                    f"{label} dictionary index {max(lst)} out of range "
                    f"(dictionary has {n} entries)",
                    INDEX_RANGE,
                )
    timers: list[tuple[tuple[tuple[str, str], ...], float, int, float, float]] = []
    if n_timers:
        if min(hits) == 0:
            raise PinbaDecodeError(f"timer {hits.index(0)} has hit_count 0", ZERO_HITS)
        ru_u = get(22, _NONE)
        ru_s = get(23, _NONE)
        # The three float columns checked in one pass; which one failed first, only then.
        if min(values) < 0 or _bad_column([*values, *ru_u, *ru_s]):
            for i, v in enumerate(values):
                if _bad_float(v) or v < 0:
                    raise PinbaDecodeError(
                        f"timer {i} value is not a finite non-negative float: {v!r}", INVALID_FLOAT
                    )
            for f, lst in ((22, ru_u), (23, ru_s)):
                if lst and _bad_column(lst):
                    bad = next(v for v in lst if _bad_float(v))
                    raise PinbaDecodeError(
                        f"field {f} holds a non-finite or subnormal float: {bad!r}", INVALID_FLOAT
                    )
        if len(ru_u) < n_timers:
            ru_u = [*ru_u, *([0.0] * (n_timers - len(ru_u)))]
        if len(ru_s) < n_timers:
            ru_s = [*ru_s, *([0.0] * (n_timers - len(ru_s)))]
        # A tuple: its slices are the timers' tag tuples, as they are kept.
        pairs = tuple(zip(map(words.__getitem__, names), map(words.__getitem__, tvalues)))
        groups: list[tuple[tuple[str, str], ...]]
        if max(counts) == min(counts):  # the usual case: every timer has as many tags
            c = counts[0]
            # Timer k's tags are pairs[k * c : (k + 1) * c]: zip of c strided slices (in C).
            groups = list(zip(*[pairs[k::c] for k in range(c)])) if c else [()] * n_timers
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
                raise PinbaDecodeError(
                    f"field {f} holds a non-finite or subnormal float: {bad!r}", INVALID_FLOAT
                )
    return Packet(
        hostname.decode("utf-8", "surrogateescape"),
        server.decode("utf-8", "surrogateescape"),
        script.decode("utf-8", "surrogateescape"),
        request_count & UINT32_MAX, document_size & UINT32_MAX, memory_peak & UINT32_MAX,
        rt, ru, rs,
        scalars.get(16, 0) & UINT32_MAX, scalars.get(17, 0) & UINT32_MAX,
        _s(scalars.get(19, b"")),
        list(zip(map(words.__getitem__, rnames), map(words.__getitem__, rvalues)))
        if rnames else [],
        timers,
        nested,
    )  # fmt: skip


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
    timers: list[tuple[tuple[tuple[str, str], ...], float, int, float, float]]
    requests: list[Packet]
