"""Instructions per request, counted by valgrind: figures that do not move with the machine's load.

    python benchmarks/bench_instructions.py            # every case
    python benchmarks/bench_instructions.py mw0 t_off  # some

Each case runs in a fresh interpreter under ``valgrind --tool=callgrind`` twice, with 0 and with
N iterations; the difference divided by N is what one iteration costs in user-space
instructions. The kernel's work (the send, the CPU clock reads) is not counted, so these figures
say how much Python work a path does, not what it costs in time: the timed benchmarks
(``run_all.py``) say that. Needs ``valgrind`` (Debian: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from bench_classic import call, trivial, with_timers
from bench_otel import NoopExporter, workload
from bench_wire import sample
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from pynba import PynbaMiddleware
from pynba_exporter import encode
from pynba_exporter.otel import PinbaSpanProcessor
from pynba_exporter.spans import RequestSpan

HERE = Path(__file__).resolve().parent

# name -> (what it is, iterations counted)
CASES: dict[str, tuple[str, int]] = {
    "bare": ("the bare WSGI app, called and closed", 2000),
    "mw0": ("the WSGI middleware, 0 timers (with the app)", 1000),
    "t_off": ("the middleware, 10 timers, timer CPU off (with the app)", 500),
    "t_on": ("the middleware, 10 timers, timer CPU on (with the app)", 500),
    "encode0": ("encode, a sealed request of the span model, 0 timers", 2000),
    "encode10": ("encode, a sealed request of the span model, 10 timers", 1000),
    "encode10_record": ("encode, a PinbaRequest record, 10 timers", 1000),
    "otel_sdk": ("the OTel SDK alone, root + 5 children (no-op processor)", 300),
    "otel": ("the OTel SDK with PinbaSpanProcessor, root + 5 children", 300),
}


def _case(name: str, target: str) -> Callable[[], object]:
    """The callable one iteration of ``name`` runs."""
    if name == "bare":
        return call(trivial)
    if name == "mw0":
        return call(PynbaMiddleware(trivial, target))
    if name in ("t_off", "t_on"):
        return call(PynbaMiddleware(with_timers(10), target, timer_rusage=name == "t_on"))
    if name == "encode10_record":
        record = sample(10)
        return lambda: encode(record)
    if name.startswith("encode"):
        span = RequestSpan("web1", "shop.example", "/product/<id>", tags={"country": "fr"})
        for i in range(int(name[6:])):
            tags = {"group": f"db::query{i}", "server": f"db{i % 3}"}
            span.add_timer(tags, 0.0011 * (i + 1), 1, 0.0001, 0.00002)
        span.status = 200
        span.seal()
        return lambda: encode(span)
    if name == "otel_sdk":
        return workload(SimpleSpanProcessor(NoopExporter()))
    return workload(PinbaSpanProcessor(target))


def child(name: str, iterations: int) -> None:
    """Run in the counted interpreter: warm the case up, then run it ``iterations`` times."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    host, port = sink.getsockname()
    fn = _case(name, f"{host}:{port}")
    for _ in range(5):
        fn()
    for i in range(iterations):
        fn()
        if i % 100 == 99:  # keep the socket's buffer from filling: a full one drops, not sends
            _drain(sink)


def _drain(sink: socket.socket) -> None:
    try:
        while True:
            sink.recv(65535)
    except BlockingIOError:
        pass


def _count(name: str, iterations: int) -> int:
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, str(Path(__file__)), "--child", name, str(iterations)],
        capture_output=True, text=True, check=True, env=env, timeout=600,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def per_iteration(name: str) -> int:
    iterations = CASES[name][1]
    return (_count(name, iterations) - _count(name, 0)) // iterations


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cases", nargs="*", metavar="case", help=", ".join(CASES))
    parser.add_argument("--child", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(None if argv is None else list(argv))
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    if shutil.which("valgrind") is None:
        sys.exit("bench_instructions: needs valgrind (apt-get install valgrind)")
    print(f"Python {sys.version.split()[0]}; user-space instructions per iteration\n")
    print(f"| {'case':<16} | {'what':<60} | {'instructions':>12} |")
    print(f"|{'-' * 18}|{'-' * 62}|{'-' * 13}:|")
    for name in args.cases or CASES:
        count = per_iteration(name)
        print(f"| {name:<16} | {CASES[name][0]:<60} | {count:>12,} |", flush=True)


if __name__ == "__main__":
    main()
