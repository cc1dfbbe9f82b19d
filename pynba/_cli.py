"""The ``pynba`` command: collect, report, decode, demo, run.

pynba collect [--listen HOST:PORT] [--http HOST:PORT] [--db FILE] [--window S] [--interval S]
              [--json] [--max-memory SIZE] [--max-queue SIZE] [--percentiles 90,99]
pynba report --db FILE [--by script|server|host|status|schema|timer:TAGS|tag:TAGS] [--json]
             [--since 2h | --between START END]    (the history: minutes, then hours)
pynba decode FILE|-
pynba demo [--http HOST:PORT] [--serve]
pynba run [--script NAME] [--tag K=V]... [--server ADDR] [--hostname H] [--server-name S] -- CMD...

pynba --version

Names in packets are chosen by whoever sends them: every text output escapes their control and
bidi characters (``printable``); JSON output is exact. SIGINT and SIGTERM stop the collector:
it drains what the kernel holds, prints the final report (within 2 s), then lets the database
writer finish (4 s at most; what it could not write is counted) and exits. Reports are printed
only when something changed; numbers are checked as they are read (the subcommand's usage
says what is wrong); a reader that goes away (``| head``) ends the command quietly, exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pynba import __version__
from pynba_exporter.collector import (
    REPORTS,
    Collector,
    CollectorError,
    ReportError,
    SqliteStore,
    WebServer,
    printable,
    report_table,
    reports_text,
    stored_history,
    stored_report,
    write_reports,
)
from pynba_exporter.wire import PinbaDecodeError, decode

__all__ = ["main"]

#: ``pynba report --by`` names -> tables, from the collector's one table of reports.
BY: dict[str, str] = {spec.short: spec.table for spec in REPORTS}


#: Seconds the database writer has after the final report to write what it still holds (a
#: container runtime's grace is 10 s by default: drain, report and writer fit in it).
STORE_STOP_SECONDS = 4.0


class _Stopped(Exception):
    """SIGTERM or SIGINT arrived: leave the reporting loop now, not at the next interval."""


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


def _positive(text: str) -> float:
    """Seconds that must be more than 0 (``--window``, ``--interval``)."""
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def _not_negative(text: str) -> float:
    """Seconds that may be 0 (``--duration``: 0 is never)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _count(text: str) -> int:
    """A whole number of at least 1 (``--top``, ``--requests``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text!r}")
    return value


def _size(text: str) -> int:
    """``256M``, ``1G``, ``65536``: bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        value = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256M, 1G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a size must be positive: {text!r}")
    return value


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> float:
    """``90s``, ``15m``, ``2h``, ``7d``, ``1w`` (a bare number is seconds): more than 0."""
    t = text.strip().lower()
    scale = _SECONDS.get(t[-1:], 0)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 2h, 30m, 7d)") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"a duration must be more than 0: {text!r}")
    return value


def _moment(text: str) -> float:
    """A time: ISO 8601 (``2026-12-03T10:00``, ``2026-12-03 10:00:00+01:00``; UTC when no
    zone is given) or seconds since the epoch."""
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.datetime.fromisoformat(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a time: {text!r} (e.g. 2026-12-03T10:00, UTC unless a zone is given)"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        return moment.timestamp()
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _history_time(text: str) -> float:
    """A time of ``--between``: within the years 1970-9999."""
    value = _moment(text)
    if not 0 <= value < _YEAR_10000:
        raise argparse.ArgumentTypeError(f"not a time between 1970 and 9999: {text!r}")
    return value


_YEAR_10000 = 253_402_300_800.0


def _raise_stopped(signum: int, frame: Any) -> None:
    # The first signal stops; later ones (a second Ctrl-C during the drain) must not cut the
    # drain or the final report short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stopped(signum)


def cmd_collect(args: argparse.Namespace, out: TextIO) -> int:
    timer_tags = _tag_groups(args.timer_tags)
    request_tags = _tag_groups(args.request_tags, ())
    collector = Collector(
        args.listen, window=args.window, percentiles=args.percentiles,
        max_bytes=args.max_memory, timer_tags=timer_tags, request_tags=request_tags,
    )  # fmt: skip
    store = web = None
    if args.db:
        store = collector.store = SqliteStore(
            args.db, collector.aggregator, timer_tags=timer_tags, request_tags=request_tags,
            max_pending_bytes=args.max_queue, max_history_bytes=args.max_history,
        )  # fmt: skip
    if args.http:  # (made before start: it counts from the first packet)
        web = WebServer(collector, args.http, timer_tags=timer_tags, request_tags=request_tags)
    # Both signals leave the loop at once (an exception from the handler ends the sleep);
    # what the kernel already holds is then drained, written and reported.
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            collector.start()
        except BaseException:
            if collector.store is not None:
                collector.store.close()
            raise
        try:
            where = f", writing {printable(args.db)}" if args.db else ""
            print(f"pynba collector listening on {collector.address_text}{where}",
                  file=sys.stderr, flush=True)  # fmt: skip
            if store is not None:
                print(_kept_text(store, args.window), file=sys.stderr, flush=True)
            if web is not None:
                web.start()
                print(f"pynba collector: live page at {web.url}", file=sys.stderr, flush=True)
            _serve_reports(args, out, collector, timer_tags, request_tags)
        except (_Stopped, KeyboardInterrupt):
            pass
        finally:
            # A second signal during the drain must not cut the final report short.
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)
            if web is not None:
                web.stop()
            # The store is closed after the final report: with many distinct keys a rebuild
            # of its report tables takes seconds, and the report must not wait for it.
            if store is not None:
                store.pause()
            collector.stop(close_store=False)
        try:
            write_reports(out, collector, timer_tags, request_tags, as_json=args.json, final=True)
        finally:
            if store is not None:
                # What the writer has not written by then is counted and logged.
                store.close(timeout=STORE_STOP_SECONDS)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _serve_reports(
    args: argparse.Namespace,
    out: TextIO,
    collector: Collector,
    timer_tags: Sequence[Sequence[str]],
    request_tags: Sequence[Sequence[str]],
) -> None:
    """Print the reports every ``args.interval`` seconds until ``args.duration`` (or a
    signal), and only when something changed."""
    deadline = time.monotonic() + args.duration if args.duration else math.inf
    shown = _state(collector)  # an idle collector prints nothing until a packet comes
    while time.monotonic() < deadline:
        report_at = min(deadline, time.monotonic() + args.interval)
        # Short sleeps: a signal the kernel gave to another thread only sets a flag that this
        # thread sees when it wakes, and it must act on it at once.
        while (left := report_at - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))
        state = _state(collector)
        if state != shown:  # quiet when nothing changed
            shown = state
            write_reports(out, collector, timer_tags, request_tags, as_json=args.json)


def _kept_text(store: SqliteStore, window: float) -> str:
    """What a restart found in the database, and what each part of it covers."""
    kept = store.kept

    def span(part: dict[str, Any], unit: str) -> str:
        if not isinstance(part["first"], int) or not isinstance(part["last"], int):
            return f"no {unit}s"
        first = time.strftime("%Y-%m-%d %H:%M", time.gmtime(part["first"]))
        last = time.strftime("%Y-%m-%d %H:%M", time.gmtime(part["last"]))
        return f"{unit}s from {first} to {last} UTC"

    archive = store.archive
    return (
        f"pynba collector: history kept in the database: {span(kept['minutes'], 'minute')},"
        f" {span(kept['hours'], 'hour')} ({kept['bytes'] / 2**20:,.1f} MiB of"
        f" {archive.max_bytes / 2**20:,.0f}); minutes are kept {archive.minute_retention / 86400:g}"
        f" days, then hours {archive.hour_retention / 86400:g} days (pynba report --since 2h)."
        f" Raw requests and the live reports are Pinba's window, the last {window:g} s:"
        f" {kept['raw_requests']:,} raw requests of it kept"
    )


def _state(collector: Collector) -> tuple[Any, ...]:
    """What the reports show changes only if one of these does: packets received, requests
    kept or gone, anything counted."""
    status = collector.status()
    return tuple(sorted((k, repr(v)) for k, v in status.items()))


def _report_table(by: str) -> str | None:
    if by.startswith("timer:"):
        tags = [t for t in by[len("timer:") :].split(",") if t]
        return report_table("tag_info", tags) if tags else None
    if by.startswith("tag:"):
        tags = [t for t in by[len("tag:") :].split(",") if t]
        return report_table("report_by_request_tag", tags) if tags else None
    return BY.get(by)


def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    if not os.path.exists(args.db):
        print(f"pynba report: no database {printable(args.db)!r} (run pynba collect --db)",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.since is not None or args.between is not None:
        if args.since is not None:
            until = time.time()
            since = max(0.0, until - args.since)  # --since 1e300: all of it
        else:
            since, until = args.between
            if not since < until:
                print("pynba report: --between START END: START must come before END",
                      file=sys.stderr)  # fmt: skip
                return 2
        try:
            text = stored_history(args.db, args.by, since, until, top=args.top, as_json=args.json)
        except ReportError as exc:
            print(f"pynba report: {exc}", file=sys.stderr)
            return 2
        print(text, file=out)
        return 0
    table = _report_table(args.by)
    if table is None:
        print(f"pynba report: --by {printable(args.by)!r}: choose from {', '.join(BY)}, "
              "timer:TAGS or tag:TAGS", file=sys.stderr)  # fmt: skip
        return 2
    try:
        text = stored_report(args.db, table, top=args.top, as_json=args.json)
    except ReportError as exc:
        print(f"pynba report: {exc}", file=sys.stderr)
        return 2
    print(text, file=out)
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
    print(json.dumps(fields, indent=2), file=out)  # ASCII: exact, and safe on a terminal
    return 0


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from pynba._demo import Traffic, explain, run_demo  # noqa: PLC0415 - only for this command

    def serving(url: str) -> None:
        print(f"pynba demo: live page at {url}"
              + ("" if args.serve else " while the demo runs (--serve keeps it up)"),
              file=out, flush=True)  # fmt: skip

    started = time.monotonic()
    traffic = Traffic()
    collector = run_demo(
        args.requests, http=args.http, on_serving=serving, serve=args.serve, traffic=traffic
    )
    took = time.monotonic() - started
    # What was sent (--serve sends more than --requests), then why the reports count and name
    # other than that: a reader would otherwise take the difference for lost requests.
    print(f"pynba demo: {len(traffic.answers)} HTTP requests to a monitored shop app, reported "
          f"to an embedded collector in {took:.1f} s", file=out)  # fmt: skip
    for line in explain(traffic, collector):
        print(f"  {line}", file=out)
    print(file=out)
    timer_tags = [("group",), ("group", "server")]
    print(reports_text(collector, timer_tags, request_tags=[("user_type",)]), file=out)
    return 0


def _tag(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def cmd_run(args: argparse.Namespace) -> int:
    from pynba._run import run  # noqa: PLC0415 - only for this command

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    return run(
        command, script_name=args.script, tags=dict(args.tag or ()), address=args.server,
        hostname=args.hostname, server_name=args.server_name,
    )  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pynba", description="Pinba for Python: collector and tools"
    )
    parser.add_argument("--version", action="version", version=f"pynba {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _collect_options(sub.add_parser("collect", help="run the collector and show live reports"))
    _report_options(
        sub.add_parser("report", help="print a report from a database the collector writes")
    )
    p = sub.add_parser("decode", help="print a captured packet decoded")
    p.add_argument("file", help="a file holding one packet, or - for standard input")
    _demo_options(
        sub.add_parser("demo", help="collector, monitored app, traffic and reports, in seconds")
    )
    p = sub.add_parser(
        "run", help="run a command as one Pinba request (a cron job, a script, a CI step)",
        description="Run CMD as one Pinba request: its time, CPU and peak memory, its exit "
        "status as the status (killed by signal S: 256+S). Its input, output, exit code and "
        "signals pass through; Pinba never fails it.",
    )  # fmt: skip
    p.add_argument("--script", help="the request's script name (default: the command's name)")
    p.add_argument(
        "--tag", action="append", type=_tag, metavar="NAME=VALUE", help="a request tag (repeat)"
    )
    p.add_argument(
        "--server", metavar="ADDR",
        help="Pinba server(s) (default: $OTEL_EXPORTER_PINBA_ENDPOINT, $PINBA_SERVER, "
        "127.0.0.1:30002)",
    )  # fmt: skip
    p.add_argument("--hostname", help="the request's host name (default: this machine's)")
    p.add_argument("--server-name", help="the request's server name (default: this machine's)")
    p.add_argument(
        "command_line", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
        help="the command to run and its arguments, after --",
    )  # fmt: skip
    return parser


def _collect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--listen", default="127.0.0.1:30002", metavar="HOST:PORT",
        help="where to receive UDP packets: %(default)s ([::1]:PORT for IPv6; 0.0.0.0:PORT for"
        " every interface, only when asked; port 0 takes a free one)",
    )  # fmt: skip
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve a live page, its JSON API and /metrics there, e.g. 127.0.0.1:8080 "
        "(a bare PORT is on 127.0.0.1; other interfaces only when named)",
    )
    p.add_argument(
        "--db", metavar="FILE",
        help="keep raw data and reports in this SQLite file (a new or empty file, or one an"
        " earlier pynba collect wrote; any other file is refused untouched)",
    )  # fmt: skip
    p.add_argument(
        "--window", type=_positive, default=900.0, metavar="S",
        help="seconds of requests the reports cover (900)",
    )  # fmt: skip
    p.add_argument(
        "--interval", type=_positive, default=5.0, metavar="S",
        help="seconds between two printed reports, printed only when something changed (5)",
    )  # fmt: skip
    p.add_argument(
        "--duration", type=_not_negative, default=0.0, metavar="S",
        help="stop after S seconds (0: never)",
    )  # fmt: skip
    p.add_argument(
        "--timer-tags", action="append", metavar="TAGS",
        help="timer tags to report by, e.g. group,server; repeat for more reports"
        " (group and group,server)",
    )  # fmt: skip
    p.add_argument(
        "--request-tags", action="append", metavar="TAGS",
        help="request tags to report by, e.g. user_type; repeat for more reports (none)",
    )  # fmt: skip
    p.add_argument(
        "--percentiles", type=_percentiles, default=(95.0, 99.0), metavar="LIST",
        help="percentile columns, e.g. 90,99,99.9 (95,99)",
    )  # fmt: skip
    p.add_argument(
        "--max-memory", type=_size, default=256 << 20, metavar="SIZE",
        help="bytes the window's requests and reports may hold: 256M (the oldest leave first)",
    )  # fmt: skip
    p.add_argument(
        "--max-queue", type=_size, default=64 << 20, metavar="SIZE",
        help="bytes of requests waiting for the database writer: 64M (beyond, not stored)",
    )  # fmt: skip
    p.add_argument(
        "--max-history", type=_size, default=4 << 30, metavar="SIZE",
        help="bytes the history by the minute and hour may take in the database: 4G (beyond,"
        " the oldest minutes leave early, their hours kept, then the oldest hours)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON lines instead of tables")


def _report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db", required=True, metavar="FILE", help="a database pynba collect --db wrote"
    )
    p.add_argument(
        "--by", default="script",
        help=f"{', '.join(BY)}, timer:TAGS (timer tags) or tag:TAGS (request tags)"
        " (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--top", type=_count, default=30, metavar="N",
        help="rows shown, those of most time first (%(default)s)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="every row as JSON instead of a table")
    when = p.add_mutually_exclusive_group()
    when.add_argument(
        "--since", type=_duration, metavar="DURATION",
        help="read the history instead of the window: the last DURATION (90s, 30m, 2h, 7d,"
        " 1w); --by script, server, host, status, total or timer:TAGS",
    )  # fmt: skip
    when.add_argument(
        "--between", type=_history_time, nargs=2, metavar=("START", "END"),
        help="read the history between two times (ISO 8601, UTC unless a zone is given, or"
        " seconds since the epoch)",
    )  # fmt: skip


def _demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--requests", type=_count, default=300, metavar="N",
        help="HTTP requests sent to the demo app (%(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--http", metavar="HOST:PORT", default="127.0.0.1:0",
        help="where the live page is served while the demo runs (a free local port)",
    )  # fmt: skip
    p.add_argument(
        "--serve", action="store_true",
        help="after the first requests, keep the app busy and the page up until Ctrl-C",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "collect":
            return cmd_collect(args, out)
        if args.command == "report":
            return cmd_report(args, out)
        if args.command == "decode":
            return cmd_decode(args, out)
        if args.command == "run":
            if not [a for a in args.command_line if a != "--"]:
                parser.error("run: no command given (pynba run [options] -- CMD ARGS...)")
            return cmd_run(args)
        return cmd_demo(args, out)
    except BrokenPipeError:
        # The reader went away (pynba report | head -1): what it wanted it has. Standard
        # output goes to /dev/null so that Python's flush at exit does not fail again.
        if out is sys.stdout:
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
        return 0
    except (CollectorError, PermissionError, ValueError, OSError) as exc:
        print(f"pynba {args.command}: {printable(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
