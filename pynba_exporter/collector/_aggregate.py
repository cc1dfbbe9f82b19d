"""The collector's memory: requests of the rolling window, and Pinba's reports kept up to date.

Each request received is kept as a compact :class:`Record` for ``window`` seconds (900 by
default, as pinba_engine), within a budget in bytes (``max_bytes``, 256 MiB by default): each
record carries an estimate of what it costs (its objects, the strings it does not share, its
share of the reports), and the oldest records leave first when the budget is exceeded, counted
by reason. Strings are shared through a dictionary bounded in bytes (``max_dictionary_bytes``):
a script name received a million times is held once.

Reports are maintained as requests arrive and leave, not recomputed from every record: each
request adds to one group keyed by (hostname, server_name, script_name, status, schema) and to
one group per configured timer tag set (``timer_tags``) and request tag set (``request_tags``);
a report is then a fold of at most ``4 * max_keys`` groups, and percentiles sort only the
values of the window. Keys past that many distinct values are summed in one ``<other>`` group
(counted), so a flood of distinct script names cannot grow the work of a report without limit.
Reports asked for keys that are not configured are computed from the window's records.

pinba2's rules where it defines them: a timer tag name given twice keeps its first value;
timer percentiles weigh each timer's per-hit value by its hit count.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, NamedTuple, TypeVar

from pynba_exporter._model import PinbaRequest
from pynba_exporter.wire import Packet

__all__ = [
    "REPORTS",
    "REQUEST_REPORTS",
    "Aggregator",
    "Record",
    "ReportSpec",
    "TimerRecord",
    "percentile",
    "percentiles",
]

OTHER: Final = "<other>"


class ReportSpec(NamedTuple):
    """One of pinba_engine's request reports: its short name (``pynba report --by``), its
    table, and the record fields that make its key."""

    short: str
    table: str
    keys: tuple[str, ...]


#: The request reports, the one table every name comes from.
REPORTS: Final[tuple[ReportSpec, ...]] = (
    ReportSpec("script", "report_by_script_name", ("script_name",)),
    ReportSpec("server", "report_by_server_name", ("server_name",)),
    ReportSpec("host", "report_by_hostname", ("hostname",)),
    ReportSpec("server-script", "report_by_server_and_script", ("server_name", "script_name")),
    ReportSpec("host-script", "report_by_hostname_and_script", ("hostname", "script_name")),
    ReportSpec("status", "report_by_status", ("status",)),
    ReportSpec("script-status", "report_by_script_and_status", ("script_name", "status")),
    ReportSpec("schema", "report_by_schema", ("schema",)),
)

#: pinba_engine's request reports: table name -> the record fields that make its key.
REQUEST_REPORTS: Final[dict[str, tuple[str, ...]]] = {s.table: s.keys for s in REPORTS}

# The fields of the finest request group, from which every request report is folded.
_FINE: Final = ("hostname", "server_name", "script_name", "status", "schema")

# Estimated bytes of the objects of a record (CPython 3.10-3.13, 64-bit), measured with
# tracemalloc on records as the collector builds them and rounded up: the record tuple, its
# floats and ints, its entry in the window and in the groups' value lists.
RECORD_BYTES: Final = 900
TIMER_BYTES: Final = 260  # a timer tuple, its floats and int, its tags tuple's header
PAIR_BYTES: Final = 140  # a (name, value) tuple, the pointer to it, allocator slack
GROUP_BYTES: Final = 2600  # a report group: its object, its value deque, its dict entry
STR_BYTES: Final = 64  # a str object's header, allocator rounding (ASCII; others cost more)
WORD_BYTES: Final = 80  # a string's entry in the dictionary (its slot, its hash, the table)


def _str_cost(s: str) -> int:
    return STR_BYTES + len(s) * (1 if s.isascii() else 4)


class TimerRecord(NamedTuple):
    tags: tuple[tuple[str, str], ...]
    value: float
    hit_count: int
    ru_utime: float
    ru_stime: float


class Record(NamedTuple):
    """One request as the collector keeps it (times clamped at 0, as the servers do). A named
    tuple rather than a dataclass: tens of thousands are made per second. ``serial`` numbers the
    records an aggregator kept (0 until kept); ``size`` is its estimated cost in bytes."""

    timestamp: float
    hostname: str
    server_name: str
    script_name: str
    status: int
    schema: str
    req_time: float
    ru_utime: float
    ru_stime: float
    doc_size: int
    mem_peak: int
    memory_footprint: int
    tags: tuple[tuple[str, str], ...]
    timers: tuple[TimerRecord, ...]
    serial: int = 0
    size: int = 0

    @classmethod
    def of(cls, r: PinbaRequest, timestamp: float) -> Record:
        timers = tuple(
            TimerRecord(
                tuple((k, _tag_text(v)) for k, v in t.tags.items()),
                max(0.0, t.value),
                t.hit_count,
                max(0.0, t.ru_utime),
                max(0.0, t.ru_stime),
            )
            for t in r.timers
        )
        return cls(
            timestamp, r.hostname, r.server_name, r.script_name, r.status, r.schema,
            max(0.0, r.request_time), max(0.0, r.ru_utime), max(0.0, r.ru_stime),
            r.document_size, r.memory_peak, r.memory_footprint,
            tuple((k, _tag_text(v)) for k, v in r.tags.items()), timers,
        )  # fmt: skip

    @classmethod
    def of_packet(cls, p: Packet, timestamp: float) -> Record:
        """From a parsed packet, without building the decoded records first."""
        rt, ru, rs = p.request_time, p.ru_utime, p.ru_stime
        tags = p.tags
        record: Record = _tuple_new(cls, (
            timestamp, p.hostname, p.server_name, p.script_name, p.status, p.schema,
            rt if rt > 0.0 else 0.0, ru if ru > 0.0 else 0.0, rs if rs > 0.0 else 0.0,
            p.document_size, p.memory_peak, p.memory_footprint,
            tuple(tags) if len(tags) < 2 else first_values(tags),
            # A parsed timer is (tags, value, hits, ru_utime, ru_stime) already: copied as is
            # unless a tag name repeats.
            tuple([
                _tuple_new(TimerRecord, t)
                if len(t[0]) < 2 or len(dict(t[0])) == len(t[0])
                else _tuple_new(TimerRecord, (first_values(t[0]), *t[1:]))
                for t in p.timers
            ]),
        ))  # fmt: skip
        return record


# Named tuples made straight through tuple.__new__ (one C call) where their generated __new__
# (a Python function) would cost more than the rest of the work per timer.
_tuple_new: Final[Callable[..., Any]] = tuple.__new__

_SERIAL: Final = Record._fields.index("serial")
_TIMERS: Final = Record._fields.index("timers")
_SIZE: Final = Record._fields.index("size")
_SCRIPT: Final = Record._fields.index("script_name")
_TAGS: Final = Record._fields.index("tags")
_REQ_TIME: Final = Record._fields.index("req_time")
_RU_UTIME: Final = Record._fields.index("ru_utime")
_RU_STIME: Final = Record._fields.index("ru_stime")
_DOC_SIZE: Final = Record._fields.index("doc_size")
_FOOTPRINT: Final = Record._fields.index("memory_footprint")
# The fields of the finest group are adjacent in a record: its key is one slice.
_FINE_FROM: Final = Record._fields.index(_FINE[0])
_FINE_TO: Final = _FINE_FROM + len(_FINE)
assert Record._fields[_FINE_FROM:_FINE_TO] == _FINE


def _revive(p: tuple[Any, ...]) -> Record:
    timers = tuple([_tuple_new(TimerRecord, t) for t in p[_TIMERS]])
    record: Record = _tuple_new(Record, (*p[:_TIMERS], timers, *p[_TIMERS + 1 :]))
    return record


def first_values(pairs: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Tag pairs where a name given several times keeps its first value (as pinba2 keys it)."""
    n = len(pairs)
    if n < 2 or (n == 2 and pairs[0][0] != pairs[1][0]) or len(dict(pairs)) == n:
        return pairs if type(pairs) is tuple else tuple(pairs)
    first = dict(reversed(pairs))  # reversed: the first value is the one left
    return tuple((name, first[name]) for name in dict.fromkeys(name for name, _ in pairs))


def _tag_text(value: object) -> str:
    # A decoded timer whose tag was given several values holds them as a tuple: the first one
    # is the value, as pinba2 has it.
    if isinstance(value, tuple):
        return str(value[0]) if value else ""
    return str(value)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank), 0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


#: Values sorted in one call at most. Sorting holds the interpreter (the receiving thread waits
#: meanwhile): longer lists are sorted in runs of this size, then merged (Timsort merges
#: sorted runs in one quick pass), so no single call holds it long.
SORT_RUN: Final = 32_768


def percentiles(values: list[float], weights: list[int] | None, ps: Sequence[float]) -> list[float]:
    """The nearest-rank percentiles ``ps`` of ``values``, each counted ``weights[i]`` times
    when weights are given (timers: per-hit value, hits), 0 for no values."""
    n = len(values)
    if not n:
        return [0.0] * len(ps)
    if weights is not None and max(weights) == 1:
        weights = None
    if weights is None:
        if n > SORT_RUN:
            runs: list[float] = []
            for i in range(0, n, SORT_RUN):
                runs.extend(sorted(values[i : i + SORT_RUN]))
            values = runs
        ordered = sorted(values)
        return [percentile(ordered, p) for p in ps]
    if n > SORT_RUN:
        vs: list[float] = []
        ws: list[int] = []
        for i in range(0, n, SORT_RUN):
            v, w = values[i : i + SORT_RUN], weights[i : i + SORT_RUN]
            run = sorted(range(len(v)), key=v.__getitem__)
            vs.extend([v[k] for k in run])
            ws.extend([w[k] for k in run])
        values, weights = vs, ws
    order = sorted(range(n), key=values.__getitem__)
    cumulative = list(itertools.accumulate([weights[k] for k in order]))
    total = cumulative[-1]
    out = []
    for p in ps:
        rank = max(1, math.ceil(p / 100 * total))
        out.append(values[order[min(bisect.bisect_left(cumulative, rank), n - 1)]])
    return out


def column(prefix: str, p: float) -> str:
    """The column of a percentile: ``req_time_p95``, ``timer_p99.9``."""
    return f"{prefix}_p{p:g}"


def _percent(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def _ns(seconds: float) -> int:
    # Sums kept in integer nanoseconds: exact when a request leaves again, whatever the values
    # (a hostile 3e38 s request time must not leave float residue behind). Rounded, not
    # truncated: float32 writes 0.0001 as 9.99999974e-05, which must count as 100,000 ns.
    return round(seconds * 1e9)


class _Req:
    """Requests of one group: exact sums and the request times, oldest first."""

    __slots__ = ("count", "first", "footprint", "key", "stime", "time", "times", "traffic",
                 "utime")  # fmt: skip

    def __init__(self) -> None:
        self.key: Any = None
        self.first = 0  # serial of the first record it took
        self.count = 0
        self.time = 0
        self.utime = 0
        self.stime = 0
        self.traffic = 0
        self.footprint = 0
        self.times: deque[float] = deque()

    # By index, so that records and the window's plain tuples go through alike.
    def add(self, r: Sequence[Any], t: int, u: int, s: int) -> None:
        self.count += 1
        self.time += t
        self.utime += u
        self.stime += s
        self.traffic += r[_DOC_SIZE]
        self.footprint += r[_FOOTPRINT]
        self.times.append(r[_REQ_TIME])

    def remove(self, r: Sequence[Any], t: int, u: int, s: int) -> None:
        self.count -= 1
        self.time -= t
        self.utime -= u
        self.stime -= s
        self.traffic -= r[_DOC_SIZE]
        self.footprint -= r[_FOOTPRINT]
        self.times.popleft()


class _Tim:
    """Timers of one group: exact sums, and (per-hit value, hits) of each timer, oldest first."""

    __slots__ = ("first", "hits", "key", "mark", "req_count", "stime", "utime", "value",
                 "values", "weights")  # fmt: skip

    def __init__(self) -> None:
        self.key: Any = None
        self.first = 0  # serial of the first record it took
        # The last record that counted in req_count: its serial when it came, minus its serial
        # when it left (a request counts once per group, however many of its timers are in it).
        self.mark = 0
        self.req_count = 0
        self.hits = 0
        self.value = 0
        self.utime = 0
        self.stime = 0
        self.values: deque[float] = deque()  # per-hit value of each timer
        self.weights: deque[int] = deque()  # its hits

    def add(self, t: Sequence[Any], ns: tuple[int, int, int]) -> None:
        value, hits = t[1], t[2]
        self.hits += hits
        self.value += ns[0]
        self.utime += ns[1]
        self.stime += ns[2]
        self.values.append(value / hits if hits else value)
        self.weights.append(hits)

    def remove(self, t: Sequence[Any], ns: tuple[int, int, int]) -> None:
        self.hits -= t[2]
        self.value -= ns[0]
        self.utime -= ns[1]
        self.stime -= ns[2]
        self.values.popleft()
        self.weights.popleft()


_G = TypeVar("_G", _Req, _Tim)


def _groups_of(
    groups: dict[Any, _G], key: Any, make: type[_G], cap: int, width: int
) -> tuple[_G, bool]:
    """The group of ``key``, made if needed; past ``cap`` groups, the ``<other>`` group.
    Returns (group, made)."""
    g = groups.get(key)
    if g is not None:
        return g, False
    if len(groups) >= cap:
        key = (OTHER,) * width
        g = groups.get(key)
        if g is not None:
            return g, False
    g = groups[key] = make()
    g.key = key
    return g, True


def _key(tags: dict[str, str], names: Sequence[str]) -> tuple[str, ...] | None:
    """The values of ``names`` in ``tags``, None if one is missing."""
    for n in names:
        if n not in tags:
            return None
    return tuple(tags[n] for n in names)


def _timer_keys(
    timers: Iterable[TimerRecord], tag_names: Sequence[str]
) -> Iterator[tuple[TimerRecord, tuple[str, ...]]]:
    """The timers that have every tag of ``tag_names``, with their values of them."""
    for t in timers:
        key = _key(dict(t.tags), tag_names)
        if key is not None:
            yield t, key


class Aggregator:
    """Thread-safe store of the window's records, and the reports."""

    def __init__(
        self,
        *,
        window: float = 900.0,
        max_records: int | None = None,
        max_bytes: int = 256 * 1024 * 1024,
        max_dictionary_bytes: int | None = None,
        max_keys: int = 10_000,
        percentiles: Sequence[float] = (95.0, 99.0),
        timer_tags: Sequence[Sequence[str]] = (("group",), ("group", "server")),
        request_tags: Sequence[Sequence[str]] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.window = window
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_dictionary_bytes = (
            max_bytes // 8 if max_dictionary_bytes is None else max_dictionary_bytes
        )
        self.max_keys = max_keys
        self.percentiles = tuple(percentiles)
        self.timer_tags = [tuple(t) for t in timer_tags]
        self.request_tags = [tuple(t) for t in request_tags]
        self.clock = clock
        self.started = clock()
        self._lock = threading.RLock()
        # The window's records as plain tuples (timers too): the garbage collector stops
        # tracking plain tuples of plain values, but never named tuples, and a full collection
        # walking every record of a big window stalls the receiving thread for a second.
        self._entries: deque[tuple[Any, ...]] = deque()
        self.serial = 0  # serial of the last record kept
        self.requests_total = 0
        self.bytes = 0  # estimated bytes of the window: records and report groups
        self.evicted_by: dict[str, int] = {}  # records that left before their time, by reason
        self.invalid: dict[str, int] = {}
        self.overflow_keys = 0  # requests or timers summed into an <other> group
        # The shared strings, and the timers' tag sets with their keys in each timer report.
        self._words: dict[str, str] = {}
        self._tagsets: dict[tuple[tuple[str, str], ...], tuple[Any, ...]] = {}
        self.dictionary_bytes = 0
        self._refreshed = self.started
        self._cap = 4 * max_keys
        self._fine: dict[tuple[Any, ...], _Req] = {}
        self._totals = _Req()
        self._timers: list[dict[tuple[str, ...], _Tim]] = [{} for _ in self.timer_tags]
        self._rtags: list[dict[tuple[str, ...], _Req]] = [{} for _ in self.request_tags]

    # -- input

    @property
    def evicted(self) -> int:
        """Records that left before their time (for ``max_records`` or ``max_bytes``)."""
        return sum(self.evicted_by.values())

    @property
    def first_serial(self) -> int:
        """Serial of the oldest record still kept (past the last one when none is)."""
        with self._lock:
            return self._entries[0][_SERIAL] if self._entries else self.serial + 1

    def add(self, records: Iterable[Record], returned: bool = True) -> list[Record]:
        """Keep ``records`` (their strings shared, their size estimated, a serial given); the
        oldest leave if the budget is exceeded. Returns the records kept, as kept (with
        ``returned`` False, nothing: they are not built, for a caller that has no use for them).
        """
        kept: list[Record] = []
        with self._lock:
            self._expire(self.clock())
            entries = self._entries
            compact, route = self._compact, self._route
            for record in records:
                self.requests_total += 1
                plain, keys = compact(record)
                size = plain[_SIZE]
                if size > self.max_bytes:
                    self._count(self.evicted_by, "larger than max_bytes")
                    continue
                entries.append(plain)
                route(plain, 1, keys)
                self.bytes += size
                if returned:
                    kept.append(_revive(plain))
            self._trim()
        return kept

    def add_invalid(self, reason: str) -> None:
        with self._lock:
            self._count(self.invalid, reason)

    @staticmethod
    def _count(counts: dict[str, int], reason: str, n: int = 1) -> None:
        counts[reason] = counts.get(reason, 0) + n

    def _word(self, s: str) -> tuple[str, int]:
        """The shared copy of ``s``, and what it costs the record that holds it (0 if the
        dictionary holds it)."""
        w = self._words.get(s)
        if w is not None:
            return w, 0
        cost = _str_cost(s)
        if self.dictionary_bytes + cost + WORD_BYTES > self.max_dictionary_bytes:
            return s, cost  # the dictionary is full: the record pays for its own copy
        self._words[s] = s
        self.dictionary_bytes += cost + WORD_BYTES
        return s, 0

    def _tagset(self, tags: tuple[tuple[str, str], ...]) -> tuple[tuple[Any, ...], int]:
        """(shared tags, their key in each timer report), and the record's cost for them."""
        known = self._tagsets.get(tags)
        if known is not None:
            return known, 0
        cost = 56 + len(tags) * PAIR_BYTES
        shared = []
        for raw_name, raw_value in tags:
            name, c1 = self._word(raw_name)
            value, c2 = self._word(raw_value)
            cost += c1 + c2
            shared.append((name, value))
        d = dict(shared)
        keys = tuple(_key(d, names) for names in self.timer_tags)
        item = (tuple(shared), keys)
        if self.dictionary_bytes + cost + 8 * len(keys) <= self.max_dictionary_bytes:
            self._tagsets[item[0]] = item
            self.dictionary_bytes += cost + 8 * len(keys)
            cost = 0
        return item, cost

    def _compact(self, r: Record) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
        """``r`` as kept, as a plain tuple (for the window): its strings shared, its size
        estimated, a serial given; and the keys of each of its timers in the timer reports.
        Strings and tag sets already in the dictionary (nearly all of them) cost one lookup."""
        get = self._words.get
        word = self._word
        size = RECORD_BYTES
        host = get(r.hostname)
        if host is None:
            host, cost = word(r.hostname)
            size += cost
        server = get(r.server_name)
        if server is None:
            server, cost = word(r.server_name)
            size += cost
        script = get(r.script_name)
        if script is None:
            script, cost = word(r.script_name)
            size += cost
        schema = get(r.schema)
        if schema is None:
            schema, cost = word(r.schema)
            size += cost
        tags = r.tags
        if tags:
            shared = []
            for raw_name, raw_value in tags:
                name = get(raw_name)
                if name is None:
                    name, cost = word(raw_name)
                    size += cost
                value = get(raw_value)
                if value is None:
                    value, cost = word(raw_value)
                    size += cost
                shared.append((name, value))
            tags = tuple(shared)
            size += PAIR_BYTES * len(tags)
        keys: list[tuple[Any, ...]] = []
        timers = r.timers
        plain_timers: tuple[tuple[Any, ...], ...] = ()
        if timers:
            known_tagset = self._tagsets.get
            plain = []
            for t in timers:
                known = known_tagset(t.tags)
                if known is None:
                    known, cost = self._tagset(t.tags)
                    size += cost
                keys.append(known[1])
                plain.append((known[0], t.value, t.hit_count, t.ru_utime, t.ru_stime))
            size += len(timers) * (TIMER_BYTES + 8 * len(self.timer_tags))
            plain_timers = tuple(plain)
        self.serial += 1
        fields = (r[0], host, server, script, r[4], schema, r[6], r[7], r[8], r[9], r[10], r[11],
                  tags)  # fmt: skip
        return (*fields, plain_timers, self.serial, size), keys

    def _keys(self, t: Sequence[Any]) -> tuple[tuple[str, ...] | None, ...]:
        known = self._tagsets.get(t[0])
        if known is not None:
            return known[1]  # type: ignore[no-any-return]
        d = dict(t[0])
        return tuple(_key(d, names) for names in self.timer_tags)

    def _group(self, table: dict[Any, _G], key: Any, make: type[_G], serial: int, sign: int) -> _G:
        """The group the record of ``serial`` goes to (sign 1: made if needed, ``<other>`` past
        the cap) or went to (sign -1). A group made after the record was kept cannot hold it:
        it went to ``<other>`` then (a group is only dropped once empty, so no older one can
        hide it)."""
        g = table.get(key)
        if sign < 0:
            if g is None or g.first > serial:
                return table[(OTHER,) * len(key)]
            return g
        if g is None:
            g, made = _groups_of(table, key, make, self._cap, len(key))
            if made:
                g.first = serial
                self.bytes += GROUP_BYTES
            if table.get(key) is not g:
                self.overflow_keys += 1
        return g

    def _route(self, r: Sequence[Any], sign: int, timer_keys: Sequence[Any] | None = None) -> None:
        """Add the record ``r`` (a record or its plain tuple) to its groups (sign 1) or take it
        out of them (-1); ``timer_keys``: its timers' keys in the timer reports, if known. The
        window holds the records alone, not their groups: fewer objects for the garbage
        collector to walk (a full collection over a big window stalls the receiving thread).
        Sums in integer nanoseconds, rounded (see ``_ns``, inlined here: it runs per timer)."""
        t, u, s = round(r[_REQ_TIME] * 1e9), round(r[_RU_UTIME] * 1e9), round(r[_RU_STIME] * 1e9)
        serial = r[_SERIAL]
        tables: list[tuple[dict[Any, _Req], Any]] = [(self._fine, r[_FINE_FROM:_FINE_TO])]
        if self.request_tags:
            d = dict(r[_TAGS])
            for names, rtable in zip(self.request_tags, self._rtags):
                rkey = _key(d, names)
                if rkey is not None:
                    tables.append((rtable, rkey))
        if sign > 0:
            self._totals.add(r, t, u, s)
            for table, key in tables:
                g = table.get(key)
                if g is None:
                    g = self._group(table, key, _Req, serial, 1)
                g.add(r, t, u, s)
        else:
            self._totals.remove(r, t, u, s)
            for table, key in tables:
                g = self._group(table, key, _Req, serial, -1)
                g.remove(r, t, u, s)
                if not g.count:
                    self._drop(table, g)
        timers = r[_TIMERS]
        if not (self.timer_tags and timers):
            return
        if timer_keys is None:
            timer_keys = [self._keys(timer) for timer in timers]
        script = r[_SCRIPT]
        ttables = self._timers
        group = self._group
        mark = serial * sign  # a request counts once per group (see _Tim.mark)
        for timer, keys in zip(timers, timer_keys):
            value, hits = timer[1], timer[2]
            per_hit = value / hits if hits else value
            nv = -1  # the timer's sums in ns: once per timer, whatever the number of reports
            nu = ns = 0
            for key, ttable in zip(keys, ttables):
                if key is None:
                    continue
                if nv < 0:
                    nv = round(value * 1e9)
                    nu, ns = timer[3], timer[4]  # mostly 0.0 (timer CPU is off by default)
                    nu = round(nu * 1e9) if nu else 0
                    ns = round(ns * 1e9) if ns else 0
                full = (script, *key)
                if sign > 0:
                    tg = ttable.get(full)
                    if tg is None:
                        tg = group(ttable, full, _Tim, serial, 1)
                    if tg.mark != mark:
                        tg.mark = mark
                        tg.req_count += 1
                    tg.hits += hits
                    tg.value += nv
                    tg.utime += nu
                    tg.stime += ns
                    tg.values.append(per_hit)
                    tg.weights.append(hits)
                else:
                    tg = group(ttable, full, _Tim, serial, -1)
                    if tg.mark != mark:
                        tg.mark = mark
                        tg.req_count -= 1
                    tg.remove(timer, (nv, nu, ns))
                    if not tg.values:
                        self._drop(ttable, tg)

    def _drop(self, table: dict[Any, Any], g: Any) -> None:
        key = g.key
        if table.get(key) is g:
            del table[key]
            self.bytes -= GROUP_BYTES

    def _evict(self, reason: str | None) -> None:
        entry = self._entries.popleft()
        self._route(entry, -1)
        self.bytes -= entry[_SIZE]
        if reason is not None:
            self._count(self.evicted_by, reason)

    def _expire(self, now: float) -> None:
        limit = now - self.window
        entries = self._entries
        while entries and entries[0][0] < limit:
            self._evict(None)
        if not entries:
            # Nothing holds the shared strings any more: start the dictionary afresh, so names
            # seen once long ago do not keep their place in it for ever.
            self._words.clear()
            self._tagsets.clear()
            self.dictionary_bytes = 0

    def _trim(self) -> None:
        entries = self._entries
        while self.max_records is not None and len(entries) > self.max_records:
            self._evict("max_records")
        while entries and self.bytes > self.max_bytes:
            self._evict("max_bytes")
        if self.dictionary_bytes > self.max_dictionary_bytes * 0.9:
            now = self.clock()
            if now - self._refreshed >= self.window:
                # The dictionary fills with names no record holds any more: at most once a
                # window it starts afresh, so new names can be shared again. The strings of
                # older records are then held by them alone (at most one dictionary's worth,
                # gone within a window): the documented bound counts them.
                self._refreshed = now
                self._words.clear()
                self._tagsets.clear()
                self.dictionary_bytes = 0

    def records(self) -> list[Record]:
        """The records of the window (expired ones leave now)."""
        with self._lock:
            self._expire(self.clock())
            return list(map(_revive, self._entries))

    def interval(self) -> float:
        """Seconds the reports cover: the window, or less since the collector started."""
        return max(1e-9, min(self.window, self.clock() - self.started))

    # -- reports

    def _cap_rows(self, groups: dict[Any, Any], width: int, merge: Callable[..., Any]) -> Any:
        """At most ``max_keys`` groups: the ones of least total time merged into ``<other>``."""
        if len(groups) <= self.max_keys:
            return groups
        other = (OTHER,) * width
        ranked = sorted(((k, g) for k, g in groups.items() if k != other), key=lambda kv: -kv[1][0])
        kept = dict(ranked[: self.max_keys - 1])
        rest = [g for _, g in ranked[self.max_keys - 1 :]]
        if other in groups:
            rest.append(groups[other])
        kept[other] = merge(rest)
        self.overflow_keys += len(rest)
        return kept

    def _request_sums(self, keys: Sequence[str], folded: dict[Any, list[_Req]]) -> Any:
        """Under the lock: the groups' sums and copies of their values (quick, in C)."""
        totals = self._fold_req(list(self._fine.values()), values=False)
        sums = {k: self._fold_req(gs) for k, gs in folded.items()}
        return totals, self._cap_rows(sums, len(keys), self._merge_req)

    def _request_rows(self, keys: Sequence[str], folded: Any, full: bool) -> list[dict[str, Any]]:
        """Outside the lock: the rows, percentiles sorted in bounded runs."""
        interval = self.interval()
        totals, sums = folded
        ps = (50.0, *self.percentiles)
        rows = []
        for key, (t, u, s, traffic, footprint, count, values) in sums.items():
            median, *ranks = percentiles(values, None, ps)
            row: dict[str, Any] = dict(zip(keys, key))
            row.update(
                req_count=count,
                req_per_sec=count / interval,
                req_time_total=t,
                req_time_percent=_percent(t, totals[0]),
                req_time_per_sec=t / interval,
                ru_utime_total=u,
                ru_utime_percent=_percent(u, totals[1]),
                ru_utime_per_sec=u / interval,
                ru_stime_total=s,
                ru_stime_percent=_percent(s, totals[2]),
                ru_stime_per_sec=s / interval,
                traffic_total=traffic / 1024,
                traffic_percent=_percent(traffic, totals[3]),
                traffic_per_sec=traffic / 1024 / interval,
                memory_footprint_total=footprint / 1024,
                memory_footprint_percent=_percent(footprint, totals[4]),
                req_time_median=median,
            )
            if not full:
                for name in ("percent", "per_sec"):
                    for what in ("req_time", "ru_utime", "ru_stime", "traffic"):
                        del row[f"{what}_{name}"]
                del row["memory_footprint_total"], row["memory_footprint_percent"]
            for p, value in zip(self.percentiles, ranks):
                row[column("req_time", p)] = value
            rows.append(row)
        rows.sort(key=lambda row: -row["req_time_total"])
        return rows

    @staticmethod
    def _fold_req(
        gs: list[_Req], *, values: bool = True
    ) -> tuple[float, float, float, int, int, int, list[float]]:
        return (
            sum(g.time for g in gs) / 1e9,
            sum(g.utime for g in gs) / 1e9,
            sum(g.stime for g in gs) / 1e9,
            sum(g.traffic for g in gs),
            sum(g.footprint for g in gs),
            sum(g.count for g in gs),
            list(itertools.chain.from_iterable(g.times for g in gs)) if values else [],
        )

    @staticmethod
    def _merge_req(sums: list[tuple[Any, ...]]) -> tuple[Any, ...]:
        return (
            *(sum(s[i] for s in sums) for i in range(6)),
            list(itertools.chain.from_iterable(s[6] for s in sums)),
        )

    def request_report(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        """One row per value of the record fields ``keys`` (pinba_engine's report_by_*)."""
        keys = tuple(keys)
        with self._lock:
            self._expire(self.clock())
            if set(keys) <= set(_FINE):
                idx = [_FINE.index(k) for k in keys]
                folded: dict[Any, list[_Req]] = {}
                for fine, g in self._fine.items():
                    folded.setdefault(tuple(fine[i] for i in idx), []).append(g)
            else:  # another field (doc_size...): from the records
                folded = {}
                for r in map(_revive, self._entries):
                    g = _Req()
                    g.add(r, _ns(r.req_time), _ns(r.ru_utime), _ns(r.ru_stime))
                    folded.setdefault(tuple(getattr(r, k) for k in keys), []).append(g)
            sums = self._request_sums(keys, folded)
        return self._request_rows(keys, sums, full=True)

    def tag_report(self, tag_names: Sequence[str]) -> list[dict[str, Any]]:
        """Requests grouped by the values of request tags ``tag_names``."""
        names = tuple(tag_names)
        with self._lock:
            self._expire(self.clock())
            if names in self.request_tags:
                table = self._rtags[self.request_tags.index(names)]
                folded = {k: [g] for k, g in table.items()}
            else:
                folded = {}
                for r in map(_revive, self._entries):
                    d = dict(r.tags)
                    try:
                        key = tuple(d[n] for n in names)
                    except KeyError:
                        continue
                    g = _Req()
                    g.add(r, _ns(r.req_time), _ns(r.ru_utime), _ns(r.ru_stime))
                    folded.setdefault(key, []).append(g)
            sums = self._request_sums(names, folded)
        return self._request_rows(names, sums, full=False)

    def timer_report(
        self, tag_names: Sequence[str], *, per_script: bool = False
    ) -> list[dict[str, Any]]:
        """Timers grouped by the values of ``tag_names`` (pinba_engine's tag_info; with
        ``per_script``, tag_report): timers without one of the tags are left out."""
        names = tuple(tag_names)
        with self._lock:
            self._expire(self.clock())
            if names in self.timer_tags:
                table = self._timers[self.timer_tags.index(names)]
                items: Iterable[tuple[tuple[Any, ...], _Tim]] = table.items()
            else:
                scratch: dict[tuple[Any, ...], _Tim] = {}
                for r in map(_revive, self._entries):
                    seen: set[int] = set()
                    for t, key in _timer_keys(r.timers, names):
                        full = (r.script_name, *key)
                        g = scratch.get(full)
                        if g is None:
                            g = scratch[full] = _Tim()
                        if id(g) not in seen:
                            seen.add(id(g))
                            g.req_count += 1
                        g.add(t, (_ns(t.value), _ns(t.ru_utime), _ns(t.ru_stime)))
                items = scratch.items()
            # Groups are per script; tag_info folds the scripts (a request counted once per key).
            folded: dict[Any, list[_Tim]] = {}
            for key, g in items:
                folded.setdefault(key if per_script else key[1:], []).append(g)
            # Under the lock: sums and copies of the values (quick, in C); the rows outside.
            sums = {k: self._fold_tim(gs) for k, gs in folded.items()}
            width = len(names) + (1 if per_script else 0)
            sums = self._cap_rows(sums, width, self._fold_tim)
        return self._timer_rows(names, sums, per_script)

    @staticmethod
    def _fold_tim(gs: list[Any]) -> tuple[Any, ...]:
        if gs and isinstance(gs[0], tuple):  # sums already folded (the <other> row)
            return (*(sum(s[i] for s in gs) for i in range(5)),
                    list(itertools.chain.from_iterable(s[5] for s in gs)),
                    list(itertools.chain.from_iterable(s[6] for s in gs)))  # fmt: skip
        return (
            sum(g.value for g in gs) / 1e9, sum(g.req_count for g in gs),
            sum(g.hits for g in gs), sum(g.utime for g in gs) / 1e9,
            sum(g.stime for g in gs) / 1e9,
            list(itertools.chain.from_iterable(g.values for g in gs)),
            list(itertools.chain.from_iterable(g.weights for g in gs)),
        )  # fmt: skip

    def _timer_rows(
        self, names: tuple[str, ...], sums: dict[Any, tuple[Any, ...]], per_script: bool
    ) -> list[dict[str, Any]]:
        interval = self.interval()
        columns = (["script_name"] if per_script else []) + list(names)
        ps = (50.0, *self.percentiles)
        rows = []
        for key, (value, req_count, hits, u, s, values, weights) in sums.items():
            median, *ranks = percentiles(values, weights, ps)
            row: dict[str, Any] = dict(zip(columns, key))
            row.update(
                req_count=req_count,
                req_per_sec=req_count / interval,
                hit_count=hits,
                hit_per_sec=hits / interval,
                timer_value=value,
                timer_median=median,
                ru_utime_value=u,
                ru_stime_value=s,
            )
            for p, v in zip(self.percentiles, ranks):
                row[column("timer", p)] = v
            rows.append(row)
        rows.sort(key=lambda row: -row["timer_value"])
        return rows

    def info(self) -> dict[str, Any]:
        """pinba_engine's ``info``: totals of the window."""
        with self._lock:
            self._expire(self.clock())
            g = self._totals
            times = list(g.times)
            info = {
                "req_count": g.count,
                "time_total": g.time / 1e9,
                "ru_utime_total": g.utime / 1e9,
                "ru_stime_total": g.stime / 1e9,
                "time_interval": self.interval(),
                "kbytes_total": g.traffic / 1024,
                "memory_footprint": g.footprint / 1024,
            }
        info["req_time_median"] = percentiles(times, None, (50.0,))[0]
        return info

    def status(self) -> dict[str, Any]:
        """Health: what was received, what was refused and why, what memory holds."""
        with self._lock:
            self._expire(self.clock())
            return {
                "requests_total": self.requests_total,
                "requests_in_window": len(self._entries),
                "invalid_packets": sum(self.invalid.values()),
                "invalid_by_reason": dict(self.invalid),
                "evicted_records": self.evicted,
                "evicted_by_reason": dict(self.evicted_by),
                "overflow_keys": self.overflow_keys,
                "dictionary_size": len(self._words),
                "dictionary_bytes": self.dictionary_bytes,
                "window_bytes": self.bytes,
                "max_bytes": self.max_bytes,
                "window": self.window,
            }
