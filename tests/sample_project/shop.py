"""A small app as a pynba user writes it: a WSGI app monitored at import time (with the
address production uses), a nightly job with ScriptMonitor, and a function traced with
OpenTelemetry and reported by the Pinba span processor."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from pynba import monitor, pynba
from pynba.util import ScriptMonitor
from pynba_exporter.otel import PinbaSpanProcessor

# Production's Pinba server: the tests must not send there, and need not know it.
PINBA = "127.0.0.1:9"


@monitor(PINBA, tags={"app": "shop"})
def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/checkout":
        pynba.tags["user_type"] = "guest"
        for _ in range(2):
            with pynba.timer(group="db::insert", server="db1"):
                pass
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"ordered"]
    start_response("404 Not Found", [])
    return [b"no such page"]


def nightly_report(rows: int) -> None:
    job = ScriptMonitor(PINBA, script_name="nightly-report", tags={"job": "report"})
    with job, job.timer(step="render"):
        sum(range(rows))


provider = TracerProvider()
provider.add_span_processor(PinbaSpanProcessor(PINBA))
tracer = provider.get_tracer("shop")


def reindex() -> None:
    with (
        tracer.start_as_current_span("reindex", kind=SpanKind.CONSUMER),
        tracer.start_as_current_span("SELECT", attributes={"db.system": "sqlite"}),
    ):
        pass
