"""The read-only SQL view: the window's raw requests and the reports in SQLite.

Tables with pinba_engine's names and columns, so what Pinba users know works::

    sqlite3 pinba.db "select script_name, req_count, req_time_median from report_by_script_name"

- raw data: ``request``, ``timer``, ``timertag``, ``tag`` (rows older than the window are
  deleted);
- reports: ``report_by_script_name``, ``report_by_server_name``, ``report_by_hostname``,
  ``report_by_server_and_script``, ``report_by_hostname_and_script``, ``report_by_status``,
  ``report_by_script_and_status``, ``report_by_schema``; timer reports ``tag_info_<tags>`` and
  ``tag_report_<tags>`` (per script) for each configured tag group (``group`` and
  ``group,server`` by default); requests by request tags ``report_by_request_tag_<tags>`` for
  each configured request tag group; ``info``; ``status`` (name, value rows).

Writes happen in a thread of their own, in batched transactions (the receiving thread only
queues), and the database is in WAL mode: readers never block the collector, the collector
never blocks readers. Report tables are rebuilt every ``reports_interval`` seconds.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

from pynba_exporter.collector._aggregate import REQUEST_REPORTS, Aggregator, Record
from pynba_exporter.log import errors

__all__ = ["SqliteStore", "report_table"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS request (
    id INTEGER PRIMARY KEY, hostname TEXT, req_count INTEGER, server_name TEXT,
    script_name TEXT, doc_size INTEGER, mem_peak_usage INTEGER, req_time REAL, ru_utime REAL,
    ru_stime REAL, timers_cnt INTEGER, status INTEGER, memory_footprint INTEGER, schema TEXT,
    tags_cnt INTEGER, tags TEXT, timestamp REAL);
CREATE INDEX IF NOT EXISTS request_timestamp ON request (timestamp);
CREATE TABLE IF NOT EXISTS timer (
    id INTEGER PRIMARY KEY, request_id INTEGER, hit_count INTEGER, value REAL,
    ru_utime REAL, ru_stime REAL);
CREATE INDEX IF NOT EXISTS timer_request ON timer (request_id);
CREATE TABLE IF NOT EXISTS tag (id INTEGER PRIMARY KEY, name TEXT UNIQUE);
CREATE TABLE IF NOT EXISTS timertag (timer_id INTEGER, tag_id INTEGER, value TEXT);
CREATE INDEX IF NOT EXISTS timertag_timer ON timertag (timer_id);
"""

_IDENT = re.compile(r"[^A-Za-z0-9_]")


def report_table(kind: str, tag_names: Sequence[str]) -> str:
    """The table of a timer report: ``tag_info_group_server``, ``tag_report_group``..."""
    return f"{kind}_" + "_".join(_IDENT.sub("_", name) for name in tag_names)


class SqliteStore:
    """Keeps the collector's window in a SQLite file (or ``:memory:``)."""

    def __init__(
        self,
        path: str,
        aggregator: Aggregator,
        *,
        timer_tags: Sequence[Sequence[str]] = (("group",), ("group", "server")),
        request_tags: Sequence[Sequence[str]] = (),
        flush_interval: float = 0.25,
        reports_interval: float = 1.0,
        max_pending: int = 200_000,
    ) -> None:
        self.path = path
        self.aggregator = aggregator
        self.timer_tags = [tuple(t) for t in timer_tags]
        self.request_tags = [tuple(t) for t in request_tags]
        self.flush_interval = flush_interval
        self.reports_interval = reports_interval
        self.dropped = 0  # records not stored because the writer fell behind
        # Records waiting for the writer, bounded in records (not batches: a batch may hold
        # one packet or hundreds).
        self._queue: queue.Queue[list[Record] | None] = queue.Queue()
        self.max_pending = max_pending
        self._pending = 0
        self._count = threading.Lock()
        self._tags: dict[str, int] = {}
        # Opened here, so that an unwritable path is an error of the caller, not of a thread.
        directory = os.path.dirname(os.path.abspath(path)) if path != ":memory:" else "."
        if not os.access(directory, os.W_OK):
            raise PermissionError(f"cannot write the database {path!r}: {directory} is read-only")
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            if path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise PermissionError(f"cannot write the database {path!r}: {exc}") from None
        for tag_id, name in self._db.execute("SELECT id, name FROM tag"):
            self._tags[name] = tag_id
        # Go on after what an earlier run left in the file (its rows leave with the window).
        self._last_request_id = self._db.execute("SELECT max(id) FROM request").fetchone()[0] or 0
        self._last_timer_id = self._db.execute("SELECT max(id) FROM timer").fetchone()[0] or 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pynba-sqlite", daemon=True)
        self._thread.start()

    # -- the collector's side

    def add(self, records: list[Record]) -> None:
        if self._pending + len(records) > self.max_pending:
            self.dropped += len(records)
            errors.log(("store", "full"), "pynba collector: the database falls behind; dropping")
            return
        with self._count:
            self._pending += len(records)
        self._queue.put_nowait(records)

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._queue.put(None)
        self._thread.join()
        with self._lock:
            self._write_reports()
            self._db.close()

    # -- the writer thread

    def _run(self) -> None:
        next_reports = time.monotonic()
        while True:
            batch: list[Record] = []
            stop = False
            try:
                item = self._queue.get(timeout=self.flush_interval)
                while True:
                    if item is None:
                        stop = True
                        break
                    batch.extend(item)
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            with self._count:
                self._pending -= len(batch)
            try:
                with self._lock:
                    if batch:
                        self._insert(batch)
                    if time.monotonic() >= next_reports:
                        started = time.monotonic()
                        self._expire()
                        self._write_reports()
                        took = time.monotonic() - started
                        # With a big window, rebuilding every report takes a while: never spend
                        # more than a fifth of the time on it (the receiving thread needs the
                        # interpreter too).
                        next_reports = time.monotonic() + max(self.reports_interval, 4 * took)
            except sqlite3.Error as exc:
                errors.log(("store", "write"), f"pynba collector: database write failed: {exc}")
            if stop:
                return

    def _tag_id(self, name: str) -> int:
        tag_id = self._tags.get(name)
        if tag_id is None:
            cur = self._db.execute("INSERT OR IGNORE INTO tag (name) VALUES (?)", (name,))
            tag_id = cur.lastrowid
            if not tag_id:
                (tag_id,) = self._db.execute(
                    "SELECT id FROM tag WHERE name = ?", (name,)
                ).fetchone()
            self._tags[name] = tag_id
        return tag_id

    def _insert(self, records: list[Record]) -> None:
        # Ids are given here rather than read back row by row, so each table takes one
        # executemany: the rows of a whole batch go in at the speed of sqlite's C loop.
        db = self._db
        request_id = self._last_request_id
        timer_id = self._last_timer_id
        requests = []
        timers = []
        timertags: list[tuple[int, int, str]] = []
        tag_id = self._tag_id
        for r in records:
            request_id += 1
            requests.append((
                request_id, r.hostname, r.server_name, r.script_name, r.doc_size, r.mem_peak,
                r.req_time, r.ru_utime, r.ru_stime, len(r.timers), r.status, r.memory_footprint,
                r.schema, len(r.tags), ",".join(f"{k}={v}" for k, v in r.tags), r.timestamp,
            ))  # fmt: skip
            for t in r.timers:
                timer_id += 1
                timers.append((timer_id, request_id, t.hit_count, t.value, t.ru_utime, t.ru_stime))
                timertags.extend((timer_id, tag_id(name), value) for name, value in t.tags)
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT INTO request (id, hostname, req_count, server_name, script_name, doc_size,"
                " mem_peak_usage, req_time, ru_utime, ru_stime, timers_cnt, status,"
                " memory_footprint, schema, tags_cnt, tags, timestamp)"
                " VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                requests,
            )
            db.executemany(
                "INSERT INTO timer (id, request_id, hit_count, value, ru_utime, ru_stime)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                timers,
            )
            db.executemany(
                "INSERT INTO timertag (timer_id, tag_id, value) VALUES (?, ?, ?)", timertags
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._last_request_id = request_id
        self._last_timer_id = timer_id

    def _expire(self) -> None:
        limit = self.aggregator.clock() - self.aggregator.window
        db = self._db
        db.execute("BEGIN")
        db.execute(
            "DELETE FROM timertag WHERE timer_id IN (SELECT timer.id FROM timer JOIN request"
            " ON timer.request_id = request.id WHERE request.timestamp < ?)",
            (limit,),
        )
        db.execute(
            "DELETE FROM timer WHERE request_id IN (SELECT id FROM request WHERE timestamp < ?)",
            (limit,),
        )
        db.execute("DELETE FROM request WHERE timestamp < ?", (limit,))
        db.execute("COMMIT")

    def _table(self, name: str, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
        db = self._db
        cols = ", ".join(f'"{c}"' for c in columns)
        db.execute(f'DROP TABLE IF EXISTS "{name}"')
        db.execute(f'CREATE TABLE "{name}" ({cols})')
        if rows:
            marks = ", ".join("?" for _ in columns)
            db.executemany(
                f'INSERT INTO "{name}" ({cols}) VALUES ({marks})',
                [tuple(row.get(c) for c in columns) for row in rows],
            )

    def _write_reports(self) -> None:
        a = self.aggregator
        db = self._db
        db.execute("BEGIN")
        try:
            for name, keys in REQUEST_REPORTS.items():
                rows = a.request_report(keys)
                self._table(name, rows, list(rows[0]) if rows else list(keys))
            for tags in self.timer_tags:
                for kind, per_script in (("tag_info", False), ("tag_report", True)):
                    rows = a.timer_report(tags, per_script=per_script)
                    names = (["script_name"] if per_script else []) + list(tags)
                    self._table(report_table(kind, tags), rows, list(rows[0]) if rows else names)
            for tags in self.request_tags:
                rows = a.tag_report(tags)
                name = report_table("report_by_request_tag", tags)
                self._table(name, rows, list(rows[0]) if rows else list(tags))
            info = a.info()
            self._table("info", [info], list(info))
            status = a.status()
            invalid = status.pop("invalid_by_reason")
            pairs = [{"name": k, "value": str(v)} for k, v in status.items()]
            pairs += [{"name": f"invalid_packets:{k}", "value": str(v)} for k, v in invalid.items()]
            pairs.append({"name": "store_dropped", "value": str(self.dropped)})
            self._table("status", pairs, ["name", "value"])
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
