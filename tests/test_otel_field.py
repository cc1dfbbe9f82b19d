"""The OpenTelemetry bridge as it is used in the field: real Flask, Django and FastAPI apps under
real servers, the real instrumentations (flask, django, fastapi/asgi, sqlite3, requests,
threading), manual and zero-code (``opentelemetry-instrument``) setups, every sampler.

Each numbered case of issue 10 has a test named ``test_<n>_...``; what they prove is on real
packets received on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import os
import re
import select
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import PynbaLog, UdpReceiver

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("flask")

from apps import fastapi_app, flask_app
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor
from opentelemetry.instrumentation.threading import ThreadingInstrumentor
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import SpanKind
from test_classic_wsgi import environ, hello, serve
from werkzeug.serving import make_server

from pynba import PynbaMiddleware
from pynba_exporter import PinbaRequest
from pynba_exporter.naming import OVERFLOW, UNMATCHED, script_names
from pynba_exporter.otel import (
    PinbaConfigurator,
    PinbaSampler,
    PinbaSpanExporter,
    PinbaSpanProcessor,
    _sampling,
    _shared,
    default_timer_tags,
)

HERE = Path(__file__).parent
APPS = HERE / "apps"
ROOT = HERE.parent
INSTRUMENT = Path(sys.executable).parent / "opentelemetry-instrument"
SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319d-b7ad6b7169203332-00"


# --------------------------------------------------------------------------------------------
# Fixtures: HTTP on 127.0.0.1, apps served in threads or processes


def get(url: str, traceparent: str | None = None) -> tuple[int, bytes]:
    """A plain urllib call (never instrumented): status and body, errors included."""
    headers = {"traceparent": traceparent} if traceparent else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@contextmanager
def plain_http_server() -> Iterator[str]:
    """An HTTP server that is not the app: the target of the app's outgoing calls."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/user/123"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Otel:
    provider: TracerProvider
    processor: PinbaSpanProcessor
    spans: InMemorySpanExporter  # what a tracing backend would get: the sampled spans


@contextmanager
def otel(receiver: UdpReceiver, sampler: Sampler | None = None, **options: Any) -> Iterator[Otel]:
    """Manual setup as the docs show it, plus the sqlite3, requests and threading
    instrumentations (process-wide: undone on exit)."""
    provider = TracerProvider(sampler=PinbaSampler(sampler or ParentBased(ALWAYS_ON)))
    processor = PinbaSpanProcessor(receiver.address, **options)
    memory = InMemorySpanExporter()
    provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    instrumentors: list[Any] = [  # BaseInstrumentor: untyped
        SQLite3Instrumentor(),
        RequestsInstrumentor(),
        ThreadingInstrumentor(),
    ]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=provider)
    try:
        yield Otel(provider, processor, memory)
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()
        provider.shutdown()


@contextmanager
def flask_served(setup: Otel) -> Iterator[str]:
    app = flask_app.make_app()
    FlaskInstrumentor.instrument_app(app, tracer_provider=setup.provider)  # type: ignore[no-untyped-call]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        FlaskInstrumentor.uninstrument_app(app)  # type: ignore[no-untyped-call]


@contextmanager
def fastapi_served(setup: Otel) -> Iterator[str]:
    app = fastapi_app.make_app()
    FastAPIInstrumentor.instrument_app(app, tracer_provider=setup.provider)
    port, stop = fastapi_app.serve_in_thread(app)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop()
        FastAPIInstrumentor.uninstrument_app(app)


class Served:
    """An app in its own process (zero-code setups): its URL, then its output once stopped."""

    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen(
            args, env=dict(env), cwd=str(APPS), text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("PORT "):
            self.proc.kill()
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"the app did not start: {line!r}\n{err}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"
        self.stdout = self.stderr = ""

    def stop(self) -> None:
        out, err = self.proc.communicate(input="", timeout=60)
        self.stdout, self.stderr = out, err
        assert self.proc.returncode == 0, err


def zero_code_env(receiver: UdpReceiver, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PINBA_"))}
    env.update(
        OTEL_PYTHON_CONFIGURATOR="pinba",
        OTEL_TRACES_EXPORTER="pinba",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_SERVICE_NAME="shop",
        OTEL_EXPORTER_PINBA_ENDPOINT=receiver.address,
        PYTHONPATH=str(APPS),
    )
    env.update(extra)
    return env


@contextmanager
def zero_code(app: str, env: Mapping[str, str], *flags: str) -> Iterator[Served]:
    if not INSTRUMENT.exists():
        pytest.skip("opentelemetry-instrument is not installed")
    served = Served([str(INSTRUMENT), *flags, sys.executable, str(APPS / app)], env)
    try:
        yield served
    finally:
        if served.proc.returncode is None:
            served.stop()


def all_packets(receiver: UdpReceiver, count: int) -> list[PinbaRequest]:
    """Exactly ``count`` packets: that many arrive, and then no other."""
    got = [receiver.request(timeout=30) for _ in range(count)]
    assert receiver.nothing(0.5), "more packets than requests"
    return got


def groups(request: PinbaRequest) -> Counter[str]:
    """Timer groups and their hit counts."""
    counts: Counter[str] = Counter()
    for t in request.timers:
        counts[str(t.tags.get("group", ""))] += t.hit_count
    return counts


def fields(r: PinbaRequest) -> tuple[Any, ...]:
    tags = sorted(tuple(sorted(t.tags.items())) for t in r.timers)
    return (r.script_name, r.server_name, r.hostname, r.schema, r.status, tags)


# --------------------------------------------------------------------------------------------
# 1. The sampler wrapper keeps the span's own start attributes


@contextmanager
def wsgi_served(setup: Otel, outside: str) -> Iterator[str]:
    """A bare WSGI app (no framework) under the WSGI instrumentation, which records the
    request's attributes only when the span starts; each request calls ``outside`` with
    ``requests`` (whose client span also has its attributes from the start only)."""
    import requests  # noqa: PLC0415

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        requests.get(outside, timeout=10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"product"]

    traced = OpenTelemetryMiddleware(app, tracer_provider=setup.provider)
    server = make_server("127.0.0.1", 0, traced, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("framework", ["wsgi", "flask"])
def test_1_unsampled_requests_give_the_same_row_as_sampled_ones(
    receiver: UdpReceiver, framework: str
) -> None:
    with plain_http_server() as outside, otel(receiver) as setup:
        serving = wsgi_served(setup, outside) if framework == "wsgi" else flask_served(setup)
        with serving as url:
            assert get(f"{url}/product/42", SAMPLED)[0] == 200
            sampled = receiver.request()
            assert get(f"{url}/product/42", UNSAMPLED)[0] == 200
            unsampled = receiver.request()
    assert fields(unsampled) == fields(sampled)
    name = "/product/42" if framework == "wsgi" else "/product/<int:pid>"
    assert (sampled.script_name, sampled.server_name, sampled.schema) == (name, "127.0.0.1", "http")
    if framework == "wsgi":
        assert [t.tags for t in sampled.timers] == [
            {"group": "http::GET", "category": "http", "server": "127.0.0.1"}
        ]
    # The backend saw the sampled request only.
    servers = [s for s in setup.spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(servers) == 1


def test_1_sampler_wrapper_returns_the_start_attributes_on_record_only() -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision  # noqa: PLC0415

    result = PinbaSampler(ALWAYS_OFF).should_sample(None, 1, "GET", attributes={"http.host": "h"})
    assert result.decision == Decision.RECORD_ONLY
    assert dict(result.attributes) == {"http.host": "h"}


# --------------------------------------------------------------------------------------------
# 2. Zero-code sees every request, whatever the sampler and the parent's flag


def test_2_zero_code_counts_unsampled_parents_and_exporters_see_only_sampled(
    receiver: UdpReceiver,
) -> None:
    env = zero_code_env(
        receiver, OTEL_TRACES_EXPORTER="console,pinba", OTEL_TRACES_SAMPLER="parentbased_always_on"
    )
    with zero_code("flask_app.py", env) as app:
        for i in range(5):
            assert get(f"{app.url}/product/{i}", SAMPLED)[0] == 200
            assert get(f"{app.url}/product/{i}", UNSAMPLED)[0] == 200
        packets = all_packets(receiver, 10)
        app.stop()
    assert {r.script_name for r in packets} == {"/product/<int:pid>"}
    # The console exporter printed the 5 sampled server spans and none of the others.
    assert app.stdout.count('"kind": "SpanKind.SERVER"') == 5, app.stderr


def test_2_done_when_flask_traceidratio_one_packet_per_request(receiver: UdpReceiver) -> None:
    """The issue's "Done when": Flask under opentelemetry-instrument, traceidratio 0.1."""
    with plain_http_server() as outside:
        env = zero_code_env(
            receiver,
            OTEL_TRACES_SAMPLER="traceidratio",
            OTEL_TRACES_SAMPLER_ARG="0.1",
            CALL_OUT_URL=outside,  # a client call at startup, outside any request
        )
        with zero_code("flask_app.py", env) as app:
            sent: Counter[str] = Counter()
            for i in range(60):
                assert get(f"{app.url}/product/{i}")[0] == 200
                sent["/product/<int:pid>"] += 1
            for i in range(10):
                assert get(f"{app.url}/product/{100 + i}", UNSAMPLED)[0] == 200
                sent["/product/<int:pid>"] += 1
            for i in range(15):
                assert get(f"{app.url}/wp-admin/setup{i}.php")[0] == 404
                sent[UNMATCHED] += 1
            for _ in range(5):
                assert get(f"{app.url}/boom")[0] == 500
                sent["/boom"] += 1
            assert get(f"{app.url}/sized")[0] == 200
            sent["/sized"] += 1
            packets = all_packets(receiver, sum(sent.values()))
    assert Counter(r.script_name for r in packets) == sent
    assert {r.status for r in packets if r.script_name == "/boom"} == {500}
    assert {r.status for r in packets if r.script_name == UNMATCHED} == {404}
    products = [r for r in packets if r.script_name == "/product/<int:pid>"]
    assert {r.server_name for r in products} == {"127.0.0.1"}
    assert all(groups(r) == Counter({"db::SELECT": 3}) for r in products)
    # The configurator asks the instrumentations for Content-Length.
    assert [r.document_size for r in packets if r.script_name == "/sized"] == [flask_app.BODY_SIZE]


def test_2_zero_code_instrument_flags_reach_every_option(receiver: UdpReceiver) -> None:
    env = zero_code_env(receiver)
    del env["OTEL_EXPORTER_PINBA_ENDPOINT"]
    flags = ["--exporter_pinba_endpoint", receiver.address, "--exporter_pinba_timer_rusage", "0"]
    with zero_code("flask_app.py", env, *flags) as app:
        assert get(f"{app.url}/product/1")[0] == 200
        (r,) = all_packets(receiver, 1)
    assert groups(r) == Counter({"db::SELECT": 3})
    assert all(t.ru_utime == 0 and t.ru_stime == 0 for t in r.timers)


@pytest.mark.expect_pynba_errors
def test_2_exporter_route_warns_once_that_sampling_hides_requests(
    receiver: UdpReceiver, pynba_log: PynbaLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor as Simple  # noqa: PLC0415

    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    monkeypatch.setattr(_sampling, "_global_provider", lambda: provider)
    provider.add_span_processor(Simple(PinbaSpanExporter(receiver.address)))
    tracer = provider.get_tracer("tests")
    for _ in range(3):
        with tracer.start_as_current_span("GET /x", kind=SpanKind.SERVER):
            pass
    assert len(all_packets(receiver, 3)) == 3
    warnings = [m for m in pynba_log.problems if "sampl" in m]
    assert len(warnings) == 1
    assert "OTEL_PYTHON_CONFIGURATOR=pinba" in warnings[0]
    provider.shutdown()


CONFIGURE = """
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from pynba_exporter.otel import PinbaConfigurator, PinbaSampler

PinbaConfigurator().configure()
provider = trace.get_tracer_provider()
assert isinstance(provider.sampler, PinbaSampler), provider.sampler
assert "TraceIdRatioBased" in provider.sampler.get_description()
tracer = provider.get_tracer("t")
with tracer.start_as_current_span("GET /x", kind=SpanKind.SERVER) as span:
    assert not span.get_span_context().trace_flags.sampled
"""


def test_2_configurator_is_registered_and_wraps_the_configured_sampler(
    receiver: UdpReceiver,
) -> None:
    from importlib.metadata import entry_points  # noqa: PLC0415

    (ep,) = [e for e in entry_points(group="opentelemetry_configurator") if e.name == "pinba"]
    assert ep.load() is PinbaConfigurator
    env = zero_code_env(
        receiver, OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="0.0"
    )  # never sampled: Pinba still gets the request
    proc = subprocess.run(
        [sys.executable, "-c", CONFIGURE], env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert receiver.request(timeout=30).script_name == "GET /x"


# --------------------------------------------------------------------------------------------
# 3. Only SERVER/CONSUMER local roots (and roots the app marks) are requests


def test_3_client_and_internal_roots_are_not_requests(receiver: UdpReceiver) -> None:
    import requests  # noqa: PLC0415

    with otel(receiver) as setup, plain_http_server() as outside:
        flask_app.query("select 1")  # a query at startup
        requests.get(outside, timeout=10)  # a poller's call
        worker = threading.Thread(target=flask_app.query, args=("select 2",))  # no context
        worker.start()
        worker.join(30)
        tracer = setup.provider.get_tracer("tests")
        with tracer.start_as_current_span("housekeeping"):  # INTERNAL, unmarked
            pass
        assert receiver.nothing(0.3)
        assert setup.processor.stats()["not_requests"] == 4
        # A job the app marks is a request, and so is a message being consumed.
        with tracer.start_as_current_span("job", attributes={"pinba.script_name": "nightly"}):
            flask_app.query("select 3")
        with tracer.start_as_current_span("orders process", kind=SpanKind.CONSUMER):
            pass
        job, consumed = receiver.request(), receiver.request()
    assert (job.script_name, groups(job)) == ("nightly", Counter({"db::SELECT": 1}))
    assert consumed.script_name == "orders process"


def test_3_a_thread_pool_inside_a_request_adds_timers_to_it(receiver: UdpReceiver) -> None:
    with otel(receiver) as setup, flask_served(setup) as url:
        assert get(f"{url}/pool") == (200, b"pooled")
        (r,) = all_packets(receiver, 1)
    assert r.script_name == "/pool"
    assert groups(r) == Counter({"db::SELECT": 1})


# --------------------------------------------------------------------------------------------
# 4. Bounded names: route templates, one name for unmatched requests, a cap


def test_4_unmatched_requests_share_one_name(receiver: UdpReceiver) -> None:
    with otel(receiver) as setup, flask_served(setup) as url:
        for i in range(20):
            assert get(f"{url}/nope/{i}")[0] == 404
        packets = all_packets(receiver, 20)
    assert {(r.script_name, r.status) for r in packets} == {(UNMATCHED, 404)}


@pytest.mark.expect_pynba_errors  # the cap says once that it renames
def test_4_script_names_are_capped_per_process_for_otel_and_classic_alike(
    receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch, pynba_log: PynbaLog
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_PINBA_MAX_SCRIPT_NAMES", "2")
    script_names.reset()  # the limit is read again
    with otel(receiver) as setup, flask_served(setup) as url:
        packets = []
        for path in ("/product/1", "/product/2", "/boom", "/sized", "/pool", "/nope"):
            get(url + path)
            # Each packet before the next request: the cap admits names in the order they
            # come, and a threaded server sends a packet after its response.
            packets.append(receiver.request(timeout=30))
        assert receiver.nothing(0.5), "more packets than requests"
        serve(PynbaMiddleware(hello, receiver.address), environ("/classic/one"))
        classic = receiver.request()
    names = [r.script_name for r in packets]
    assert names == [
        "/product/<int:pid>", "/product/<int:pid>", "/boom", OVERFLOW, OVERFLOW,
        UNMATCHED,
    ]  # fmt: skip
    assert classic.script_name == OVERFLOW
    assert script_names.stats() == {"distinct": 2, "overflowed": 3}
    assert [m for m in pynba_log.problems if OVERFLOW in m]


# --------------------------------------------------------------------------------------------
# 5. FastAPI: ASGI send/receive spans are not timers


def test_5_fastapi_requests_without_asgi_event_timers(receiver: UdpReceiver) -> None:
    with otel(receiver) as setup, fastapi_served(setup) as url:
        assert get(f"{url}/product/3")[0] == 200
        assert get(f"{url}/nope/3")[0] == 404
        assert get(f"{url}/boom")[0] == 500
        product, unmatched, boom = all_packets(receiver, 3)
    assert product.script_name == "/product/{pid}"
    assert groups(product) == Counter({"db::SELECT": 3})
    assert (unmatched.script_name, unmatched.status, groups(unmatched)) == (
        UNMATCHED, 404, Counter(),
    )  # fmt: skip
    assert (boom.script_name, boom.status) == ("/boom", 500)


def test_5_asgi_event_timers_on_request(receiver: UdpReceiver) -> None:
    with otel(receiver, asgi_events=True) as setup, fastapi_served(setup) as url:
        assert get(f"{url}/product/3")[0] == 200
        (r,) = all_packets(receiver, 1)
    assert groups(r)["GET /product/{pid} http send"] == 2


# --------------------------------------------------------------------------------------------
# 6. Spans that never end block nothing


def in_thread(target: Any) -> None:
    failure: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    if failure:
        raise failure[0]


def test_6_a_root_that_never_ends_does_not_swallow_later_requests(receiver: UdpReceiver) -> None:
    with otel(receiver) as setup:
        tracer = setup.provider.get_tracer("tests")

        def worker() -> None:
            tracer.start_span("GET /stuck", kind=SpanKind.SERVER)  # never ended
            with tracer.start_as_current_span(
                "GET /next", kind=SpanKind.SERVER, attributes={"http.route": "/next"}
            ):
                pass
            serve(PynbaMiddleware(hello, receiver.address), environ("/classic"))

        in_thread(worker)
        first, second = all_packets(receiver, 2)
    assert (first.script_name, second.script_name) == ("/next", "/classic")


@pytest.mark.expect_pynba_errors
def test_6_unfinished_spans_are_evicted_by_age(
    receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(_shared, "_now", lambda: now[0])
    with otel(receiver, max_spans=10, max_age=60.0) as setup:
        tracer = setup.provider.get_tracer("tests")
        leaked = [tracer.start_span(f"GET /stuck/{i}", kind=SpanKind.SERVER) for i in range(10)]
        with tracer.start_as_current_span("GET /full", kind=SpanKind.SERVER):
            pass
        assert receiver.nothing(0.2)  # full: this one could not be followed (counted)
        now[0] += 61
        with tracer.start_as_current_span(
            "GET /later", kind=SpanKind.SERVER, attributes={"http.route": "/later"}
        ):
            pass
        assert receiver.request().script_name == "/later"
        stats = setup.processor.stats()
        for span in leaked:
            span.end()  # too late: counted, never sent
        assert receiver.nothing(0.2)
    assert stats["evicted"] == 10
    assert stats["overflow"] == 1


# --------------------------------------------------------------------------------------------
# 7. Configuration like every OTel exporter; a bad value never stops the app


@pytest.mark.expect_pynba_errors
@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("localhost:notaport", "port"),
        ("127.0.0.1:99999", "port"),
        ("http://otel-collector:4318", "UDP"),
        ("https://otel-collector:4318", "UDP"),
        ("a;b", "a;b"),
    ],
)
def test_7_a_bad_endpoint_disables_pinba_and_the_app_runs(
    receiver: UdpReceiver,
    pynba_log: PynbaLog,
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
    message: str,
) -> None:
    processor = PinbaSpanProcessor(endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_PINBA_ENDPOINT", endpoint)
    exporter = PinbaSpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(processor)
    with provider.get_tracer("t").start_as_current_span("GET /x", kind=SpanKind.SERVER):
        pass
    assert not processor.enabled and not exporter.enabled
    assert pynba_log.problems, "a bad endpoint must be said"
    assert all(message in m for m in pynba_log.problems), pynba_log.problems
    # Once per source (the argument, the variable, which is named), not per span.
    assert len(pynba_log.problems) == 2
    assert "OTEL_EXPORTER_PINBA_ENDPOINT" in pynba_log.problems[1]
    provider.shutdown()


@pytest.mark.expect_pynba_errors
def test_7_zero_code_with_an_http_endpoint_starts_and_says_why(receiver: UdpReceiver) -> None:
    env = zero_code_env(receiver, OTEL_EXPORTER_PINBA_ENDPOINT="http://otel-collector:4318")
    with zero_code("flask_app.py", env) as app:
        assert get(f"{app.url}/product/1")[0] == 200
        app.stop()
    assert receiver.nothing(0.3)
    assert "Traceback" not in app.stderr
    assert "UDP" in app.stderr


def test_7_every_option_has_an_otel_name_and_a_pinba_alias() -> None:
    from pynba_exporter import config  # noqa: PLC0415
    from pynba_exporter import otel_environment_variables as documented  # noqa: PLC0415

    for option in config.OPTIONS.values():
        names = option.env
        assert names[0].startswith("OTEL_EXPORTER_PINBA_"), names
        assert any(n.startswith("PINBA_") for n in names[1:]), names
        assert getattr(documented, names[0]) == names[0]  # an opentelemetry-instrument flag


@pytest.mark.expect_pynba_errors
def test_7_a_bad_option_value_disables_pinba(
    receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch, pynba_log: PynbaLog
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_PINBA_MAX_PACKET_SIZE", "big")
    processor = PinbaSpanProcessor(receiver.address)
    assert not processor.enabled
    assert any("OTEL_EXPORTER_PINBA_MAX_PACKET_SIZE" in m for m in pynba_log.problems)


def test_7_otel_names_win_over_aliases(
    receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PINBA_ENABLED", "0")
    monkeypatch.setenv("OTEL_EXPORTER_PINBA_ENABLED", "true")
    with otel(receiver) as setup:
        tracer = setup.provider.get_tracer("t")
        with tracer.start_as_current_span("GET /x", kind=SpanKind.SERVER):
            pass
        assert receiver.request().script_name == "GET /x"
    monkeypatch.setenv("OTEL_EXPORTER_PINBA_ENABLED", "false")
    with otel(receiver) as setup:
        tracer = setup.provider.get_tracer("t")
        with tracer.start_as_current_span("GET /x", kind=SpanKind.SERVER):
            pass
        assert receiver.nothing(0.2)


# --------------------------------------------------------------------------------------------
# 8. Docs snippets, DB operations, Django routes, document_size


def test_8_db_operations_are_upper_cased_and_the_database_is_a_tag() -> None:
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    for operation in ("select", "SELECT", "Select"):
        attributes = {"db.system.name": "postgresql", "db.operation.name": operation,
                      "db.namespace": "shop"}  # fmt: skip
        with tracer.start_as_current_span(operation, kind=SpanKind.CLIENT, attributes=attributes):
            pass
    with tracer.start_as_current_span(
        "select", kind=SpanKind.CLIENT, attributes={"db.system": "mysql", "db.name": "crm"}
    ):
        pass
    tags = [default_timer_tags(s) for s in memory.get_finished_spans()]
    assert [t["group"] for t in tags] == ["db::SELECT"] * 4
    assert [t["database"] for t in tags] == ["shop"] * 3 + ["crm"]


def test_8_document_size_from_content_length(
    receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE"
    monkeypatch.setenv(capture, "content-length")
    with otel(receiver) as setup, flask_served(setup) as url:
        assert get(f"{url}/sized")[0] == 200
        (r,) = all_packets(receiver, 1)
    assert r.document_size == flask_app.BODY_SIZE


def test_8_django_zero_code(receiver: UdpReceiver) -> None:
    pytest.importorskip("django")
    with plain_http_server() as outside:
        env = zero_code_env(receiver, DJANGO_SETTINGS_MODULE="django_app", CALL_OUT_URL=outside)
        with zero_code("django_app.py", env) as app:
            assert get(f"{app.url}/product/7")[0] == 200
            assert get(f"{app.url}/product/8", UNSAMPLED)[0] == 200
            assert get(f"{app.url}/wp-login.php")[0] == 404
            assert get(f"{app.url}/boom")[0] == 500
            assert get(f"{app.url}/")[0] == 200  # the empty route: not recorded, not unmatched
            packets = all_packets(receiver, 5)
    # (counted: a packet leaves after its response, so two may cross)
    assert Counter((r.script_name, r.status) for r in packets) == {
        ("/product/<int:pid>", 200): 2, (UNMATCHED, 404): 1, ("/boom", 500): 1, ("/", 200): 1,
    }  # fmt: skip
    product = [groups(r) for r in packets if r.script_name == "/product/<int:pid>"]
    assert Counter({"db::SELECT": 3}) in product  # (the sampled one's, whichever came first)


def test_8_fastapi_zero_code(receiver: UdpReceiver) -> None:
    with zero_code("fastapi_app.py", zero_code_env(receiver)) as app:
        assert get(f"{app.url}/product/7")[0] == 200
        assert get(f"{app.url}/nope")[0] == 404
        packets = all_packets(receiver, 2)
    by_name = {r.script_name: groups(r) for r in packets}  # (in either order)
    assert by_name == {"/product/{pid}": Counter({"db::SELECT": 3}), UNMATCHED: Counter()}


def doc_blocks(language: str) -> list[str]:
    text = (ROOT / "docs" / "opentelemetry.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def test_8_docs_python_snippets_run_as_written(receiver: UdpReceiver, tmp_path: Path) -> None:
    blocks = doc_blocks("python")
    assert len(blocks) >= 2
    for n, block in enumerate(blocks):
        script = tmp_path / f"snippet{n}.py"
        # The snippet as written, then a request through the app it defines (Flask's client
        # goes through the instrumented WSGI app) or the job it runs.
        script.write_text(
            block + "\nif 'app' in globals():\n"
            "    assert app.test_client().get('/product/42').status_code == 200\n"
        )
        env = zero_code_env(receiver)
        proc = subprocess.run(
            [sys.executable, str(script)], env=env, cwd=tmp_path,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        r = receiver.request(timeout=30)
        assert r.script_name in ("/product/<int:pid>", "nightly-report"), block


def test_8_docs_zero_code_command_runs_as_written(receiver: UdpReceiver, tmp_path: Path) -> None:
    (command,) = [b for b in doc_blocks("sh") if "OTEL_PYTHON_CONFIGURATOR" in b]
    line = " ".join(command.replace("\\\n", " ").split())
    words = line.split()
    assignments = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
    assert assignments["OTEL_PYTHON_CONFIGURATOR"] == "pinba"
    rest = [w for w in words if not re.match(r"^[A-Z_]+=", w)]
    assert rest[:2] == ["opentelemetry-instrument", "python"], rest
    env = zero_code_env(receiver, **assignments)
    env["OTEL_EXPORTER_PINBA_ENDPOINT"] = receiver.address
    with zero_code("flask_app.py", env) as app:
        assert get(f"{app.url}/product/1")[0] == 200
        (r,) = all_packets(receiver, 1)
    assert r.script_name == "/product/<int:pid>"
