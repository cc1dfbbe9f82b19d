"""The ``pynba`` command: collect, report, decode, demo.

pynba collect [--listen HOST:PORT] [--http HOST:PORT] [--db FILE] [--window S] [--interval S]
              [--json]
pynba report --db FILE [--by script|server|host|status|schema|timer:TAGS] [--json]
pynba decode FILE|-
pynba demo [--http HOST:PORT] [--serve]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pynba_exporter.collector import (
    Collector,
    CollectorError,
    SqliteStore,
    WebServer,
    report_table,
)
from pynba_exporter.wire import PinbaDecodeError, decode

__all__ = ["main"]

BY: dict[str, str] = {
    "script": "report_by_script_name",
    "server": "report_by_server_name",
    "host": "report_by_hostname",
    "status": "report_by_status",
    "schema": "report_by_schema",
    "server-script": "report_by_server_and_script",
    "host-script": "report_by_hostname_and_script",
    "script-status": "report_by_script_and_status",
}

_REQUEST_COLUMNS = ["req_count", "req_per_sec", "req_time_total", "req_time_percent",
                    "req_time_median", "req_time_p95", "req_time_p99", "ru_utime_total",
                    "traffic_total"]  # fmt: skip
_TIMER_COLUMNS = ["req_count", "hit_count", "hit_per_sec", "timer_value", "timer_median",
                  "timer_p95", "ru_utime_value"]  # fmt: skip


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def render(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str],
           top: int = 15) -> str:  # fmt: skip
    """A report as an aligned text table (the first ``top`` rows)."""
    shown = [[_cell(row.get(c, "")) for c in columns] for row in rows[:top]]
    widths = [max([len(c)] + [len(r[i]) for r in shown]) for i, c in enumerate(columns)]
    lines = [f"{title} ({len(rows)} rows)"]
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in shown)
    return "\n".join(lines)


def reports_text(
    collector: Collector,
    timer_tags: Sequence[Sequence[str]],
    top: int = 15,
    request_tags: Sequence[Sequence[str]] = (),
) -> str:
    a = collector.aggregator
    parts = [
        render("requests by script", a.request_report(("script_name",)),
               ["script_name", *_REQUEST_COLUMNS], top),
        render("requests by status", a.request_report(("status",)),
               ["status", "req_count", "req_per_sec", "req_time_median"], top),
    ]  # fmt: skip
    parts.extend(
        render(f"timers by {','.join(tags)}", a.timer_report(tags), [*tags, *_TIMER_COLUMNS], top)
        for tags in timer_tags
    )
    parts.extend(
        render(f"requests by tag {','.join(tags)}", a.tag_report(tags),
               [*tags, "req_count", "req_per_sec", "req_time_total", "req_time_median"], top)
        for tags in request_tags
    )  # fmt: skip
    info = a.info()
    parts.append("info: " + ", ".join(f"{k}={_cell(v)}" for k, v in info.items()))
    status = collector.status()
    invalid = status.pop("invalid_by_reason")
    parts.append("status: " + ", ".join(f"{k}={_cell(v)}" for k, v in status.items()))
    if invalid:
        parts.append("invalid packets: " + ", ".join(f"{k}: {v}" for k, v in invalid.items()))
    return "\n\n".join(parts)


def reports_json(
    collector: Collector,
    timer_tags: Sequence[Sequence[str]],
    request_tags: Sequence[Sequence[str]] = (),
) -> dict[str, Any]:
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


def _tag_groups(
    values: Sequence[str] | None, default: Sequence[str] = ("group", "group,server")
) -> list[tuple[str, ...]]:
    groups = values or default
    return [tuple(n.strip() for n in g.split(",") if n.strip()) for g in groups]


def _percentiles(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not values or not all(0 < v <= 100 for v in values):
        raise argparse.ArgumentTypeError(f"percentiles are between 0 and 100: {text!r}")
    return values


def cmd_collect(args: argparse.Namespace, out: TextIO) -> int:
    timer_tags = _tag_groups(args.timer_tags)
    request_tags = _tag_groups(args.request_tags, ())
    collector = Collector(args.listen, window=args.window, percentiles=args.percentiles)
    if args.db:
        collector.store = SqliteStore(
            args.db, collector.aggregator, timer_tags=timer_tags, request_tags=request_tags
        )
    web = None
    if args.http:
        web = WebServer(
            collector, args.http, timer_tags=timer_tags, request_tags=request_tags
        )  # before start: it counts from the first packet
    collector.start()
    print(f"pynba collector listening on {collector.address_text}"
          + (f", writing {args.db}" if args.db else ""), file=sys.stderr, flush=True)  # fmt: skip
    if web is not None:
        try:
            web.start()
        except CollectorError:
            collector.stop()
            raise
        print(f"pynba collector: live page at {web.url}", file=sys.stderr, flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    try:
        deadline = time.monotonic() + args.duration if args.duration else math.inf
        while not stop and time.monotonic() < deadline:
            time.sleep(min(args.interval, max(0.0, deadline - time.monotonic())))
            if args.json:
                report = reports_json(collector, timer_tags, request_tags)
                print(json.dumps(report), file=out, flush=True)
            else:
                clear = "\033[2J\033[H" if out.isatty() else "\n"
                text = reports_text(collector, timer_tags, request_tags=request_tags)
                print(clear + text, file=out, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        if web is not None:
            web.stop()
        collector.stop()
    if args.json:
        print(json.dumps(reports_json(collector, timer_tags, request_tags)), file=out, flush=True)
    else:
        text = reports_text(collector, timer_tags, request_tags=request_tags)
        print("\nfinal report\n\n" + text, file=out, flush=True)
    return 0


def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    if not os.path.exists(args.db):
        print(f"pynba report: no database {args.db!r} (run pynba collect --db)", file=sys.stderr)
        return 2
    if args.by.startswith("timer:"):
        tags = [t for t in args.by[len("timer:") :].split(",") if t]
        table = report_table("tag_info", tags)
    elif args.by in BY:
        table = BY[args.by]
    else:
        print(f"pynba report: --by {args.by!r}: choose from {', '.join(BY)} or timer:TAGS",
              file=sys.stderr)  # fmt: skip
        return 2
    db = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    try:
        cur = db.execute(f'SELECT * FROM "{table}" ORDER BY 1')
    except sqlite3.OperationalError:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        print(f"pynba report: no table {table!r} in {args.db}; there are: {', '.join(tables)}",
              file=sys.stderr)  # fmt: skip
        return 2
    columns = [d[0] for d in cur.description]
    rows = [dict(zip(columns, r)) for r in cur.fetchall()]
    db.close()
    if "req_time_total" in columns:
        rows.sort(key=lambda r: -(r["req_time_total"] or 0))
    elif "timer_value" in columns:
        rows.sort(key=lambda r: -(r["timer_value"] or 0))
    if args.json:
        print(json.dumps(rows), file=out)
    else:
        print(render(table, rows, columns, args.top), file=out)
    return 0


def cmd_decode(args: argparse.Namespace, out: TextIO) -> int:
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    try:
        r = decode(data)
    except PinbaDecodeError as exc:
        print(f"pynba decode: not a valid Pinba packet: {exc.reason}", file=sys.stderr)
        return 1
    fields = {
        k: getattr(r, k)
        for k in ("hostname", "server_name", "script_name", "request_count", "document_size",
                  "memory_peak", "memory_footprint", "request_time", "ru_utime", "ru_stime",
                  "status", "schema")
    }  # fmt: skip
    fields["tags"] = dict(r.tags)
    fields["timers"] = [
        {"tags": dict(t.tags), "value": t.value, "hit_count": t.hit_count,
         "ru_utime": t.ru_utime, "ru_stime": t.ru_stime}
        for t in r.timers
    ]  # fmt: skip
    fields["requests"] = len(r.requests)
    print(json.dumps(fields, indent=2, ensure_ascii=False), file=out)
    return 0


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from pynba._demo import run_demo  # noqa: PLC0415 - only for this command

    def serving(url: str) -> None:
        print(f"pynba demo: live page at {url}"
              + ("" if args.serve else " while the demo runs (--serve keeps it up)"),
              file=out, flush=True)  # fmt: skip

    started = time.monotonic()
    collector = run_demo(args.requests, http=args.http, on_serving=serving, serve=args.serve)
    took = time.monotonic() - started
    print(f"pynba demo: {args.requests} HTTP requests to a monitored shop app, reported to an "
          f"embedded collector in {took:.1f} s\n", file=out)  # fmt: skip
    timer_tags = [("group",), ("group", "server")]
    print(reports_text(collector, timer_tags, request_tags=[("user_type",)]), file=out)
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(
        prog="pynba", description="Pinba for Python: collector and tools"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("collect", help="run the collector and show live reports")
    p.add_argument("--listen", default="127.0.0.1:30002", help="HOST:PORT (default %(default)s)")
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve a live page, its JSON API and /metrics there, e.g. 127.0.0.1:8080 "
        "(a bare PORT is on 127.0.0.1; other interfaces only when named)",
    )
    p.add_argument("--db", help="keep raw data and reports in this SQLite file")
    p.add_argument("--window", type=float, default=900.0, help="seconds of data kept (900)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between reports (5)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0: never)")
    p.add_argument(
        "--timer-tags", action="append", help="timer tags to report by, e.g. group,server"
    )
    p.add_argument("--request-tags", action="append", help="request tags to report by: user_type")
    p.add_argument(
        "--percentiles", type=_percentiles, default=(95.0, 99.0), help="e.g. 90,99,99.9 (95,99)"
    )
    p.add_argument("--json", action="store_true", help="print JSON lines instead of tables")
    p = sub.add_parser("report", help="print a report from a database the collector writes")
    p.add_argument("--db", required=True)
    p.add_argument(
        "--by", default="script", help="script, server, host, status, schema, timer:TAGS"
    )
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("decode", help="print a captured packet decoded")
    p.add_argument("file", help="a file holding one packet, or - for standard input")
    p = sub.add_parser("demo", help="collector, monitored app, traffic and reports, in seconds")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument(
        "--http", metavar="HOST:PORT", default="127.0.0.1:0",
        help="where the live page is served while the demo runs (a free local port)",
    )  # fmt: skip
    p.add_argument(
        "--serve", action="store_true",
        help="after the first requests, keep the app busy and the page up until Ctrl-C",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if getattr(args, "window", 1) <= 0 or getattr(args, "interval", 1) <= 0:
        parser.error("--window and --interval must be positive")
    try:
        if args.command == "collect":
            return cmd_collect(args, out)
        if args.command == "report":
            return cmd_report(args, out)
        if args.command == "decode":
            return cmd_decode(args, out)
        return cmd_demo(args, out)
    except (CollectorError, PermissionError, ValueError, OSError) as exc:
        print(f"pynba {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
