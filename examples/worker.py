"""A worker that reports each job to Pinba with ScriptMonitor.

    python examples/worker.py --jobs 100 --pinba 127.0.0.1:30002

Each job is one Pinba request (its time, CPU, timers and tags), like each page of a web app.
"""

from __future__ import annotations

import argparse
import sys
import time

from pynba import pynba
from pynba.util import ScriptMonitor


def handle(job: int, monitor: ScriptMonitor) -> None:
    with monitor.timer(step="fetch", server="queue1"):
        time.sleep(0.0005)
    with pynba.timer(step="render"):  # the monitor's unit of work is the current request
        "".join(str(i) for i in range(200))
    pynba.tags["kind"] = "newsletter" if job % 3 else "receipt"
    if job % 10 == 9:
        monitor.status = 500  # a failed job


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--pinba", default=None, help="Pinba server(s), host:port[,host:port]")
    args = parser.parse_args(argv)
    monitor = ScriptMonitor(args.pinba, script_name="mailer", tags={"worker": "mailer"})
    for job in range(args.jobs):
        handle(job, monitor)
        monitor.send()
    stats = monitor.reporter.stats()
    print(f"{args.jobs} jobs, {stats.sent} packets sent, {stats.dropped} dropped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
