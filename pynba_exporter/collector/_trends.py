"""What the page's graphs and lists need: series in buckets, a period before, what changed.

``/api/series`` gives one key's figures (a script, a timer group, a server, or the total) in
buckets over the last hour, day or week (or any ``from``/``to`` inside them: the page's
zoom), with the same figures shifted back a day or a week to compare. ``/api/changes`` gives
the slowest keys over the range and those whose time or error rate changed most against the
period before.

Both read the history the database keeps (``--db``: minutes for days, then hours), in a
read-only connection of their own, never under the aggregator's lock. Without a database the
only past is the live window (900 s): the series are made from its records (copied under the
lock as a list of references, about 10 ms for a million, and read outside it), nothing is
compared, and the answer says so (``source``: ``history`` or ``window``).

Bounded whatever is asked: a range is at most :data:`MAX_SPAN`; a bucket is the smallest of
:data:`STEPS` that draws it in at most :data:`MAX_POINTS` points (an hour by the minute, a day
by 5 minutes, a week by the hour), and never finer than the rows read (an hour where the
minutes are past their retention); lists hold ``top`` rows at most. Percentiles come from the
history's histogram cells (within 1 % of the exact value), in both sources alike.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pynba_exporter.collector._archive import Figures, read_only_uri, timer_key
from pynba_exporter.collector._archive_read import (
    cells,
    dimension,
    minutes_from,
    series,
    totals,
)
from pynba_exporter.collector._history import cell_of, cells_percentile
from pynba_exporter.collector._record import Record
from pynba_exporter.collector._text import cut, sql_text

__all__ = [
    "MAX_POINTS",
    "MAX_SPAN",
    "RANGES",
    "SHIFTS",
    "STEPS",
    "Query",
    "QueryError",
    "changes_from_history",
    "changes_from_window",
    "parse",
    "series_from_history",
    "series_from_window",
]

#: The ranges the page offers, in seconds.
RANGES: Final = {"hour": 3600, "day": 86400, "week": 7 * 86400}
#: How far back the comparison looks.
SHIFTS: Final = {"day": 86400, "week": 7 * 86400}
#: Bucket widths (seconds); the window's live series may use the finer ones.
STEPS: Final = (
    *(1, 2, 5, 10, 15, 30),
    *(60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400),
)
#: Buckets a series has at most: one per 2 to 4 pixels of a laptop's chart.
MAX_POINTS: Final = 300
#: The longest range (seconds): the hours' retention.
MAX_SPAN: Final = 92 * 86400
_MIN_HISTORY_STEP: Final = 60  # the history's finest rows
_TOP: Final = 15
_TOP_MAX: Final = 100
_MIN_REQUESTS: Final = 10  # a mean of fewer requests says more about luck than about change


class QueryError(ValueError):
    """A query that cannot be answered: the message says why (served as a ``400``)."""


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed ``/api/series`` or ``/api/changes`` query."""

    by: str
    dim: str
    key: str | None  # None: no key given (lists; the total's series)
    range: str
    start: float
    end: float
    compare: str | None
    top: int
    min_requests: int

    @property
    def shift(self) -> int:
        return SHIFTS[self.compare] if self.compare else 0

    @property
    def timer(self) -> bool:
        return self.dim.startswith("timer:")


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _number(query: dict[str, list[str]], name: str, default: float) -> float:
    text = _one(query, name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise QueryError(f"{name} is not a number") from None
    if not math.isfinite(value):
        raise QueryError(f"{name} is not a finite number")
    return value


def _whole(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    value = _number(query, name, default)
    if value != int(value) or not low <= value <= high:
        raise QueryError(f"{name}: a whole number from {low} to {high}")
    return int(value)


def parse(query: dict[str, list[str]], now: float) -> Query:
    """A query's parameters, checked: ``by`` (total, script, server, host, status,
    timer:TAGS), ``key``, ``range`` (hour, day, week), ``from`` and ``to`` (seconds since
    the epoch, inside at most :data:`MAX_SPAN`), ``compare`` (day, week or none), ``top``,
    ``min_requests``. Raises :class:`QueryError`."""
    by = _one(query, "by") or "total"
    dim = dimension(by)
    if dim is None:
        raise QueryError("by: total, script, server, host, status or timer:TAGS")
    name = _one(query, "range") or "hour"
    if name not in RANGES:
        raise QueryError("range: hour, day or week")
    end = _number(query, "to", now)
    start = _number(query, "from", end - RANGES[name])
    if not start < end:
        raise QueryError("from must come before to")
    if end - start > MAX_SPAN:
        raise QueryError(f"from and to: {MAX_SPAN // 86400} days apart at most")
    compare = _one(query, "compare") or None
    if compare == "none":
        compare = None
    if compare is not None and compare not in SHIFTS:
        raise QueryError("compare: day, week or none")
    key = _one(query, "key")
    if key is not None:
        key = _timer_key_text(key) if dim.startswith("timer:") else cut(key)
    return Query(
        by, dim, key, name, start, end, compare,
        _whole(query, "top", _TOP, 1, _TOP_MAX),
        _whole(query, "min_requests", _MIN_REQUESTS, 1, 10**9),
    )  # fmt: skip


def _timer_key_text(key: str) -> str:
    """A timer key as the history writes it (Python's JSON, each value cut), whoever wrote
    the JSON list the query gives (the page's ``JSON.stringify`` leaves out the spaces)."""
    try:
        values = json.loads(key)
    except ValueError:
        return cut(key)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        return cut(key)
    return json.dumps([cut(v) for v in values], ensure_ascii=False)


def fit_step(span: float, finest: int) -> int:
    """The narrowest bucket of :data:`STEPS`, not below ``finest``, that draws ``span``
    seconds in at most :data:`MAX_POINTS` buckets."""
    for step in STEPS:
        if step >= finest and span / step <= MAX_POINTS:
            return step
    return STEPS[-1]


def _buckets(start: float, end: float, step: int) -> tuple[int, int]:
    """The first bucket's start (a multiple of ``step``: the same buckets at every update)
    and the number of buckets covering [start, end)."""
    first = math.floor(start / step) * step
    return first, max(1, math.ceil((end - first) / step))


def _point(start: int, step: int, f: Figures, timer: bool, now: float) -> dict[str, Any]:
    n = f.req_count
    per = f.hit_count if timer else n  # timers: time and percentiles per hit, as the reports
    point: dict[str, Any] = {
        "start": start, "partial": start + step > now, "requests": n,
        "req_per_sec": n / step, "errors": f.errors,
        "error_rate": f.errors / n if n else None, "time_total": f.req_time_us / 1e6,
        "time_mean": f.req_time_us / 1e6 / per if per else None,
    }  # fmt: skip
    if timer:
        point["hit_count"] = f.hit_count
        point["hits_per_sec"] = f.hit_count / step
    for p in (50, 95, 99):
        point[f"p{p}"] = cells_percentile(f.cells, p)
    return point


def _series(
    buckets: list[Figures], first: int, step: int, timer: bool, now: float
) -> dict[str, Any]:
    return {
        "from": first,
        "step": step,
        "points": [_point(first + i * step, step, f, timer, now) for i, f in enumerate(buckets)],
    }


def _history_buckets(
    db: sqlite3.Connection, q: Query, start: float, end: float, kept: int
) -> tuple[list[Figures], int, int]:
    # Where the minutes are gone (past their retention, or the byte budget), the rows are
    # hours: a bucket is an hour at least there, or an hour's requests would stand in one
    # minute's bucket. A file younger than the range has neither: minutes it is.
    gone = (
        start < kept
        and db.execute(
            "SELECT 1 FROM history_hour WHERE start >= ? AND start < ? LIMIT 1",
            (math.floor(start / 3600) * 3600, kept),
        ).fetchone()
    )
    step = fit_step(end - start, 3600 if gone else _MIN_HISTORY_STEP)
    first, n = _buckets(start, end, step)
    buckets = [Figures() for _ in range(n)]
    for s, _, f in series(db, q.dim, sql_text(q.key or ""), first, end, hours=step >= 3600):
        i = (s - first) // step
        if 0 <= i < n:
            buckets[i].merge(f)
    return buckets, first, step


def series_from_history(path: str, q: Query, now: float) -> dict[str, Any]:
    """``/api/series`` from the database at ``path``: the key's buckets over the range and,
    with ``compare``, over the same range a day or a week before."""
    db = sqlite3.connect(read_only_uri(path), uri=True)
    try:
        kept = minutes_from(db)
        buckets, first, step = _history_buckets(db, q, q.start, q.end, kept)
        answer = _answer(q, "history", now, _series(buckets, first, step, q.timer, now))
        if q.compare:
            before, b_first, b_step = _history_buckets(
                db, q, q.start - q.shift, q.end - q.shift, kept
            )
            answer["compare"] = {
                "name": q.compare,
                "shift": q.shift,
                **_series(before, b_first, b_step, q.timer, now - q.shift),
            }
        answer["minutes_from"] = kept if kept < 2**62 else None
        return answer
    finally:
        db.close()


def _answer(q: Query, source: str, now: float, drawn: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": source, "by": q.by, "key": q.key, "range": q.range, "from": q.start,
        "to": q.end, "now": now, "series": drawn, "compare": None,
    }  # fmt: skip


def _fold(records: Iterable[Record], q: Query, first: int, step: int, n: int) -> list[Figures]:
    """The window's records of the key of ``q`` in buckets (the histories' cells, so that
    both sources give the same percentiles)."""
    buckets = [Figures() for _ in range(n)]
    want = sql_text(q.key or "")
    field = {"script": "script_name", "server": "server_name", "host": "hostname"}.get(q.dim)
    names = q.dim[6:].split(",") if q.timer else []
    for r in records:
        i = int((r.timestamp - first) // step)
        if not 0 <= i < n:
            continue
        if q.dim == "status":
            if str(r.status) != want:
                continue
        elif field is not None:
            name = getattr(r, field)
            if name != want and sql_text(cut(name)) != want:
                continue
        f = buckets[i]
        if q.timer:
            _fold_timers(f, r, names, want)
        else:
            f.add_request(r.req_time, r.status)
    return buckets


def _fold_timers(f: Figures, r: Record, names: Sequence[str], want: str) -> None:
    # As the history counts them: a request once per group it has, its timers' hits and
    # time, the per-hit values weighted by hits.
    counted = False
    for tags, value, hits, _, _ in r.timer_rows:
        if timer_key(tags, names) != want:
            continue
        if not counted:
            counted = True
            f.req_count += 1
            f.errors += r.status >= 500
        f.hit_count += hits
        f.req_time_us += round(value * 1e6)
        cell = cell_of(value / hits if hits > 0 else value)
        f.cells[cell] = f.cells.get(cell, 0) + max(1, hits)


def series_from_window(
    records: Iterator[Record], q: Query, now: float, window: float
) -> dict[str, Any]:
    """``/api/series`` without a database: the key's buckets over the part of the range the
    live window covers (``window`` seconds back from ``now``); nothing to compare with."""
    start, end = max(q.start, now - window), min(q.end, now)
    if not start < end:
        start, end = now - window, now
    step = fit_step(end - start, 1)
    first, n = _buckets(start, end, step)
    buckets = _fold(records, q, first, step, n)
    answer = _answer(q, "window", now, _series(buckets, first, step, q.timer, now))
    answer["window"] = window
    return answer


def _row(key: str, f: Figures, timer: bool, seconds: float) -> dict[str, Any]:
    per = f.hit_count if timer else f.req_count
    return {
        "key": key, "name": _name(key, timer), "requests": f.req_count,
        "req_per_sec": f.req_count / seconds, "errors": f.errors,
        "error_rate": f.errors / f.req_count if f.req_count else None,
        "time_mean": f.req_time_us / 1e6 / per if per else None,
    }  # fmt: skip


def _name(key: str, timer: bool) -> str:
    """A key as people read it: a timer key's tag values joined by " / "."""
    if not timer:
        return key
    try:
        values = json.loads(key)
    except ValueError:
        return key
    return " / ".join(str(v) for v in values) if isinstance(values, list) else key


def changes_from_history(path: str, q: Query, now: float) -> dict[str, Any]:
    """``/api/changes`` from the database: over the range, the ``top`` keys of most time per
    request (or per hit, for timers) with their p95; and against the same range a day or a
    week before (``compare``, a day when not given), those whose mean time changed most (as
    a ratio, either way) and whose error rate changed most (in points). Keys with fewer than
    ``min_requests`` requests in either period are left out of the comparisons."""
    compare = q.compare or "day"
    shift = SHIFTS[compare]
    seconds = q.end - q.start
    db = sqlite3.connect(read_only_uri(path), uri=True)
    try:
        now_f = totals(db, q.dim, q.start, q.end)
        before_f = totals(db, q.dim, q.start - shift, q.end - shift)
        rows = {k: _row(k, f, q.timer, seconds) for k, f in now_f.items()}
        slowest = sorted(rows.values(), key=lambda r: (-(r["time_mean"] or 0), r["key"]))
        slowest = slowest[: q.top]
        hists = cells(db, q.dim, [r["key"] for r in slowest], q.start, q.end)
    finally:
        db.close()
    for r in slowest:
        r["p95"] = cells_percentile(hists[r["key"]], 95)
    compared = []
    for k, r in rows.items():
        b = before_f.get(k)
        if b is None or min(b.req_count, r["requests"]) < q.min_requests:
            continue
        before = _row(k, b, q.timer, seconds)
        ratio = None
        if before["time_mean"] and r["time_mean"]:
            ratio = r["time_mean"] / before["time_mean"]
        change = 100 * (r["error_rate"] - before["error_rate"])  # points of percent
        compared.append({**r, "before": before, "time_ratio": ratio, "error_change": change})
    by_time = [r for r in compared if r["time_ratio"] is not None]
    by_time.sort(key=lambda r: (-abs(math.log(r["time_ratio"])), r["key"]))
    by_errors = [r for r in compared if r["error_change"] != 0]
    by_errors.sort(key=lambda r: (-abs(r["error_change"]), r["key"]))
    return {
        "source": "history", "by": q.by, "from": q.start, "to": q.end, "now": now,
        "compare": {"name": compare, "shift": shift}, "min_requests": q.min_requests,
        "keys": len(now_f), "slowest": slowest, "time": by_time[: q.top],
        "errors": by_errors[: q.top],
    }  # fmt: skip


def changes_from_window(
    records: Iterator[Record], q: Query, now: float, window: float
) -> dict[str, Any]:
    """``/api/changes`` without a database: the slowest keys of the live window; nothing to
    compare with (``compare`` is None)."""
    start = now - window
    sums = _window_sums(records, q, start)
    rows = [_row(k, f, q.timer, window) for k, f in sums.items()]
    rows.sort(key=lambda r: (-(r["time_mean"] or 0), r["key"]))
    rows = rows[: q.top]
    for r in rows:  # the top rows' only: a window may hold 10,000 scripts
        r["p95"] = cells_percentile(sums[r["key"]].cells, 95)
    return {
        "source": "window", "by": q.by, "from": start, "to": now, "now": now,
        "window": window, "compare": None, "min_requests": q.min_requests,
        "keys": len(sums), "slowest": rows, "time": [], "errors": [],
    }  # fmt: skip


def _window_sums(records: Iterable[Record], q: Query, start: float) -> dict[str, Figures]:
    """The figures of each key of ``q``'s dimension over the records since ``start`` (a
    request counts once in each timer group it has)."""
    sums: dict[str, Figures] = {}
    field = {"script": "script_name", "server": "server_name", "host": "hostname"}.get(q.dim)
    names = q.dim[6:].split(",") if q.timer else []
    for r in records:
        if r.timestamp < start:
            continue
        if q.timer:
            seen: set[str] = set()
            for tags, _, _, _, _ in r.timer_rows:
                key = timer_key(tags, names)
                if key is not None and key not in seen:
                    seen.add(key)
                    f = sums.get(key) or sums.setdefault(key, Figures())
                    _fold_timers(f, r, names, key)
            continue
        if field is not None:
            # The name as the live reports give it (bytes that were not UTF-8 as surrogate
            # escapes), so that it reads as in the scripts view and finds its script page.
            key = cut(getattr(r, field))
        else:
            key = str(r.status) if q.dim == "status" else ""
        f = sums.get(key) or sums.setdefault(key, Figures())
        f.add_request(r.req_time, r.status)
    return sums
