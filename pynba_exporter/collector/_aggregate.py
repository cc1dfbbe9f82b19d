"""The collector's memory: requests of the rolling window, and Pinba's reports kept up to date.

Each request received is kept as a :class:`Record` for ``window`` seconds (900 by default, as
pinba_engine), within a budget in bytes (``max_bytes``, 256 MiB by default; ``_window``).
Reports are maintained as requests arrive and leave, not recomputed from every record
(``_live``); a report is then a fold of at most ``4 * max_keys`` groups (``_reports``), and
percentiles sort only the values of the window (``_percentile``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, TypeVar

from pynba_exporter.collector._live import (
    FINE,
    OTHER,
    LiveReports,
    RequestGroup,
    TimerGroup,
    tag_key,
)
from pynba_exporter.collector._percentile import column, percentile, percentiles
from pynba_exporter.collector._record import Record, TimerRecord, first_values
from pynba_exporter.collector._reports import (
    REPORTS,
    REQUEST_REPORTS,
    Reports,
    ReportSpec,
    ReqSums,
    fold_requests,
    fold_timers,
    read_requests,
    read_timers,
    record_read,
    scan_timers,
)
from pynba_exporter.collector._text import MAX_TEXT, cut
from pynba_exporter.collector._window import Window, count

__all__ = [
    "OTHER",
    "REPORTS",
    "REQUEST_REPORTS",
    "Aggregator",
    "Record",
    "ReportSpec",
    "Rows",
    "TimerRecord",
    "column",
    "first_values",
    "percentile",
    "percentiles",
]


_G = TypeVar("_G", RequestGroup, TimerGroup)
_R = TypeVar("_R")

#: Groups read per hold of the lock by a report (about a millisecond's work).
_CHUNK: Final = 2000


def _count_of(g: RequestGroup) -> int:
    return g.count


class Rows(list[dict[str, Any]]):
    """A report's rows (a list of dicts); ``total``: how many rows the whole report has (more
    than ``len`` when only the top rows were asked for)."""

    def __init__(self, rows: Iterable[dict[str, Any]] = (), total: int | None = None) -> None:
        super().__init__(rows)
        self.total = len(self) if total is None else total


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
        self.max_bytes = max_bytes
        self.max_keys = max_keys
        self.percentiles = tuple(percentiles)
        self.timer_tags = [tuple(t) for t in timer_tags]
        self.request_tags = [tuple(t) for t in request_tags]
        self.clock = clock
        self.started = clock()
        self._lock = threading.RLock()
        self.requests_total = 0
        self.invalid: dict[str, int] = {}
        self._live = LiveReports(max_keys, self.timer_tags, self.request_tags)
        self._reports = Reports(self._live, max_keys, self.percentiles)
        self._window = Window(
            self._live,
            window=window,
            max_records=max_records,
            max_bytes=max_bytes,
            max_dictionary_bytes=max_bytes // 8
            if max_dictionary_bytes is None
            else max_dictionary_bytes,
            clock=self._now,
            started=self.started,
        )

    def _now(self) -> float:
        return self.clock()  # the aggregator's clock, even once a test replaced it

    # -- input

    @property
    def serial(self) -> int:
        """Serial of the last record kept."""
        return self._window.serial

    @property
    def evicted(self) -> int:
        """Records that left before their time (for ``max_records`` or ``max_bytes``)."""
        return sum(self._window.evicted_by.values())

    @property
    def first_serial(self) -> int:
        """Serial of the oldest record still kept (past the last one when none is)."""
        with self._lock:
            return self._window.first_serial

    def add(self, records: Iterable[Record], returned: bool = True) -> list[Record]:
        """Keep ``records`` (their strings shared, their size estimated, a serial given); the
        oldest leave if the budget is exceeded. Returns the records kept (with ``returned``
        False, nothing: for a caller that has no use for them)."""
        kept: list[Record] = []
        with self._lock:
            window = self._window
            window.expire(self.clock())
            for record in records:
                self.requests_total += 1
                if window.keep(record) and returned:
                    kept.append(record)
            window.trim()
        return kept

    def add_invalid(self, reason: str) -> None:
        with self._lock:
            count(self.invalid, reason)

    def records(self) -> list[Record]:
        """The records of the window (expired ones leave now)."""
        with self._lock:
            self._window.expire(self.clock())
            return list(self._window.records())

    def snapshot(self) -> Iterator[Record]:
        """The records of the window, made outside the lock as they are iterated (the lock is
        held only to copy the list of rows: the receiving thread hardly waits)."""
        with self._lock:
            self._window.expire(self.clock())
            return self._window.snapshot()

    def interval(self) -> float:
        """Seconds the reports cover: the window, or less since the collector started."""
        return max(1e-9, min(self.window, self.clock() - self.started))

    # -- reports

    def _read(
        self, table: dict[Any, _G], read: Callable[[_G], _R]
    ) -> tuple[ReqSums, list[tuple[Any, _R]]]:
        """The totals, and the groups of ``table`` read by ``read`` a chunk at a time under the
        lock: the receiving thread waits at most for one chunk (about a millisecond), never for
        a whole report (with 20,000 scripts, a third of a second). Each group is read whole; a
        group emptied between two chunks reads as empty, and is left out by the fold. (The
        totals are those of the moment the groups were listed: a report's percent columns may
        add up to a hair off 100 while requests come and go.)"""
        with self._lock:
            self._window.expire(self.clock())
            totals = self._reports.totals()
            items = list(table.items())  # (in C: references only)
        reads: list[tuple[Any, _R]] = []
        for i in range(0, len(items), _CHUNK):
            with self._lock:
                reads.extend([(key, read(g)) for key, g in items[i : i + _CHUNK]])
        return totals, reads

    def _window_records(self) -> tuple[ReqSums, Iterator[Record]]:
        """The totals, and the window's records to read outside the lock (for a report by a
        key that no group is kept for)."""
        with self._lock:
            self._window.expire(self.clock())
            return self._reports.totals(), self._window.snapshot()

    def request_report(self, keys: Sequence[str], *, top: int | None = None) -> Rows:
        """One row per value of the record fields ``keys`` (pinba_engine's report_by_*); with
        ``top``, only the rows of most time (``total`` says how many the report has)."""
        keys = tuple(keys)
        if set(keys) <= set(FINE):
            idx = [FINE.index(k) for k in keys]
            totals, fine = self._read(self._live.fine, read_requests)
            reads = [(tuple([key[i] for i in idx]), read) for key, read in fine]
        else:  # another field (doc_size...): from the records
            totals, records = self._window_records()
            reads = [(tuple([getattr(r, k) for k in keys]), record_read(r)) for r in records]
        sums = self._reports.request_sums(("request", keys), len(keys), reads, totals)
        rows = self._reports.request_rows(keys, sums, self.interval(), full=True, top=top)
        return Rows(rows, len(sums[1]))

    def status_counts(self) -> dict[str, dict[str, int]]:
        """Requests by script name and status text (the scripts view's badges): the groups'
        counts alone, without the report rows and percentiles of a report by script and status
        (with 10,000 scripts, half the time of ``/api/scripts``)."""
        out: dict[str, dict[str, int]] = {}
        for (_, _, script, status, _), n in self._read(self._live.fine, _count_of)[1]:
            if n:
                counts = out.get(script)
                if counts is None:
                    counts = out[script] = {}
                text = str(status)
                counts[text] = counts.get(text, 0) + n
        return out

    def tag_report(self, tag_names: Sequence[str], *, top: int | None = None) -> Rows:
        """Requests grouped by the values of request tags ``tag_names`` (``top``: as above)."""
        names = tuple(tag_names)
        live = self._live
        if names in live.request_tags:
            totals, reads = self._read(live.rtags[live.request_tags.index(names)], read_requests)
        else:
            totals, records = self._window_records()
            reads = []
            for r in records:
                key = tag_key(dict(r.tags), names)
                if key is not None:
                    reads.append((key, record_read(r)))
        sums = self._reports.request_sums(("tag", names), len(names), reads, totals)
        rows = self._reports.request_rows(names, sums, self.interval(), full=False, top=top)
        return Rows(rows, len(sums[1]))

    def timer_report(
        self, tag_names: Sequence[str], *, per_script: bool = False, top: int | None = None
    ) -> Rows:
        """Timers grouped by the values of ``tag_names`` (pinba_engine's tag_info; with
        ``per_script``, tag_report): timers without one of the tags are left out (``top``: as
        above)."""
        names = tuple(tag_names)
        live = self._live
        if names in live.timer_tags:
            _, reads = self._read(live.timers[live.timer_tags.index(names)], read_timers)
        else:  # not kept up to date: from the records
            _, records = self._window_records()
            reads = [(k, read_timers(g)) for k, g in scan_timers(names, records).items()]
        sums = self._reports.timer_sums(names, reads, per_script=per_script)
        return Rows(
            self._reports.timer_rows(names, sums, self.interval(), per_script, top), len(sums)
        )

    def script_report(
        self, name: str, timer_tags: Sequence[Sequence[str]] = (("group",), ("group", "server"))
    ) -> dict[str, Any] | None:
        """One script's report row, its rows by status, its timer rows per tag set of
        ``timer_tags`` and its request times (sorted); None when the window holds none of it.
        ``name`` matches a script whose name is ``name`` or cuts to it (``cut``: the names an
        HTTP endpoint showed).

        For the web page, asked for by name at any rate: the lock is held only to pick the
        script's own groups (a pass over the group keys) and copy them; rows and percentiles
        are made outside it, and no report of every script is built (with 100,000 scripts in
        the window that took seconds, with the receiving thread waiting)."""
        wanted = tuple(tuple(t) for t in timer_tags)
        live = self._live
        with self._lock:
            self._window.expire(self.clock())
            if len(name) < MAX_TEXT:  # not cut: one comparison per group, in C mostly
                fine = [g for key, g in live.fine.items() if key[2] == name]
            else:
                fine = [g for key, g in live.fine.items() if cut(key[2]) == name]
            if not fine:
                return None
            by_status: dict[Any, list[RequestGroup]] = {}
            for g in fine:
                by_status.setdefault(g.key[3], []).append(g)
            statuses = {(name, s): fold_requests(gs) for s, gs in by_status.items()}
            whole = fold_requests(fine)
            totals = self._reports.totals()
            timer_sums, scan = self._script_timers(name, wanted)
            records = list(self._window.records()) if scan else []
        # Outside the lock: tag sets that are not kept up to date, from the script's records.
        mine = [r for r in records if cut(r.script_name) == name]
        for names in scan:
            timer_sums[names] = {
                (name, *k[1:]): fold_timers([g]) for k, g in scan_timers(names, mine).items()
            }
        interval = self.interval()
        reports = self._reports
        (row,) = reports.request_rows(
            ("script_name",), (totals, {(name,): whole}), interval, full=True
        )
        return {
            "row": row,
            "statuses": reports.request_rows(
                ("script_name", "status"), (totals, statuses), interval, full=True
            ),
            "timers": {
                names: reports.timer_rows(names, sums, interval, True)
                for names, sums in timer_sums.items()
            },
            "times": sorted(whole[6]),
        }

    def _script_timers(
        self, name: str, wanted: Sequence[tuple[str, ...]]
    ) -> tuple[dict[tuple[str, ...], dict[Any, Any]], list[tuple[str, ...]]]:
        """Under the lock: the sums of the script's timer groups of each tag set of ``wanted``
        kept up to date, and the tag sets that are not (to be read from its records)."""
        live = self._live
        timer_sums: dict[tuple[str, ...], dict[Any, Any]] = {}
        scan: list[tuple[str, ...]] = []
        for names in wanted:
            if names not in live.timer_tags:
                scan.append(names)
                continue
            table = live.timers[live.timer_tags.index(names)]
            folded: dict[Any, list[TimerGroup]] = {}
            for key, tg in table.items():
                if cut(key[0]) == name:
                    folded.setdefault((name, *key[1:]), []).append(tg)
            timer_sums[names] = {k: fold_timers(gs) for k, gs in folded.items()}
        return timer_sums, scan

    def info(self) -> dict[str, Any]:
        """pinba_engine's ``info``: totals of the window."""
        with self._lock:
            self._window.expire(self.clock())
            g = self._live.totals
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
            w = self._window
            w.expire(self.clock())
            return {
                "requests_total": self.requests_total,
                "requests_in_window": len(w),
                "invalid_packets": sum(self.invalid.values()),
                "invalid_by_reason": dict(self.invalid),
                "evicted_records": self.evicted,
                "evicted_by_reason": dict(w.evicted_by),
                "overflow_keys": self._reports.overflow,
                "dictionary_size": len(w.words),
                "dictionary_bytes": w.dictionary_bytes,
                "window_bytes": w.bytes,
                "max_bytes": self.max_bytes,
                "window": self.window,
            }
