"""The collector's memory: requests of the rolling window, and Pinba's reports computed from them.

Each request received is kept as a compact :class:`Record` for ``window`` seconds (900 by
default, as pinba_engine) and at most ``max_records`` of them (the oldest go first, counted).
Reports are computed from the records when asked for, like pinba_engine's report tables: one
row per key, sorted by total time. Keys past ``max_keys`` distinct values are summed in one
``<other>`` row (counted), so a flood of distinct script names cannot grow a report without
limit.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from pynba_exporter._model import PinbaRequest
from pynba_exporter.wire import Packet

__all__ = ["REQUEST_REPORTS", "Aggregator", "Record", "TimerRecord"]

OTHER: Final = "<other>"

#: pinba_engine's request reports: table name -> the record fields that make its key.
REQUEST_REPORTS: Final[dict[str, tuple[str, ...]]] = {
    "report_by_script_name": ("script_name",),
    "report_by_server_name": ("server_name",),
    "report_by_hostname": ("hostname",),
    "report_by_server_and_script": ("server_name", "script_name"),
    "report_by_hostname_and_script": ("hostname", "script_name"),
    "report_by_status": ("status",),
    "report_by_script_and_status": ("script_name", "status"),
    "report_by_schema": ("schema",),
}


class TimerRecord(NamedTuple):
    tags: tuple[tuple[str, str], ...]
    value: float
    hit_count: int
    ru_utime: float
    ru_stime: float


class Record(NamedTuple):
    """One request as the collector keeps it (times clamped at 0, as the servers do). A named
    tuple rather than a dataclass: tens of thousands are made per second."""

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
            tuple((k, str(v)) for k, v in r.tags.items()), timers,
        )  # fmt: skip

    @classmethod
    def of_packet(cls, p: Packet, timestamp: float) -> Record:
        """From a parsed packet, without building the decoded records first."""
        rt, ru, rs = p.request_time, p.ru_utime, p.ru_stime
        return cls(
            timestamp, p.hostname, p.server_name, p.script_name, p.status, p.schema,
            rt if rt > 0.0 else 0.0, ru if ru > 0.0 else 0.0, rs if rs > 0.0 else 0.0,
            p.document_size, p.memory_peak, p.memory_footprint, tuple(p.tags),
            tuple(
                TimerRecord(tuple(pairs), value, hits, u, s)
                for pairs, value, hits, u, s in p.timers
            ),
        )  # fmt: skip


def _tag_text(value: object) -> str:
    # A tag given several values in one timer (the original pynba's lists) reads "a,b".
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank), 0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _percent(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


@dataclass
class _Group:
    req_count: int = 0
    req_time: float = 0.0
    ru_utime: float = 0.0
    ru_stime: float = 0.0
    traffic: int = 0
    memory_footprint: int = 0
    times: list[float] = field(default_factory=list)
    hit_count: int = 0
    timer_value: float = 0.0
    timer_values: list[float] = field(default_factory=list)

    def add_request(self, r: Record) -> None:
        self.req_count += 1
        self.req_time += r.req_time
        self.ru_utime += r.ru_utime
        self.ru_stime += r.ru_stime
        self.traffic += r.doc_size
        self.memory_footprint += r.memory_footprint

    def merge(self, g: _Group) -> None:
        self.req_count += g.req_count
        self.req_time += g.req_time
        self.ru_utime += g.ru_utime
        self.ru_stime += g.ru_stime
        self.traffic += g.traffic
        self.memory_footprint += g.memory_footprint
        self.times.extend(g.times)
        self.hit_count += g.hit_count
        self.timer_value += g.timer_value
        self.timer_values.extend(g.timer_values)


class Aggregator:
    """Thread-safe store of the window's records, and the reports."""

    def __init__(
        self,
        *,
        window: float = 900.0,
        max_records: int = 200_000,
        max_keys: int = 10_000,
        percentiles: Sequence[float] = (95.0, 99.0),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.window = window
        self.max_records = max_records
        self.max_keys = max_keys
        self.percentiles = tuple(percentiles)
        self.clock = clock
        self.started = clock()
        self._records: deque[Record] = deque()
        self._lock = threading.Lock()
        self.requests_total = 0
        self.evicted = 0  # records dropped for max_records before their time
        self.invalid: dict[str, int] = {}
        self.overflow_keys = 0  # keys summed into <other> by the last reports

    # -- input

    def add(self, records: Iterable[Record]) -> None:
        with self._lock:
            for record in records:
                self._records.append(record)
                self.requests_total += 1
            over = len(self._records) - self.max_records
            for _ in range(max(0, over)):
                self._records.popleft()
                self.evicted += 1

    def add_invalid(self, reason: str) -> None:
        with self._lock:
            self.invalid[reason] = self.invalid.get(reason, 0) + 1

    def records(self) -> list[Record]:
        """The records of the window (expired ones are dropped now)."""
        now = self.clock()
        with self._lock:
            limit = now - self.window
            records = self._records
            while records and records[0].timestamp < limit:
                records.popleft()
            return list(records)

    def interval(self) -> float:
        """Seconds the reports cover: the window, or less since the collector started."""
        return max(1e-9, min(self.window, self.clock() - self.started))

    # -- reports

    def _capped(self, groups: dict[Any, _Group], other_key: Any) -> dict[Any, _Group]:
        if len(groups) <= self.max_keys:
            return groups
        ranked = sorted(groups.items(), key=lambda kv: -kv[1].req_time)
        kept = dict(ranked[: self.max_keys - 1])
        other = _Group()
        for _, g in ranked[self.max_keys - 1 :]:
            other.merge(g)
        kept[other_key] = other
        self.overflow_keys += len(ranked) - (self.max_keys - 1)
        return kept

    def request_report(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        """One row per value of the record fields ``keys`` (pinba_engine's report_by_*)."""
        records = self.records()
        interval = self.interval()
        groups: dict[tuple[Any, ...], _Group] = {}
        totals = _Group()
        for r in records:
            key = tuple(getattr(r, k) for k in keys)
            g = groups.get(key)
            if g is None:
                g = groups[key] = _Group()
            g.add_request(r)
            totals.add_request(r)
            g.times.append(r.req_time)
        groups = self._capped(groups, tuple(OTHER for _ in keys))
        rows = []
        for key, g in groups.items():
            g.times.sort()
            row: dict[str, Any] = dict(zip(keys, key))
            row.update(
                req_count=g.req_count,
                req_per_sec=g.req_count / interval,
                req_time_total=g.req_time,
                req_time_percent=_percent(g.req_time, totals.req_time),
                req_time_per_sec=g.req_time / interval,
                ru_utime_total=g.ru_utime,
                ru_utime_percent=_percent(g.ru_utime, totals.ru_utime),
                ru_utime_per_sec=g.ru_utime / interval,
                ru_stime_total=g.ru_stime,
                ru_stime_percent=_percent(g.ru_stime, totals.ru_stime),
                ru_stime_per_sec=g.ru_stime / interval,
                traffic_total=g.traffic / 1024,
                traffic_percent=_percent(g.traffic, totals.traffic),
                traffic_per_sec=g.traffic / 1024 / interval,
                memory_footprint_total=g.memory_footprint / 1024,
                memory_footprint_percent=_percent(g.memory_footprint, totals.memory_footprint),
                req_time_median=percentile(g.times, 50),
            )
            for p in self.percentiles:
                row[f"req_time_p{p:g}"] = percentile(g.times, p)
            rows.append(row)
        rows.sort(key=lambda row: -row["req_time_total"])
        return rows

    def timer_report(
        self, tag_names: Sequence[str], *, per_script: bool = False
    ) -> list[dict[str, Any]]:
        """Timers grouped by the values of ``tag_names`` (pinba_engine's tag_info; with
        ``per_script``, tag_report): timers without one of the tags are left out."""
        records = self.records()
        interval = self.interval()
        groups: dict[tuple[str, ...], _Group] = {}
        for r in records:
            seen: set[tuple[str, ...]] = set()
            for t in r.timers:
                tags = dict(t.tags)
                try:
                    values = tuple(tags[name] for name in tag_names)
                except KeyError:
                    continue
                key = (r.script_name, *values) if per_script else values
                g = groups.get(key)
                if g is None:
                    g = groups[key] = _Group()
                if key not in seen:
                    seen.add(key)
                    g.req_count += 1
                g.hit_count += t.hit_count
                g.timer_value += t.value
                g.timer_values.append(t.value / t.hit_count if t.hit_count else t.value)
                g.ru_utime += t.ru_utime
                g.ru_stime += t.ru_stime
                g.req_time += t.value  # for ranking and <other>
        width = len(tag_names) + (1 if per_script else 0)
        groups = self._capped(groups, tuple(OTHER for _ in range(width)))
        names = (["script_name"] if per_script else []) + list(tag_names)
        rows = []
        for key, g in groups.items():
            g.timer_values.sort()
            row: dict[str, Any] = dict(zip(names, key))
            row.update(
                req_count=g.req_count,
                req_per_sec=g.req_count / interval,
                hit_count=g.hit_count,
                hit_per_sec=g.hit_count / interval,
                timer_value=g.timer_value,
                timer_median=percentile(g.timer_values, 50),
                ru_utime_value=g.ru_utime,
                ru_stime_value=g.ru_stime,
            )
            for p in self.percentiles:
                row[f"timer_p{p:g}"] = percentile(g.timer_values, p)
            rows.append(row)
        rows.sort(key=lambda row: -row["timer_value"])
        return rows

    def tag_report(self, tag_names: Sequence[str]) -> list[dict[str, Any]]:
        """Requests grouped by the values of request tags ``tag_names``."""
        records = self.records()
        interval = self.interval()
        groups: dict[tuple[str, ...], _Group] = {}
        for r in records:
            tags = dict(r.tags)
            try:
                key = tuple(tags[name] for name in tag_names)
            except KeyError:
                continue
            g = groups.get(key)
            if g is None:
                g = groups[key] = _Group()
            g.add_request(r)
            g.times.append(r.req_time)
        groups = self._capped(groups, tuple(OTHER for _ in tag_names))
        rows = []
        for key, g in groups.items():
            g.times.sort()
            row: dict[str, Any] = dict(zip(tag_names, key))
            row.update(
                req_count=g.req_count,
                req_per_sec=g.req_count / interval,
                req_time_total=g.req_time,
                req_time_median=percentile(g.times, 50),
                ru_utime_total=g.ru_utime,
                ru_stime_total=g.ru_stime,
                traffic_total=g.traffic / 1024,
            )
            for p in self.percentiles:
                row[f"req_time_p{p:g}"] = percentile(g.times, p)
            rows.append(row)
        rows.sort(key=lambda row: -row["req_time_total"])
        return rows

    def info(self) -> dict[str, Any]:
        """pinba_engine's ``info``: totals of the window."""
        records = self.records()
        times = sorted(r.req_time for r in records)
        return {
            "req_count": len(records),
            "time_total": sum(times),
            "ru_utime_total": sum(r.ru_utime for r in records),
            "ru_stime_total": sum(r.ru_stime for r in records),
            "time_interval": self.interval(),
            "kbytes_total": sum(r.doc_size for r in records) / 1024,
            "memory_footprint": sum(r.memory_footprint for r in records) / 1024,
            "req_time_median": percentile(times, 50),
        }

    def status(self) -> dict[str, Any]:
        """Health: what was received, what was refused and why, what memory holds."""
        records = self.records()
        words = {w for r in records for pair in r.tags for w in pair}
        words.update(w for r in records for t in r.timers for pair in t.tags for w in pair)
        with self._lock:
            invalid = dict(self.invalid)
        return {
            "requests_total": self.requests_total,
            "requests_in_window": len(records),
            "invalid_packets": sum(invalid.values()),
            "invalid_by_reason": invalid,
            "evicted_records": self.evicted,
            "overflow_keys": self.overflow_keys,
            "dictionary_size": len(words),
            "window": self.window,
        }
