"""One request as the collector keeps it, from the packet to the reports: :class:`Record`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pynba_exporter._model import PinbaRequest
from pynba_exporter.wire import Packet

__all__ = ["Record", "TimerRecord", "TimerRow", "first_values"]

#: A timer as the decoder gives it and the window keeps it: (tag pairs, value, hit count,
#: ru_utime, ru_stime).
TimerRow = tuple[tuple[tuple[str, str], ...], float, int, float, float]


class TimerRecord(NamedTuple):
    """A timer of a :class:`Record`, by name (``Record.timers``)."""

    tags: tuple[tuple[str, str], ...]
    value: float
    hit_count: int
    ru_utime: float
    ru_stime: float


@dataclass(slots=True)
class Record:
    """One request as the collector keeps it (times clamped at 0, as the servers do), made once
    from the packet and passed as it is to the reports, the SQLite store and the listeners (the
    window holds its fields in a tuple, see ``_window``). ``serial`` numbers the records an
    aggregator kept (0 until kept); ``size`` is its estimated cost in bytes; the aggregator
    sets both, and shares its strings, when it keeps it.

    Its timers are kept as ``timer_rows``, plain tuples of plain values (:data:`TimerRow`), as
    the decoder gives them: the garbage collector stops tracking those, where an object per
    timer is walked by every full collection (200,000 requests of 5 timers: 1.2 s against
    0.25 s per collection). ``timers`` gives them by name, for readers outside the collector."""

    timestamp: float
    hostname: str
    server_name: str
    script_name: str
    status: int
    schema: str
    req_time: float
    ru_utime: float
    ru_stime: float
    doc_size: int
    mem_peak: int
    memory_footprint: int
    tags: tuple[tuple[str, str], ...]
    timer_rows: tuple[TimerRow, ...]
    serial: int = 0
    size: int = 0

    @property
    def timers(self) -> tuple[TimerRecord, ...]:
        return tuple(map(TimerRecord._make, self.timer_rows))

    @classmethod
    def of(cls, r: PinbaRequest, timestamp: float) -> Record:
        timers = tuple(
            (
                tuple((k, _tag_text(v)) for k, v in t.tags.items()),
                max(0.0, t.value),
                t.hit_count,
                max(0.0, t.ru_utime),
                max(0.0, t.ru_stime),
            )
            for t in r.timers
        )
        return cls(
            timestamp, r.hostname, r.server_name, r.script_name, r.status, r.schema,
            max(0.0, r.request_time), max(0.0, r.ru_utime), max(0.0, r.ru_stime),
            r.document_size, r.memory_peak, r.memory_footprint,
            tuple((k, _tag_text(v)) for k, v in r.tags.items()), timers,
        )  # fmt: skip

    @classmethod
    def of_packet(cls, p: Packet, timestamp: float) -> Record:
        """From a parsed packet, without building the decoded records first."""
        rt, ru, rs = p.request_time, p.ru_utime, p.ru_stime
        return cls(
            timestamp, p.hostname, p.server_name, p.script_name, p.status, p.schema,
            rt if rt > 0.0 else 0.0, ru if ru > 0.0 else 0.0, rs if rs > 0.0 else 0.0,
            p.document_size, p.memory_peak, p.memory_footprint, first_values(p.tags),
            # A parsed timer is a TimerRow already: kept as it is unless a tag name repeats.
            tuple([
                t if len(t[0]) < 2 or len(dict(t[0])) == len(t[0])
                else (first_values(t[0]), t[1], t[2], t[3], t[4])
                for t in p.timers
            ]),
        )  # fmt: skip


def first_values(pairs: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Tag pairs where a name given several times keeps its first value (as pinba2 keys it)."""
    n = len(pairs)
    if n < 2 or (n == 2 and pairs[0][0] != pairs[1][0]) or len(dict(pairs)) == n:
        return pairs if type(pairs) is tuple else tuple(pairs)
    first = dict(reversed(pairs))  # reversed: the first value is the one left
    return tuple((name, first[name]) for name in dict.fromkeys(name for name, _ in pairs))


def _tag_text(value: object) -> str:
    # A decoded timer whose tag was given several values holds them as a tuple: the first one
    # is the value, as pinba2 has it.
    if isinstance(value, tuple):
        return str(value[0]) if value else ""
    return str(value)
