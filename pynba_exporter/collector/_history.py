"""The collector's recent past, interval by interval: what the web page charts.

The reports cover the whole window (900 s) at once; a chart needs the same figures per short
interval. :class:`History` is a collector listener that keeps, per ``interval`` seconds (5), the
request count, the server errors (status >= 500), the total request time and a histogram of the
request times, for the last ``size`` intervals (180: 15 minutes). Its memory is bounded whatever
the traffic: at most ``size`` intervals of at most ``len(BOUNDS)`` histogram cells each.

Percentiles come from the histogram, as pinba2 computes them: cells grow by 2 %, so a
percentile is within about 1 % of the exact (nearest-rank) value.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

from pynba_exporter.collector._record import Record

__all__ = ["History", "cell_of", "cell_value", "cells_percentile"]

_SMALLEST: Final = 1e-6  # seconds: times below are counted in cell 0 (valued 0)
_RATIO: Final = 1.02
_LOG_RATIO: Final = math.log(_RATIO)
_CELLS: Final = 1 + math.ceil(math.log(1e5 / _SMALLEST) / _LOG_RATIO)  # up to a day or so


def cell_of(seconds: float) -> int:
    """The histogram cell of a request time."""
    if not seconds >= _SMALLEST:  # also NaN, which the decoder never lets through anyway
        return 0
    return min(_CELLS - 1, 1 + int(math.log(seconds / _SMALLEST) / _LOG_RATIO))


def cell_value(cell: int) -> float:
    """The value a cell stands for: the geometric middle of its bounds."""
    if cell <= 0:
        return 0.0
    return float(_SMALLEST * _RATIO ** (cell - 0.5))


def cells_percentile(cells: dict[int, int], p: float, count: int | None = None) -> float | None:
    """Nearest-rank percentile of a histogram (the value of its cell), like the reports'
    (``_percentile.percentile``) over the cells in order; None when it is empty (no request,
    no time: a gap in a chart rather than a fall to 0). ``count``: the cells' sum, when known."""
    if count is None:
        count = sum(cells.values())
    if count <= 0:
        return None
    rank = min(count, max(1, math.ceil(p / 100 * count)))
    seen = 0
    for cell in sorted(cells):
        seen += cells[cell]
        if seen >= rank:
            return cell_value(cell)
    return cell_value(max(cells))


class _Interval:
    __slots__ = ("cells", "errors", "index", "requests", "time_total")

    def __init__(self, index: int) -> None:
        self.index = index  # start time / interval: whole numbers compare exactly
        self.requests = 0
        self.errors = 0
        self.time_total = 0.0
        self.cells: dict[int, int] = {}


class History:
    """Per-interval request figures of the last ``size`` intervals of ``interval`` seconds.

    Subscribe it to a collector (``collector.listeners.append(history.add)``); read it with
    :meth:`points`.
    """

    def __init__(
        self, interval: float = 5.0, size: int = 180, clock: Callable[[], float] = time.time
    ) -> None:
        if interval <= 0 or size < 1:
            raise ValueError(f"history needs interval > 0 and size >= 1, got {interval}, {size}")
        self.interval = interval
        self.size = size
        self.clock = clock
        self._intervals: deque[_Interval] = deque(maxlen=size)
        self._first: int | None = None  # the first interval that had requests, ever
        self._lock = threading.Lock()

    def _index(self, timestamp: float) -> int:
        return math.floor(timestamp / self.interval)

    def add(self, records: Sequence[Record]) -> None:
        """Count a batch of records (a collector listener: the receiving thread calls it)."""
        top = _CELLS - 1
        with self._lock:
            stamp = None
            last = self._intervals[-1] if self._intervals else _Interval(-(2**62))
            for r in records:
                if r.timestamp != stamp:  # a batch shares one time: one interval lookup
                    stamp = r.timestamp
                    last = self._interval_of(stamp, last)
                last.requests += 1
                if r.status >= 500:
                    last.errors += 1
                t = r.req_time
                last.time_total += t
                cell = (
                    min(top, 1 + int(math.log(t / _SMALLEST) / _LOG_RATIO)) if t >= _SMALLEST else 0
                )
                cells = last.cells
                cells[cell] = cells.get(cell, 0) + 1

    def _interval_of(self, timestamp: float, last: _Interval) -> _Interval:
        index = self._index(timestamp)
        if index <= last.index:
            # The same interval, or a clock that stepped back: counted in the latest one
            # rather than reordering the history.
            return last
        if self._first is None:
            self._first = index
        interval = _Interval(index)
        self._intervals.append(interval)  # the deque's maxlen drops the oldest
        return interval

    def points(self, now: float | None = None) -> list[dict[str, Any]]:
        """One point per interval, oldest first, empty intervals included: from the first
        interval that ever had requests (or the current one) to the current one, ``size``
        points at most.
        ``req_per_sec`` divides by the whole interval, the current one too (``partial``);
        percentiles and error rate are None for an interval without requests."""
        current = self._index(self.clock() if now is None else now)
        first_kept = current - self.size + 1
        with self._lock:
            kept = {
                i.index: (i.requests, i.errors, i.time_total, dict(i.cells))
                for i in self._intervals
                if first_kept <= i.index <= current
            }
            first = current if self._first is None else max(first_kept, min(self._first, current))
        empty: tuple[int, int, float, dict[int, int]] = (0, 0, 0.0, {})
        points = []
        for index in range(first, current + 1):
            requests, errors, time_total, cells = kept.get(index, empty)
            points.append(
                {
                    "start": index * self.interval,
                    "partial": index == current,
                    "requests": requests,
                    "req_per_sec": requests / self.interval,
                    "errors": errors,
                    "error_rate": errors / requests if requests else None,
                    "time_total": time_total,
                    "p50": cells_percentile(cells, 50, requests),
                    "p95": cells_percentile(cells, 95, requests),
                    "p99": cells_percentile(cells, 99, requests),
                }
            )
        return points
