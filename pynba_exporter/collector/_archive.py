"""History that outlives the window: the reports by the minute and by the hour, in SQLite.

Pinba's reports (and the collector's raw tables) cover a rolling window; :class:`Archive`
keeps the same figures for as long as days and months. With ``pynba collect --db FILE``, the
SQLite writer thread folds every request it receives into the current minute, per

- ``script``, ``server``, ``host``, ``status`` (the request reports' keys), a ``total`` row,
- ``timer:<tags>`` for each configured timer tag set (``timer:group``, ``timer:group,server``;
  the key is the JSON list of the tag values),

and merges these figures into ``history_minute`` at each report rebuild (about once a
second), and the same figures summed by the hour into ``history_hour`` about once a minute
(:meth:`Archive.flush` says why, and how a start after ``kill -9`` makes up for it):
``req_count``, ``errors`` (status >= 500), ``hit_count`` (timers), ``req_time_us``,
``ru_utime_us``, ``ru_stime_us`` (sums in whole microseconds: integers take less room than
SQLite's 8-byte reals) and ``hist``, a histogram of the request times (timers: per-hit
values weighted by hits). Rows are merged into what the file holds, never
replaced, so a restart on the same file keeps all of it, and a ``kill -9`` loses only what
was not merged yet (about a second).

Minutes older than ``minute_retention`` (7 days) are deleted (their hours hold them);
histograms add up, so an hour's percentiles are as precise as a minute's. Hours older than
``hour_retention`` (92 days) are deleted. A range reads its whole hours from the hours and
its edges from the minutes (:func:`plan`): a week is 168 rows per key, not 10,080.

Histogram cells are those of the live page (``_history.cell_of``): each cell is 2 % wide, so a
percentile read from the history is within 1 % of the exact (nearest-rank) value, as pinba2's
histograms are. ``hist`` is the non-empty cells as unsigned LEB128 varints: the gap to the
previous cell, then the count (two or three bytes a cell).

Bounded: past ``max_keys`` distinct keys of a dimension in one minute, requests count in a
``<other>`` key (as the reports do); keys are cut to ``MAX_TEXT`` characters; and past
``max_bytes`` (an estimate of the rows' bytes, kept up to date by every write) the oldest
minutes are deleted early, then the oldest hours, both counted in :attr:`shed`.
Sizes measured, and the choices behind them: docs/collector.md, "History".
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pynba_exporter.collector._history import cell_of
from pynba_exporter.collector._live import OTHER
from pynba_exporter.collector._record import Record
from pynba_exporter.collector._text import cut, sql_text

__all__ = [
    "HOUR_RETENTION",
    "MINUTE_RETENTION",
    "ROWS_FROM",
    "Archive",
    "Figures",
    "decode_cells",
    "encode_cells",
    "row_bytes",
    "timer_dimension",
    "timer_key",
]

#: Seconds minute rows are kept (7 days; their hours are kept longer).
MINUTE_RETENTION: Final = 7 * 86400
#: Seconds hour rows are kept (92 days: three months).
HOUR_RETENTION: Final = 92 * 86400
#: Estimated bytes the history may take in the file (:func:`row_bytes`): past it, the oldest
#: minutes leave early (their hours hold them), then the oldest hours.
MAX_BYTES: Final = 4 * 1024**3
#: A row's bytes besides its key, dimension and histogram (its integers, SQLite's record
#: header and B-tree cell, the pages' free room), measured (tests/test_collector_history.py).
ROW_OVERHEAD: Final = 48


def row_bytes(dim: str, key: str, hist: Any) -> int:
    """The estimated bytes of a history row in the file."""
    size = len(hist) if isinstance(hist, (bytes, bytearray, memoryview)) else 0
    return ROW_OVERHEAD + len(dim) + len(key) + size


_COLUMNS: Final = (
    "start INTEGER NOT NULL, dim TEXT NOT NULL, key TEXT NOT NULL, req_count INTEGER NOT NULL,"
    " errors INTEGER NOT NULL, hit_count INTEGER NOT NULL, req_time_us INTEGER NOT NULL,"
    " ru_utime_us INTEGER NOT NULL, ru_stime_us INTEGER NOT NULL, hist BLOB NOT NULL,"
    " PRIMARY KEY (start, dim, key)"
)
SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS history_minute ({_COLUMNS}) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history_hour ({_COLUMNS}) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history_state (name TEXT PRIMARY KEY, value INTEGER) WITHOUT ROWID;
"""
_TABLES: Final = ("history_minute", "history_hour")

#: The stored values of a row, column by column (``Figures.of_row`` reads those after
#: ``start, dim, key``): ``f"{ROWS_FROM} {table} WHERE ..."``.
ROWS_FROM: Final = (
    "SELECT start, dim, key, req_count, errors, hit_count, req_time_us, ru_utime_us,"
    " ru_stime_us, hist FROM"
)


class Interrupted(Exception):
    """A merge stopped by :attr:`Archive.cut_short`."""


def read_only_uri(path: str) -> str:
    """A SQLite URI that opens ``path`` read-only (any character in the name is safe)."""
    return "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"


def encode_cells(cells: dict[int, int]) -> bytes:
    """The non-empty cells of a histogram as varints: gap to the previous cell, count."""
    out = bytearray()
    previous = 0
    for cell in sorted(cells):
        for value in (cell - previous, cells[cell]):
            n = value
            while n > 0x7F:
                out.append((n & 0x7F) | 0x80)
                n >>= 7
            out.append(n)
        previous = cell
    return bytes(out)


def decode_cells(blob: bytes, into: dict[int, int] | None = None) -> dict[int, int]:
    """Cells from :func:`encode_cells`, added to ``into``; a damaged blob (a file edited by
    hand) gives the cells read before the damage, never an exception."""
    cells = {} if into is None else into
    numbers: list[int] = []
    number = shift = 0
    for byte in bytes(blob) if isinstance(blob, (bytes, bytearray, memoryview)) else b"":
        number |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            if shift > 63:
                break
            continue
        numbers.append(number)
        number = shift = 0
    cell = 0
    for i in range(0, len(numbers) - 1, 2):
        cell += numbers[i]
        cells[cell] = cells.get(cell, 0) + numbers[i + 1]
    return cells


@dataclass(slots=True)
class Figures:
    """One key's figures over one minute or hour (or a range, when read back)."""

    req_count: int = 0
    errors: int = 0
    hit_count: int = 0
    req_time_us: int = 0
    ru_utime_us: int = 0
    ru_stime_us: int = 0
    cells: dict[int, int] = field(default_factory=dict)

    def merge(self, other: Figures) -> None:
        self.req_count += other.req_count
        self.errors += other.errors
        self.hit_count += other.hit_count
        self.req_time_us += other.req_time_us
        self.ru_utime_us += other.ru_utime_us
        self.ru_stime_us += other.ru_stime_us
        cells = self.cells
        for cell, n in other.cells.items():
            cells[cell] = cells.get(cell, 0) + n

    def add_request(self, req_time: float, status: int) -> None:
        """One request of the live window, by its time and status (the series read no CPU)."""
        self.req_count += 1
        self.errors += status >= 500
        self.req_time_us += _us(req_time)
        cell = cell_of(req_time)
        self.cells[cell] = self.cells.get(cell, 0) + 1

    def row(self) -> tuple[int, int, int, int, int, int, bytes]:
        return (self.req_count, self.errors, self.hit_count, self.req_time_us,
                self.ru_utime_us, self.ru_stime_us, encode_cells(self.cells))  # fmt: skip

    @classmethod
    def of_row(cls, row: Sequence[Any]) -> Figures:
        """From the stored columns after (start, dim, key); a value that is not a number (a
        file edited by hand) counts as 0."""
        c, e, h, t, u, s = (v if isinstance(v, int) else 0 for v in row[:6])
        return cls(c, e, h, t, u, s, decode_cells(row[6]))


def _us(seconds: float) -> int:
    return round(seconds * 1e6) if seconds < 1e12 else 10**18  # no float overflow to int


def _key(name: str) -> str:
    """A name as a history key: cut to ``MAX_TEXT`` characters (a flood of 60 KB names must
    not make 60 KB rows, nor hold them in the writer's memory; names that long are junk or
    hostile, and the page and API cut them anyway), and as SQLite can hold it."""
    return sql_text(cut(name))


def timer_dimension(tags: Sequence[str]) -> str:
    return "timer:" + ",".join(tags)


def timer_key(tags: tuple[tuple[str, str], ...], names: Sequence[str]) -> str | None:
    """A timer's key in the dimension of ``names``: the JSON list of its values of those tags,
    each cut, as SQLite can hold it (None when it lacks one of them)."""
    d = dict(tags)
    if not all(n in d for n in names):
        return None
    return sql_text(json.dumps([cut(d[n]) for n in names], ensure_ascii=False))


Key = tuple[int, str, str]  # (start, dimension, key)

_MISSING: Final[Any] = object()
_MAX_CACHED: Final = 4096


class Archive:
    """Folds records into minutes and merges them into the history tables (minutes and
    hours); deletes what is past its retention or the byte budget. Used from one thread
    (the SQLite writer)."""

    def __init__(
        self,
        *,
        timer_tags: Sequence[Sequence[str]] = (("group",), ("group", "server")),
        max_keys: int = 10_000,
        minute_retention: float = MINUTE_RETENTION,
        hour_retention: float = HOUR_RETENTION,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.timer_tags = [(tuple(t), timer_dimension(t)) for t in timer_tags]
        self.max_keys = max_keys
        self.minute_retention = minute_retention
        self.hour_retention = hour_retention
        # Figures not merged into the file yet, and the keys each (minute, dimension) has.
        self._pending: dict[Key, Figures] = {}
        self._keys: dict[tuple[int, str], set[str]] = {}
        #: Requests folded into a ``<other>`` key (the key cap of a minute was reached).
        self.overflow = 0
        self._timer_keys: dict[tuple[Any, ...], str | None] = {}
        #: Estimated bytes of the history rows in the file (:func:`row_bytes`), set by
        #: :meth:`open` and kept up to date by what is written and deleted.
        self.bytes = 0
        self._uncommitted = 0  # the change the transaction running now makes to ``bytes``
        self.max_bytes = max_bytes
        #: Minute rows deleted before their retention, and hour rows deleted before
        #: theirs, to stay within ``max_bytes``; requests counted but never merged into the
        #: file (:meth:`drop_pending`).
        self.shed = {"minutes deleted early": 0, "hours deleted early": 0, "requests lost": 0}
        #: The last :meth:`expire` may have left rows due for the next one.
        self.behind = False
        # Figures merged into the minutes but not yet into the hours, by hour; the oldest
        # minute among them (saved as ``hours_dirty``); whether the last flush wrote hours.
        self._hours: dict[Key, Figures] = {}
        self._dirty: int | None = None
        self._hours_written = False
        #: Asked every few hundred rows of a merge: True stops it (:class:`Interrupted`).
        #: The store stops a merge at a stop, so that the final report does not share the
        #: interpreter with it (SQLite's interrupt stops a statement, not the loop).
        self.cut_short: Callable[[], bool] = lambda: False

    @property
    def pending(self) -> int:
        """Keys waiting for :meth:`flush`."""
        return len(self._pending)

    def _figures(self, minute: int, dim: str, key: str) -> Figures:
        full = (minute, dim, key)
        f = self._pending.get(full)
        if f is not None:
            return f
        seen = self._keys.setdefault((minute, dim), set())
        if key not in seen:
            if len(seen) >= self.max_keys and key != OTHER:
                self.overflow += 1
                other = self._pending.get((minute, dim, OTHER))
                return other if other is not None else self._new((minute, dim, OTHER))
            seen.add(key)
        return self._new(full)

    def _new(self, full: Key) -> Figures:
        f = self._pending[full] = Figures()
        return f

    def fold(self, records: Iterable[Record]) -> None:
        """Count records in their minutes (not written until :meth:`flush`)."""
        for r in records:
            minute = int(r.timestamp // 60) * 60 if math.isfinite(r.timestamp) else 0
            cell = cell_of(r.req_time)
            t, u, s = _us(r.req_time), _us(r.ru_utime), _us(r.ru_stime)
            error = 1 if r.status >= 500 else 0
            for dim, key in (("total", ""), ("script", _key(r.script_name)),
                             ("server", _key(r.server_name)), ("host", _key(r.hostname)),
                             ("status", str(r.status))):  # fmt: skip
                f = self._figures(minute, dim, key)
                f.req_count += 1
                f.errors += error
                f.req_time_us += t
                f.ru_utime_us += u
                f.ru_stime_us += s
                f.cells[cell] = f.cells.get(cell, 0) + 1
            for names, dim in self.timer_tags:
                counted: set[str] = set()
                for tags, value, hits, ru_u, ru_s in r.timer_rows:
                    timer_key = self._timer_key(tags, names)
                    if timer_key is None:
                        continue  # as the reports: a timer without one of the tags is left out
                    key = timer_key
                    f = self._figures(minute, dim, key)
                    if key not in counted:
                        counted.add(key)
                        f.req_count += 1
                        f.errors += error
                    f.hit_count += hits
                    f.req_time_us += _us(value)
                    f.ru_utime_us += _us(ru_u)
                    f.ru_stime_us += _us(ru_s)
                    per_hit = cell_of(value / hits if hits > 0 else value)
                    f.cells[per_hit] = f.cells.get(per_hit, 0) + max(1, hits)

    def _timer_key(self, tags: tuple[tuple[str, str], ...], names: tuple[str, ...]) -> str | None:
        """The key of a timer in a timer dimension: the JSON list of its values of ``names``
        (None when it lacks one). The same few tag sets come in nearly every request: their
        keys are kept (small sets only, at most ``_MAX_CACHED``)."""
        cached: str | None = self._timer_keys.get((tags, names), _MISSING)
        if cached is not _MISSING:
            return cached
        key = timer_key(tags, names)
        if sum(len(k) + len(v) for k, v in tags) <= 256:
            if len(self._timer_keys) >= _MAX_CACHED:
                self._timer_keys.clear()
            self._timer_keys[(tags, names)] = key
        return key

    def flush(self, db: sqlite3.Connection, *, hours: bool = True) -> int:
        """Merge the pending figures into ``history_minute`` and, with ``hours``, everything
        folded since the last such flush into ``history_hour`` (in the caller's transaction);
        returns the minute rows written. The pending figures are forgotten only once the
        transaction committed (:meth:`flushed`): if this raises, it rolls back and the next
        flush tries again.

        Hour rows are merged about once a minute, not at every flush: an hour row's
        histogram is wide, and merging 1,000 of them every second cost a quarter of a core.
        Until then, ``history_state`` names the oldest minute whose figures the hours lack
        (``hours_dirty``, in the same transaction as the minutes), so that a start after a
        ``kill -9`` makes those hours again from their minutes (:meth:`recover`)."""
        self._hours_written = hours
        if hours:
            due: dict[Key, Figures] = {}
            for source in (self._hours, self._by_hour(self._pending)):
                for full, f in source.items():
                    h = due.get(full)
                    if h is None:
                        h = due[full] = Figures()
                    h.merge(f)
            self._merge(db, "history_minute", self._pending)
            self._merge(db, "history_hour", due)
            db.execute("DELETE FROM history_state WHERE name = 'hours_dirty'")
            return len(self._pending)
        if not self._pending:
            return 0
        oldest = min(minute for minute, _, _ in self._pending)
        if self._dirty is None or oldest < self._dirty:
            db.execute("INSERT OR REPLACE INTO history_state VALUES ('hours_dirty', ?)", (oldest,))
        self._merge(db, "history_minute", self._pending)
        return len(self._pending)

    @staticmethod
    def _by_hour(figures: dict[Key, Figures]) -> dict[Key, Figures]:
        hours: dict[Key, Figures] = {}
        for (minute, dim, key), f in figures.items():
            full = (minute // 3600 * 3600, dim, key)
            h = hours.get(full)
            if h is None:
                h = hours[full] = Figures()
            h.merge(f)
        return hours

    def recover(self, db: sqlite3.Connection) -> int:
        """After a stop that did not merge the hours (``kill -9``): make the hours named by
        ``hours_dirty`` again from their minutes (one or two hours: a few seconds for 1,000
        scripts, once). Before the first :meth:`flush` of a run, in the caller's
        transaction; returns the hours made."""
        row = db.execute("SELECT value FROM history_state WHERE name = 'hours_dirty'").fetchone()
        (last,) = db.execute("SELECT max(start) FROM history_minute").fetchone()
        made = 0
        if row is not None and isinstance(row[0], int) and isinstance(last, int):
            for hour in range(row[0] // 3600 * 3600, last + 1, 3600):
                sums: dict[Key, Figures] = {}
                query = f"{ROWS_FROM} history_minute WHERE start >= ? AND start < ?"
                for r in db.execute(query, (hour, hour + 3600)):
                    full = (hour, str(r[1]), str(r[2]))
                    f = sums.get(full)
                    if f is None:
                        sums[full] = Figures.of_row(r[3:])
                    else:
                        f.merge(Figures.of_row(r[3:]))
                self._delete(db, "history_hour", hour, hour + 1)
                self._merge(db, "history_hour", sums)
                made += 1
        db.execute("DELETE FROM history_state WHERE name = 'hours_dirty'")
        return made

    def rolled_back(self) -> None:
        """The transaction of :meth:`recover`, :meth:`flush` or :meth:`expire` failed: what
        they changed in the file did not happen (the figures stay pending)."""
        self._uncommitted = 0
        self._hours_written = False

    def drop_pending(self) -> int:
        """Forget what is not merged yet (the file refuses it for long: a full disk), so the
        writer's memory stays bounded; the requests lost are counted in :attr:`shed`."""
        lost = sum(f.req_count for k, f in self._pending.items() if k[1] == "total")
        self._pending.clear()
        self._keys.clear()
        self.shed["requests lost"] += lost
        return lost

    def flushed(self, now: float) -> None:
        """The transaction of :meth:`flush` committed: forget what it wrote (keep what the
        hours still lack), and the key sets of minutes past (a late request still finds its
        minute row, merged)."""
        if self._hours_written:
            self._hours = {}
            self._dirty = None
        elif self._pending:
            for full, f in self._by_hour(self._pending).items():
                h = self._hours.get(full)
                if h is None:
                    self._hours[full] = f
                else:
                    h.merge(f)
            oldest = min(minute for minute, _, _ in self._pending)
            self._dirty = oldest if self._dirty is None else min(self._dirty, oldest)
        self._pending.clear()
        self.bytes += self._uncommitted
        self._uncommitted = 0
        current = int(now // 60) * 60
        for minute_dim in [k for k in self._keys if k[0] < current - 60]:
            del self._keys[minute_dim]

    def _merge(self, db: sqlite3.Connection, table: str, figures: dict[Key, Figures]) -> None:
        select = f"{ROWS_FROM} {table} WHERE start = ? AND dim = ? AND key = ?"
        rows = []
        # In key order: rows of a new minute then append to the table's B-tree instead of
        # splitting its pages (a tenth less room on disk).
        for i, ((start, dim, key), f) in enumerate(sorted(figures.items(), key=lambda kv: kv[0])):
            if not i % 256 and self.cut_short():
                raise Interrupted  # the caller's transaction rolls back: still pending
            old = db.execute(select, (start, dim, key)).fetchone()
            merged = f
            if old is not None:
                merged = Figures.of_row(old[3:])
                merged.merge(f)
                self._uncommitted -= row_bytes(dim, key, old[9])
            row = merged.row()
            self._uncommitted += row_bytes(dim, key, row[6])
            rows.append((start, dim, key, *row))
        db.executemany(
            f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
        )

    def expire(self, db: sqlite3.Connection, now: float) -> int:
        """Minutes past ``minute_retention`` leave (their hours hold them already); hours
        past ``hour_retention`` leave. Past ``max_bytes``, the oldest minutes (but those of
        the current hour) leave early, then the oldest hours. One hour of minutes per call
        (a delete of 60,000 rows is a fraction of a second); :attr:`behind` then says more
        is due. In the caller's transaction, after :meth:`flush`; returns the rows
        deleted."""
        cutoff = int((now - self.minute_retention) // 3600) * 3600  # whole hours only
        this_hour = int(now // 3600) * 3600
        over = self.bytes + self._uncommitted > self.max_bytes
        first = db.execute(
            "SELECT min(start) FROM history_minute WHERE start < ?",
            (this_hour if over else cutoff,),
        ).fetchone()[0]
        done = 0
        if isinstance(first, int):
            hour = first // 3600 * 3600
            done = self._delete(db, "history_minute", hour, hour + 3600)
            if hour >= cutoff:
                self.shed["minutes deleted early"] += done
            self.behind = True  # perhaps: the next call looks again
        else:
            self.behind = False
        done += self._delete(db, "history_hour", -(2**62), now - self.hour_retention)
        while self.bytes + self._uncommitted > self.max_bytes and not self.behind:
            first = db.execute("SELECT min(start) FROM history_hour").fetchone()[0]
            if not isinstance(first, int):
                break
            deleted = self._delete(db, "history_hour", first, first + 1)
            self.shed["hours deleted early"] += deleted
            done += deleted
        return done

    def _delete(self, db: sqlite3.Connection, table: str, lo: float, hi: float) -> int:
        rows, size = db.execute(
            f"SELECT count(*), sum({_ROW_BYTES}) FROM {table} WHERE start >= ? AND start < ?",
            (lo, hi),
        ).fetchone()
        if rows:
            self._uncommitted -= int(size or 0)
            db.execute(f"DELETE FROM {table} WHERE start >= ? AND start < ?", (lo, hi))
        return int(rows)

    def save(self, db: sqlite3.Connection) -> None:
        """Keep the bytes estimate in the file, in the transaction that changed the rows (so
        that :meth:`open` need not read every row again: 4 to 5 s per GiB)."""
        db.execute(
            "INSERT OR REPLACE INTO history_state VALUES ('bytes', ?)",
            (self.bytes + self._uncommitted,),
        )

    def open(self, db: sqlite3.Connection) -> dict[str, Any]:
        """Read what the file holds: sets :attr:`bytes` (saved by :meth:`save`; read from
        every row, once, in a file that has no saved estimate), returns the first and last
        start of the minutes and of the hours (each one look-up in the primary key) and the
        bytes."""
        out: dict[str, Any] = {}
        for table, name in zip(_TABLES, ("minutes", "hours")):
            # One min() or max() per query: SQLite then reads one end of the primary key.
            (first,) = db.execute(f"SELECT min(start) FROM {table}").fetchone()
            (last,) = db.execute(f"SELECT max(start) FROM {table}").fetchone()
            out[name] = {"first": first, "last": last}
        saved = db.execute("SELECT value FROM history_state WHERE name = 'bytes'").fetchone()
        if saved is not None and isinstance(saved[0], int) and saved[0] >= 0:
            self.bytes = saved[0]
        else:
            self.bytes = sum(
                int(db.execute(f"SELECT sum({_ROW_BYTES}) FROM {t}").fetchone()[0] or 0)
                for t in _TABLES
            )
        out["bytes"] = self.bytes
        return out


_ROW_BYTES: Final = f"{ROW_OVERHEAD} + length(dim) + length(key) + length(hist)"
