"""Instructions per request, counted by valgrind: figures that do not move with the machine's load.

    python benchmarks/bench_instructions.py                  # every case, the derived figures
    python benchmarks/bench_instructions.py mw0 t_off        # some cases
    python benchmarks/bench_instructions.py --check          # the budgets (CI): exit 1 if blown
    python benchmarks/bench_instructions.py --json out.json  # also every figure, for the docs

Each case runs in a fresh interpreter under ``valgrind --tool=callgrind`` twice, with 0 and with
N iterations; the difference divided by N is what one iteration costs in user-space
instructions. The kernel's work (the send, the CPU clock reads) is not counted, so these figures
say how much Python work a path does, not what it costs in time: the timed benchmarks
(``run_all.py``) say that. Needs ``valgrind`` (Debian: ``apt-get install valgrind``).

The peers (``statsd``, ``prometheus``, ``send``) run in the same interpreter, so the derived
figures are also given as multiples of what an app pays for a statsd request, a Prometheus
observation or one bare UDP send. The counted runs are independent processes: they run two at
a time (``--jobs``), which does not change a count. ``PYTHONHASHSEED`` is fixed so that a
count does not move with string hashing from one run to the next.

``--check`` compares the derived figures with ``BUDGETS`` (Python 3.11 figures) and fails when
one exceeds its budget by more than ``TOLERANCE``.
"""

# Each case imports what it needs when it is built: a counted run then pays for its own imports
# only (the OTel SDK would cost every run seconds under valgrind), and they cancel out anyway.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# name -> (what it is, iterations counted)
CASES: dict[str, tuple[str, int]] = {
    "bare": ("the bare WSGI app, called and closed", 2000),
    "mw0": ("the WSGI middleware, 0 timers (with the app)", 1000),
    "t_off": ("the middleware, 10 timers, timer CPU off (with the app)", 500),
    "t_on": ("the middleware, 10 timers, timer CPU on (with the app)", 500),
    "t_spec": ("the middleware, 10 uses of prebuilt timers, timer CPU on (with the app)", 500),
    "encode0": ("encode, a sealed request of the span model, 0 timers", 2000),
    "encode10": ("encode, a sealed request of the span model, 10 timers", 1000),
    "encode10_record": ("encode, a PinbaRequest record, 10 timers", 1000),
    "otel_sdk": ("the OTel SDK alone, root + 5 children (no-op processor)", 300),
    "otel": ("the OTel SDK with PinbaSpanProcessor, root + 5 children", 300),
    "statsd": ("peer: a statsd request, timing + incr (2 UDP sends)", 2000),
    "prometheus": ("peer: prometheus_client Histogram.labels(...).observe(x)", 2000),
    "send": ("peer: one connected UDP send() of 200 bytes", 2000),
}

# The peers the derived figures are given as multiples of: name -> column heading.
PEERS: dict[str, str] = {"statsd": "x statsd", "prometheus": "x prometheus", "send": "x send"}

# The budgets: user-space instructions per iteration (otel_overhead: a ratio), measured on
# Python 3.11 (other versions run other bytecode; their figures are shown, not judged fairly).
BUDGETS: dict[str, float] = {
    "wsgi0": 34_000,
    "timer_on": 14_000,
    "timer_off": 12_000,
    "timer_spec": 10_000,
    "encode10": 72_000,
    "encode0": 16_500,
    "otel_overhead": 0.10,
}
BUDGET_PYTHON = (3, 11)
TOLERANCE = 0.10  # --check fails on a figure above its budget * (1 + TOLERANCE)


def _per_timer(timers: float, zero: float) -> float:
    return (timers - zero) / 10


# name -> (what it is, the cases it is computed from, how)
DERIVED: dict[str, tuple[str, tuple[str, ...], Callable[..., float]]] = {
    "wsgi0": ("the middleware's own work, 0 timers (mw0 - bare)", ("mw0", "bare"),
              lambda mw0, bare: mw0 - bare),
    "timer_on": ("one timer, timer CPU on ((t_on - mw0) / 10)", ("t_on", "mw0"), _per_timer),
    "timer_off": ("one timer, timer CPU off ((t_off - mw0) / 10)", ("t_off", "mw0"), _per_timer),
    "timer_spec": ("one use of a prebuilt timer ((t_spec - mw0) / 10)", ("t_spec", "mw0"),
                   _per_timer),
    "encode10": ("encode, 10 timers", ("encode10",), float),
    "encode0": ("encode, 0 timers", ("encode0",), float),
    "otel_overhead": ("PinbaSpanProcessor over the SDK alone (otel / otel_sdk - 1)",
                      ("otel", "otel_sdk"), lambda otel, sdk: otel / sdk - 1),
}  # fmt: skip
RATIOS = frozenset({"otel_overhead"})  # figures that are ratios, not instructions


def unavailable(name: str) -> str | None:
    """Why case ``name`` cannot run here (None: it can)."""
    if name == "t_spec":
        from pynba import pynba

        if getattr(pynba, "timer_spec", None) is None:
            return "pynba.pynba has no timer_spec yet"
    module = {"statsd": "statsd", "prometheus": "prometheus_client"}.get(name)
    if module is not None and importlib.util.find_spec(module) is None:
        return f"the {module} package is not installed"
    return None


def with_specs(n: int) -> Callable[..., Iterable[bytes]]:
    """An app using ``n`` timers built once, up front, with ``pynba.timer_spec``."""
    from pynba import pynba

    # getattr: not every version of pynba has timer_spec (unavailable() skips the case then)
    timer_spec: Callable[..., Any] = getattr(pynba, "timer_spec")  # noqa: B009
    specs = [timer_spec(group=f"db::query{i}", server="db1") for i in range(n)]

    def app(env: dict[str, Any], sr: Callable[..., Any]) -> list[bytes]:
        for spec in specs:
            with spec:
                pass
        sr("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    return app


def _case(name: str, host: str, port: int) -> Callable[[], object]:
    """The callable one iteration of ``name`` runs."""
    target = f"{host}:{port}"
    if name == "statsd":
        return _statsd(host, port)
    if name == "prometheus":
        return _prometheus()
    if name == "send":
        return _send(host, port)
    if name.startswith("encode"):
        return _encode(name)
    if name.startswith("otel"):
        return _otel(name, target)
    from bench_classic import call, trivial, with_timers

    from pynba import PynbaMiddleware

    if name == "bare":
        return call(trivial)
    if name == "mw0":
        return call(PynbaMiddleware(trivial, target))
    if name == "t_spec":
        return call(PynbaMiddleware(with_specs(10), target, timer_rusage=True))
    return call(PynbaMiddleware(with_timers(10), target, timer_rusage=name == "t_on"))


def _encode(name: str) -> Callable[[], object]:
    from pynba_exporter import encode

    if name == "encode10_record":
        from bench_wire import sample

        record = sample(10)
        return lambda: encode(record)
    from pynba_exporter.spans import RequestSpan

    span = RequestSpan("web1", "shop.example", "/product/<id>", tags={"country": "fr"})
    for i in range(int(name[6:])):
        tags = {"group": f"db::query{i}", "server": f"db{i % 3}"}
        span.add_timer(tags, 0.0011 * (i + 1), 1, 0.0001, 0.00002)
    span.status = 200
    span.seal()
    return lambda: encode(span)


def _otel(name: str, target: str) -> Callable[[], object]:
    from bench_otel import NoopExporter, workload

    if name == "otel_sdk":
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        return workload(SimpleSpanProcessor(NoopExporter()))
    from pynba_exporter.otel import PinbaSpanProcessor

    return workload(PinbaSpanProcessor(target))


def _statsd(host: str, port: int) -> Callable[[], object]:
    import statsd  # optional: the 'bench' extra

    client = statsd.StatsClient(host, port, prefix="shop")

    def run() -> object:
        client.timing("request", 12.5)
        client.incr("requests")
        return None

    return run


def _prometheus() -> Callable[[], object]:
    from prometheus_client import CollectorRegistry, Histogram  # optional: the 'web' extra

    histogram = Histogram(
        "request_seconds", "Requests", ["route", "method"], registry=CollectorRegistry()
    )

    def run() -> object:
        histogram.labels("/product/<id>", "GET").observe(0.0125)  # inline, as apps write it
        return None

    return run


def _send(host: str, port: int) -> Callable[[], object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    payload = b"x" * 200

    def run() -> object:
        return sock.send(payload)

    return run


def child(name: str, iterations: int) -> None:
    """Run in the counted interpreter: warm the case up, then run it ``iterations`` times."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    host, port = sink.getsockname()
    fn = _case(name, host, port)
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
    env = {**os.environ, "PYTHONPATH": path, "PYTHONHASHSEED": "0"}
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, str(Path(__file__)), "--child", name, str(iterations)],
        capture_output=True, text=True, check=False, env=env, timeout=900,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or found is None:
        raise RuntimeError(
            f"case {name} ({iterations} iterations) failed under valgrind "
            f"(exit {out.returncode}):\n{out.stderr[-3000:]}"
        )
    return int(found.group(1))


def measure(names: Iterable[str], jobs: int) -> Iterable[tuple[str, int | None]]:
    """(name, instructions per iteration) for each case, in order, as each is known; None for a
    case that cannot run here. The counted runs go ``jobs`` at a time."""
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        runs: dict[str, tuple[Future[int], Future[int]] | None] = {}
        for name in names:
            iterations = CASES[name][1]
            runs[name] = None if unavailable(name) else (
                pool.submit(_count, name, iterations), pool.submit(_count, name, 0)
            )  # fmt: skip
        try:
            for name, pair in runs.items():
                if pair is None:
                    yield name, None
                else:
                    yield name, (pair[0].result() - pair[1].result()) // CASES[name][1]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def derive(counts: Mapping[str, int | None]) -> dict[str, float | None]:
    """The derived figures that the measured cases give (None: an input case was skipped)."""
    figures: dict[str, float | None] = {}
    for name, (_, inputs, how) in DERIVED.items():
        if all(case in counts for case in inputs):
            values = [counts[case] for case in inputs]
            figures[name] = None if None in values else how(*values)
    return figures


def verdict(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    budget = BUDGETS[name]
    if value <= budget:
        return "ok"
    return "over, within tolerance" if value <= budget * (1 + TOLERANCE) else "OVER"


def _show(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.1%}" if name in RATIOS else f"{value:,.0f}"


def _peer_multiples(
    name: str, value: float | None, counts: Mapping[str, int | None]
) -> dict[str, float | None]:
    """The figure as a multiple of each peer's count (None: a ratio, or nothing to divide)."""
    multiples: dict[str, float | None] = {}
    for peer in PEERS:
        unit = counts.get(peer)
        usable = value is not None and unit and name not in RATIOS
        multiples[peer] = value / unit if usable and value is not None and unit else None
    return multiples


def derived_table(figures: Mapping[str, float | None], counts: Mapping[str, int | None]) -> str:
    peers = [peer for peer in PEERS if counts.get(peer)]
    width = max(len(DERIVED[name][0]) for name in figures)
    head = f"| {'figure':<13} | {'what':<{width}} | {'measured':>10} | {'budget':>8} |"
    rule = f"|{'-' * 15}|{'-' * (width + 2)}|{'-' * 11}:|{'-' * 9}:|"
    for peer in peers:
        head += f" {PEERS[peer]:>12} |"
        rule += f"{'-' * 13}:|"
    lines = [head, rule]
    for name, value in figures.items():
        line = (
            f"| {name:<13} | {DERIVED[name][0]:<{width}} | {_show(name, value):>10} "
            f"| {_show(name, BUDGETS[name]):>8} |"
        )
        multiples = _peer_multiples(name, value, counts)
        for peer in peers:
            multiple = multiples[peer]
            line += f" {'-' if multiple is None else f'{multiple:.2f}':>12} |"
        lines.append(line)
    return "\n".join(lines)


def check_table(figures: Mapping[str, float | None]) -> tuple[str, bool]:
    """The --check table, and whether every figure holds its budget (within the tolerance)."""
    lines = [
        f"| {'figure':<13} | {'measured':>10} | {'budget':>8} | verdict                |",
        f"|{'-' * 15}|{'-' * 11}:|{'-' * 9}:|{'-' * 24}|",
    ]
    held = True
    for name, value in figures.items():
        outcome = verdict(name, value)
        held = held and outcome != "OVER"
        lines.append(
            f"| {name:<13} | {_show(name, value):>10} | {_show(name, BUDGETS[name]):>8} "
            f"| {outcome:<22} |"
        )
    return "\n".join(lines), held


def to_json(counts: Mapping[str, int | None], figures: Mapping[str, float | None]) -> object:
    return {
        "python": sys.version.split()[0],
        "budgets_python": ".".join(map(str, BUDGET_PYTHON)),
        "tolerance": TOLERANCE,
        "cases": {
            name: {
                "what": CASES[name][0],
                "iterations": CASES[name][1],
                "instructions": count,
                "skipped": unavailable(name) if count is None else None,
            }
            for name, count in counts.items()
        },
        "derived": {
            name: {
                "what": DERIVED[name][0],
                "value": value,
                "ratio": name in RATIOS,
                "budget": BUDGETS[name],
                "verdict": verdict(name, value),
                "per_peer": _peer_multiples(name, value, counts),
            }
            for name, value in figures.items()
        },
    }


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("cases", nargs="*", metavar="case", help=", ".join(CASES))
    parser.add_argument(
        "--check", action="store_true",
        help="measure what the budgets need; exit 1 if a figure is over budget by more than "
             f"{TOLERANCE:.0%}",
    )  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1),
        help="counted runs at a time (default: 2, or 1 on one core)",
    )  # fmt: skip
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
    names = list(args.cases or CASES)
    if args.check and not args.cases:
        names = [name for name in CASES if any(name in DERIVED[f][1] for f in BUDGETS)]

    print(f"Python {sys.version.split()[0]}; user-space instructions per iteration\n")
    width = max(len(CASES[name][0]) for name in names)
    print(f"| {'case':<15} | {'what':<{width}} | {'instructions':>12} |")
    print(f"|{'-' * 17}|{'-' * (width + 2)}|{'-' * 13}:|")
    counts: dict[str, int | None] = {}
    for name, count in measure(names, max(1, args.jobs)):
        counts[name] = count
        shown = "n/a" if count is None else f"{count:,}"
        print(f"| {name:<15} | {CASES[name][0]:<{width}} | {shown:>12} |", flush=True)
    for name, count in counts.items():
        if count is None:
            print(f"\n{name}: skipped, {unavailable(name)}")

    figures = derive(counts)
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(counts, figures), indent=2) + "\n")
    if not args.check:
        if figures:
            print("\nDerived (budgets for Python 3.11; x peer: the figure as a multiple of it)\n")
            print(derived_table(figures, counts))
        return
    print(f"\nCheck: a figure fails above its budget + {TOLERANCE:.0%}\n")
    table, held = check_table(figures)
    print(table)
    if sys.version_info[:2] != BUDGET_PYTHON:
        print(
            f"\nnote: the budgets are for Python {'.'.join(map(str, BUDGET_PYTHON))}; this is "
            f"{sys.version.split()[0]}, whose bytecode costs differ"
        )
    if not held:
        sys.exit("\nbench_instructions --check: over budget")
    print("\nbench_instructions --check: every figure within budget")


if __name__ == "__main__":
    main()
