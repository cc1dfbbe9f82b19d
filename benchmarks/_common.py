"""Shared by the benchmarks: a draining UDP listener in another process, the raw-send baseline,
and timing that reports ratios measured in the same run (these machines are noisy; a ratio to
something measured alongside is stable where absolute times are not)."""

from __future__ import annotations

import multiprocessing
import socket
import time
import timeit
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager


def _drain(port_out: multiprocessing.connection.Connection) -> None:  # pragma: no cover
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    sock.bind(("127.0.0.1", 0))
    port_out.send(sock.getsockname()[1])
    while True:
        sock.recv(65535)


@contextmanager
def draining_listener() -> Iterator[tuple[str, int]]:
    """A UDP port on 127.0.0.1 read as fast as possible by a separate process."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_drain, args=(child,), daemon=True)
    proc.start()
    try:
        yield ("127.0.0.1", parent.recv())
    finally:
        proc.kill()
        proc.join()


def raw_send(address: tuple[str, int], size: int = 300) -> Callable[[], object]:
    """One sendto() of a ``size``-byte datagram: the unit every figure is divided by."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"x" * size
    sendto = sock.sendto

    def send() -> object:
        return sendto(payload, address)

    return send


def per_call(fn: Callable[[], object], seconds: float = 0.2, repeat: int = 7) -> float:
    """Best time of one call, in seconds (the minimum of ``repeat`` runs, as timeit advises)."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, int(number * seconds / 0.2))
    return min(timer.repeat(repeat=repeat, number=number)) / number


def measure(cases: Mapping[str, Callable[[], object]], baseline: Callable[[], object],
            rounds: int = 3) -> tuple[float, dict[str, float]]:  # fmt: skip
    """Times of the baseline and each case, interleaved over ``rounds`` (best of each)."""
    base = float("inf")
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        base = min(base, per_call(baseline))
        for name, fn in cases.items():
            best[name] = min(best[name], per_call(fn))
        time.sleep(0.01)
    return base, best


def table(base: float, times: dict[str, float], targets: dict[str, float] | None = None) -> str:
    targets = targets or {}
    rows = [
        f"| {'case':<52} | {'µs/call':>8} | {'x raw send':>10} | {'target':>6} |",
        f"|{'-' * 54}|{'-' * 9}:|{'-' * 11}:|{'-' * 7}:|",
        f"| {'raw sendto, 300 bytes (baseline)':<52} | {base * 1e6:8.2f} | {1.0:10.2f} | |",
    ]
    for name, t in times.items():
        target = targets.get(name)
        mark = "" if target is None else f"<={target:g}"
        rows.append(f"| {name:<52} | {t * 1e6:8.2f} | {t / base:10.2f} | {mark:>6} |")
    return "\n".join(rows)
