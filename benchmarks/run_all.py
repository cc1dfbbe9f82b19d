"""The project's performance table in one run, against its goals.

    python benchmarks/run_all.py [--rounds 11] [--gunicorn-seconds 2] [--gunicorn-rounds 3]

The unit is one ``send()`` of 300 bytes on a connected UDP socket to a drained loopback port
(see ``_common``). Every case is timed in interleaved rounds; each figure is the median of its
per-round values, with quartiles. Figures: the classic middleware's overhead at 0 timers, what
each extra timer costs with and without per-timer CPU, ``encode`` of 10 timers, the OpenTelemetry
processor over the SDK alone, a peer (the ``statsd`` client sending one timing per request),
requests/s lost under a real gunicorn, the collector's throughput and the import time of
``pynba`` (which must not import the OpenTelemetry SDK). The per-area scripts (bench_wire,
bench_classic, bench_otel, bench_collector, bench_gunicorn) give more detail.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from _common import (
    Figure,
    connected_send,
    draining_listener,
    header,
    ratios,
    rounds,
    row,
)
from bench_classic import call, derived, trivial, with_timers
from bench_collector import packets, throughput
from bench_gunicorn import load_rounds
from bench_otel import PROVIDERS, NoopExporter, workload
from bench_wire import sample
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from pynba import PynbaMiddleware
from pynba_exporter import encode
from pynba_exporter.otel import PinbaSpanProcessor

# figure -> (goal as text, test of the median)
GOALS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "classic middleware, 0 timers": ("<=2.5x", lambda v: v <= 2.5),
    "each extra timer, timer CPU on (the default)": ("<=0.5x", lambda v: v <= 0.5),
    "each extra timer, timer CPU off": ("<=0.35x", lambda v: v <= 0.35),
    "encode, 10 timers (2 tags each)": ("<=1.5x", lambda v: v <= 1.5),
    "OTel processor over the SDK alone (root + 5 children)": ("<=+15%", lambda v: v <= 15),
    "gunicorn sync, 2 workers, trivial app, req/s": (">=-5%", lambda v: v >= -5),
}


def import_time(statement: str, runs: int = 7) -> float:
    """Best wall time of a fresh interpreter running ``statement``, with bytecode caching on
    (as installed packages have it; some shells set PYTHONDONTWRITEBYTECODE)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-c", statement], check=True, env=env)  # writes the .pyc
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True, env=env)
        best = min(best, time.perf_counter() - start)
    return best


def statsd_case(address: tuple[str, int]) -> Callable[[], object] | None:
    """The peer: what the statsd client does for one timing metric (None if not installed)."""
    try:
        import statsd  # noqa: PLC0415 - optional: the 'bench' extra
    except ImportError:
        return None
    client = statsd.StatsClient(address[0], address[1], prefix="shop")

    def run() -> object:
        client.timing("request", 12.5)
        return None

    return run


def _median_us(seconds: list[float]) -> float:
    """The median of per-round times, in microseconds (the µs column; the ratios are the
    figures, since absolute times move with the machine's load)."""
    return statistics.median(seconds) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--gunicorn-seconds", type=float, default=2.0)
    parser.add_argument("--gunicorn-rounds", type=int, default=3)
    args = parser.parse_args()
    with draining_listener() as address:
        target = f"{address[0]}:{address[1]}"
        r10 = sample(10)
        cases: dict[str, Callable[[], object]] = {
            "bare app, 0 timers": call(trivial),
            "monitored, 0 timers": call(PynbaMiddleware(trivial, target)),
            "monitored, 10 timers, timer CPU off": call(
                PynbaMiddleware(with_timers(10), target, timer_rusage=False)
            ),
            "monitored, 10 timers, timer CPU on": call(
                PynbaMiddleware(with_timers(10), target, timer_rusage=True)
            ),
            "encode": lambda: encode(r10),
            "sdk": workload(SimpleSpanProcessor(NoopExporter())),
            "sdk + processor": workload(PinbaSpanProcessor(target)),
        }
        peer = statsd_case(address)
        if peer is not None:
            cases["statsd"] = peer
        units, times = rounds(cases, connected_send(address), count=args.rounds)
        for provider in PROVIDERS:
            provider.shutdown()
    diffs = derived(times)
    # name -> (per-round figure, its unit, the median microseconds it stands for)
    figures: dict[str, tuple[Figure, str, float | None]] = {
        "classic middleware, 0 timers": (
            ratios(units, diffs["middleware overhead, 0 timers"]), "x",
            _median_us(diffs["middleware overhead, 0 timers"]),
        ),
    }  # fmt: skip
    for name in diffs:
        if name.startswith("each extra timer"):
            figures[name] = (ratios(units, diffs[name]), "x", _median_us(diffs[name]))
    figures["encode, 10 timers (2 tags each)"] = (
        ratios(units, times["encode"]), "x", _median_us(times["encode"]),
    )  # fmt: skip
    over = [(p / s - 1) * 100 for p, s in zip(times["sdk + processor"], times["sdk"])]
    added = [p - s for p, s in zip(times["sdk + processor"], times["sdk"])]
    figures["OTel processor over the SDK alone (root + 5 children)"] = (
        Figure(tuple(over)), "%", _median_us(added),
    )  # fmt: skip
    if peer is not None:
        figures["peer: statsd client, one timing metric per request"] = (
            ratios(units, times["statsd"]), "x", _median_us(times["statsd"]),
        )  # fmt: skip
    loss, served, received = load_rounds(args.gunicorn_seconds, args.gunicorn_rounds)
    figures["gunicorn sync, 2 workers, trivial app, req/s"] = (loss, "%", None)
    rate = throughput(packets(), store=False, seconds=2.0)
    python = import_time("pass")
    pynba = import_time("import pynba") - python
    leak = subprocess.run(
        [sys.executable, "-c",
         "import sys, pynba; print(any(m.startswith('opentelemetry') for m in sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip

    unit_us = sorted(units)[len(units) // 2] * 1e6
    print(f"Python {sys.version.split()[0]}; unit: one connected send() of 300 bytes "
          f"({unit_us:.2f} µs here); {args.rounds} interleaved rounds\n")  # fmt: skip
    print(header())
    for name, (figure, unit, micros) in figures.items():
        goal, test = GOALS.get(name, ("", lambda v: True))
        met = test(figure.median) if goal else None
        print(row(name, figure, unit=unit, goal=goal, met=met, micros=micros))
    if peer is not None:
        beat = (
            figures["classic middleware, 0 timers"][0].median
            < ratios(units, times["statsd"]).median
        )
        print(f"\nclassic middleware at 0 timers beats the statsd peer: {'yes' if beat else 'no'}")
    print(f"gunicorn: {served} requests served monitored, {received} reached the collector")
    print(f"collector: decode + aggregate, {rate:,.0f} packets/s")
    print(f"import pynba: {pynba * 1e3:.1f} ms (imports the OTel SDK: {leak})")


if __name__ == "__main__":
    main()
