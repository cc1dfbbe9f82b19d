"""Where the classic middleware's microseconds go at 0 timers, part by part.

    python benchmarks/bench_breakdown.py

Each part is timed on its own in this process (the thread's CPU time, best of 7), against one
send() on a connected UDP socket to a port this process drains itself between parts.
"""

from __future__ import annotations

import socket
import sys
import time
import timeit
from collections.abc import Callable

from bench_classic import call, trivial

from pynba import PynbaMiddleware
from pynba_exporter import UdpTransport, encode
from pynba_exporter.spans import RequestSpan, finish_and_send, hostname, thread_cpu


def main() -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    address = sink.getsockname()
    target = f"{address[0]}:{address[1]}"
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(address)
    payload = b"x" * 300

    def drain() -> None:
        try:
            while True:
                sink.recv(65535)
        except BlockingIOError:
            pass

    def t(fn: Callable[[], object], n: int = 20_000) -> float:
        best = min(timeit.repeat(fn, number=n, repeat=7, timer=time.thread_time)) / n
        drain()
        return best * 1e6

    def request() -> RequestSpan:
        return RequestSpan(hostname(), "localhost", "/product/42", schema="http")

    transport = UdpTransport(target)
    sealed = request()
    sealed.status = 200
    finish_and_send(sealed, transport, "bench")
    data = encode(sealed)
    unit = t(lambda: sender.send(payload))
    new_request = t(request)
    rows = {
        "connected send (the unit)": unit,
        "the whole middleware, minus the bare app": t(call(PynbaMiddleware(trivial, target)))
        - t(call(trivial)),
        "finish_and_send: finish, seal, name guards, encode, send": t(
            lambda: finish_and_send(request(), transport, "bench")
        )
        - new_request,
        "encode, 0 timers (cached layout)": t(lambda: encode(sealed)),
        "the send and its counters": t(lambda: transport.send_packet(data)),
        "a thread CPU sample (getrusage + clock_gettime)": t(thread_cpu),
        "the request object, with its first CPU sample": new_request,
    }
    print(f"Python {sys.version.split()[0]}; microseconds of this thread's CPU per call\n")
    print(f"| {'part':<60} | {'µs':>6} | {'x send':>6} |")
    print(f"|{'-' * 62}|{'-' * 7}:|{'-' * 7}:|")
    for name, us in rows.items():
        print(f"| {name:<60} | {us:6.2f} | {us / unit:6.2f} |")


if __name__ == "__main__":
    main()
