"""Running a test app as a server process: port on stdout, stop when stdin closes.

The test that starts the process reads ``PORT <n>`` from its first line, drives it over HTTP on
127.0.0.1, then closes its stdin: the server stops and the process exits normally, so the
OpenTelemetry SDK's exit hooks run (exporters flush) as in a real shutdown.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import urllib.request
from collections.abc import Callable
from contextlib import closing


def outside_any_request() -> None:
    """What apps do at startup, in pollers or in bare threads: client calls with no request
    around them (an HTTP call with ``requests`` when ``CALL_OUT_URL`` is set, a query)."""
    url = os.environ.get("CALL_OUT_URL")
    if url:
        import requests  # noqa: PLC0415 - only the apps that are told to call out need it

        requests.get(url, timeout=10)
    with closing(sqlite3.connect(":memory:")) as db:
        db.cursor().execute("select 1")


def serve_until_stdin_closes(port: int, shutdown: Callable[[], None]) -> None:
    print(f"PORT {port}", flush=True)
    sys.stdin.read()  # the test closes it: time to go
    shutdown()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


__all__ = ["fetch", "outside_any_request", "serve_until_stdin_closes"]
