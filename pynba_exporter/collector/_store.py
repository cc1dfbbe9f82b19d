"""The read-only SQL view: the window's raw requests and the reports in SQLite.

Tables with pinba_engine's names and columns, so what Pinba users know works::

    sqlite3 pinba.db "select script_name, req_count, req_time_median from report_by_script_name"

- raw data: ``request``, ``timer``, ``timertag``, ``tag``: the requests the collector holds
  (``request.id`` follows the order they were kept in; rows of requests that left the window,
  by age or by the memory budget, are deleted);
- reports: ``report_by_script_name``, ``report_by_server_name``, ``report_by_hostname``,
  ``report_by_server_and_script``, ``report_by_hostname_and_script``, ``report_by_status``,
  ``report_by_script_and_status``, ``report_by_schema``; timer reports ``tag_info_<tags>`` and
  ``tag_report_<tags>`` (per script) for each configured tag group (``group`` and
  ``group,server`` by default); requests by request tags ``report_by_request_tag_<tags>`` for
  each configured request tag group; ``info``; ``status`` (name, value rows).

Writes happen in a thread of their own, in batched transactions (the receiving thread only
queues, in a queue bounded in bytes), and the database is in WAL mode: readers never block the
collector, the collector never blocks readers. Report tables are rebuilt every
``reports_interval`` seconds.

Every record that does not reach the database is counted in ``dropped_by`` by reason (``queue
full``, ``database locked``, ``database full``, ``write failed``, ``database deleted``, ``not
written at stop``), the
real SQLite error is logged (once a minute per reason), and the writer keeps trying with the
next batch. A file is the collector's only if it is new or empty, or carries its
``application_id``: any other is refused before anything is written into it (checked through a
read-only connection), so it is left byte-identical.
"""

from __future__ import annotations

import contextlib
import math
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final

from pynba_exporter.collector import _archive
from pynba_exporter.collector._aggregate import Aggregator
from pynba_exporter.collector._dbfile import (
    APPLICATION_ID,
    StoreError,
    check_directory,
    check_ours,
    file_identity,
    write_failure,
)
from pynba_exporter.collector._record import Record
from pynba_exporter.collector._reports import REPORTS
from pynba_exporter.collector._text import printable
from pynba_exporter.collector._text import sql_text as _sql
from pynba_exporter.log import errors

__all__ = ["APPLICATION_ID", "SqliteStore", "StoreError", "report_table"]

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

# Counts by reason in the status table: "invalid_packets:truncated", "evicted_records:max_bytes".
_PREFIX: Final = {"invalid_by_reason": "invalid_packets", "evicted_by_reason": "evicted_records"}

_IDENT = re.compile(r"[^A-Za-z0-9_]")

#: Why records the writer had no time left for at stop are counted as dropped.
LATE: Final = "not written at stop"


def report_table(kind: str, tag_names: Sequence[str]) -> str:
    """The table of a timer report: ``tag_info_group_server``, ``tag_report_group``..."""
    return f"{kind}_" + "_".join(_IDENT.sub("_", name) for name in tag_names)


class _CutShort(Exception):
    """A rebuild of the report tables stopped by :meth:`SqliteStore.pause` or a late close."""


def _sql_value(v: Any) -> Any:
    return _sql(v) if isinstance(v, str) else v


#: History keys (minute, dimension, key) waiting to be merged, at most, while the file refuses
#: them (a full disk): beyond, they are forgotten and counted (a few tens of megabytes).
_MAX_HISTORY_PENDING: Final = 100_000

#: Tag names cached by the writer before the cache (and the ``tag`` table) are trimmed.
_MAX_TAG_NAMES: Final = 50_000

# The same few tag sets come in nearly every record (the aggregator shares them): the writer
# keeps their rows ready instead of escaping and looking up each tag again. Only small sets are
# kept, and at most this many, so the caches stay within a megabyte or two.
_MAX_TAG_SETS: Final = 4096
_SMALL_TAG_SET: Final = 256  # characters of a tag set's names and values, at most


class SqliteStore:
    """Keeps the collector's window in a SQLite file (or ``:memory:``).

    ``max_pending_bytes``: records waiting for the writer, in their estimated bytes (64 MiB);
    beyond, they are counted as dropped (``queue full``) and stay in the reports.
    ``max_db_bytes``: the database's largest size (``PRAGMA max_page_count``; 0: no limit).
    """

    def __init__(
        self,
        path: str,
        aggregator: Aggregator,
        *,
        timer_tags: Sequence[Sequence[str]] = (("group",), ("group", "server")),
        request_tags: Sequence[Sequence[str]] = (),
        flush_interval: float = 0.25,
        reports_interval: float = 1.0,
        max_pending_bytes: int = 64 * 1024 * 1024,
        max_db_bytes: int = 0,
        busy_timeout: float = 1.0,
        minute_retention: float = _archive.MINUTE_RETENTION,
        hour_retention: float = _archive.HOUR_RETENTION,
        max_history_bytes: int = _archive.MAX_BYTES,
    ) -> None:
        self.path = path
        self.aggregator = aggregator
        self.timer_tags = [tuple(t) for t in timer_tags]
        self.request_tags = [tuple(t) for t in request_tags]
        self.flush_interval = flush_interval
        self.reports_interval = reports_interval
        #: Records that did not reach the database, by reason.
        self.dropped_by: dict[str, int] = {}
        # Records waiting for the writer, bounded in bytes (a batch may hold one packet or
        # hundreds, a record a few hundred bytes or megabytes).
        self._queue: queue.Queue[list[Record] | None] = queue.Queue()
        self.max_pending_bytes = max_pending_bytes
        self._pending = 0
        self._count = threading.Lock()
        self._tags: dict[str, int] = {}
        # Tag sets -> their rows: a request's ``tags`` column, a timer's (tag id, value) pairs.
        # Forgotten whenever tag ids are (a new generation).
        self._tags_text: dict[tuple[tuple[str, str], ...], str] = {}
        self._tag_rows: dict[tuple[tuple[str, str], ...], list[tuple[int, str]]] = {}
        self._tag_generation = 0
        self._late = False  # close() ran out of time: what is left is counted, not written
        self._paused = False  # pause(): no report rebuild until close()
        self.archive = _archive.Archive(
            timer_tags=self.timer_tags, max_keys=aggregator.max_keys,
            minute_retention=minute_retention, hour_retention=hour_retention,
            max_bytes=max_history_bytes,
        )  # fmt: skip
        self.archive.cut_short = lambda: self._late or (self._paused and not self._stop.is_set())
        self._next_expiry = -math.inf  # clock time of the next expiry of minutes and hours
        self._next_hours = time.monotonic() + 60  # monotonic time of the next merge of hours
        self._recovered = False  # hours an unclean stop left behind are made again first
        last = self._open(path, busy_timeout, max_db_bytes)
        self._base = last - aggregator.serial
        # Raw rows an earlier run left (ids up to ``last``) leave by age, not by serial: this
        # run's aggregator never held them, and they are the window's until they age out.
        self._previous_last = last
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pynba-sqlite", daemon=True)
        self._thread.start()

    def _open(self, path: str, busy_timeout: float, max_db_bytes: int) -> int:
        """Open the database, and return the last request id an earlier run left in it."""
        # Opened from __init__: an unwritable path is an error of the caller, not of a thread.
        if path != ":memory:":
            check_directory(path)
            # Checked read-only, before anything is written: a file that is not ours must be
            # left byte-identical (no id stamped, no WAL, no table).
            check_ours(path)
        try:
            self._db = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=busy_timeout
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the database {printable(path)!r}: {exc}") from None
        try:
            self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            if path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")
            if max_db_bytes:
                page = self._db.execute("PRAGMA page_size").fetchone()[0]
                self._db.execute(f"PRAGMA max_page_count={max(1, max_db_bytes // page)}")
            self._db.executescript(_SCHEMA)
            self._db.executescript(_archive.SCHEMA)
            for tag_id, name in self._db.execute("SELECT id, name FROM tag"):
                self._tags[name] = tag_id
            # Request ids are the aggregator's serials past what an earlier run left, so the
            # rows of requests that left memory are found by id.
            last = self._db.execute("SELECT max(id) FROM request").fetchone()[0] or 0
            self._last_timer_id = self._db.execute("SELECT max(id) FROM timer").fetchone()[0] or 0
            self._identity = file_identity(path)
            #: What the file held when it was opened (``pynba collect`` says it at start).
            self.kept = self.archive.open(self._db)
            self.kept["raw_requests"] = self._db.execute(
                "SELECT count(*) FROM request WHERE timestamp >= ?",
                (self.aggregator.clock() - self.aggregator.window,),
            ).fetchone()[0]
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"cannot write the database {printable(path)!r}: {exc}") from None
        return int(last)

    @property
    def dropped(self) -> int:
        """Records that did not reach the database."""
        return sum(self.dropped_by.values())

    def _drop(self, reason: str, n: int, message: str) -> None:
        with self._count:
            self.dropped_by[reason] = self.dropped_by.get(reason, 0) + n
        errors.log(("store", reason), f"pynba collector: {n} records not stored: {message}")

    # -- the collector's side

    def add(self, records: list[Record]) -> None:
        size = sum(r.size for r in records)
        with self._count:
            if self._pending + size > self.max_pending_bytes:
                full = True
            else:
                full = False
                self._pending += size
        if full:
            self._drop("queue full", len(records), "the database writer falls behind")
            return
        self._queue.put_nowait(records)

    def pause(self) -> None:
        """Stop rebuilding the report tables until :meth:`close` (a rebuild running now stops
        at its next table): at a stop, the final report must not share the interpreter and
        the aggregator with a rebuild that takes seconds. Raw rows are still written."""
        self._paused = True
        self._db.interrupt()

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued and the reports (the writer does, as it stops), then close.

        With ``timeout`` (seconds), what is not written by then is counted as dropped (``not
        written at stop``) and the statement running is interrupted (its transaction rolled
        back: report tables keep their previous rows), so a stop is bounded whatever the
        store holds (a container runtime kills a process that takes more than its grace)."""
        if self._stop.is_set():
            return
        self._paused = False
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout)
        while self._thread.is_alive():
            self._late = True  # the writer counts what is left instead of writing it
            self._db.interrupt()  # the statement running now stops
            self._thread.join(0.05)
        if self._late:
            errors.log(
                ("store", "late"),
                f"pynba collector: out of time at stop ({timeout:g} s): the report tables of"
                f" {printable(self.path)!r} hold their last rebuild",
            )
        with self._lock:
            self._db.close()

    # -- the writer thread

    def _run(self) -> None:
        next_reports = time.monotonic()
        while True:
            batch, stop = self._take()
            with self._lock:
                self._write(batch)
                rebuild = time.monotonic() >= next_reports and not self._paused
                if (rebuild or stop) and not self._late:
                    started = time.monotonic()
                    self._rebuild(final=stop)
                    took = time.monotonic() - started
                    # Never spend more than a fifth of the time on reports (the receiving
                    # thread needs the interpreter too).
                    next_reports = time.monotonic() + max(self.reports_interval, 4 * took)
            if stop:
                return

    def _take(self) -> tuple[list[Record], bool]:
        """The records queued (waiting up to ``flush_interval`` for the first), and whether
        the store is told to stop."""
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
            self._pending -= sum(r.size for r in batch)
        return batch, stop

    def _write(self, batch: list[Record]) -> None:
        """Write ``batch`` (under the lock), or count it dropped, with the reason."""
        if batch and self._late:
            self._drop(LATE, len(batch), "the writer ran out of time at stop")
            return
        if batch and self._identity is not None and file_identity(self.path) != self._identity:
            # Deleted (or replaced): SQLite would keep writing into the unlinked file, where
            # nobody will ever read the rows.
            self._drop(
                "database deleted", len(batch), f"{printable(self.path)!r} was deleted or replaced"
            )
            return
        if not batch:
            return
        # Counted in the minute history before the raw insert: a full disk that refuses the
        # raw rows must not take the history (smaller) with them.
        try:
            self.archive.fold(batch)
        except Exception as exc:  # a bug of ours must not end the writer
            errors.log(("store", "history fold"), f"pynba collector: {exc!r}")
        try:
            self._insert(batch)
        except sqlite3.Error as exc:
            reason = LATE if self._late else write_failure(exc)
            self._drop(reason, len(batch), f"SQLite: {exc}")
        except Exception as exc:  # a bug of ours must not end the writer
            self._drop("write failed", len(batch), repr(exc))

    def _rebuild(self, *, final: bool) -> None:
        """The history merged, the window's old rows deleted, the report tables rebuilt (under
        the lock)."""
        self._write_history(final=final)
        try:
            self._expire()
            self._write_reports()
        except Exception as exc:  # logged; the next rebuild tries again
            # (Cut short by pause() or by close() when late: the previous tables stay, rolled
            # back.)
            if not (self._late or self._paused):
                errors.log(
                    ("store", "reports", type(exc).__name__),
                    f"pynba collector: reports not written to the database: {exc!r}",
                )

    def _write_history(self, *, final: bool = False) -> None:
        """Merge the minutes (and their hours) folded since the last pass into the file;
        once a minute, delete what is past its retention or the byte budget. On failure the
        figures stay pending (the next pass tries again) and the reason is logged; nothing
        is lost unless the process dies first."""
        now = self.aggregator.clock()
        expire = now >= self._next_expiry
        # Hours about once a minute (and at a stop): see Archive.flush.
        hours = final or time.monotonic() >= self._next_hours
        shed = dict(self.archive.shed)
        if not self.archive.pending and not expire and not hours and self._recovered:
            return
        try:
            with self._transaction():
                if not self._recovered:
                    self.archive.recover(self._db)
                self.archive.flush(self._db, hours=hours)
                if expire:
                    self.archive.expire(self._db, now)
                self.archive.save(self._db)
        except Exception as exc:
            self.archive.rolled_back()
            if self._late or self._paused:
                return  # interrupted by pause() or a late close(): still pending
            lost = ""
            if self.archive.pending > _MAX_HISTORY_PENDING:
                lost = f"; {self.archive.drop_pending():,} requests lost to it"
            errors.log(
                ("store", "history", type(exc).__name__),
                f"pynba collector: history not written to the database: {exc!r}{lost}",
            )
            return
        self.archive.flushed(now)
        self._recovered = True
        if hours:
            self._next_hours = time.monotonic() + 60
        if expire:
            # Once a minute, or at the next pass while rows may still be due (a pass deletes
            # one hour of minutes at most).
            self._next_expiry = -math.inf if self.archive.behind else now + 60
            if self.archive.shed != shed:
                errors.log(
                    ("store", "history budget"),
                    f"pynba collector: the history of {printable(self.path)!r} reached its"
                    f" budget ({self.archive.max_bytes:,} bytes): {self.archive.shed}",
                )

    def _tag_id(self, name: str) -> int:
        tag_id = self._tags.get(name)
        if tag_id is None:
            if len(self._tags) >= _MAX_TAG_NAMES:
                # Distinct tag names without end (a hostile client): forget them, and the
                # ones no timer of the window uses leave the table.
                self._tags.clear()
                self._tag_rows.clear()
                self._tag_generation += 1
                self._db.execute(
                    "DELETE FROM tag WHERE id NOT IN (SELECT DISTINCT tag_id FROM timertag)"
                )
            cur = self._db.execute("INSERT OR IGNORE INTO tag (name) VALUES (?)", (name,))
            tag_id = cur.lastrowid
            if not tag_id:
                (tag_id,) = self._db.execute(
                    "SELECT id FROM tag WHERE name = ?", (name,)
                ).fetchone()
            self._tags[name] = tag_id
        return tag_id

    @staticmethod
    def _small(tags: tuple[tuple[str, str], ...]) -> bool:
        return sum(len(name) + len(value) for name, value in tags) <= _SMALL_TAG_SET

    def _tags_column(self, tags: tuple[tuple[str, str], ...]) -> str:
        """A request's ``tags`` column (kept for the next request with these tags)."""
        text = _sql(",".join(f"{k}={v}" for k, v in tags))
        if self._small(tags):
            if len(self._tags_text) >= _MAX_TAG_SETS:
                self._tags_text.clear()
            self._tags_text[tags] = text
        return text

    def _timer_tag_rows(self, tags: tuple[tuple[str, str], ...]) -> list[tuple[int, str]]:
        """A timer's (tag id, value) pairs (kept for the next timer with these tags, unless
        tag ids were forgotten meanwhile)."""
        generation = self._tag_generation
        rows = [(self._tag_id(_sql(name)), _sql(value)) for name, value in tags]
        if generation == self._tag_generation and self._small(tags):
            if len(self._tag_rows) >= _MAX_TAG_SETS:
                self._tag_rows.clear()
            self._tag_rows[tags] = rows
        return rows

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN ... COMMIT, rolled back on any failure."""
        db = self._db
        db.execute("BEGIN")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (disk full): a second ROLLBACK would hide
            # the real error behind "cannot rollback - no transaction is active".
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def _insert(self, records: list[Record]) -> None:
        # Ids are given here rather than read back row by row, so each table takes one
        # executemany: the rows of a whole batch go in at the speed of sqlite's C loop.
        db = self._db
        base = self._base
        timer_id = self._last_timer_id
        requests = []
        timers = []
        timertags: list[tuple[int, int, str]] = []
        tags_text, tag_rows = self._tags_text, self._tag_rows
        for r in records:
            request_id = base + r.serial
            text = tags_text.get(r.tags)
            if text is None:
                text = self._tags_column(r.tags)
            requests.append((
                request_id, _sql(r.hostname), _sql(r.server_name), _sql(r.script_name),
                r.doc_size, r.mem_peak, r.req_time, r.ru_utime, r.ru_stime, len(r.timer_rows),
                r.status, r.memory_footprint, _sql(r.schema), len(r.tags), text, r.timestamp,
            ))  # fmt: skip
            for tags, value, hits, ru_u, ru_s in r.timer_rows:
                timer_id += 1
                timers.append((timer_id, request_id, hits, value, ru_u, ru_s))
                rows = tag_rows.get(tags)
                if rows is None:
                    rows = self._timer_tag_rows(tags)
                timertags.extend([(timer_id, tag_id, tag_value) for tag_id, tag_value in rows])
        with self._transaction():
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
        self._last_timer_id = timer_id

    def _expire(self) -> None:
        """Raw rows of the requests the collector no longer holds (by age or by the memory
        budget) leave the tables: the raw tables are the window."""
        first = self._base + self.aggregator.first_serial
        db = self._db
        if self._previous_last:
            # Rows of an earlier run: kept until they are older than the window (a restart
            # keeps the window it found), then this run's rows expire by serial again. While
            # they stay, rows of this run evicted by the byte budget wait with them (ids are
            # one range, so timers and tags leave with one range delete).
            (survivor,) = db.execute(
                "SELECT min(id) FROM request WHERE id <= ? AND timestamp >= ?",
                (self._previous_last, self.aggregator.clock() - self.aggregator.window),
            ).fetchone()
            if survivor is not None:
                first = min(first, survivor)
            else:
                first = min(first, self._previous_last + 1)
                self._previous_last = 0
        with self._transaction():
            db.execute("DELETE FROM timer WHERE request_id < ?", (first,))
            db.execute(
                "DELETE FROM timertag WHERE timer_id < (SELECT coalesce(min(id), ?) FROM timer)",
                (self._last_timer_id + 1,),
            )
            db.execute("DELETE FROM request WHERE id < ?", (first,))

    def _table(self, name: str, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
        if self._late or (self._paused and not self._stop.is_set()):
            raise _CutShort  # rolled back by the transaction: the previous tables stay
        db = self._db
        cols = ", ".join('"' + _sql(c).replace('"', '""') + '"' for c in columns)
        db.execute(f'DROP TABLE IF EXISTS "{name}"')
        db.execute(f'CREATE TABLE "{name}" ({cols})')
        if rows:
            marks = ", ".join("?" for _ in columns)
            db.executemany(
                f'INSERT INTO "{name}" ({cols}) VALUES ({marks})',
                [tuple(_sql_value(row.get(c)) for c in columns) for row in rows],
            )

    def _write_reports(self) -> None:
        a = self.aggregator
        with self._transaction():
            for spec in REPORTS:
                rows = a.request_report(spec.keys)
                self._table(spec.table, rows, list(rows[0]) if rows else list(spec.keys))
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
            pairs = []
            for k, v in status.items():
                if isinstance(v, dict):
                    prefix = _PREFIX.get(k, k)
                    pairs += [{"name": f"{prefix}:{r}", "value": str(n)} for r, n in v.items()]
                else:
                    pairs.append({"name": k, "value": str(v)})
            pairs.append({"name": "store_dropped", "value": str(self.dropped)})
            pairs.append({"name": "history_bytes", "value": str(self.archive.bytes)})
            pairs += [
                {"name": f"history:{reason}", "value": str(n)}
                for reason, n in self.archive.shed.items()
            ]
            with self._count:
                dropped = dict(self.dropped_by)
            pairs += [{"name": f"store_dropped:{r}", "value": str(n)} for r, n in dropped.items()]
            self._table("status", pairs, ["name", "value"])
