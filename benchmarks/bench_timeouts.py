"""Request timeouts raised by a signal handler: how many reach the caller through the middleware.

A timer signal fires every 50 microseconds; its handler raises ``Timeout`` once per request (as
a server's request-timeout handler does), wherever the request is: in the app, or in the
library's code around it. Every one of them should reach the caller. Those that do not were
swallowed; the script says where they were raised.

    .venv/bin/python benchmarks/bench_timeouts.py [seconds]
"""

from __future__ import annotations

import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from types import FrameType
from typing import Any

from pynba import PynbaMiddleware, pynba
from pynba_exporter import MemoryTransport


class Timeout(Exception):
    pass


def ignore_start(*args: Any) -> Callable[[bytes], object]:
    return lambda data: None


def main(seconds: float) -> None:
    state = {"armed": False, "fired": 0}
    where: dict[int, list[str]] = {}

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        if state["armed"]:
            state["armed"] = False
            state["fired"] += 1
            exc = Timeout()
            stack = traceback.extract_stack(frame)[-2:]
            where[id(exc)] = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in stack]
            raise exc

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        pynba.tags["a"] = "b"
        with pynba.timer(group="x"):
            pass
        return [b"ok"]

    middleware = PynbaMiddleware(app, transport=MemoryTransport())
    environ = {"PATH_INFO": "/x", "SERVER_NAME": "s", "wsgi.url_scheme": "http"}
    reached = requests = 0
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.00005, 0.00005)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            requests += 1
            try:
                state["armed"] = True
                result = middleware(environ, ignore_start)
                try:
                    b"".join(result)
                finally:
                    getattr(result, "close", lambda: None)()
                state["armed"] = False
            except Timeout as exc:
                state["armed"] = False
                reached += 1
                where.pop(id(exc), None)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    fired = state["fired"]
    print(f"requests {requests}, timeouts raised {fired}, reached the caller {reached}, "
          f"swallowed {fired - reached}")  # fmt: skip
    for stack, count in Counter(tuple(s) for s in where.values()).most_common(5):
        print(f"  {count} swallowed at {' > '.join(stack)}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 5.0)
