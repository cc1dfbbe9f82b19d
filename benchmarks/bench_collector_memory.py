"""The collector's memory per kept request, and the receiver's longest stall during reports.

    python benchmarks/bench_collector_memory.py            # about a minute
    python benchmarks/bench_collector_memory.py --quick    # fewer requests, shorter stall run

Memory: each case runs in a fresh process, which fills a collector (``handle()``, as the
receiving thread does) with one kind of packet until its budget (``max_bytes``) is well
exceeded, then prints the process's RSS growth over the requests the window holds, and the
peak RSS against the budget (the documented bound: startup RSS + 1.25 x ``max_bytes`` +
16 MiB).

- small: a request with 2 request tags and 2 timers of 2 tags, 20 script names;
- long URL: 8 KB script names, every one distinct (the dictionary cannot share them);
- tag bomb: ~60 KB packets, 30,000 timer tag pairs over a few names (first value kept);
- tag bomb, distinct: ~60 KB packets, every tag name distinct (the worst case per byte);
- nested: a packet of 60 nested requests.

Stall: a collector with the SQLite store (reports rebuilt every second) holds a full window
while a sender process sends at a steady rate; the receiving thread notes the time between
two batches it handles. The longest gap, against the median, is the stall a report rebuild
causes.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from pynba_exporter import PinbaRequest, PinbaTimer, encode
from pynba_exporter.collector import Collector, SqliteStore

MiB = 1024 * 1024


def rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def small(i: int) -> bytes:
    timers = [PinbaTimer({"group": "db::select", "server": f"db{i % 3}"}, 0.002, 2),
              PinbaTimer({"group": "cache::get", "server": "mc1"}, 0.0004)]  # fmt: skip
    return encode(PinbaRequest(
        "web1", "shop.example", f"/page{i % 20}", request_time=0.05, status=200,
        document_size=5000, tags={"app": "shop", "user": "guest"}, timers=timers,
    ))  # fmt: skip


def long_url(i: int) -> bytes:
    path = f"/{i:08d}/" + "a" * 8180
    return encode(PinbaRequest("web1", "shop.example", path, request_time=0.01))


def tag_bomb(i: int) -> bytes:
    # One timer, 30,000 (name, value) pairs over 100 words: 2 bytes a pair, packed.
    words = [f"w{k}" for k in range(100)]
    pairs = [(words[k % 100], words[(k * 7) % 100]) for k in range(30_000)]
    return _raw_bomb(f"/bomb{i % 5}", words, pairs)


def tag_bomb_distinct(i: int) -> bytes:
    # As many distinct tag names as fit in 60 KB: each costs the collector its own string.
    n = 5200
    words = [f"{i:x}.{k:x}" for k in range(n)] + [""]
    pairs = [(words[k], words[n]) for k in range(n)]
    return _raw_bomb(f"/bombd{i % 5}", words, pairs)


def nested(i: int) -> bytes:
    subs = [PinbaRequest("web1", "shop.example", f"/sub{k}", request_time=0.001)
            for k in range(60)]  # fmt: skip
    return encode(PinbaRequest("web1", "shop.example", "/batch", request_time=0.1,
                               requests=subs))  # fmt: skip


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _raw_bomb(script: str, words: list[str], pairs: list[tuple[str, str]]) -> bytes:
    """A packet with one timer holding ``pairs`` (packed indexes), as a hostile client
    would write it: encode() merges repeated names, a raw packet does not."""
    index = {w: k for k, w in enumerate(words)}
    head = b"".join([
        _field(1, b"web1"), _field(2, b"shop.example"), _field(3, script.encode()),
        b"\x20\x00\x28\x00\x30\x00", b"\x3d" + b"\x00\x00\x80\x3f",  # 4, 5, 6; 7 = 1.0
        b"\x45" + bytes(4), b"\x4d" + bytes(4),  # 8, 9
    ])  # fmt: skip
    timers = b"".join([
        _field(10, _varint(1)), _field(11, b"\x00\x00\x80\x3f"), _field(12, _varint(len(pairs))),
        _field(13, b"".join(_varint(index[n]) for n, _ in pairs)),
        _field(14, b"".join(_varint(index[v]) for _, v in pairs)),
    ])  # fmt: skip
    dictionary = b"".join(_field(15, w.encode()) for w in words)
    return head + timers + dictionary


CASES: dict[str, Callable[[int], bytes]] = {
    "small": small,
    "long URL (8 KB, distinct)": long_url,
    "tag bomb (30,000 pairs)": tag_bomb,
    "tag bomb (distinct names)": tag_bomb_distinct,
    "nested (60 per packet)": nested,
}


def _memory_case(
    name: str, max_bytes: int, fill: float, seconds: float, out: multiprocessing.Queue[str]
) -> None:
    make = CASES[name]
    c = Collector("127.0.0.1:0", max_bytes=max_bytes)
    before = rss()
    i = 0
    # Feed until the window is full and has been turned over ``fill`` times, or for at most
    # ``seconds`` (a tag bomb takes ~20 ms to decode: the budget fills slowly).
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (
        c.aggregator.requests_total < 500
        or c.aggregator.evicted < fill * max(1, c.aggregator.status()["requests_in_window"])
    ):
        c.handle([make(i + k) for k in range(16)])
        i += 16
    s = c.status()
    grown = rss() - before
    kept = s["requests_in_window"]
    bound = before + 1.25 * max_bytes + 16 * MiB
    full = "" if c.aggregator.evicted else " (budget not reached)"
    out.put(
        f"| {name} | {len(make(0)):,} | {kept:,}{full} | {grown / max(1, kept):,.0f} | "
        f"{s['window_bytes'] / max(1, kept):,.0f} | {peak_rss() / MiB:,.0f} MiB | "
        f"{bound / MiB:,.0f} MiB |"
    )


def memory(max_bytes: int, fill: float, seconds: float) -> None:
    print(f"Memory per kept request, max_bytes = {max_bytes // MiB} MiB "
          f"(Python {sys.version.split()[0]}):\n")  # fmt: skip
    print("| packets | packet bytes | requests kept | RSS per kept request (bytes) | "
          "estimate per request | peak RSS | documented bound |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    ctx = multiprocessing.get_context("spawn")
    for name in CASES:
        q: multiprocessing.Queue[str] = ctx.Queue()
        p = ctx.Process(target=_memory_case, args=(name, max_bytes, fill, seconds, q))
        p.start()
        print(q.get(), flush=True)
        p.join()


def _send(port: int, rate: int, seconds: float, sent_out: multiprocessing.Queue[int]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    data = [small(i) for i in range(200)]
    sent = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        while sent < int(elapsed * rate):
            with contextlib.suppress(OSError):
                sock.send(data[sent % len(data)])
            sent += 1
        time.sleep(0.0005)
    sent_out.put(sent)


def stall(records: int, rate: int, seconds: float) -> None:
    path = os.path.join(tempfile.mkdtemp(), "stall.db")
    c = Collector("127.0.0.1:0")
    # A full window first: the reports fold it at every rebuild.
    c.handle([small(i) for i in range(records)])
    c.store = store = SqliteStore(path, c.aggregator, reports_interval=1.0)
    time.sleep(1.0)  # the writer's first rebuild
    with store._lock:  # one more, timed, alone
        started = time.perf_counter()
        store._write_reports()
        rebuild = time.perf_counter() - started
    gaps: list[float] = []
    last = [0.0]
    lock = threading.Lock()
    handle = c.handle

    def timed(packets: list[bytes]) -> None:
        now = time.perf_counter()
        with lock:
            if last[0]:
                gaps.append(now - last[0])
            last[0] = now
        handle(packets)

    c.handle = timed  # type: ignore[method-assign,assignment]
    c.start()
    ctx = multiprocessing.get_context("spawn")
    q: multiprocessing.Queue[int] = ctx.Queue()
    p = ctx.Process(target=_send, args=(c.address[1], rate, seconds, q))
    p.start()
    sent = q.get()
    p.join()
    time.sleep(1.0)
    c.stop()
    s = c.status()
    print(f"\nReceiver stall: window of {s['requests_in_window']:,} requests, SQLite store "
          f"rebuilding every report each second, {rate:,} packets/s for {seconds:g} s "
          f"(sent {sent:,}, received {c.packets - records:,}):")  # fmt: skip
    print(f"  one rebuild of every report table, alone: {rebuild * 1000:.0f} ms")
    print(f"  time between two batches: median {statistics.median(gaps) * 1000:.1f} ms, "
          f"longest {max(gaps) * 1000:.0f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-mib", type=int, default=32, help="max_bytes of the memory runs")
    args = parser.parse_args()
    memory(args.max_mib * MiB, fill=0.5 if args.quick else 1.0, seconds=10 if args.quick else 30)
    stall(50_000 if args.quick else 200_000, 5_000, 5.0 if args.quick else 10.0)


if __name__ == "__main__":
    main()
