"""The classic middleware's overhead against one raw UDP send, measured in the same run.

    python benchmarks/bench_classic.py

A trivial WSGI app is called directly (environ, start_response, iterate, close) bare and
wrapped in ``PynbaMiddleware`` reporting over UDP to a listener drained by another process; the
overhead is the difference. Timers have 2 tags each, per-timer CPU off unless said.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.util import setup_testing_defaults

from _common import draining_listener, measure, raw_send, table

from pynba import PynbaMiddleware, pynba

ENVIRON: dict[str, Any] = {}
setup_testing_defaults(ENVIRON)
ENVIRON["PATH_INFO"] = "/product/42"


def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
    return lambda data: None


def trivial(env: dict[str, Any], sr: Callable[..., Any]) -> list[bytes]:
    sr("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def with_timers(n: int) -> Callable[..., Iterable[bytes]]:
    tags = [{"group": f"db::query{i}", "server": "db1"} for i in range(n)]

    def app(env: dict[str, Any], sr: Callable[..., Any]) -> list[bytes]:
        for t in tags:
            with pynba.timer(**t):
                pass
        sr("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    return app


def call(app: Callable[..., Iterable[bytes]]) -> Callable[[], object]:
    def run() -> object:
        result = app(ENVIRON, start_response)
        for _ in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
        return result

    return run


def main() -> None:
    with draining_listener() as address:
        target = f"{address[0]}:{address[1]}"
        cases = {
            "bare app, 0 timers": call(trivial),
            "monitored, 0 timers": call(PynbaMiddleware(trivial, target)),
            "bare app, 10 timers (no request: nothing recorded)": call(with_timers(10)),
            "monitored, 10 timers, timer CPU off": call(
                PynbaMiddleware(with_timers(10), target, timer_rusage=False)
            ),
            "monitored, 10 timers, timer CPU on": call(
                PynbaMiddleware(with_timers(10), target, timer_rusage=True)
            ),
        }
        base, times = measure(cases, raw_send(address))
    overhead0 = times["monitored, 0 timers"] - times["bare app, 0 timers"]
    # What one more timer costs the app: creating, starting, stopping and recording it, and its
    # share of encoding (an app without pynba would have no timer at all).
    per_timer = (times["monitored, 10 timers, timer CPU off"] - times["monitored, 0 timers"]) / 10
    per_timer_cpu = (
        times["monitored, 10 timers, timer CPU on"] - times["monitored, 0 timers"]
    ) / 10
    derived = {
        "middleware overhead, 0 timers": overhead0,
        "each extra timer, CPU off": per_timer,
        "each extra timer, CPU on": per_timer_cpu,
    }
    print(f"Python {sys.version.split()[0]}, ratios to one raw send\n")
    print(table(base, {**times, **derived}, {
        "middleware overhead, 0 timers": 2.5, "each extra timer, CPU off": 0.15,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
