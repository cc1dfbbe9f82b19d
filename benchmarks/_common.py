"""Shared by the benchmarks: a draining UDP listener in another process, the unit every figure
is divided by, and timing in interleaved rounds.

The unit is one ``send()`` of a 300-byte datagram on a *connected* UDP socket to a drained
loopback port: the least any sender must do per request. (An unconnected ``sendto(addr)`` costs
15-35% more, which would flatter every ratio.) These machines are noisy, so every case is timed
in rounds, the unit again in each round, and each figure is the median (with quartiles) of the
per-round ratios: a ratio to something measured alongside is stable where absolute times are not.
Times are the thread's CPU time, which ignores time spent waiting for a core.
"""

from __future__ import annotations

import multiprocessing
import random
import socket
import statistics
import time
import timeit
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

UNIT_NAME = "connected send(), 300 bytes (the unit)"


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


def connected_send(address: tuple[str, int], size: int = 300) -> Callable[[], object]:
    """One send() of a ``size``-byte datagram on a connected socket: the unit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(address)
    payload = b"x" * size
    send = sock.send

    def run() -> object:
        return send(payload)

    return run


def per_call(fn: Callable[[], object], seconds: float = 0.05) -> float:
    """CPU seconds of this thread per call of ``fn``, over about ``seconds`` of calls (one
    sample). The thread's CPU clock, not the wall clock: time the thread spends descheduled
    (the draining listener, other processes of a shared machine) is nobody's cost here, and
    a send's system time is counted all the same."""
    timer = timeit.Timer(fn, timer=time.thread_time)
    number, elapsed = timer.autorange()  # at least 0.2 s: calibrates the loop count
    number = max(1, int(number * seconds / max(elapsed, 1e-9)))
    return timer.timeit(number) / number


@dataclass(frozen=True)
class Figure:
    """A figure's per-round values: their median and quartiles."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def quartiles(self) -> tuple[float, float]:
        if len(self.values) < 2:
            return self.values[0], self.values[0]
        q = statistics.quantiles(self.values, n=4, method="inclusive")
        return q[0], q[2]


def rounds(
    cases: Mapping[str, Callable[[], object]],
    unit: Callable[[], object],
    count: int = 11,
    seconds: float = 0.05,
    seed: int = 1,
) -> tuple[list[float], dict[str, list[float]]]:
    """Times of the unit and of each case in ``count`` rounds. Each round times the unit, then
    every case in a shuffled order (so no case always follows another), then the unit again;
    the round's unit time is the mean of the two."""
    shuffle = random.Random(seed).shuffle
    names = list(cases)
    units: list[float] = []
    times: dict[str, list[float]] = {name: [] for name in names}
    for fn in (unit, *cases.values()):  # warm up caches, sockets and code paths
        per_call(fn, seconds / 5)
    for _ in range(count):
        before = per_call(unit, seconds)
        shuffle(names)
        for name in names:
            times[name].append(per_call(cases[name], seconds))
        units.append((before + per_call(unit, seconds)) / 2)
        time.sleep(0.005)
    return units, times


def ratios(units: list[float], times: list[float]) -> Figure:
    """Per-round ratios of ``times`` to the unit of the same round."""
    return Figure(tuple(t / u for t, u in zip(times, units)))


def row(name: str, figure: Figure, *, unit: str = "x", goal: str = "", met: bool | None = None,
        micros: float | None = None) -> str:  # fmt: skip
    low, high = figure.quartiles
    fmt = "{:+.0f}%" if unit == "%" else "{:.2f}x"
    cell = fmt.format(figure.median)
    spread = f"{fmt.format(low)}..{fmt.format(high)}"
    us = f"{micros:.2f}" if micros is not None else ""
    verdict = "" if met is None else ("met" if met else "missed")
    return f"| {name:<58} | {us:>8} | {cell:>8} | {spread:>15} | {goal:>7} | {verdict:>6} |"


def header() -> str:
    return (
        f"| {'figure':<58} | {'µs':>8} | {'median':>8} | {'quartiles':>15} | {'goal':>7} | "
        f"{'':>6} |\n|{'-' * 60}|{'-' * 9}:|{'-' * 9}:|{'-' * 16}:|{'-' * 8}:|{'-' * 7}:|"
    )


def table(units: list[float], times: dict[str, list[float]]) -> str:
    """Every case as a ratio to the unit: median and quartiles over the rounds."""
    unit_us = statistics.median(units) * 1e6
    lines = [header(), row(UNIT_NAME, Figure((1.0,)), micros=unit_us)]
    for name, values in times.items():
        lines.append(row(name, ratios(units, values), micros=statistics.median(values) * 1e6))
    return "\n".join(lines)
