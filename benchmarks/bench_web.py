"""The web page's cost: the collector's throughput with the page's listeners (history and
Prometheus counters) against without, in the same run, and how long the API and /metrics take
with a full window.

    python benchmarks/bench_web.py      # 5 alternated rounds of 2 s each way, 100,000 records
"""

from __future__ import annotations

import argparse
import statistics
import time
import urllib.request

from bench_collector import packets

from pynba_exporter.collector import Collector, WebServer


def throughput(data: list[bytes], web: bool, seconds: float) -> float:
    c = Collector("127.0.0.1:0", max_records=50_000)
    if web:
        WebServer(c, "127.0.0.1:0")  # subscribes its listeners; not started: only their cost
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in range(0, len(data), 512):
            c.handle(data[i : i + 512])
        done += len(data)
    return done / (time.perf_counter() - start)


def fetch_times(data: list[bytes], records: int, scripts: int) -> dict[str, float]:
    c = Collector("127.0.0.1:0", max_records=records)
    web = WebServer(c, "127.0.0.1:0").start()
    try:
        # Distinct script names: the rewritten packets keep their length (same-width names).
        width = len(str(scripts))
        batch = []
        for i in range(records):
            name = f"/page{i % 20}".encode()
            new = f"/s{i % scripts:0{width}d}".encode().ljust(len(name), b"_")[: len(name)]
            batch.append(data[i % len(data)].replace(name, new, 1))
            if len(batch) == 512:
                c.handle(batch)
                batch = []
        c.handle(batch)
        out = {}
        for path in ("/api/overview", "/api/scripts", "/api/timers", "/api/health", "/metrics"):
            start = time.perf_counter()
            with urllib.request.urlopen(web.url.rstrip("/") + path, timeout=120) as r:
                size = len(r.read())
            out[f"{path} ({size // 1024} KB)"] = time.perf_counter() - start
        return out
    finally:
        web.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--scripts", type=int, default=1000)
    args = parser.parse_args()
    data = packets()
    # Alternated rounds, the median of each: the machine is shared and its speed wanders.
    rounds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for web in (False, True):
            rounds[web].append(throughput(data, web, args.seconds))
    without, with_web = (statistics.median(rounds[w]) for w in (False, True))
    print(f"collector handle(): {without:,.0f} packets/s without the page's listeners, "
          f"{with_web:,.0f} with them: {with_web / without:.2f}x "
          f"(medians of {args.rounds} alternated rounds)")  # fmt: skip
    print(f"with {args.records:,} requests of {args.scripts:,} scripts in the window:")
    for path, seconds in fetch_times(data, args.records, args.scripts).items():
        print(f"  GET {path}: {seconds * 1000:,.0f} ms")


if __name__ == "__main__":
    main()
