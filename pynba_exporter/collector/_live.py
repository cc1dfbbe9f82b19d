"""Pinba's reports kept up to date as requests arrive and leave.

Each request adds to one group keyed by (hostname, server_name, script_name, status, schema),
and to one group per configured timer tag set (``timer_tags``, keyed by script and tag values)
and request tag set (``request_tags``); a report is then a fold of groups, not of records.
Past ``4 * max_keys`` groups in a table, new keys go to one ``<other>`` group (counted in
``overflow_keys``), so a flood of distinct names cannot grow the work of a report without
limit. Sums are kept in integer nanoseconds, so they are exact again when a request leaves.
Not thread-safe: the aggregator holds its lock around every call.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Final, TypeVar

from pynba_exporter.collector._record import Record

__all__ = ["FINE", "GROUP_BYTES", "OTHER", "LiveReports", "RequestGroup", "TimerGroup", "ns"]

OTHER: Final = "<other>"

#: The fields of the finest request group, from which every request report is folded.
FINE: Final = ("hostname", "server_name", "script_name", "status", "schema")

#: Estimated bytes of a report group: its object, its value deque, its dict entry.
GROUP_BYTES: Final = 2600


def ns(seconds: float) -> int:
    """Seconds as integer nanoseconds: exact when a request leaves again, whatever the values
    (a hostile 3e38 s request time must not leave float residue behind). Rounded, not
    truncated: float32 writes 0.0001 as 9.99999974e-05, which must count as 100,000 ns."""
    return round(seconds * 1e9)


class _Group:
    """What groups of both kinds hold: their key, when they were made, their CPU sums."""

    __slots__ = ("first", "key", "stime", "utime")

    def __init__(self) -> None:
        self.key: Any = None
        self.first = 0  # serial of the first record it took
        self.utime = 0
        self.stime = 0


class RequestGroup(_Group):
    """Requests of one group: exact sums and the request times, oldest first."""

    __slots__ = ("count", "footprint", "time", "times", "traffic")

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.time = 0
        self.traffic = 0
        self.footprint = 0
        self.times: deque[float] = deque()

    def add(self, r: Record, t: int, u: int, s: int) -> None:
        self.count += 1
        self.time += t
        self.utime += u
        self.stime += s
        self.traffic += r.doc_size
        self.footprint += r.memory_footprint
        self.times.append(r.req_time)

    def remove(self, r: Record, t: int, u: int, s: int) -> None:
        self.count -= 1
        self.time -= t
        self.utime -= u
        self.stime -= s
        self.traffic -= r.doc_size
        self.footprint -= r.memory_footprint
        self.times.popleft()


class TimerGroup(_Group):
    """Timers of one group: exact sums, and (per-hit value, hits) of each timer, oldest first."""

    __slots__ = ("hits", "mark", "req_count", "value", "values", "weights")

    def __init__(self) -> None:
        super().__init__()
        # The last record that counted in req_count: its serial when it came, minus its serial
        # when it left (a request counts once per group, however many of its timers are in it).
        self.mark = 0
        self.req_count = 0
        self.hits = 0
        self.value = 0
        self.values: deque[float] = deque()  # per-hit value of each timer
        self.weights: deque[int] = deque()  # its hits

    def add(self, value: float, hits: int, sums: tuple[int, int, int]) -> None:
        self.hits += hits
        self.value += sums[0]
        self.utime += sums[1]
        self.stime += sums[2]
        self.values.append(value / hits if hits else value)
        self.weights.append(hits)

    def remove(self, hits: int, sums: tuple[int, int, int]) -> None:
        self.hits -= hits
        self.value -= sums[0]
        self.utime -= sums[1]
        self.stime -= sums[2]
        self.values.popleft()
        self.weights.popleft()


def timer_sums(value: float, ru_utime: float, ru_stime: float) -> tuple[int, int, int]:
    """A timer's value and CPU times in nanoseconds (CPU mostly 0: it is off by default)."""
    return ns(value), ns(ru_utime) if ru_utime else 0, ns(ru_stime) if ru_stime else 0


def tag_key(tags: dict[str, str], names: Sequence[str]) -> tuple[str, ...] | None:
    """The values of ``names`` in ``tags``, None if one is missing."""
    for n in names:
        if n not in tags:
            return None
    return tuple(tags[n] for n in names)


_G = TypeVar("_G", RequestGroup, TimerGroup)
TimerKeys = Sequence[tuple[tuple[str, ...] | None, ...]]


class LiveReports:
    """The groups of the window's requests, kept up to date by :meth:`add` and :meth:`remove`.
    The window holds the records alone, not their groups: fewer objects for the garbage
    collector to walk (a full collection over a big window stalls the receiving thread)."""

    def __init__(
        self, max_keys: int, timer_tags: list[tuple[str, ...]], request_tags: list[tuple[str, ...]]
    ) -> None:
        self.timer_tags = timer_tags
        self.request_tags = request_tags
        self.cap = 4 * max_keys
        self.fine: dict[tuple[Any, ...], RequestGroup] = {}
        self.totals = RequestGroup()
        self.timers: list[dict[tuple[str, ...], TimerGroup]] = [{} for _ in timer_tags]
        self.rtags: list[dict[tuple[str, ...], RequestGroup]] = [{} for _ in request_tags]
        self.bytes = 0  # estimated bytes of the groups
        self.overflow_keys = 0  # requests or timers summed into an <other> group

    def timer_keys(self, tags: Sequence[tuple[str, str]]) -> tuple[tuple[str, ...] | None, ...]:
        """A timer's key in each timer report (None where it lacks a tag)."""
        d = dict(tags)
        return tuple(tag_key(d, names) for names in self.timer_tags)

    def _request_tables(self, r: Record) -> list[tuple[dict[Any, RequestGroup], Any]]:
        tables: list[tuple[dict[Any, RequestGroup], Any]] = [
            (self.fine, (r.hostname, r.server_name, r.script_name, r.status, r.schema))
        ]
        if self.request_tags:
            d = dict(r.tags)
            for names, table in zip(self.request_tags, self.rtags):
                key = tag_key(d, names)
                if key is not None:
                    tables.append((table, key))
        return tables

    def add(self, r: Record, timer_keys: TimerKeys) -> None:
        """Count the record ``r`` (kept: its serial given) in its groups; ``timer_keys``: its
        timers' keys in the timer reports."""
        t, u, s = ns(r.req_time), ns(r.ru_utime), ns(r.ru_stime)
        self.totals.add(r, t, u, s)
        for table, key in self._request_tables(r):
            g = table.get(key)
            if g is None:
                g = self._made(table, key, RequestGroup, r.serial)
            g.add(r, t, u, s)
        if not (self.timer_tags and r.timer_rows):
            return
        script, serial, ttables = r.script_name, r.serial, self.timers
        for (_, value, hits, ru_u, ru_s), keys in zip(r.timer_rows, timer_keys):
            sums = None  # once per timer, whatever the number of reports
            for key, ttable in zip(keys, ttables):
                if key is None:
                    continue
                if sums is None:
                    sums = timer_sums(value, ru_u, ru_s)
                full = (script, *key)
                tg = ttable.get(full)
                if tg is None:
                    tg = self._made(ttable, full, TimerGroup, serial)
                if tg.mark != serial:  # a request counts once per group
                    tg.mark = serial
                    tg.req_count += 1
                tg.add(value, hits, sums)

    def remove(self, r: Record, timer_keys: TimerKeys) -> None:
        """Take the record ``r`` out of the groups :meth:`add` counted it in."""
        t, u, s = ns(r.req_time), ns(r.ru_utime), ns(r.ru_stime)
        self.totals.remove(r, t, u, s)
        for table, key in self._request_tables(r):
            g = self._holder(table, key, r.serial)
            g.remove(r, t, u, s)
            if not g.count:
                self._drop(table, g)
        if not (self.timer_tags and r.timer_rows):
            return
        script, mark, ttables = r.script_name, -r.serial, self.timers
        for (_, value, hits, ru_u, ru_s), keys in zip(r.timer_rows, timer_keys):
            sums = timer_sums(value, ru_u, ru_s)
            for key, ttable in zip(keys, ttables):
                if key is None:
                    continue
                tg = self._holder(ttable, (script, *key), r.serial)
                if tg.mark != mark:
                    tg.mark = mark
                    tg.req_count -= 1
                tg.remove(hits, sums)
                if not tg.values:
                    self._drop(ttable, tg)

    def _made(self, table: dict[Any, _G], key: Any, make: type[_G], serial: int) -> _G:
        """The group of a key not in ``table`` yet: made, or past the cap ``<other>``."""
        if len(table) >= self.cap:
            other = (OTHER,) * len(key)
            if key != other:
                self.overflow_keys += 1
                key = other
                g = table.get(key)
                if g is not None:
                    return g
        g = table[key] = make()
        g.key = key
        g.first = serial
        self.bytes += GROUP_BYTES
        return g

    @staticmethod
    def _holder(table: dict[Any, _G], key: Any, serial: int) -> _G:
        """The group the record of ``serial`` went to. A group made after the record was kept
        cannot hold it: it went to ``<other>`` then (a group is only dropped once empty, so
        no older one can hide it)."""
        g = table.get(key)
        if g is None or g.first > serial:
            return table[(OTHER,) * len(key)]
        return g

    def _drop(self, table: dict[Any, Any], g: _Group) -> None:
        if table.get(g.key) is g:
            del table[g.key]
            self.bytes -= GROUP_BYTES
