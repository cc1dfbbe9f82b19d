"""The classic middleware's overhead against one connected UDP send, in interleaved rounds.

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

from _common import connected_send, draining_listener, header, ratios, rounds, row, table

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
        units, times = rounds(cases, connected_send(address))
    print(f"Python {sys.version.split()[0]}, ratios to one connected send\n")
    print(table(units, times))
    print("\nDerived, per round:\n")
    print(header())
    for name, value in derived(times).items():
        print(row(name, ratios(units, value)))


def derived(times: dict[str, list[float]]) -> dict[str, list[float]]:
    """Per-round differences: what the middleware adds to a bare app, and what one more timer
    costs the app (creating, starting, stopping and recording it, and its share of encoding;
    an app without pynba would have no timer at all)."""
    bare = times["bare app, 0 timers"]
    zero = times["monitored, 0 timers"]
    off = times["monitored, 10 timers, timer CPU off"]
    on = times["monitored, 10 timers, timer CPU on"]
    return {
        "middleware overhead, 0 timers": [z - b for z, b in zip(zero, bare)],
        "each extra timer, timer CPU on (the default)": [(t - z) / 10 for t, z in zip(on, zero)],
        "each extra timer, timer CPU off": [(t - z) / 10 for t, z in zip(off, zero)],
    }


if __name__ == "__main__":
    main()
