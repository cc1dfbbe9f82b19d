"""Load held: requests/s through gunicorn with and without pynba, and packets received vs sent.

    python benchmarks/bench_gunicorn.py [--seconds 5]

The same small app (two timers, a request tag) served by gunicorn (2 workers, 4 threads each,
--preload) bare and wrapped in PynbaMiddleware reporting to the embedded collector, driven by
another process with 8 keep-alive connections for a fixed time.
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

from pynba_exporter.collector import Collector

APP = """
import os, time
from pynba import PynbaMiddleware, pynba

def shop(environ, start_response):
    with pynba.timer(group="db::select", server="db1"):
        sum(range(200))
    with pynba.timer(group="cache::get", server="mc1"):
        pass
    pynba.tags["user_type"] = "guest"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]

application = PynbaMiddleware(shop) if os.environ["MONITORED"] == "1" else shop
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _client(port: int, seconds: float, out: multiprocessing.Queue[int]) -> None:
    done = [0] * 8

    def run(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            conn.request("GET", "/product/1")
            conn.getresponse().read()
            done[k] += 1
        conn.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(sum(done))


def serve_and_load(monitored: bool, seconds: float, pinba: str, workdir: Path) -> int:
    port = _free_port()
    env = dict(os.environ, MONITORED="1" if monitored else "0", PINBA_SERVER=pinba,
               PYTHONPATH=str(workdir))  # fmt: skip
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    server = subprocess.Popen(
        [gunicorn, "--preload", "-w", "2", "--threads", "4", "-b", f"127.0.0.1:{port}",
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp())
    (workdir / "bench_app.py").write_text(APP)
    with Collector("127.0.0.1:0") as collector:
        bare = serve_and_load(False, args.seconds, collector.address_text, workdir)
        before = collector.aggregator.requests_total
        monitored = serve_and_load(True, args.seconds, collector.address_text, workdir)
        deadline = time.monotonic() + 10
        while collector.aggregator.requests_total - before < monitored + 1:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        received = collector.aggregator.requests_total - before - 1  # the warm-up request
    print(f"Python {sys.version.split()[0]}, gunicorn 2 workers x 4 threads, 8 keep-alive "
          f"clients, {args.seconds:g} s each\n")  # fmt: skip
    print(f"bare app:       {bare / args.seconds:8.0f} requests/s")
    print(f"with pynba:     {monitored / args.seconds:8.0f} requests/s "
          f"({monitored / max(1, bare):.2f} of bare)")  # fmt: skip
    print(f"packets: {monitored} requests served, {received} received by the collector "
          f"({100 * received / max(1, monitored):.1f}%)")  # fmt: skip


if __name__ == "__main__":
    main()
