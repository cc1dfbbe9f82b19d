"""``encode``: a request -> the bytes of one packet, as the reference client builds them.

The request may be a :class:`PinbaRequest` or anything of the :class:`RequestLike` shape (the span
model's finished requests are encoded as they are, without a copy).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from operator import truediv
from typing import Any, Final

from pynba_exporter._cache import BoundedCache
from pynba_exporter._model import PinbaRequest, RequestLike
from pynba_exporter.wire._errors import FLT_MAX, FLT_MIN_NORMAL, UINT32_MAX, PinbaEncodeError
from pynba_exporter.wire._text import (
    SMALL_VARINTS,
    c_string,
    php_text,
    seconds,
    str_bytes,
    u32,
    usec,
    utf8,
    varint,
)

__all__ = ["encode"]


# Encoding
#
# encode() runs on every request of the host app. An app sends the same few shapes of request
# over and over: the same names, the same request tag names, the same timer tag sets in the same
# order. Everything a request's shape decides (the dictionary and every index field: 12, 13, 14,
# 15, 20, 21, plus how its timers merge) is its "layout": computed once by the careful path,
# which checks and converts every tag, and kept in the one layout cache; only the numbers
# (fields 4-11, 16-17, 22-23) are written anew, each value checked where it is written.
#
# A layout is found by (packed, the request tags' items, the timers' key). The timers' key is
# the request's ``timer_shape`` when it has one (the span model's interned timer specs: a tuple
# of objects each standing for one fixed tag set, hashed by identity), else their tags' items.
# A layout is kept only when its key says what the text is: every tag name and value a plain
# str (False == 0, but "" != "0"), or timers named by their specs.
#
# Pieces of packets that repeat between requests are kept ready in a second cache: the names
# (fields 1-3) and the schema (19) by their text (a process has a few hundred names at most: the
# cardinality guard sees to that), and the varints of large numbers by their value (a status,
# the memory sizes, which the span model reads at page granularity and at most every 10 ms): a
# lookup instead of building them, a third of what a packet without timers costs.

_CACHEABLE_LEN: Final = 256
_US: Final = 1000000

_Names = tuple[bytes, bytes]
# (hostname, server_name, script_name, schema) -> (fields 1 to 3, field 19); an int -> its varint.
_PIECES: BoundedCache[Any, Any] = BoundedCache(4096)


def _varint(v: int) -> bytes:
    """varint(v), for the numbers of a packet (through the pieces cache above 127)."""
    if v < 0x80:
        return SMALL_VARINTS[v]
    data: bytes | None = _PIECES.get(v)
    return data if data is not None else _PIECES.put(v, varint(v))


def _names(r: RequestLike) -> _Names:
    """Fields 1 to 3, and field 19."""
    key = (r.hostname, r.server_name, r.script_name, r.schema)
    try:
        cached: _Names | None = _PIECES.get(key)
    except TypeError:  # unhashable: str_bytes below says what is wrong
        cached = None
    if cached is not None:
        return cached
    host = c_string(str_bytes(r.hostname, "hostname"))
    server = c_string(str_bytes(r.server_name, "server_name"))
    script = c_string(str_bytes(r.script_name, "script_name"))
    names = b"".join(
        (b"\x0a", varint(len(host)), host, b"\x12", varint(len(server)), server,
         b"\x1a", varint(len(script)), script)
    )  # fmt: skip
    schema = b""
    raw = c_string(str_bytes(r.schema, "schema")) if r.schema else b""
    if raw:  # (only a schema that is not empty as a C string is written)
        schema = b"\x9a\x01" + varint(len(raw)) + raw
    out = (names, schema)
    if len(names) + len(schema) <= 4 * _CACHEABLE_LEN and all(type(x) is str for x in key):
        _PIECES.put(key, out)
    return out


_HEAD_FLOATS: Final = struct.Struct("<BfBfBf")
_U32X5: Final = struct.Struct("<5I")


def _rep_varints(key: bytes, values: list[int], packed: bool) -> bytes:
    """A repeated uint32 field, unpacked (one key per value) or packed."""
    small = max(values) < 0x80
    if packed:
        payload = bytes(values) if small else b"".join(map(varint, values))
        size = varint(len(payload))
        # Packed costs a length and saves a key per value after the first: pack only when
        # that makes the field smaller (never for one value).
        if len(size) < (len(values) - 1) * len(key):
            return _PACKED_KEY[key] + size + payload
        key = _UNPACKED_KEY[key]
    if small and len(key) == 1:
        out = [key[0]] * (2 * len(values))
        out[1::2] = values
        return bytes(out)
    return b"".join([key + varint(v) for v in values])


def _rep_floats(key: bytes, values: list[float], packed: bool) -> bytes:
    """A repeated float field, unpacked (one key per value) or packed."""
    n = len(values)
    if packed:
        size = varint(4 * n)
        if len(size) < (n - 1) * len(key):
            return _PACKED_KEY[key] + size + struct.pack(f"<{n}f", *values)
        key = _UNPACKED_KEY[key]
    k = len(key)
    args: list[Any] = [*key, 0.0] * n
    args[k :: k + 1] = values
    return struct.pack("<" + ("B" * k + "f") * n, *args)


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
        "cpu_zero",
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
        self.cpu_zero = b""  # fields 22 and 23 when every value is 0
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
    # The dictionary holds the whole strings ("a\0b" and "a\0c" are two entries, and two timers
    # they tell apart stay apart) and writes each as a C string, as the reference client does.
    raw = c_string(utf8(s))
    return b"\x7a" + varint(len(raw)) + raw


# (packed, request tag items, timer_shape or the timers' tag items) -> _Layout
_LAYOUTS: BoundedCache[tuple[bool, tuple[Any, ...], tuple[Any, ...]], _Layout]
_LAYOUTS = BoundedCache(4096)
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
            text = php_text(name, f"{where} name {name!r}")
            pairs.extend((text, php_text(v, f"{where}[{name!r}]")) for v in value)
        else:
            pairs.append(
                (php_text(name, f"{where} name {name!r}"), php_text(value, f"{where}[{name!r}]"))
            )
    items = pairs
    # By UTF-8 bytes, as the reference client's strcmp(); code point order is the same except
    # for surrogate-escaped bytes.
    items.sort(key=lambda pair: (utf8(pair[0]), utf8(pair[1])))
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
        hits = u32(t.hit_count, f"timers[{i}].hit_count") or 1
        us = usec(t.value, f"timers[{i}].value")
        u = usec(t.ru_utime, f"timers[{i}].ru_utime")
        s = usec(t.ru_stime, f"timers[{i}].ru_stime")
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


def _f32s(usecs: list[int]) -> list[float]:
    # timeval_to_float(): (float)tv_sec + (float)tv_usec / 1000000.0, computed in double. Below
    # one second that is exactly us / 1e6.
    n = len(usecs)
    if not any(usecs):
        return [0.0] * n
    if max(usecs) < _US:
        return list(map(truediv, usecs, repeat(1000000.0, n)))
    return [us // _US + (us % _US) / 1000000.0 for us in usecs]


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
        layout.cpu_zero = st.pack(*layout.cpu_args)
    if not any(ru_utime) and not any(ru_stime):
        # No CPU measured (timers with timer_rusage off, the default of OTel child spans):
        # the fields as they always are then, without packing each zero again.
        return layout.cpu_zero
    args = layout.cpu_args.copy()
    args[2 : 3 * n : 3] = ru_utime
    args[3 * n + 2 :: 3] = ru_stime
    return st.pack(*args)


def _assemble(  # noqa: PLR0917 - internal, called from two places with every column
    r: RequestLike,
    names: _Names,
    layout: _Layout,
    hits: list[int],
    values: list[float],
    ru_utime: list[float],
    ru_stime: list[float],
    packed: bool,
) -> bytes:
    """The packet, in field order: 1-3 ``names``, 4-9 from r, 10-11 the timers' numbers, 12-21
    (see _packet), 22-23 the timers' CPU."""
    p = 1 if packed else 0
    timer_fields = cpu_fields = b""
    if layout.n:
        if packed or max(hits) >= 0x80:
            timer_fields = _rep_varints(_K10[p], hits, packed) + _rep_floats(
                _K11[p], values, packed
            )
        else:
            timer_fields = _timer_fields(layout, hits, values)
        if packed:
            cpu_fields = _rep_floats(_K22[1], ru_utime, True) + _rep_floats(_K23[1], ru_stime, True)
        else:
            cpu_fields = _cpu_fields(layout, ru_utime, ru_stime)
    return _packet(
        r, names, timer_fields, layout.dictionary, layout.request_tags, cpu_fields, packed
    )


def _packet(  # noqa: PLR0917 - internal, every part of a packet in field order
    r: RequestLike,
    names: _Names,
    timer_fields: bytes,
    dictionary: bytes,
    request_tags: bytes,
    cpu_fields: bytes,
    packed: bool,
) -> bytes:
    """The packet, in field order: 1-3 ``names[0]``; 4-9 from r; 10-11 ``timer_fields``; 12-15
    the layout's ``dictionary`` and timer tags; 16-17 from r; 18 r's nested requests; 19
    ``names[1]``; 20-21 the layout's ``request_tags``; 22-23 ``cpu_fields``. Every request's
    bytes are joined here, in one call."""
    rc, ds, mp = r.request_count, r.document_size, r.memory_peak
    st, fp = r.status, r.memory_footprint
    try:
        # One C call checks the five integers (int, or bool, in 0..2**32-1) instead of five
        # type and range tests; anything else is made one by u32 as the careful path does.
        _U32X5.pack(rc, ds, mp, st, fp)
    except struct.error:
        rc, ds, mp = u32(rc, "request_count"), u32(ds, "document_size"), u32(mp, "memory_peak")
        st, fp = u32(st, "status"), u32(fp, "memory_footprint")
    rt, ru, rs = r.request_time, r.ru_utime, r.ru_stime
    try:
        # Numbers float32 holds as normal numbers, or 0.0 (a short request's system time),
        # written as they are; -0.0 + 0.0 is 0.0, as seconds() makes it.
        times = (
            _HEAD_FLOATS.pack(0x3D, rt + 0.0, 0x45, ru + 0.0, 0x4D, rs + 0.0)
            if (FLT_MIN_NORMAL <= rt <= FLT_MAX or rt == 0.0)
            and (FLT_MIN_NORMAL <= ru <= FLT_MAX or ru == 0.0)
            and (FLT_MIN_NORMAL <= rs <= FLT_MAX or rs == 0.0)
            else None
        )
    except TypeError:  # not floats: seconds() converts them, or says what is wrong
        times = None
    if times is None:
        times = _HEAD_FLOATS.pack(
            0x3D, seconds(rt, "request_time"), 0x45, seconds(ru, "ru_utime"),
            0x4D, seconds(rs, "ru_stime"),
        )  # fmt: skip
    # (the varints inline: a lookup, not a call, for the two memory sizes of every packet)
    return b"".join(
        (names[0],
         b"\x20\x00\x28" if rc == 0 else b"\x20" + _varint(rc) + b"\x28",
         SMALL_VARINTS[ds] if ds < 0x80 else _PIECES.get(ds) or _varint(ds),
         b"\x30", SMALL_VARINTS[mp] if mp < 0x80 else _PIECES.get(mp) or _varint(mp),
         times,
         timer_fields,
         dictionary,
         b"\x80\x01", SMALL_VARINTS[st] if st < 0x80 else _PIECES.get(st) or _varint(st),
         b"\x88\x01", SMALL_VARINTS[fp] if fp < 0x80 else _PIECES.get(fp) or _varint(fp),
         b"".join(_nested(r.requests, packed)) if r.requests else b"",
         names[1],
         request_tags,
         cpu_fields)
    )  # fmt: skip


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
        parts.append(b"\x92\x01" + varint(len(data)))
        parts.append(data)
    return parts


def _columns(timers: Sequence[Any], layout: _Layout) -> tuple[list[Any], ...]:
    """The timers' hit counts and their three times in seconds as the reference client writes
    them (whole microseconds, see usec, then timeval_to_float()), merged by the layout's
    plan."""
    if layout.plan is None:
        hits: list[int] = []
        values: list[float] = []
        user: list[float] = []
        system: list[float] = []
        for t in timers:
            h, v, u, s = t.hit_count, t.value, t.ru_utime, t.ru_stime
            if not (0 < h <= UINT32_MAX and 0.0 <= v < 1.0 and 0.0 <= u < 1.0 and 0.0 <= s < 1.0):
                break  # (a time of a second or more, or anything odd: the general way below)
            hits.append(h)
            # The reference's (long)(v * 1e6) (see usec), and below one second its
            # timeval_to_float() is us / 1e6: for 0 <= x < 2**52, x // 1.0 is int()'s truncation
            # without a call (+ 0.0 makes -0.0 a 0.0): this loop costs half as much as with
            # int(), and runs for nearly every timer.
            values.append((v * 1000000.0 + 0.0) // 1.0 / 1000000.0)
            user.append((u * 1000000.0 + 0.0) // 1.0 / 1000000.0)
            system.append((s * 1000000.0 + 0.0) // 1.0 / 1000000.0)
        else:
            return hits, values, user, system
    return _columns_in_usec(timers, layout)


def _columns_in_usec(timers: Sequence[Any], layout: _Layout) -> tuple[list[Any], ...]:
    """_columns for any values: each checked and converted (usec), then merged."""
    n = layout.n
    plan = layout.plan or range(n)
    hits, values, user, system = [0] * n, [0] * n, [0] * n, [0] * n
    for i, (slot, t) in enumerate(zip(plan, timers)):
        hits[slot] += u32(t.hit_count, f"timers[{i}].hit_count") or 1
        values[slot] += usec(t.value, f"timers[{i}].value")
        user[slot] += usec(t.ru_utime, f"timers[{i}].ru_utime")
        system[slot] += usec(t.ru_stime, f"timers[{i}].ru_stime")
    hits = [min(h, UINT32_MAX) for h in hits]
    return hits, _f32s(values), _f32s(user), _f32s(system)


def _layout_key(r: RequestLike, packed: bool) -> tuple[bool, tuple[Any, ...], tuple[Any, ...]]:
    """What finds r's layout: its request tags' items and its timers' key."""
    tags, timers = r.tags, r.timers
    raw_tags: tuple[Any, ...] = tuple(_DICT_ITEMS(tags)) if tags else ()  # type: ignore[arg-type]  # TypeError unless a dict
    return packed, raw_tags, _timers_key(r, timers) if timers else ()


def _timers_key(r: RequestLike, timers: Sequence[Any]) -> tuple[Any, ...]:
    """The timers' part of the layout key: r's ``timer_shape``, else their tags' items."""
    shape: tuple[Any, ...] | None = getattr(r, "timer_shape", None)
    if shape is None:
        shape = tuple([tuple(t.tags.items()) for t in timers])
    return shape


def _encode_careful(r: RequestLike, names: _Names, packed: bool) -> bytes:
    """Every value checked and converted; the layout computed, and kept when its key says
    what its text is."""
    tags, timers = r.tags, r.timers
    request_tags = _tag_pairs(tags, "tags") if tags else []
    m = _merge(timers) if timers else _Merged()
    layout = _make_layout(request_tags, m.keys, m.plan, packed)
    if not tags or (type(tags) is dict and _all_str(tags.items())):
        shape = getattr(r, "timer_shape", None) if timers else None
        if shape is not None or m.cacheable:
            key = _layout_key(r, packed)
            if shape is not None or sum(map(len, key[2])) <= 1024:
                _LAYOUTS.put(key, layout)
    return _assemble(
        r, names, layout, m.hits, _f32s(m.values), _f32s(m.ru_utime), _f32s(m.ru_stime), packed
    )


def encode(request: RequestLike, *, packed: bool = False) -> bytes:
    """The Pinba packet for ``request``: byte for byte the reference client's when not ``packed``.

    Raises :class:`PinbaEncodeError` (a ``ValueError`` and a ``TypeError``) naming the field when
    the request holds something that has no text form or is not of the expected kind.
    A request may also have ``timer_shape``: a tuple of objects, one per timer, each standing
    for one tag set that never changes (the span model's sealed requests have it), by which the
    layout of its timers is found without hashing their tags.
    """
    try:
        r = request
        # The names (fields 1-3, 19) and the layout, each found by one lookup (see above).
        names = _PIECES.get((r.hostname, r.server_name, r.script_name, r.schema))
        layout = _LAYOUTS.get(_layout_key(r, packed))  # (TypeError for tags not a dict)
        if names is not None and layout is not None and not r.requests:
            if not layout.n:
                return _packet(r, names, b"", layout.dictionary, layout.request_tags, b"", packed)
            # The numbers: as the span model worked them out when it sealed the request (its
            # lines are one per tag set: nothing to merge), else read from the timers.
            columns = getattr(r, "timer_columns", None) if layout.plan is None else None
            hits, values, user, system = columns or _columns(r.timers, layout)
            return _assemble(r, names, layout, hits, values, user, system, packed)
    except Exception:  # anything unusual in the shape or the numbers: the careful path decides
        pass
    try:
        names = _names(request)
    except AttributeError:
        raise PinbaEncodeError(
            "request", f"expected a PinbaRequest, got {type(request).__name__}"
        ) from None
    return _encode_careful(request, names, packed)
