"""The JSON API of the collector's web page: every figure the page shows, from the reports.

Each function returns plain JSON-ready data built from the collector's public reports
(``request_report``, ``timer_report``, ``tag_report``, ``info``, ``status``) and the
:class:`History`; ``_http`` serves them under ``/api/``. Names from packets are returned as they
are: escaping is the page's job (it only ever sets them as text), and :func:`dumps` makes the JSON
itself safe to serve (no ``<``, ``>``, ``&`` even inside strings, no NaN).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from pynba_exporter.collector._archive import Archive, Figures, read_only_uri
from pynba_exporter.collector._archive_read import dimension, report, series
from pynba_exporter.collector._history import History, cells_percentile
from pynba_exporter.collector._percentile import percentile
from pynba_exporter.collector._server import Collector
from pynba_exporter.collector._text import MAX_TEXT, cut
from pynba_exporter.log import internal_errors

__all__ = [
    "HistoryQueryError",
    "config",
    "dumps",
    "health",
    "history",
    "overview",
    "script",
    "scripts",
    "tags",
    "timers",
]

_HISTOGRAM_BINS: Final = 24
_TOP_NAMES: Final = 50  # hosts and servers listed on the overview


def _safe(value: Any) -> Any:
    # JSON has no NaN or infinity (JSON.parse refuses them): they become null. Every string is
    # cut (a page of 8,000 names of 60 KB would be half a gigabyte). A dict's plain values are
    # checked in its own loop, not by a call each: a report of 10,000 scripts holds 250,000
    # values, and a call per value took 0.26 s of the 0.45 s /api/scripts took.
    if type(value) is not dict:
        return _plain(value)
    out = {}
    for key, v in value.items():
        k = key if type(key) is str and len(key) <= MAX_TEXT else cut(str(key))
        t = type(v)
        # Finite floats are kept as they are (inf - inf and NaN - NaN are NaN).
        plain = t is int or v is None or (t is str and len(v) <= MAX_TEXT)
        out[k] = v if plain or (t is float and v - v == 0.0) else _plain(v)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return _safe(value if type(value) is dict else dict(value))
    if isinstance(value, (list, tuple)):
        return [_safe(v) for v in value]
    if isinstance(value, str):
        return cut(str(value))
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    return value


def dumps(data: Any) -> bytes:
    """JSON text safe to serve whatever the strings hold: every string cut to ``MAX_TEXT``
    characters, ASCII only, and ``<``, ``>``, ``&`` escaped so that no browser can read a
    response as markup. The one way every API answer leaves."""
    text = json.dumps(_safe(data), ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    # These three characters only ever occur inside JSON strings, where \\uXXXX means the same.
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.encode("ascii")


def config(
    collector: Collector,
    history: History,
    timer_tags: Sequence[Sequence[str]],
    request_tags: Sequence[Sequence[str]],
    refresh: float,
) -> dict[str, Any]:
    """What the page needs to know once: refresh period, tag sets, percentile columns."""
    return {
        "refresh": refresh,
        "interval": history.interval,
        "history_size": history.size,
        "window": collector.aggregator.window,
        "percentiles": list(collector.aggregator.percentiles),
        "timer_tags": [list(t) for t in timer_tags],
        "request_tags": [list(t) for t in request_tags],
        "listen": collector.address_text,
    }


def _names(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [
        {"name": row[key], "req_count": row["req_count"], "req_per_sec": row["req_per_sec"]}
        for row in rows[:_TOP_NAMES]
    ]


def overview(collector: Collector, history: History) -> dict[str, Any]:
    """The charts' history, the window's totals, the hosts and servers seen."""
    aggregator = collector.aggregator
    info = aggregator.info()
    statuses = aggregator.request_report(("status",))
    errors = sum(row["req_count"] for row in statuses if _is_error(row["status"]))
    hosts = aggregator.request_report(("hostname",))
    servers = aggregator.request_report(("server_name",))
    hosts.sort(key=lambda row: -row["req_count"])
    servers.sort(key=lambda row: -row["req_count"])
    return {
        "time": collector.clock(),
        "history": history.points(),
        "interval": history.interval,
        "info": info,
        "req_per_sec": info["req_count"] / info["time_interval"],
        "errors": errors,
        "error_rate": errors / info["req_count"] if info["req_count"] else 0.0,
        "hosts": _names(hosts, "hostname"),
        "hosts_count": len(hosts),
        "servers": _names(servers, "server_name"),
        "servers_count": len(servers),
        "packets_received": collector.packets,
    }


def _is_error(status: Any) -> bool:
    return isinstance(status, int) and status >= 500


def scripts(collector: Collector) -> dict[str, Any]:
    """The report by script, each row with its statuses (status text -> requests)."""
    rows = collector.aggregator.request_report(("script_name",))
    statuses = collector.aggregator.status_counts()
    for row in rows:
        row["statuses"] = statuses.get(row["script_name"], {})
        row["cpu_total"] = row["ru_utime_total"] + row["ru_stime_total"]
        # Pinba's memory column is a sum over requests; per request is what people compare.
        row["memory_per_request"] = (
            row["memory_footprint_total"] / row["req_count"] if row["req_count"] else 0.0
        )
    return {"time": collector.clock(), "rows": rows}


def _histogram(times: list[float]) -> list[dict[str, Any]]:
    """Request times in bins of equal width on a log scale (equal width when all are tiny)."""
    if not times:
        return []
    low, high = min(times), max(times)
    if high <= low:
        return [{"low": low, "high": high, "count": len(times)}]
    log_scale = low > 0 and high / low > 10
    if log_scale:
        a, b = math.log(low), math.log(high)
    else:
        a, b = low, high
    width = (b - a) / _HISTOGRAM_BINS
    counts = [0] * _HISTOGRAM_BINS
    for t in times:
        x = math.log(t) if log_scale else t
        counts[min(_HISTOGRAM_BINS - 1, int((x - a) / width))] += 1
    bins = []
    for i, count in enumerate(counts):
        lo, hi = a + i * width, a + (i + 1) * width
        if log_scale:
            lo, hi = math.exp(lo), math.exp(hi)
        bins.append({"low": lo, "high": hi, "count": count})
    bins[0]["low"], bins[-1]["high"] = low, high  # exact ends, whatever exp(log(x)) gives
    return bins


def script(collector: Collector, name: str) -> dict[str, Any] | None:
    """One script: its report row, request-time histogram, statuses and timers (by ``group``
    and by ``group`` and ``server``) with hits and time per request and share of its time.
    ``name`` as the API gave it (cut when long). None when the window holds no request of that
    script. Only the script's own groups are read (``Aggregator.script_report``)."""
    found = collector.aggregator.script_report(name, (("group",), ("group", "server")))
    if found is None:
        return None
    row, times = found["row"], found["times"]
    statuses = [
        {
            "status": r["status"],
            "req_count": r["req_count"],
            "req_time_median": r["req_time_median"],
        }
        for r in found["statuses"]
    ]
    statuses.sort(key=lambda r: -r["req_count"])
    count, total = row["req_count"], row["req_time_total"]

    def timer_rows(tag_names: tuple[str, ...]) -> list[dict[str, Any]]:
        rows = found["timers"][tag_names]
        for t in rows:
            t["hits_per_request"] = t["hit_count"] / count if count else 0.0
            t["time_per_request"] = t["timer_value"] / count if count else 0.0
            t["time_percent"] = 100.0 * t["timer_value"] / total if total else 0.0
        return list(rows)

    return {
        "time": collector.clock(),
        "name": name,
        "row": row,
        "percentiles": {f"p{p:g}": percentile(times, p) for p in (50.0, 95.0, 99.0)},
        "histogram": _histogram(times),
        "statuses": statuses,
        "timers_by_group": timer_rows(("group",)),
        "timers_by_group_server": timer_rows(("group", "server")),
    }


def timers(collector: Collector, timer_tags: Sequence[Sequence[str]]) -> dict[str, Any]:
    """The timer reports of each configured tag set."""
    return {
        "time": collector.clock(),
        "reports": [
            {"tags": list(tags), "rows": collector.aggregator.timer_report(tuple(tags))}
            for tags in timer_tags
        ],
    }


def tags(collector: Collector, request_tags: Sequence[Sequence[str]]) -> dict[str, Any]:
    """The request-tag reports of each configured tag set."""
    return {
        "time": collector.clock(),
        "reports": [
            {"tags": list(t), "rows": collector.aggregator.tag_report(tuple(t))}
            for t in request_tags
        ],
    }


def health(collector: Collector, history: History) -> dict[str, Any]:
    """Packets received, refused by reason, dropped; memory held against its bound."""
    status = collector.status()
    return {
        "time": collector.clock(),
        "status": status,
        "memory": {
            "records": status["requests_in_window"],
            "bytes": status["window_bytes"] + status["dictionary_bytes"],
            "bytes_bound": status["max_bytes"],
            "history_intervals": history.size,
        },
        "internal_errors": internal_errors(),
        "uptime": collector.clock() - collector.aggregator.started,
    }


#: Keys a history answer lists at most (the first by time; ``top`` asks for fewer or more).
_HISTORY_TOP: Final = 30
_HISTORY_TOP_MAX: Final = 1000


class HistoryQueryError(ValueError):
    """A ``/api/history`` query that cannot be answered: the message says why."""


def _number(query: dict[str, list[str]], name: str, default: float | None) -> float | None:
    values = query.get(name)
    if not values:
        return default
    try:
        value = float(values[0])
    except ValueError:
        raise HistoryQueryError(f"{name} is not a number") from None
    if not math.isfinite(value):
        raise HistoryQueryError(f"{name} is not a finite number")
    return value


def history(path: str, query: dict[str, list[str]], now: float, archive: Archive) -> dict[str, Any]:
    """The history a database keeps (``/api/history``): ``by`` (script, server, host,
    status, total, timer:TAGS; ``total`` by default) over the last ``since`` seconds (3600) or
    from ``from`` to ``to`` (seconds since the epoch). With ``key`` (a name, a status, or for
    timers the JSON list of tag values as ``rows`` give it): that key's figures minute by
    minute (hours past the minute retention), or hour by hour (``resolution=hour``, the
    default for ranges over two days), in ``series``; without: ``rows``, the keys of most
    time over the range (``top``, 30 by default), and the series of the total.
    Raises :class:`HistoryQueryError` for a query it cannot answer."""
    by = (query.get("by") or ["total"])[0]
    dim = dimension(by)
    if dim is None:
        raise HistoryQueryError("by: script, server, host, status, total or timer:TAGS")
    start = _number(query, "from", None)
    end = _number(query, "to", None)
    if start is None:
        since = _number(query, "since", 3600.0) or 3600.0
        end = now if end is None else end
        start = end - since
    elif end is None:
        end = now
    if not start < end:
        raise HistoryQueryError("from must come before to")
    top = int(min(_HISTORY_TOP_MAX, max(1, _number(query, "top", _HISTORY_TOP) or 1)))
    keys = query.get("key")
    key = keys[0] if keys else None
    resolution = (query.get("resolution") or ["hour" if end - start > 2 * 86400 else "minute"])[0]
    if resolution not in ("minute", "hour"):
        raise HistoryQueryError("resolution: minute or hour")
    hours = resolution == "hour"
    db = sqlite3.connect(read_only_uri(path), uri=True)
    try:
        answer: dict[str, Any] = {
            "by": by, "from": start, "to": end,
            "minute_retention": archive.minute_retention,
            "hour_retention": archive.hour_retention,
        }  # fmt: skip
        if key is None:
            rows, total = report(db, dim, start, end, top=top)
            answer["rows"] = rows
            answer["rows_total"] = total
            points = series(db, "total", "", start, end, hours=hours)
        else:
            points = series(db, dim, key, start, end, hours=hours)
        answer["key"] = key
        answer["resolution"] = resolution
        answer["series"] = [_point(s, seconds, f, dim) for s, seconds, f in points]
        return answer
    finally:
        db.close()


def _point(start: int, seconds: int, f: Figures, dim: str) -> dict[str, Any]:
    point: dict[str, Any] = {
        "start": start, "seconds": seconds, "requests": f.req_count,
        "req_per_sec": f.req_count / seconds, "errors": f.errors,
        "error_rate": f.errors / f.req_count if f.req_count else None,
        "time_total": f.req_time_us / 1e6, "ru_utime": f.ru_utime_us / 1e6,
        "ru_stime": f.ru_stime_us / 1e6,
    }  # fmt: skip
    if dim.startswith("timer:"):
        point["hit_count"] = f.hit_count
    for p in (50, 95, 99):
        point[f"p{p}"] = cells_percentile(f.cells, p)
    return point
