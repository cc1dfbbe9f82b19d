"""The project's benchmark table in one run: every figure next to one raw UDP send.

    python benchmarks/run_all.py

raw send, encode, the classic middleware at 0 and 10 timers, the OpenTelemetry processor and
exporter, the collector's throughput, and the import time of ``pynba`` (which must not import
the OpenTelemetry SDK). The per-area scripts (bench_wire, bench_classic, bench_otel,
bench_collector, bench_gunicorn) give more detail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from _common import draining_listener, measure, raw_send
from bench_classic import call, trivial, with_timers
from bench_collector import packets, throughput
from bench_otel import PROVIDERS, NoopExporter, workload
from bench_wire import sample
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

from pynba import PynbaMiddleware
from pynba_exporter import encode
from pynba_exporter.otel import PinbaSpanExporter, PinbaSpanProcessor


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


def main() -> None:
    with draining_listener() as address:
        target = f"{address[0]}:{address[1]}"
        r0, r10 = sample(0), sample(10)
        cases = {
            "encode, 0 timers": lambda: encode(r0),
            "encode, 10 timers": lambda: encode(r10),
            "encode, 10 timers, packed": lambda: encode(r10, packed=True),
            "bare WSGI app": call(trivial),
            "PynbaMiddleware, 0 timers": call(PynbaMiddleware(trivial, target)),
            "PynbaMiddleware, 10 timers (timer CPU off)": call(
                PynbaMiddleware(with_timers(10), target, timer_rusage=False)
            ),
            "OTel SDK, root + 5 children, no-op processor": workload(
                SimpleSpanProcessor(NoopExporter())
            ),
            "OTel SDK + PinbaSpanProcessor": workload(PinbaSpanProcessor(target)),
            "OTel SDK + BatchSpanProcessor(PinbaSpanExporter), app thread": workload(
                BatchSpanProcessor(PinbaSpanExporter(target), max_queue_size=1_000_000)
            ),
        }
        base, times = measure(cases, raw_send(address))
        for provider in PROVIDERS:
            provider.shutdown()
    rate = throughput(packets(), store=False, seconds=2.0)
    python = import_time("pass")
    pynba = import_time("import pynba") - python
    leak = subprocess.run(
        [sys.executable, "-c",
         "import sys, pynba; print(any(m.startswith('opentelemetry') for m in sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    sdk = times["OTel SDK, root + 5 children, no-op processor"]
    print(f"Python {sys.version.split()[0]}; ratios to one raw sendto() of 300 bytes\n")
    print(f"| {'case':<62} | {'µs':>9} | {'x raw send':>10} |")
    print(f"|{'-' * 64}|{'-' * 10}:|{'-' * 11}:|")
    print(f"| {'raw sendto, 300 bytes':<62} | {base * 1e6:9.2f} | {1:10.2f} |")
    for name, t in times.items():
        extra = f" ({t / sdk:.2f}x the SDK alone)" if name.startswith("OTel SDK +") else ""
        print(f"| {name + extra:<62} | {t * 1e6:9.2f} | {t / base:10.2f} |")
    print(f"| {'collector: decode + aggregate, packets/s':<62} | {rate:9,.0f} | {'':>10} |")
    print(f"| {'import pynba (ms; imports the OTel SDK: ' + leak + ')':<62} | "
          f"{pynba * 1e3:9.1f} | {'':>10} |")  # fmt: skip


if __name__ == "__main__":
    main()
