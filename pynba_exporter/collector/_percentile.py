"""Nearest-rank percentiles, plain or weighted, sorted in bounded runs."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from typing import Final

__all__ = ["SORT_RUN", "column", "percentile", "percentiles"]


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank), 0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


#: Values sorted in one call at most. Sorting holds the interpreter (the receiving thread waits
#: meanwhile): longer lists are sorted in runs of this size, then merged (Timsort merges
#: sorted runs in one quick pass), so no single call holds it long.
SORT_RUN: Final = 32_768


def percentiles(values: list[float], weights: list[int] | None, ps: Sequence[float]) -> list[float]:
    """The nearest-rank percentiles ``ps`` of ``values``, each counted ``weights[i]`` times
    when weights are given (timers: per-hit value, hits), 0 for no values."""
    n = len(values)
    if not n:
        return [0.0] * len(ps)
    if weights is not None and max(weights) == 1:
        weights = None
    if weights is None:
        if n > SORT_RUN:
            runs: list[float] = []
            for i in range(0, n, SORT_RUN):
                runs.extend(sorted(values[i : i + SORT_RUN]))
            values = runs
        ordered = sorted(values)
        return [percentile(ordered, p) for p in ps]
    if n > SORT_RUN:
        vs: list[float] = []
        ws: list[int] = []
        for i in range(0, n, SORT_RUN):
            v, w = values[i : i + SORT_RUN], weights[i : i + SORT_RUN]
            run = sorted(range(len(v)), key=v.__getitem__)
            vs.extend([v[k] for k in run])
            ws.extend([w[k] for k in run])
        values, weights = vs, ws
    order = sorted(range(n), key=values.__getitem__)
    cumulative = list(itertools.accumulate([weights[k] for k in order]))
    total = cumulative[-1]
    out = []
    for p in ps:
        rank = max(1, math.ceil(p / 100 * total))
        out.append(values[order[min(bisect.bisect_left(cumulative, rank), n - 1)]])
    return out


def column(prefix: str, p: float) -> str:
    """The column of a percentile: ``req_time_p95``, ``timer_p99.9``."""
    return f"{prefix}_p{p:g}"
