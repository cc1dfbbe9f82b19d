"""Reports on a terminal: the tables ``pynba collect`` prints as it runs (or its JSON lines),
and the stored report tables ``pynba report`` prints. Names that came from packets are escaped
(``printable``); JSON output is exact (ASCII).
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, TextIO

from pynba_exporter.collector import _archive, _archive_read
from pynba_exporter.collector._aggregate import Rows
from pynba_exporter.collector._percentile import column
from pynba_exporter.collector._server import Collector
from pynba_exporter.collector._text import printable

__all__ = ["ReportError", "render", "reports_json", "reports_text", "stored_history",
           "stored_report", "unit", "write_reports"]  # fmt: skip

_LABELS = {"invalid_by_reason": "invalid packets", "evicted_by_reason": "evicted records",
           "store_dropped_by_reason": "not stored"}  # fmt: skip

_JSON = json.JSONEncoder()  # ASCII output: exact, and safe on a terminal


class ReportError(Exception):
    """A stored report cannot be read: the message says why, in one line."""


def _request_columns(percentiles: Sequence[float]) -> list[str]:
    return ["req_count", "req_per_sec", "req_time_total", "req_time_percent", "req_time_median",
            *(column("req_time", p) for p in percentiles), "ru_utime_total",
            "traffic_total"]  # fmt: skip


def _timer_columns(percentiles: Sequence[float]) -> list[str]:
    return ["req_count", "hit_count", "hit_per_sec", "timer_value", "timer_median",
            *(column("timer", p) for p in percentiles), "ru_utime_value"]  # fmt: skip


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return printable("" if value is None else value)


def unit(column: str) -> str:
    """The unit of a report column, as pinba_engine's tables define them ("" for counts and
    names): seconds for times, KB for traffic and memory, % for shares, per second for
    rates."""
    if column.endswith("_percent"):
        return "%"
    if column.startswith(("traffic", "memory_footprint", "kbytes")):
        return "KB/s" if column.endswith("_per_sec") else "KB"
    if column in ("req_per_sec", "hit_per_sec"):
        return "/s"
    if column.startswith(("req_time", "ru_utime", "ru_stime", "timer_", "time_")):
        return "s/s" if column.endswith("_per_sec") else "s"
    return ""


def _header(column: str) -> str:
    u = unit(column)
    return f"{column} ({u})" if u else column


def render(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str],
           top: int = 15) -> str:  # fmt: skip
    """A report as an aligned text table (the first ``top`` rows), each column header with
    its unit (``req_time_total (s)``); names that came from packets are escaped
    (``printable``)."""
    shown = [[_cell(row.get(c, "")) for c in columns] for row in rows[:top]]
    columns = [printable(_header(c)) for c in columns]
    widths = [max([len(c)] + [len(r[i]) for r in shown]) for i, c in enumerate(columns)]
    total = getattr(rows, "total", len(rows))  # a report cut to its top rows knows its size
    lines = [f"{printable(title)} ({total} rows)"]
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in shown)
    return "\n".join(lines)


def _suffix(name: str) -> str:
    u = unit(name)
    return f" {u}" if u else ""


def reports_text(
    collector: Collector,
    timer_tags: Sequence[Sequence[str]],
    top: int = 15,
    request_tags: Sequence[Sequence[str]] = (),
) -> str:
    """The collector's reports as text tables, then its ``info`` and ``status``."""
    a = collector.aggregator
    ps = a.percentiles
    # Only the rows shown are made (percentiles of 30,000 rows for 15 shown took seconds, and
    # the final report at a stop must come at once).
    parts = [
        render("requests by script", a.request_report(("script_name",), top=top),
               ["script_name", *_request_columns(ps)], top),
        render("requests by status", a.request_report(("status",), top=top),
               ["status", "req_count", "req_per_sec", "req_time_median",
                *(column("req_time", p) for p in ps)], top),
    ]  # fmt: skip
    parts.extend(
        render(f"timers by {','.join(tags)}", a.timer_report(tags, top=top),
               [*tags, *_timer_columns(ps)], top)
        for tags in timer_tags
    )  # fmt: skip
    parts.extend(
        render(f"requests by tag {','.join(tags)}", a.tag_report(tags, top=top),
               [*tags, "req_count", "req_per_sec", "req_time_total", "req_time_median",
                *(column("req_time", p) for p in ps)], top)
        for tags in request_tags
    )  # fmt: skip
    info = a.info()
    parts.append("info: " + ", ".join(f"{k}={_cell(v)}{_suffix(k)}" for k, v in info.items()))
    status = collector.status()
    by_reason = {k: status.pop(k) for k in list(status) if isinstance(status[k], dict)}
    parts.append("status: " + ", ".join(f"{k}={_cell(v)}" for k, v in status.items()))
    for name, counts in by_reason.items():
        if counts:
            label = _LABELS.get(name, name)
            parts.append(
                f"{label}: " + ", ".join(f"{printable(k)}: {v}" for k, v in counts.items())
            )
    return "\n\n".join(parts)


def reports_json(
    collector: Collector,
    timer_tags: Sequence[Sequence[str]],
    request_tags: Sequence[Sequence[str]] = (),
) -> dict[str, Any]:
    """The collector's reports, ``info`` and ``status`` as one JSON-ready object."""
    a = collector.aggregator
    return {
        "request_tags": {",".join(t): a.tag_report(t) for t in request_tags},
        "time": time.time(),
        "by_script": a.request_report(("script_name",)),
        "by_status": a.request_report(("status",)),
        "timers": {",".join(t): a.timer_report(t) for t in timer_tags},
        "info": a.info(),
        "status": collector.status(),
    }


def write_reports(
    out: TextIO,
    collector: Collector,
    timer_tags: Sequence[Sequence[str]],
    request_tags: Sequence[Sequence[str]],
    *,
    as_json: bool = False,
    final: bool = False,
) -> None:
    """Print the reports: a JSON line, or tables (on a terminal, over the previous ones)."""
    if as_json:
        # Written piece by piece: every row of every report, with names of kilobytes, would
        # otherwise be one string of many megabytes next to the window it describes.
        for chunk in _JSON.iterencode(reports_json(collector, timer_tags, request_tags)):
            out.write(chunk)
        out.write("\n")
        out.flush()
        return
    text = reports_text(collector, timer_tags, request_tags=request_tags)
    if final:
        print("\nfinal report\n\n" + text, file=out, flush=True)
    else:
        clear = "\033[2J\033[H" if out.isatty() else "\n"
        print(clear + text, file=out, flush=True)


def stored_report(path: str, table: str, *, top: int = 30, as_json: bool = False) -> str:
    """The report ``table`` of a database ``pynba collect --db`` wrote, as a text table (the
    first ``top`` rows) or JSON, rows of most time first. Raises :class:`ReportError`."""
    columns, rows = _read_table(path, table)
    if "req_time_total" in columns:
        rows.sort(key=lambda r: -(r["req_time_total"] or 0))
    elif "timer_value" in columns:
        rows.sort(key=lambda r: -(r["timer_value"] or 0))
    if as_json:
        return json.dumps(rows)
    return render(table, rows, columns, top)


def _utc(t: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
    except (OverflowError, OSError, ValueError):  # out of the platform's calendar
        return f"{t:g} s"


def stored_history(
    path: str, by: str, since: float, until: float, *, top: int = 30, as_json: bool = False
) -> str:
    """The history a database keeps (minutes, then hours past their retention) of ``by``
    (``script``, ``server``, ``host``, ``status``, ``total`` or ``timer:TAGS``) between
    ``since`` and ``until`` (seconds since the epoch): one row per key over the whole range,
    most time first. Raises :class:`ReportError`."""
    dim = _archive_read.dimension(by)
    if dim is None:
        raise ReportError(
            f"--by {printable(by)!r} is not kept in the history: choose from script, server,"
            " host, status, total or timer:TAGS"
        )
    try:
        db = sqlite3.connect(_archive.read_only_uri(path), uri=True)
    except sqlite3.Error as exc:
        raise ReportError(f"cannot open {printable(path)!r}: {exc}") from None
    try:
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise ReportError(
                f"{printable(path)!r} is not a database pynba collect wrote ({exc})"
            ) from None
        if not {"history_minute", "history_hour"} <= tables:
            raise ReportError(
                f"no history in {printable(path)} (a file written before the collector kept"
                " one, or not the collector's)"
            )
        rows, total = _archive_read.report(db, dim, since, until, top=top)
    except sqlite3.Error as exc:
        raise ReportError(f"cannot read {printable(path)!r}: {exc}") from None
    finally:
        db.close()
    if as_json:
        return json.dumps(rows)
    title = f"history by {by}, {_utc(since)} to {_utc(until)}"
    columns = list(rows[0]) if rows else [by]
    return render(title, Rows(rows, total), columns, top)


def _read_table(path: str, table: str) -> tuple[list[str], list[dict[str, Any]]]:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ReportError(f"cannot open {printable(path)!r}: {exc}") from None
    try:
        try:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        except sqlite3.DatabaseError as exc:
            raise ReportError(
                f"{printable(path)!r} is not a database pynba collect wrote ({exc})"
            ) from None
        if table not in tables:
            raise ReportError(
                f"no table {printable(table)!r} in {printable(path)}; there are: "
                f"{', '.join(map(printable, tables))}"
            )
        cur = db.execute(f'SELECT * FROM "{table}" ORDER BY 1')
        columns = [d[0] for d in cur.description]
        return columns, [dict(zip(columns, r)) for r in cur.fetchall()]
    except sqlite3.Error as exc:
        raise ReportError(f"cannot read {printable(path)!r}: {exc}") from None
    finally:
        db.close()
