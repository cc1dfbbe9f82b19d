"""Load held: requests/s through a real gunicorn with and without pynba, in rounds.

    python benchmarks/bench_gunicorn.py [--seconds 2] [--rounds 3] [--app trivial|shop]

gunicorn's sync workers (2, --preload) serve a trivial app (or the small shop app: two timers,
a request tag), bare and wrapped in PynbaMiddleware reporting to the embedded collector, driven
over HTTP by another process with 4 client threads for a fixed time. Bare and monitored
alternate, round after round; the figure is the median of the per-round losses in requests/s,
and every request served by the monitored app must reach the collector.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import Figure, header, row

from pynba_exporter.collector import Collector

APP = """
import os, time
from pynba import PynbaMiddleware, pynba

def trivial(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]

def shop(environ, start_response):
    with pynba.timer(group="db::select", server="db1"):
        sum(range(200))
    with pynba.timer(group="cache::get", server="mc1"):
        pass
    pynba.tags["user_type"] = "guest"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]

app = shop if os.environ["BENCH_APP"] == "shop" else trivial
application = PynbaMiddleware(app) if os.environ["MONITORED"] == "1" else app
"""

CLIENTS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _client(port: int, seconds: float, out: multiprocessing.Queue[int]) -> None:
    done = [0] * CLIENTS

    def run(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            conn.request("GET", "/product/1")
            conn.getresponse().read()
            done[k] += 1
        conn.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(sum(done))


def serve_and_load(
    monitored: bool, seconds: float, pinba: str, workdir: Path, app: str = "trivial"
) -> int:
    port = _free_port()
    env = dict(os.environ, MONITORED="1" if monitored else "0", PINBA_SERVER=pinba,
               PYTHONPATH=str(workdir), BENCH_APP=app)  # fmt: skip
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    server = subprocess.Popen(
        [gunicorn, "--preload", "-k", "sync", "-w", "2", "-b", f"127.0.0.1:{port}",
         "--log-level", "error", "bench_app:application"],
        env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/warmup")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        ctx = multiprocessing.get_context("spawn")
        q: multiprocessing.Queue[int] = ctx.Queue()
        proc = ctx.Process(target=_client, args=(port, seconds, q))
        proc.start()
        served = q.get()
        proc.join()
        return served
    finally:
        server.terminate()
        server.wait(timeout=30)


def load_rounds(seconds: float, count: int, app: str = "trivial") -> tuple[Figure, int, int]:
    """Per-round loss in requests/s (percent, negative is slower), and the monitored requests
    served and received by the collector over all rounds."""
    workdir = Path(tempfile.mkdtemp())
    (workdir / "bench_app.py").write_text(APP)
    losses = []
    served = received = 0
    with Collector("127.0.0.1:0") as collector:
        for _ in range(count):
            bare = serve_and_load(False, seconds, collector.address_text, workdir, app)
            before = collector.aggregator.requests_total
            monitored = serve_and_load(True, seconds, collector.address_text, workdir, app)
            deadline = time.monotonic() + 10
            while collector.aggregator.requests_total - before < monitored + 1:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            served += monitored
            received += collector.aggregator.requests_total - before - 1  # minus the warm-up
            losses.append((monitored / max(1, bare) - 1) * 100)
    return Figure(tuple(losses)), served, received


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--app", choices=("trivial", "shop"), default="trivial")
    args = parser.parse_args()
    loss, served, received = load_rounds(args.seconds, args.rounds, args.app)
    print(f"Python {sys.version.split()[0]}, gunicorn sync, 2 workers, {CLIENTS} clients, "
          f"{args.app} app, {args.rounds} rounds of {args.seconds:g} s each way\n")  # fmt: skip
    print(header())
    print(row("requests/s with pynba against bare", loss, unit="%"))
    print(f"\npackets: {served} requests served monitored, {received} received by the collector "
          f"({100 * received / max(1, served):.1f}%)")  # fmt: skip


if __name__ == "__main__":
    main()
