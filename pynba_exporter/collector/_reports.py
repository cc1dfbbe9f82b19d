"""Report rows from the groups: pinba_engine's request reports, tag reports and timer reports.

Groups are read under the aggregator's lock, a chunk of them at a time (their sums, and copies
of their values in C); they are folded, and rows and their percentiles made, outside it. A
report shows at most ``max_keys`` rows: the rest, those of least total time, are summed in one
``<other>`` row. Reports asked for keys
that are not configured are computed from the window's records.

pinba2's rules where it defines them: a timer tag name given twice keeps its first value;
timer percentiles weigh each timer's per-hit value by its hit count.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

from pynba_exporter.collector._live import (
    OTHER,
    LiveReports,
    RequestGroup,
    TimerGroup,
    ns,
    tag_key,
    timer_sums,
)
from pynba_exporter.collector._percentile import column, percentiles
from pynba_exporter.collector._record import Record

__all__ = ["REPORTS", "REQUEST_REPORTS", "ReportSpec", "Reports"]


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

# Folded sums of request groups: time, utime, stime (s), traffic, footprint, count, times.
ReqSums = tuple[float, float, float, int, int, int, list[float]]
# Of timer groups: value (s), req_count, hits, utime, stime, per-hit values, weights.
TimSums = tuple[float, int, int, float, float, list[float], list[int]]


def _percent(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def record_read(r: Record) -> ReadRequests:
    """A record as the read of a group of its own (a report by a key no group is kept for)."""
    t, u, s = ns(r.req_time), ns(r.ru_utime), ns(r.ru_stime)
    return t, u, s, r.doc_size, r.memory_footprint, 1, [r.req_time]


def _chain(lists: Iterable[Iterable[Any]]) -> list[Any]:
    return list(itertools.chain.from_iterable(lists))


# A group as read under the lock: its integer sums (nanoseconds) and a copy of its values. The
# sums of several groups are divided once, as a fold of them all is.
ReadRequests = tuple[int, int, int, int, int, int, list[float]]
ReadTimers = tuple[int, int, int, int, int, list[float], list[int]]


def read_requests(g: RequestGroup) -> ReadRequests:
    """Under the lock: one request group's sums and times."""
    return g.time, g.utime, g.stime, g.traffic, g.footprint, g.count, list(g.times)


def read_timers(g: TimerGroup) -> ReadTimers:
    """Under the lock: one timer group's sums, per-hit values and weights."""
    return g.value, g.req_count, g.hits, g.utime, g.stime, list(g.values), list(g.weights)


def fold_requests(gs: list[RequestGroup]) -> ReqSums:
    """Under the lock: the sums of request groups."""
    return fold_read_requests([read_requests(g) for g in gs])


def fold_timers(gs: list[TimerGroup]) -> TimSums:
    """Under the lock: the sums of timer groups."""
    return fold_read_timers([read_timers(g) for g in gs])


def fold_read_requests(reads: list[ReadRequests]) -> ReqSums:
    """The sums of request groups read by :func:`read_requests` (no lock needed)."""
    if len(reads) == 1:
        # Most keys have one group (a script seen from one host): no generator per column.
        # (The text reports of 30,000 scripts: 3.3 s with generators, 1.3 s without.)
        t, u, s, traffic, footprint, count, times = reads[0]
        return t / 1e9, u / 1e9, s / 1e9, traffic, footprint, count, times
    return (
        sum(r[0] for r in reads) / 1e9,
        sum(r[1] for r in reads) / 1e9,
        sum(r[2] for r in reads) / 1e9,
        sum(r[3] for r in reads),
        sum(r[4] for r in reads),
        sum(r[5] for r in reads),
        _chain(r[6] for r in reads),
    )


def fold_read_timers(reads: list[ReadTimers]) -> TimSums:
    """The sums of timer groups read by :func:`read_timers` (no lock needed)."""
    if len(reads) == 1:  # the common case, as for requests
        value, req_count, hits, u, s, values, weights = reads[0]
        return value / 1e9, req_count, hits, u / 1e9, s / 1e9, values, weights
    return (
        sum(r[0] for r in reads) / 1e9, sum(r[1] for r in reads),
        sum(r[2] for r in reads), sum(r[3] for r in reads) / 1e9,
        sum(r[4] for r in reads) / 1e9,
        _chain(r[5] for r in reads), _chain(r[6] for r in reads),
    )  # fmt: skip


def _merge(sums: list[tuple[Any, ...]]) -> Any:
    """Folded sums summed, their value lists joined (the ``<other>`` row)."""
    return tuple(
        _chain(column) if isinstance(column[0], list) else sum(column) for column in zip(*sums)
    )


_REPORTS_REMEMBERED: Final = 256  # distinct reports whose <other> row is counted


class Reports:
    """Rows from the groups of ``live`` (or from ``records`` for keys not configured)."""

    def __init__(self, live: LiveReports, max_keys: int, ps: tuple[float, ...]) -> None:
        self.live = live
        self.max_keys = max_keys
        self.percentiles = ps
        #: Rows merged into ``<other>`` the last time each report was made, by report: counted
        #: once per report, not again at every read (``overflow``).
        self.capped: dict[Any, int] = {}

    @property
    def overflow(self) -> int:
        """Requests or timers summed into an ``<other>`` group as they came, plus the rows
        each report last merged into its ``<other>`` row."""
        return self.live.overflow_keys + sum(self.capped.values())

    def totals(self) -> ReqSums:
        """Under the lock: the sums of every request of the window, kept up to date (the same
        integers as a fold of every group, without a pass over them)."""
        t = self.live.totals
        return (t.time / 1e9, t.utime / 1e9, t.stime / 1e9, t.traffic, t.footprint, t.count, [])

    def _cap(self, sums: dict[Any, Any], width: int, report: Any) -> dict[Any, Any]:
        """At most ``max_keys`` rows: the ones of least total time merged into ``<other>``."""
        if len(sums) <= self.max_keys:
            self.capped.pop(report, None)
            return sums
        other = (OTHER,) * width
        ranked = sorted(((k, s) for k, s in sums.items() if k != other), key=lambda kv: -kv[1][0])
        kept = dict(ranked[: self.max_keys - 1])
        rest = [s for _, s in ranked[self.max_keys - 1 :]]
        if other in sums:
            rest.append(sums[other])
        kept[other] = _merge(rest)
        if report not in self.capped and len(self.capped) >= _REPORTS_REMEMBERED:
            self.capped.clear()  # reports asked for through the Python API without end
        self.capped[report] = len(rest)
        return kept

    def request_sums(
        self, report: Any, width: int, reads: Iterable[tuple[Any, ReadRequests]], totals: ReqSums
    ) -> Any:
        """The sums of each key of ``report`` (``width`` columns) from groups read under the
        lock (``reads``: pairs of the report's key and a group's read), and the totals."""
        folded: dict[Any, list[ReadRequests]] = {}
        for key, read in reads:
            if read[5]:  # (a group emptied after its key was taken reads as nothing)
                folded.setdefault(key, []).append(read)
        sums = {k: fold_read_requests(rs) for k, rs in folded.items()}
        return totals, self._cap(sums, width, report)

    def request_rows(
        self,
        keys: Sequence[str],
        folded: Any,
        interval: float,
        *,
        full: bool,
        top: int | None = None,
    ) -> list[dict[str, Any]]:
        """Outside the lock: the rows (only the ``top`` of most time, if given), percentiles
        sorted in bounded runs."""
        totals, sums = folded
        rows = []
        for key, (t, u, s, traffic, footprint, count, values) in _top(sums, top):
            median, *ranks = percentiles(values, None, (50.0, *self.percentiles))
            row: dict[str, Any] = dict(zip(keys, key))
            row.update(req_count=count, req_per_sec=count / interval)
            for what, total, whole in (("req_time", t, totals[0]), ("ru_utime", u, totals[1]),
                                       ("ru_stime", s, totals[2])):  # fmt: skip
                row[f"{what}_total"] = total
                row[f"{what}_percent"] = _percent(total, whole)
                row[f"{what}_per_sec"] = total / interval
            row.update(
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
            rows.append(self._ranked(row, "req_time", ranks))
        return _largest_first(rows, "req_time_total")

    def timer_sums(
        self, names: tuple[str, ...], reads: Iterable[tuple[Any, ReadTimers]], *, per_script: bool
    ) -> dict[Any, TimSums]:
        """The sums of the timer groups of tags ``names`` (per script or not) from groups read
        under the lock (``reads``: pairs of a group's key, script first, and its read)."""
        # Groups are per script; tag_info folds the scripts (a request counted once per key).
        folded: dict[Any, list[ReadTimers]] = {}
        for key, read in reads:
            if read[5]:  # (emptied after its key was taken)
                folded.setdefault(key if per_script else key[1:], []).append(read)
        sums = {k: fold_read_timers(rs) for k, rs in folded.items()}
        width = len(names) + (1 if per_script else 0)
        return self._cap(sums, width, ("timer", names, per_script))

    def timer_rows(
        self,
        names: tuple[str, ...],
        sums: dict[Any, TimSums],
        interval: float,
        per_script: bool,
        top: int | None = None,
    ) -> list[dict[str, Any]]:
        """Outside the lock: the rows of :meth:`timer_sums` (only the ``top`` of most time, if
        given)."""
        columns = (["script_name"] if per_script else []) + list(names)
        rows = []
        for key, (value, req_count, hits, u, s, values, weights) in _top(sums, top):
            median, *ranks = percentiles(values, weights, (50.0, *self.percentiles))
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
            rows.append(self._ranked(row, "timer", ranks))
        return _largest_first(rows, "timer_value")

    def _ranked(self, row: dict[str, Any], prefix: str, ranks: list[float]) -> dict[str, Any]:
        """``row`` with its percentile columns (``req_time_p95``...)."""
        for p, value in zip(self.percentiles, ranks):
            row[column(prefix, p)] = value
        return row


def _top(sums: dict[Any, Any], top: int | None) -> Iterable[tuple[Any, Any]]:
    """The groups whose rows are made: all, or the ``top`` of most time (the first sum), the
    rows a text table shows (percentiles of 30,000 rows for 15 shown took a second)."""
    if top is None or len(sums) <= top:
        return sums.items()
    return heapq.nlargest(top, sums.items(), key=lambda kv: kv[1][0])


def _largest_first(rows: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    rows.sort(key=lambda row: -row[by])
    return rows


def scan_timers(
    names: tuple[str, ...], records: Iterable[Record]
) -> dict[tuple[Any, ...], TimerGroup]:
    """Timer groups of tags ``names`` (per script) from the records: timers without one of the
    tags are left out."""
    scratch: dict[tuple[Any, ...], TimerGroup] = {}
    for r in records:
        seen: set[int] = set()
        for tags, value, hits, ru_u, ru_s in r.timer_rows:
            key = tag_key(dict(tags), names)
            if key is None:
                continue
            full = (r.script_name, *key)
            g = scratch.get(full)
            if g is None:
                g = scratch[full] = TimerGroup()
            if id(g) not in seen:
                seen.add(id(g))
                g.req_count += 1
            g.add(value, hits, timer_sums(value, ru_u, ru_s))
    return scratch
