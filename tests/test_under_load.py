"""Real servers, concurrency and faults: every request reported once, the app never hurt.

gunicorn (pre-forking, --preload, workers with threads) driven by a real HTTP client, an ASGI
app under concurrent asyncio requests, OpenTelemetry providers shut down mid-traffic, and an
interpreter exiting with spans still queued: each checked packet by packet at a collector.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider

from pynba import pynba
from pynba_exporter.collector import Collector, Record
from pynba_exporter.otel import PinbaSpanProcessor
from pynba_exporter.spans import current_request


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector("127.0.0.1:0").start()
    yield c
    c.stop()


def wait_for(collector: Collector, count: int, timeout: float = 20.0) -> list[Record]:
    deadline = time.monotonic() + timeout
    while collector.aggregator.requests_total < count:
        assert time.monotonic() < deadline, (collector.aggregator.requests_total, count)
        time.sleep(0.02)
    time.sleep(0.2)  # and nothing more comes
    return collector.aggregator.records()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# gunicorn

GUNICORN_APP = """
import os, time
from pynba import PynbaMiddleware, pynba

MODE = os.environ["PYNBA_TEST_MODE"]


def shop(environ, start_response):
    rid = environ.get("HTTP_X_REQUEST_ID", "")
    pynba.tags["rid"] = rid
    pynba.tags["pid"] = os.getpid()
    path = environ["PATH_INFO"]
    with pynba.timer(group="db::select", server="db1"):
        time.sleep(0.001)
    if path == "/fail":
        raise RuntimeError("boom")
    pynba.scriptname = "/product/<id>" if path.startswith("/product/") else path
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [rid.encode()]


def traced(app):
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from pynba_exporter.otel import PinbaSpanExporter, PinbaSpanProcessor

    provider = TracerProvider()
    if MODE in ("processor", "mixed"):  # mixing needs the processor
        provider.add_span_processor(PinbaSpanProcessor())
    else:
        exporter = PinbaSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
    tracer = provider.get_tracer("gunicorn-test")

    def with_span(environ, start_response):
        from opentelemetry import trace

        root = trace.get_current_span()  # what the exporter sees: the spans' attributes
        root.set_attribute("pinba.request_tag.rid", environ.get("HTTP_X_REQUEST_ID", ""))
        root.set_attribute("pinba.request_tag.pid", os.getpid())
        if environ["PATH_INFO"].startswith("/product/"):
            root.set_attribute("pinba.script_name", "/product/<id>")
        with tracer.start_as_current_span("cache", attributes={"db.system": "redis",
                                                               "db.operation": "GET"}):
            pass
        return app(environ, start_response)

    return OpenTelemetryMiddleware(with_span, tracer_provider=provider), provider


if MODE == "classic":
    application = PynbaMiddleware(shop)
elif MODE == "mixed":  # the classic middleware outside, OpenTelemetry inside: one packet
    inner, provider = traced(shop)
    application = PynbaMiddleware(inner)
else:  # OpenTelemetry only: the classic timers still land in the packet (processor mode)
    application, provider = traced(shop)
"""


GUNICORN = Path(sys.executable).with_name("gunicorn")


@pytest.mark.skipif(not GUNICORN.exists(), reason="gunicorn is not installed (a test extra)")
@pytest.mark.parametrize("mode", ["classic", "processor", "exporter", "mixed"])
def test_gunicorn_preload_workers_every_request_once(
    collector: Collector, tmp_path: Path, mode: str
) -> None:
    (tmp_path / "gunicorn_app.py").write_text(GUNICORN_APP)
    port = free_port()
    env = dict(os.environ, PYNBA_TEST_MODE=mode, PINBA_SERVER=collector.address_text,
               PYTHONPATH=str(tmp_path))  # fmt: skip
    gunicorn = str(GUNICORN)
    log = tmp_path / "gunicorn.log"
    server = subprocess.Popen(
        [gunicorn, "--preload", "-w", "2", "--threads", "4", "-b", f"127.0.0.1:{port}",
         "--log-level", "warning", "--error-logfile", str(log), "gunicorn_app:application"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                get(port, "/warmup")
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text() if log.exists() else ""
                time.sleep(0.1)
        n = 200
        paths = ["/fail" if i % 20 == 0 else f"/product/{i}" for i in range(n)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda i: get(port, paths[i], {"X-Request-Id": str(i)}),
                                     range(n)))  # fmt: skip
        assert statuses.count(500) == n // 20
        records = wait_for(collector, n + 1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    mine = [r for r in records if dict(r.tags).get("rid", "") != ""]
    seen = Counter(dict(r.tags)["rid"] for r in mine)
    assert seen == Counter(str(i) for i in range(n))  # every request, exactly once
    for r in mine:
        i = int(dict(r.tags)["rid"])
        if i % 20 == 0:
            assert r.status == 500
        else:
            assert (r.status, r.script_name) == (200, "/product/<id>")
        groups = sorted(dict(t.tags)["group"] for t in r.timers)
        expected = ["db::select"] if mode in ("classic", "exporter") else ["db::GET", "db::select"]
        if mode == "exporter":  # the exporter sees only spans: the classic timer is not its
            expected = ["db::GET"]
        assert groups == expected, (mode, groups)
    assert len({dict(r.tags)["pid"] for r in mine}) == 2  # both workers, after the fork


# --------------------------------------------------------------------------------------------
# ASGI


def test_asgi_concurrent_requests_keep_their_own_timers(collector: Collector) -> None:
    asgi = pytest.importorskip("opentelemetry.instrumentation.asgi")
    provider = TracerProvider()
    provider.add_span_processor(PinbaSpanProcessor(collector.address_text))
    tracer = provider.get_tracer("asgi-test")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        rid = scope["path"].strip("/")
        pynba.tags["rid"] = rid
        for _ in range(3):
            with pynba.timer(group="native", rid=rid):
                await asyncio.sleep(0.001)  # other requests run meanwhile
            with tracer.start_as_current_span("span", attributes={"pinba.tag.rid": rid}):
                await asyncio.sleep(0.001)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": rid.encode()})

    traced = asgi.OpenTelemetryMiddleware(app, tracer_provider=provider)

    async def call(i: int) -> None:
        scope = {
            "type": "http", "http_version": "1.1", "method": "GET", "path": f"/{i}",
            "raw_path": f"/{i}".encode(), "query_string": b"", "headers": [], "scheme": "http",
            "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 1),
        }  # fmt: skip
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await traced(scope, receive, send)
        assert sent[-1]["body"] == str(i).encode()

    async def main() -> None:
        await asyncio.gather(*(call(i) for i in range(30)))

    current_request.set(None)
    asyncio.run(main())
    records = wait_for(collector, 30)
    assert len(records) == 30
    for r in records:
        rid = dict(r.tags)["rid"]
        for t in r.timers:
            tags = dict(t.tags)
            assert tags.get("rid", rid) == rid, (rid, tags)  # nothing from another request
        # The instrumentation's own "http send" spans are not timers (asgi_events off).
        assert not any("http send" in dict(t.tags)["group"] for t in r.timers)
        hits = {dict(t.tags)["group"]: t.hit_count for t in r.timers}
        assert hits.get("native") == 3
        assert sum(t.hit_count for t in r.timers if dict(t.tags)["group"] == "span") == 3
    provider.shutdown()


# --------------------------------------------------------------------------------------------
# OpenTelemetry faults


def test_provider_shutdown_while_requests_are_in_flight(collector: Collector) -> None:
    provider = TracerProvider()
    provider.add_span_processor(PinbaSpanProcessor(collector.address_text))
    tracer = provider.get_tracer("shutdown-test")
    started = threading.Barrier(5)
    errors: list[BaseException] = []

    def request(i: int) -> None:
        try:
            with tracer.start_as_current_span(f"job{i}"):
                started.wait()
                time.sleep(0.05)  # the provider shuts down meanwhile
                with tracer.start_as_current_span("step"):
                    pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    started.wait()
    provider.shutdown()
    for th in threads:
        th.join()
    assert errors == []
    with tracer.start_as_current_span("after"):  # after shutdown: nothing, no error
        pass
    time.sleep(0.3)
    assert collector.aggregator.requests_total <= 4


def test_interpreter_exit_flushes_pending_exporter_spans(
    collector: Collector, tmp_path: Path
) -> None:
    script = tmp_path / "exits.py"
    script.write_text(
        textwrap.dedent(f"""
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind
        from pynba_exporter.otel import PinbaSpanExporter

        provider = TracerProvider()  # shuts down (and flushes) at interpreter exit
        provider.add_span_processor(
            BatchSpanProcessor(PinbaSpanExporter("{collector.address_text}"),
                               schedule_delay_millis=60_000)
        )
        tracer = provider.get_tracer("exit-test")
        for i in range(10):
            with tracer.start_as_current_span(f"job{{i}}", kind=SpanKind.CONSUMER):
                with tracer.start_as_current_span("step"):
                    pass
        # no shutdown(), no force_flush(): the spans are still queued here
    """)
    )
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 30  # flushed, not hung
    records = wait_for(collector, 10)
    assert sorted(r.script_name for r in records) == sorted(f"job{i}" for i in range(10))
