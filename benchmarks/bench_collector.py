"""The embedded collector: decode+aggregate throughput, and loss over loopback at given rates.

    python benchmarks/bench_collector.py            # 3 s per rate
    python benchmarks/bench_collector.py --full     # 10 s per rate, as the target says

Packets are a realistic mix, as the reference client writes them: 0 to 10 timers with two
tags, two request tags, 20 script names. The throughput is the collector's own work
(``handle()`` on batches, as the receiving thread does) on one core, with and without the
SQLite store. Loss: a separate process sends at a fixed rate for a while to a running collector
with the SQLite store on; received vs sent.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import socket
import sys
import tempfile
import time

from pynba_exporter import PinbaRequest, PinbaTimer, encode
from pynba_exporter.collector import Collector, SqliteStore


def packets(n: int = 2000, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        timers = [
            PinbaTimer({"group": rng.choice(["db::select", "db::insert", "cache::get"]),
                        "server": f"db{rng.randint(1, 3)}"}, rng.uniform(0.0001, 0.01))
            for _ in range(rng.randint(0, 10))
        ]  # fmt: skip
        out.append(encode(PinbaRequest(
            "web1", "shop.example", f"/page{i % 20}", request_time=rng.uniform(0.001, 0.2),
            ru_utime=0.002, status=rng.choice([200, 200, 200, 404, 500]),
            document_size=rng.randint(100, 50000), tags={"app": "shop", "user": "guest"},
            timers=timers,
        )))  # fmt: skip
    return out


def throughput(data: list[bytes], store: bool, seconds: float = 3.0) -> float:
    c = Collector("127.0.0.1:0")
    path = None
    if store:
        path = os.path.join(tempfile.mkdtemp(), "bench.db")
        c.store = SqliteStore(path, c.aggregator, reports_interval=5.0)
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in range(0, len(data), 512):
            c.handle(data[i : i + 512])
        done += len(data)
    rate = done / (time.perf_counter() - start)
    c.stop()
    return rate


def _send(
    port: int, rate: int, seconds: float, data: list[bytes], sent_out: multiprocessing.Queue[int]
) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sent = 0
    start = time.perf_counter()
    n = len(data)
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
        due = int(elapsed * rate)
        while sent < due:
            with contextlib.suppress(OSError):  # counted as sent and lost
                sock.send(data[sent % n])
            sent += 1
        time.sleep(0.0005)
    sent_out.put(sent)


def loss(data: list[bytes], rate: int, seconds: float) -> tuple[int, int, int]:
    path = os.path.join(tempfile.mkdtemp(), "loss.db")
    c = Collector("127.0.0.1:0")
    c.store = SqliteStore(path, c.aggregator)
    c.start()
    ctx = multiprocessing.get_context("spawn")
    q: multiprocessing.Queue[int] = ctx.Queue()
    proc = ctx.Process(target=_send, args=(c.address[1], rate, seconds, data, q))
    proc.start()
    sent = q.get()
    proc.join()
    # Wait until the backlog in the socket buffer is processed: what never comes was lost.
    last, still = -1, 0.0
    while c.packets < sent and still < 2.0:
        time.sleep(0.1)
        still = still + 0.1 if c.packets == last else 0.0
        last = c.packets
    received = c.packets
    c.stop()
    store = c.store
    return sent, received, store.dropped if store is not None else 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true", help="10 s per rate")
    args = parser.parse_args()
    data = packets()
    sizes = sorted(len(p) for p in data)
    print(f"Python {sys.version.split()[0]}; {len(data)} distinct packets, "
          f"median {sizes[len(sizes) // 2]} bytes\n")  # fmt: skip
    for store in (False, True):
        rate = throughput(data, store)
        label = "with the SQLite store" if store else "in memory"
        print(f"decode + aggregate, {label}: {rate:,.0f} packets/s (target >= 50,000)")
    seconds = 10.0 if args.full else 3.0
    print()
    for rate in (5_000, 10_000, 20_000):
        sent, received, not_stored = loss(data, rate, seconds)
        lost = sent - received
        share = 100 * lost / max(1, sent)
        print(f"{rate:>6,} packets/s for {seconds:g} s, SQLite on: sent {sent:,}, "
              f"received {received:,}, lost {lost:,} ({share:.2f}%); "
              f"not written to SQLite: {not_stored:,}")  # fmt: skip


if __name__ == "__main__":
    main()
