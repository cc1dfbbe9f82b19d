"""The history read back: a range planned over minutes and hours, reports and series.

The writer side (:class:`~pynba_exporter.collector._archive.Archive`) keeps minutes for days and
hours for months; a range reads its whole hours from ``history_hour`` and its edges from
``history_minute`` (:func:`plan`), so that a week is 168 rows per key, not 10,080. Every
reader here takes a connection of its own (read-only: ``read_only_uri``), never the writer's.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from pynba_exporter.collector._archive import ROWS_FROM, Figures, decode_cells, timer_dimension
from pynba_exporter.collector._history import cells_percentile

__all__ = ["Segment", "cells", "dimension", "minutes_from", "plan", "report", "series", "totals"]

_SUMS: Final = (
    "sum(req_count), sum(errors), sum(hit_count), sum(req_time_us), sum(ru_utime_us),"
    " sum(ru_stime_us)"
)


Segment = tuple[str, int, int, int]  # (table, first start, end, seconds a row covers)


def minutes_from(db: sqlite3.Connection) -> int:
    """The first hour from which minute rows are kept (older ranges read hours; 2**62 when
    the file holds no minute)."""
    (oldest,) = db.execute("SELECT min(start) FROM history_minute").fetchone()
    return oldest // 3600 * 3600 if isinstance(oldest, int) else 2**62


def plan(db: sqlite3.Connection, since: float, until: float) -> list[Segment]:
    """Where the figures of [since, until) are read: the whole hours inside the range from
    ``history_hour``, the minutes at its edges from ``history_minute``, widened to their
    hour where the minutes are gone (past their retention). A range starting inside a
    minute takes that minute whole. Segments never overlap."""
    s = math.floor(since / 60) * 60
    u = math.ceil(until) if math.isfinite(until) else 2**62
    if not s < u:
        return []
    kept = minutes_from(db)

    def edge(lo: int, hi: int) -> list[Segment]:
        if lo >= hi:
            return []
        if lo >= kept:
            return [("history_minute", lo, hi, 60)]
        hour = lo // 3600 * 3600
        return [("history_hour", hour, hour + 1, 3600)]

    a = -(-s // 3600) * 3600  # the first whole hour
    b = u // 3600 * 3600  # the end of the last whole hour
    if a > b:  # within one hour
        return edge(s, u)
    return [*edge(s, a), *([("history_hour", a, b, 3600)] if a < b else []), *edge(b, u)]


def _union(columns: str, where: str, segments: list[Segment]) -> str:
    return " UNION ALL ".join(
        f"SELECT {columns} FROM {table} WHERE start >= ? AND start < ? AND {where}"
        for table, *_ in segments
    )


def totals(db: sqlite3.Connection, dim: str, since: float, until: float) -> dict[str, Figures]:
    """Each key's sums of ``dim`` over [since, until) (see :func:`plan`), histograms left
    empty: summed by SQLite, per segment (see :func:`cells` for percentiles)."""
    out: dict[str, Figures] = {}
    for table, lo, hi, _ in plan(db, since, until):
        query = (
            f"SELECT key, {_SUMS} FROM {table} WHERE start >= ? AND start < ? AND dim = ?"
            " GROUP BY key"
        )
        for row in db.execute(query, (lo, hi, dim)):
            f = Figures.of_row([*row[1:], b""])
            key = str(row[0])
            if key in out:
                out[key].merge(f)
            else:
                out[key] = f
    return out


def cells(
    db: sqlite3.Connection, dim: str, keys: Sequence[str], since: float, until: float
) -> dict[str, dict[int, int]]:
    """The merged histograms of ``keys`` over [since, until), in one pass over each segment
    (the primary key starts with the time: a pass per key would read the range per key)."""
    merged: dict[str, dict[int, int]] = {key: {} for key in keys}
    segments = plan(db, since, until)
    if not keys or not segments:
        return merged
    marks = ", ".join("?" for _ in keys)
    query = _union("key, hist", f"dim = ? AND key IN ({marks})", segments)
    params = [p for _, lo, hi, _ in segments for p in (lo, hi, dim, *keys)]
    for key, blob in db.execute(query, params):
        found = merged.get(key)
        if found is not None:
            decode_cells(blob, found)
    return merged


def series(
    db: sqlite3.Connection, dim: str, key: str, since: float, until: float, *, hours: bool = False
) -> list[tuple[int, int, Figures]]:
    """(start, seconds it covers: 60 or 3600, figures) of one key, oldest first: minutes
    where they are kept (hours past their retention), or hours only with ``hours``."""
    segments = plan(db, since, until)
    if hours and segments:
        first = segments[0][1] // 3600 * 3600
        segments = [("history_hour", first, segments[-1][2], 3600)]
    elif segments:
        # Minutes for the whole range where they are kept, hours before.
        kept = minutes_from(db)
        lo, hi = segments[0][1], segments[-1][2]
        segments = []
        if lo < kept:
            segments.append(("history_hour", lo // 3600 * 3600, min(hi, kept), 3600))
        if hi > kept:
            segments.append(("history_minute", max(lo, kept), hi, 60))
    out = []
    for table, lo, hi, seconds in segments:
        query = f"{ROWS_FROM} {table} WHERE start >= ? AND start < ? AND dim = ? AND key = ?"
        for row in db.execute(query, (lo, hi, dim, key)):
            start = row[0] if isinstance(row[0], int) else 0
            out.append((start, seconds, Figures.of_row(row[3:])))
    out.sort(key=lambda x: x[0])
    return out


def dimension(by: str) -> str | None:
    """The history dimension of a ``pynba report --by`` name (None: not kept by the minute)."""
    if by in ("script", "server", "host", "status", "total"):
        return by
    if by.startswith("timer:"):
        names = [n.strip() for n in by[6:].split(",") if n.strip()]
        return timer_dimension(names) if names else None
    return None


def report(
    db: sqlite3.Connection,
    dim: str,
    since: float,
    until: float,
    *,
    percentiles: Sequence[float] = (95.0, 99.0),
    top: int = 30,
) -> tuple[list[dict[str, Any]], int]:
    """The report of ``dim`` over [since, until) as rows like the live reports' (most time
    first, the first ``top`` with their percentiles), and how many keys there are in all."""
    seconds = max(1.0, until - since)
    found = totals(db, dim, since, until)
    total_time = sum(f.req_time_us for f in found.values()) or 1
    ordered = sorted(found.items(), key=lambda kv: (-kv[1].req_time_us, kv[0]))[:top]
    timers = dim.startswith("timer:")
    names = dim[6:].split(",") if timers else [dim]
    rows = []
    histograms = cells(db, dim, [key for key, _ in ordered], since, until)
    for key, f in ordered:
        hist = histograms[key]
        row: dict[str, Any] = {}
        if timers:
            try:
                values = json.loads(key)
            except ValueError:
                values = [key]
            if not isinstance(values, list) or len(values) != len(names):
                values = [key] + [""] * (len(names) - 1)
            row.update(zip(names, (str(v) for v in values)))
            row.update({
                "req_count": f.req_count, "hit_count": f.hit_count,
                "hit_per_sec": f.hit_count / seconds, "timer_value": f.req_time_us / 1e6,
                "timer_median": cells_percentile(hist, 50),
            })  # fmt: skip
            for p in percentiles:
                row[f"timer_p{p:g}"] = cells_percentile(hist, p)
            row["ru_utime_value"] = f.ru_utime_us / 1e6
            row["ru_stime_value"] = f.ru_stime_us / 1e6
        else:
            row[_KEY_COLUMN.get(dim, dim)] = key
            row.update({
                "req_count": f.req_count, "req_per_sec": f.req_count / seconds,
                "req_time_total": f.req_time_us / 1e6,
                "req_time_percent": 100.0 * f.req_time_us / total_time,
                "req_time_median": cells_percentile(hist, 50),
            })  # fmt: skip
            for p in percentiles:
                row[f"req_time_p{p:g}"] = cells_percentile(hist, p)
            row["ru_utime_total"] = f.ru_utime_us / 1e6
            row["ru_stime_total"] = f.ru_stime_us / 1e6
            row["errors"] = f.errors
        rows.append(row)
    return rows, len(found)


# The key column of a request dimension, as the live reports name it.
_KEY_COLUMN: Final = {
    "script": "script_name", "server": "server_name", "host": "hostname", "status": "status",
    "total": "total",
}  # fmt: skip
