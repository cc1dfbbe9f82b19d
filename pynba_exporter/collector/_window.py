"""The rolling window: the requests of the last ``window`` seconds, within a budget in bytes.

Each record carries an estimate of what it costs (its objects, the strings it does not share,
its share of the reports), and the oldest records leave first when the budget is exceeded,
counted by reason. Strings are shared through a dictionary bounded in bytes
(``max_dictionary_bytes``): a script name received a million times is held once.
Not thread-safe: the aggregator holds its lock around every call.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import fields
from operator import attrgetter
from typing import Any, Final

from pynba_exporter.collector._live import LiveReports
from pynba_exporter.collector._record import Record

__all__ = ["PAIR_BYTES", "RECORD_BYTES", "TIMER_BYTES", "Window"]

# Estimated bytes of the objects of a record (CPython 3.10-3.13, 64-bit), measured with
# tracemalloc on records as the collector builds them and rounded up: the record, its floats
# and ints, its entry in the window and in the groups' value lists.
RECORD_BYTES: Final = 900
TIMER_BYTES: Final = 260  # a timer tuple, its floats and int, its tags tuple's header
PAIR_BYTES: Final = 140  # a (name, value) tuple, the pointer to it, allocator slack
STR_BYTES: Final = 64  # a str object's header, allocator rounding (ASCII; others cost more)
WORD_BYTES: Final = 80  # a string's entry in the dictionary (its slot, its hash, the table)

Tags = tuple[tuple[str, str], ...]
TimerKey = tuple[tuple[str, ...] | None, ...]


# The window keeps each record as an exact tuple of its fields, made back into a Record when it
# leaves or is read. The garbage collector stops tracking exact tuples of plain values, never a
# Record object: with an object per request held, each full collection walks them all. With
# 150,000 requests of bench_collector.py's mix held, a full collection took 0.40-0.44 s that
# way and 0.17-0.19 s this way (the rest is the report groups' value deques); the receiving
# thread waits for it. Only this module knows the tuple.
_FIELDS: Final = tuple(f.name for f in fields(Record))
_row: Final[Callable[[Record], tuple[Any, ...]]] = attrgetter(*_FIELDS)
_TIMESTAMP: Final = _FIELDS.index("timestamp")
_SERIAL: Final = _FIELDS.index("serial")


def _str_cost(s: str) -> int:
    return STR_BYTES + len(s) * (1 if s.isascii() else 4)


class Window:
    """The window's records, oldest first, each counted in ``reports`` while it stays."""

    def __init__(
        self,
        reports: LiveReports,
        *,
        window: float,
        max_records: int | None,
        max_bytes: int,
        max_dictionary_bytes: int,
        clock: Callable[[], float],
        started: float,
    ) -> None:
        self.reports = reports
        self.window = window
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_dictionary_bytes = max_dictionary_bytes
        self.clock = clock
        self._rows: deque[tuple[Any, ...]] = deque()  # the records, oldest first
        self.serial = 0  # serial of the last record kept
        self.record_bytes = 0
        self.evicted_by: dict[str, int] = {}  # records that left before their time, by reason
        # The shared strings, and the timers' tag sets with their keys in each timer report.
        self.words: dict[str, str] = {}
        self._tagsets: dict[Tags, tuple[Tags, TimerKey]] = {}
        self.dictionary_bytes = 0
        self._refreshed = started

    def __len__(self) -> int:
        return len(self._rows)

    def records(self) -> Iterator[Record]:
        """The records of the window, oldest first."""
        return (Record(*row) for row in self._rows)

    def snapshot(self) -> Iterator[Record]:
        """The records of the window as they are now, oldest first, read later without the
        lock: only the list of rows is copied now (references, at C speed: about 10 ms for a
        million), each record is made when iterated."""
        rows = list(self._rows)
        return (Record(*row) for row in rows)

    @property
    def first_serial(self) -> int:
        """Serial of the oldest record kept (past the last one when none is)."""
        return self._rows[0][_SERIAL] if self._rows else self.serial + 1

    @property
    def bytes(self) -> int:
        """Estimated bytes of the window: records and report groups."""
        return self.record_bytes + self.reports.bytes

    def keep(self, r: Record) -> bool:
        """Keep ``r``: its strings shared, its size estimated, a serial given, counted in the
        reports. False when it alone is larger than the budget (counted, not kept)."""
        keys = self._compact(r)
        if r.size > self.max_bytes:
            count(self.evicted_by, "larger than max_bytes")
            return False
        self._rows.append(_row(r))
        self.reports.add(r, keys)
        self.record_bytes += r.size
        return True

    def expire(self, now: float) -> None:
        """Records older than the window leave."""
        limit = now - self.window
        entries = self._rows
        while entries and entries[0][_TIMESTAMP] < limit:
            self._evict(None)
        if not entries:
            # Nothing holds the shared strings any more: start the dictionary afresh, so names
            # seen once long ago do not keep their place in it for ever.
            self._forget_words()

    def trim(self) -> None:
        """The oldest records leave while the window is over its budget."""
        entries = self._rows
        while self.max_records is not None and len(entries) > self.max_records:
            self._evict("max_records")
        while entries and self.bytes > self.max_bytes:
            self._evict("max_bytes")
        if self.dictionary_bytes > self.max_dictionary_bytes * 0.9:
            now = self.clock()
            if now - self._refreshed >= self.window:
                # The dictionary fills with names no record holds any more: at most once a
                # window it starts afresh, so new names can be shared again. The strings of
                # older records are then held by them alone (at most one dictionary's worth,
                # gone within a window): the documented bound counts them.
                self._refreshed = now
                self._forget_words()

    def _forget_words(self) -> None:
        self.words.clear()
        self._tagsets.clear()
        self.dictionary_bytes = 0

    def _evict(self, reason: str | None) -> None:
        r = Record(*self._rows.popleft())
        self.reports.remove(r, [self._timer_keys(row[0]) for row in r.timer_rows])
        self.record_bytes -= r.size
        if reason is not None:
            count(self.evicted_by, reason)

    def _timer_keys(self, tags: Tags) -> TimerKey:
        known = self._tagsets.get(tags)
        return known[1] if known is not None else self.reports.timer_keys(tags)

    def _word(self, s: str) -> tuple[str, int]:
        """The shared copy of ``s``, and what it costs the record that holds it (0 if the
        dictionary holds it)."""
        w = self.words.get(s)
        if w is not None:
            return w, 0
        cost = _str_cost(s)
        if self.dictionary_bytes + cost + WORD_BYTES > self.max_dictionary_bytes:
            return s, cost  # the dictionary is full: the record pays for its own copy
        self.words[s] = s
        self.dictionary_bytes += cost + WORD_BYTES
        return s, 0

    def _pairs(self, pairs: Tags) -> tuple[Tags, int]:
        """Tag pairs of shared strings, and what the strings the dictionary does not hold cost."""
        word = self._word
        cost = 0
        shared = []
        for raw_name, raw_value in pairs:
            name, c1 = word(raw_name)
            value, c2 = word(raw_value)
            cost += c1 + c2
            shared.append((name, value))
        return tuple(shared), cost

    def _tagset(self, tags: Tags) -> tuple[tuple[Tags, TimerKey], int]:
        """(shared tags, their key in each timer report), and the record's cost for them."""
        known = self._tagsets.get(tags)
        if known is not None:
            return known, 0
        shared, cost = self._pairs(tags)
        cost += 56 + len(tags) * PAIR_BYTES
        keys = self.reports.timer_keys(shared)
        item = (shared, keys)
        if self.dictionary_bytes + cost + 8 * len(keys) <= self.max_dictionary_bytes:
            self._tagsets[shared] = item
            self.dictionary_bytes += cost + 8 * len(keys)
            cost = 0
        return item, cost

    def _compact(self, r: Record) -> list[TimerKey]:
        """Share the strings of ``r``, estimate its size and give it a serial; returns the keys
        of each of its timers in the timer reports. Strings and tag sets already in the
        dictionary (nearly all of them) cost one lookup."""
        word = self._word
        r.hostname, c1 = word(r.hostname)
        r.server_name, c2 = word(r.server_name)
        r.script_name, c3 = word(r.script_name)
        r.schema, c4 = word(r.schema)
        size = RECORD_BYTES + c1 + c2 + c3 + c4
        if r.tags:
            r.tags, cost = self._pairs(r.tags)
            size += cost + PAIR_BYTES * len(r.tags)
        keys: list[TimerKey] = []
        if r.timer_rows:
            rows = []
            for tags, value, hits, ru_u, ru_s in r.timer_rows:
                (shared, timer_keys), cost = self._tagset(tags)
                size += cost
                keys.append(timer_keys)
                rows.append((shared, value, hits, ru_u, ru_s))
            r.timer_rows = tuple(rows)
            size += len(rows) * (TIMER_BYTES + 8 * len(self.reports.timer_tags))
        self.serial += 1
        r.serial = self.serial
        r.size = size
        return keys


def count(counts: dict[str, int], reason: str, n: int = 1) -> None:
    """Add ``n`` to the count of ``reason``."""
    counts[reason] = counts.get(reason, 0) + n
