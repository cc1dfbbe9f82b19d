"""The OpenTelemetry bridge with the real SDK, the real WSGI instrumentation and real UDP."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from typing import Any

import pytest
from conftest import UdpReceiver

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation import _semconv
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from test_classic_wsgi import environ, serve

from pynba import PynbaMiddleware, pynba
from pynba.util import ScriptMonitor
from pynba_exporter import MemoryTransport, PinbaRequest, UdpTransport
from pynba_exporter.otel import (
    PinbaSampler,
    PinbaSpanExporter,
    PinbaSpanProcessor,
    _mapping,
    _sdk,
    default_timer_tags,
)
from pynba_exporter.spans import current_request, hostname

Environ = dict[str, Any]


@pytest.fixture(autouse=True)
def no_current_request() -> Iterator[None]:
    current_request.set(None)
    yield
    current_request.set(None)


def provider_with(processor: Any, **kw: Any) -> tuple[TracerProvider, Tracer]:
    provider = TracerProvider(**kw)
    provider.add_span_processor(processor)
    return provider, provider.get_tracer("tests")


def db_query(tracer: Tracer, operation: str = "SELECT", *, new_names: bool = False) -> None:
    attributes: dict[str, Any] = (
        {"db.system.name": "postgresql", "db.operation.name": operation}
        if new_names
        else {"db.system": "postgresql", "db.operation": operation}
    )
    attributes.update({"server.address": "db1", "server.port": 5432, "db.statement": "SELECT 42"})
    with tracer.start_as_current_span("query", kind=SpanKind.CLIENT, attributes=attributes):
        time.sleep(0.001)


def shop(
    tracer: Tracer, native: bool = True
) -> Callable[[Environ, Callable[..., Any]], Iterable[bytes]]:
    def app(env: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        db_query(tracer)
        with tracer.start_as_current_span(
            "GET", kind=SpanKind.CLIENT,
            attributes={"http.request.method": "GET", "url.full": "https://api.example:8443/x?id=7"},
        ):  # fmt: skip
            pass
        if native:
            with pynba.timer(group="native"):  # classic timer inside an OTel request
                pass
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"nothing here"

    return app


# --------------------------------------------------------------------------------------------
# Processor


@pytest.mark.parametrize("semconv", ["", "http", "http/dup"])
def test_wsgi_instrumentation_request_becomes_one_packet(
    receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch, semconv: str
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", semconv)
    monkeypatch.setattr(_semconv._OpenTelemetrySemanticConventionStability, "_initialized", False)
    processor = PinbaSpanProcessor(receiver.address)
    provider, tracer = provider_with(processor)
    app = OpenTelemetryMiddleware(shop(tracer), tracer_provider=provider)
    env = environ("/product/42", QUERY_STRING="color=red", HTTP_HOST="shop.example:8080")
    assert serve(app, env) == ("200 OK", b"nothing here")
    r = receiver.request()
    assert receiver.nothing(0.1)  # exactly one packet
    assert r.script_name == "/product/42"  # the path, without the query
    assert r.server_name == "shop.example"
    assert r.hostname == hostname()
    assert r.status == 200
    assert r.schema == "http"
    assert 0.001 <= r.request_time < 5
    tags = sorted(tuple(sorted(t.tags.items())) for t in r.timers)
    assert tags == [
        (("category", "db"), ("group", "db::SELECT"), ("server", "db1")),
        (("category", "http"), ("group", "http::GET"), ("server", "api.example")),
        (("group", "native"),),
    ]
    assert r.ru_utime + r.ru_stime > 0
    processor.shutdown()


def test_http_route_names_the_script_and_attributes_add_request_tags(
    receiver: UdpReceiver,
) -> None:
    processor = PinbaSpanProcessor(receiver.address)
    _, tracer = provider_with(processor)
    root_attributes: dict[str, Any] = {
        "http.route": "/product/{id}", "url.path": "/product/7", "url.scheme": "https",
        "http.response.status_code": 201, "server.address": "api.example",
        "pinba.request_tag.tenant": "acme", "http.response.body.size": 512,
    }  # fmt: skip
    with (
        tracer.start_as_current_span("GET /p", kind=SpanKind.SERVER, attributes=root_attributes),
        tracer.start_as_current_span("render", attributes={"pinba.tag.template": "product"}),
    ):
        pass
    r = receiver.request()
    assert (r.script_name, r.schema, r.status, r.document_size) == (
        "/product/{id}", "https", 201, 512,
    )  # fmt: skip
    assert r.tags == {"tenant": "acme"}
    assert [t.tags for t in r.timers] == [{"group": "render", "template": "product"}]
    with tracer.start_as_current_span("job", attributes={"pinba.script_name": "nightly"}) as span:
        span.set_status(Status(StatusCode.ERROR, "failed"))
    r = receiver.request()
    assert (r.script_name, r.status) == ("nightly", 500)


def test_service_name_is_the_server_name_of_non_http_roots(receiver: UdpReceiver) -> None:
    processor = PinbaSpanProcessor(receiver.address)
    resource = Resource.create({"service.name": "billing", "host.name": "worker7"})
    _, tracer = provider_with(processor, resource=resource)
    with tracer.start_as_current_span("charge", kind=SpanKind.CONSUMER):
        pass
    r = receiver.request()
    assert (r.server_name, r.hostname, r.script_name) == ("billing", "worker7", "charge")
    _, tracer = provider_with(PinbaSpanProcessor(receiver.address))  # default resource
    with tracer.start_as_current_span("nameless", kind=SpanKind.CONSUMER):
        pass
    assert receiver.request().server_name == "unknown"  # not "unknown_service:python"


def test_every_descendant_is_a_timer_and_remote_parents_make_roots(receiver: UdpReceiver) -> None:
    processor = PinbaSpanProcessor(receiver.address)
    _, tracer = provider_with(processor)
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER):
        with (
            tracer.start_as_current_span("a"),
            tracer.start_as_current_span("b"),
            tracer.start_as_current_span("c"),
        ):
            pass
        done = []

        def in_thread(ctx: Any) -> None:
            with tracer.start_as_current_span("thread", context=ctx):
                done.append(1)

        th = threading.Thread(target=in_thread, args=(otel_context.get_current(),))
        th.start()
        th.join()
    r = receiver.request()
    assert sorted(t.tags["group"] for t in r.timers) == ["a", "b", "c", "thread"]


@pytest.mark.parametrize("span_cpu", [True, False])
def test_root_cpu_is_measured_and_child_cpu_when_asked(
    receiver: UdpReceiver, span_cpu: bool
) -> None:
    # Per-span CPU costs two clock reads per span: off unless asked for (SPAN_RUSAGE).
    processor = PinbaSpanProcessor(receiver.address, timer_rusage=True if span_cpu else None)
    _, tracer = provider_with(processor)
    with (
        tracer.start_as_current_span("root", kind=SpanKind.SERVER),
        tracer.start_as_current_span("burn"),
    ):
        end = time.thread_time() + 0.03
        while time.thread_time() < end:
            sum(range(1000))
    r = receiver.request()
    assert r.ru_utime + r.ru_stime >= 0.025
    (t,) = r.timers
    if span_cpu:
        assert t.ru_utime + t.ru_stime >= 0.025
    else:
        assert (t.ru_utime, t.ru_stime) == (0.0, 0.0)


def test_custom_timer_tags(receiver: UdpReceiver) -> None:
    processor = PinbaSpanProcessor(receiver.address, timer_tags=lambda s: {"op": s.name.upper()})
    _, tracer = provider_with(processor)
    with (
        tracer.start_as_current_span("root", kind=SpanKind.SERVER),
        tracer.start_as_current_span("step"),
    ):
        pass
    assert [t.tags for t in receiver.request().timers] == [{"op": "STEP"}]


def test_each_timer_has_the_tags_of_its_own_span_whatever_came_before(
    receiver: UdpReceiver,
) -> None:
    # The default tags are cached by span shape; spans of one shape whose deciding values
    # differ (text or not: 1, 1.0 and True are equal as keys) must never share tags, and the
    # values that decide nothing (statements, URL paths) must not matter.
    memory = InMemorySpanExporter()
    provider, tracer = provider_with(PinbaSpanProcessor(receiver.address))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    client, internal = SpanKind.CLIENT, SpanKind.INTERNAL
    queries = [
        {"db.system": "postgresql", "db.operation": op, "server.address": server,
         "db.statement": f"{op} {server} 42"}
        for op in ("SELECT", "select", "UPDATE")
        for server in ("db1", "db2:5432", "[::1]:5432")
    ]  # fmt: skip
    urls = ("http://pay.example/charge?id=1", "http://pay.example/refund?id=2",
            "https://pay.example:8443/x", "http://pay.example.org/x", "http://shop.example/a",
            "//cdn.example/b", "relative/path", "http:/odd.example/c/d")  # fmt: skip
    children: list[tuple[str, SpanKind, dict[str, Any]]] = [
        *[("query", client, attributes) for attributes in queries],
        *[
            ("cache", internal, {"pinba.tag.hit": value, "db.statement": "GET"})
            for value in ("1", 1, 1.0, True, ("a", "b"), "")
        ],
        *[
            ("POST", kind, {"http.method": "POST", "http.url": url})
            for url in urls
            for kind in (client, internal)
        ],
        ("a", internal, {"x": 1}),
        ("b", internal, {"x": 1}),
    ]
    for order in (children, children[::-1]):  # each spec made by other spans the second time
        with tracer.start_as_current_span("root", kind=SpanKind.SERVER):
            for name, kind, attributes in order:
                with tracer.start_as_current_span(name, kind=kind, attributes=attributes):
                    pass
        expected: dict[tuple[tuple[str, str], ...], int] = {}
        for span in memory.get_finished_spans()[:-1]:  # each child, not the root
            key = tuple(sorted(default_timer_tags(span).items()))
            expected[key] = expected.get(key, 0) + 1
        memory.clear()
        got = {tuple(sorted(t.tags.items())): t.hit_count for t in receiver.request().timers}
        assert got == expected
        assert len(got) == 19  # spans that must not share tags did not


@pytest.mark.expect_pynba_errors  # the late span
@pytest.mark.parametrize("direct", [True, False])
def test_spans_read_directly_or_through_the_sdk_properties_make_the_same_packets(
    receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    # The processor reads span fields directly only where the SDK keeps them (checked at
    # import); otherwise through the public properties. Both ways give the same packets.
    readers = _sdk.PRIVATE if direct and _sdk.PRIVATE_AGREES else _sdk.PUBLIC
    for name, reader in readers._asdict().items():
        monkeypatch.setattr(_sdk, name, reader)
    processor = PinbaSpanProcessor(receiver.address)
    _, tracer = provider_with(processor)
    with tracer.start_as_current_span("GET /a", kind=SpanKind.SERVER) as root:
        db_query(tracer)
        with tracer.start_as_current_span("step"), tracer.start_as_current_span("inner"):
            pass
        late = tracer.start_span("late", context=trace.set_span_in_context(root))
    late.end()
    r = receiver.request()
    assert r.script_name == "GET /a"
    assert sorted((t.tags["group"], t.hit_count) for t in r.timers) == [
        ("db::SELECT", 1), ("inner", 1), ("step", 1),
    ]  # fmt: skip
    assert processor.stats()["late"] == 1
    assert processor._spans == {}


def test_the_cache_of_default_timer_tags_stays_bounded() -> None:
    # Span names with ids in them (one shape, ever more keys), then attribute names with ids
    # in them (ever more shapes): the cache empties itself rather than grow.
    _, tracer = provider_with(PinbaSpanProcessor(transport=MemoryTransport()))
    limit = _mapping._MAX_CACHED

    def cached() -> int:
        shapes = [*_mapping._SHAPES.values(), *_mapping._CLIENT_SHAPES.values()]
        return len(shapes) + sum(len(shape.specs) for shape in shapes)

    names: list[dict[str, Any]] = [{"db.system": "x"}] * 2 * limit
    keys: list[dict[str, Any]] = [{f"x{i}": i} for i in range(2 * limit)]
    for attributes in (names, keys):
        for i, attribute in enumerate(attributes):
            with (
                tracer.start_as_current_span("job", kind=SpanKind.CONSUMER),
                tracer.start_as_current_span(f"step {i}", attributes=attribute),
            ):
                pass
            assert cached() <= limit


def test_our_own_sending_is_not_traced_and_the_app_context_is_back_after(
    receiver: UdpReceiver,
) -> None:
    # An instrumented socket library would make a span per packet, and a packet per span.
    seen: list[tuple[bool, bool]] = []

    class Watched(UdpTransport):
        def send(self, request: Any) -> bool:
            current = trace.get_current_span().get_span_context().is_valid
            seen.append((is_instrumentation_enabled(), current))
            return super().send(request)

    _, tracer = provider_with(PinbaSpanProcessor(transport=Watched(receiver.address)))
    for name in ("first", "second"):
        with (
            tracer.start_as_current_span(name, kind=SpanKind.SERVER),
            tracer.start_as_current_span("step"),
        ):
            pass
        assert is_instrumentation_enabled()
        assert not trace.get_current_span().get_span_context().is_valid
        r = receiver.request()
        assert (r.script_name, [t.tags["group"] for t in r.timers]) == (name, ["step"])
    assert seen == [(False, False), (False, False)]


def test_a_server_span_whose_remote_parent_is_in_this_process_is_its_own_request(
    receiver: UdpReceiver,
) -> None:
    # An app calling itself over HTTP: the server span's remote parent is a client span of
    # another request of this process, followed right then; it is a request all the same.
    _, tracer = provider_with(PinbaSpanProcessor(receiver.address))
    with (
        tracer.start_as_current_span("GET /outer", kind=SpanKind.SERVER),
        tracer.start_as_current_span("GET", kind=SpanKind.CLIENT) as call,
    ):
        sent = call.get_span_context()  # what the callee receives in its headers
        remote = trace.NonRecordingSpan(
            trace.SpanContext(sent.trace_id, sent.span_id, True, sent.trace_flags)
        )
        with tracer.start_as_current_span(
            "GET /inner", kind=SpanKind.SERVER, context=trace.set_span_in_context(remote)
        ):
            pass
    inner, outer = receiver.request(), receiver.request()
    assert (inner.script_name, outer.script_name) == ("GET /inner", "GET /outer")
    assert [t.tags["group"] for t in outer.timers] == ["GET"]
    assert not inner.timers


# --------------------------------------------------------------------------------------------
# Mixing with the classic API


def test_mixing_2_otel_spans_inside_a_classic_request_are_its_timers(receiver: UdpReceiver) -> None:
    processor = PinbaSpanProcessor(receiver.address)
    _, tracer = provider_with(processor)

    def app(env: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        db_query(tracer, "INSERT", new_names=True)
        start_response("200 OK", [])
        return [b"ok"]

    serve(PynbaMiddleware(app, receiver.address), environ("/classic"))
    r = receiver.request()
    assert receiver.nothing(0.1)
    assert r.script_name == "/classic"
    assert [t.tags["group"] for t in r.timers] == ["db::INSERT"]


def test_mixing_3_both_middlewares_one_packet_no_timer_twice(receiver: UdpReceiver) -> None:
    processor = PinbaSpanProcessor(receiver.address)
    provider, tracer = provider_with(processor)
    for order in ("classic outside", "otel outside"):
        inner_app = shop(tracer)
        if order == "classic outside":
            app: Any = PynbaMiddleware(
                OpenTelemetryMiddleware(inner_app, tracer_provider=provider), receiver.address
            )
        else:
            app = OpenTelemetryMiddleware(
                PynbaMiddleware(inner_app, receiver.address), tracer_provider=provider
            )
        serve(app, environ("/both"))
        r = receiver.request()
        assert receiver.nothing(0.1), order
        assert r.script_name == "/both"
        assert r.status == 200
        assert sorted(t.tags["group"] for t in r.timers) == ["db::SELECT", "http::GET", "native"]
        assert all(t.hit_count == 1 for t in r.timers)


def test_mixing_4_script_monitor_with_otel_spans(receiver: UdpReceiver) -> None:
    processor = PinbaSpanProcessor(receiver.address)
    _, tracer = provider_with(processor)
    monitor = ScriptMonitor(receiver.address, script_name="worker")
    for i in range(3):
        with tracer.start_as_current_span("fetch"):
            pass
        db_query(tracer)
        monitor.request.tags["i"] = i
        monitor.send()
    got = [receiver.request() for _ in range(3)]
    assert receiver.nothing(0.1)
    assert [r.tags["i"] for r in got] == ["0", "1", "2"]
    for r in got:
        assert r.script_name == "worker"
        assert sorted(t.tags["group"] for t in r.timers) == ["db::SELECT", "fetch"]


def spans_of_a_shop_request(semconv_tracer_provider: Any = None) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests")
    app = OpenTelemetryMiddleware(shop(tracer, native=False), tracer_provider=provider)
    serve(app, environ("/p/1"))
    with (
        tracer.start_as_current_span("job", kind=SpanKind.CONSUMER),
        tracer.start_as_current_span("step"),
    ):
        pass
    return list(memory.get_finished_spans())


def comparable(r: PinbaRequest) -> tuple[Any, ...]:
    return (
        r.hostname, r.server_name, r.script_name, r.status, r.schema, dict(r.tags),
        sorted(tuple(sorted(t.tags.items())) for t in r.timers),
    )  # fmt: skip


@pytest.mark.parametrize(
    "split", ["one batch", "children first", "one span per batch", "reversed", "roots first"]
)
def test_mixing_5_exporter_gives_the_processors_packets(
    receiver: UdpReceiver, split: str, request: pytest.FixtureRequest
) -> None:
    if split == "roots first":
        request.applymarker(pytest.mark.expect_pynba_errors)  # late spans are logged
    processor = PinbaSpanProcessor(receiver.address)
    provider, tracer = provider_with(processor)
    app = OpenTelemetryMiddleware(shop(tracer, native=False), tracer_provider=provider)
    serve(app, environ("/p/1"))
    with (
        tracer.start_as_current_span("job", kind=SpanKind.CONSUMER),
        tracer.start_as_current_span("step"),
    ):
        pass
    by_processor = [comparable(receiver.request()) for _ in range(2)]

    spans = spans_of_a_shop_request()
    exporter = PinbaSpanExporter(receiver.address)
    roots = [s for s in spans if s.parent is None]
    children = [s for s in spans if s.parent is not None]
    if split == "one batch":
        batches = [spans]
    elif split == "children first":
        batches = [children[:2], children[2:], roots]
    elif split == "one span per batch":
        batches = [[s] for s in spans]
    elif split == "reversed":
        batches = [list(reversed(spans))]  # within one batch, order does not matter
    else:
        batches = [roots, children]
    for batch in batches:
        assert exporter.export(batch) == SpanExportResult.SUCCESS
    by_exporter = [comparable(receiver.request()) for _ in range(2)]
    assert receiver.nothing(0.1)
    if split == "roots first":  # their children come too late to be included: counted
        assert exporter.dropped["late"] == len(children)
        return
    assert sorted(by_exporter, key=repr) == sorted(by_processor, key=repr)
    exporter.shutdown()


def test_exporter_under_batch_span_processor(receiver: UdpReceiver) -> None:
    exporter = PinbaSpanExporter(receiver.address)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=2))
    tracer = provider.get_tracer("tests")
    for i in range(5):
        with tracer.start_as_current_span(f"job{i}", kind=SpanKind.CONSUMER):
            for j in range(3):
                with tracer.start_as_current_span(f"step{j}"):
                    pass
    provider.force_flush()
    got = sorted((receiver.request() for _ in range(5)), key=lambda r: r.script_name)
    assert [r.script_name for r in got] == [f"job{i}" for i in range(5)]
    assert all(
        sorted(t.tags["group"] for t in r.timers) == ["step0", "step1", "step2"] for r in got
    )
    provider.shutdown()
    provider.shutdown()  # twice: harmless


@pytest.mark.expect_pynba_errors
def test_exporter_buffer_is_bounded() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests")
    roots = []
    for i in range(50):  # roots that never come: their children wait, then go
        root = tracer.start_span(f"never{i}")
        with tracer.start_as_current_span("orphan", context=_ctx(root)):
            pass
        roots.append(root)
    exporter = PinbaSpanExporter(transport=MemoryTransport(), max_traces=10, max_spans=1000)
    assert exporter.export(memory.get_finished_spans()) == SpanExportResult.SUCCESS
    assert exporter._buffered == 10
    assert exporter.dropped["abandoned"] == 40
    aged = PinbaSpanExporter(transport=MemoryTransport(), max_age=0.0)
    aged.export(memory.get_finished_spans())
    time.sleep(0.01)
    aged.export([])
    assert aged._buffered == 0
    exporter.shutdown()
    assert exporter.dropped["abandoned"] == 50
    assert exporter.export([]) == SpanExportResult.FAILURE  # after shutdown: a value, not raised
    assert exporter.force_flush() is True


def _ctx(span: Any) -> Any:
    return trace.set_span_in_context(span)


@pytest.mark.expect_pynba_errors
def test_processor_spans_that_never_end_stay_bounded() -> None:
    processor = PinbaSpanProcessor(transport=MemoryTransport(), max_spans=100)
    _, tracer = provider_with(processor)
    open_spans = [tracer.start_span(f"s{i}") for i in range(300)]
    current_request.set(None)
    assert len(processor._spans) == 100
    assert processor.dropped["overflow"] == 200
    for s in open_spans:
        s.end()
    assert processor._spans == {}


def test_sampler_keeps_pinba_complete_and_exporters_sampled(receiver: UdpReceiver) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider(sampler=PinbaSampler(ALWAYS_OFF))
    provider.add_span_processor(PinbaSpanProcessor(receiver.address))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests")
    with (
        tracer.start_as_current_span("root", kind=SpanKind.SERVER),
        tracer.start_as_current_span("child"),
    ):
        pass
    r = receiver.request()
    assert [t.tags["group"] for t in r.timers] == ["child"]
    assert memory.get_finished_spans() == ()  # the app's sampler said no to tracing
    assert "AlwaysOffSampler" in PinbaSampler(ALWAYS_OFF).get_description()


def test_disabled_by_the_sdk_switch(receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    processor = PinbaSpanProcessor(receiver.address)
    _, tracer = provider_with(processor)
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER):
        pass
    exporter = PinbaSpanExporter(receiver.address)
    assert exporter.export(spans_of_a_shop_request()) == SpanExportResult.SUCCESS
    assert receiver.nothing(0.2)


@pytest.mark.parametrize(("text", "off"), [("TRUE", True), ("1", False), ("yes", False)])
def test_the_sdk_switch_is_read_as_the_sdk_reads_it(
    monkeypatch: pytest.MonkeyPatch, text: str, off: bool
) -> None:
    # OTEL_SDK_DISABLED is the SDK's: only "true" turns it off, and Pinba exactly with it.
    monkeypatch.setenv("OTEL_SDK_DISABLED", text)
    assert PinbaSpanProcessor(transport=MemoryTransport()).enabled is not off


def test_endpoint_from_the_environment(receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:  # fmt: skip
    monkeypatch.setenv("PINBA_SERVER", "127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_PINBA_ENDPOINT", f"udp://{receiver.address}")
    exporter = PinbaSpanExporter()  # no arguments: all from the environment
    processor = PinbaSpanProcessor()
    assert [str(e) for e in exporter.transport.servers] == [receiver.address]  # type: ignore[attr-defined]
    assert [str(e) for e in processor.transport.servers] == [receiver.address]  # type: ignore[attr-defined]
    processor.shutdown()
    processor.shutdown()
    assert processor.force_flush()


@pytest.mark.expect_pynba_errors
def test_failures_are_values_not_exceptions() -> None:
    exporter = PinbaSpanExporter("no-such-host.invalid:30002")
    assert exporter.export(spans_of_a_shop_request()) == SpanExportResult.FAILURE
    processor = PinbaSpanProcessor("no-such-host.invalid:30002")
    _, tracer = provider_with(processor)
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER):
        pass  # nothing raised into the app


def test_default_timer_tags_keep_cardinality_low() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests")
    db_query(tracer, "UPDATE", new_names=True)
    redis = {"db.system": "redis", "net.peer.name": "cache1:6379"}
    with tracer.start_as_current_span("redis", kind=SpanKind.CLIENT, attributes=redis):
        pass
    post = {"http.method": "POST", "http.url": "http://pay.example/charge?id=9"}
    with tracer.start_as_current_span("POST", kind=SpanKind.CLIENT, attributes=post):
        pass
    with tracer.start_as_current_span(
        "call", attributes={"rpc.system": "grpc", "rpc.method": "Get"}
    ):
        pass
    got = [default_timer_tags(s) for s in memory.get_finished_spans()]
    assert got == [
        {"group": "db::UPDATE", "category": "db", "server": "db1"},
        {"group": "db::REDIS", "category": "db", "server": "cache1"},
        {"group": "http::POST", "category": "http", "server": "pay.example"},
        {"group": "rpc::Get", "category": "rpc"},
    ]


def test_importing_pynba_does_not_import_the_otel_sdk() -> None:
    code = (
        "import sys, pynba, pynba_exporter\n"
        "print(any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.stdout.strip() == "False", out.stderr


# --------------------------------------------------------------------------------------------
# Zero code


def test_entry_points_are_registered() -> None:
    (exporter,) = entry_points(group="opentelemetry_traces_exporter", name="pinba")
    assert exporter.load() is PinbaSpanExporter
    (variables,) = entry_points(group="opentelemetry_environment_variables", name="pinba")
    assert variables.load().OTEL_EXPORTER_PINBA_ENDPOINT == "OTEL_EXPORTER_PINBA_ENDPOINT"


@pytest.mark.parametrize("how", ["--traces_exporter pinba", "OTEL_TRACES_EXPORTER=console,pinba"])
@pytest.mark.slow
def test_opentelemetry_instrument_with_the_pinba_exporter(
    receiver: UdpReceiver, tmp_path: Any, how: str
) -> None:
    instrument = os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument")
    if not os.path.exists(instrument):
        pytest.skip("opentelemetry-instrument is not installed")
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent("""
        from opentelemetry import trace
        tracer = trace.get_tracer("zero-code")
        with tracer.start_as_current_span("main", kind=trace.SpanKind.SERVER):
            with tracer.start_as_current_span("work"):
                pass
    """)
    )
    env = dict(os.environ, OTEL_EXPORTER_PINBA_ENDPOINT=receiver.address, OTEL_SERVICE_NAME="zc",
               OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")  # fmt: skip
    args = [instrument]
    if how.startswith("--"):
        args += how.split()
    else:
        env["OTEL_TRACES_EXPORTER"] = how.split("=", 1)[1]  # a list: console and pinba both
    proc = subprocess.run(
        [*args, sys.executable, str(script)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    r = receiver.request(timeout=30)  # flushed at interpreter exit
    assert (r.script_name, r.server_name) == ("main", "zc")
    assert [t.tags["group"] for t in r.timers] == ["work"]


def test_resource_from_the_environment(
    receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "host.name=web42,deployment.environment=prod")
    _, tracer = provider_with(PinbaSpanProcessor(receiver.address), resource=Resource.create())
    with tracer.start_as_current_span("pay", kind=SpanKind.CONSUMER):
        pass
    r = receiver.request()
    assert (r.server_name, r.hostname) == ("checkout", "web42")


@pytest.mark.parametrize("attribute", ["pinba.script_name", "pynba.scriptname"])
def test_a_job_span_marked_with_its_name_is_a_request(
    receiver: UdpReceiver, attribute: str
) -> None:
    # An INTERNAL root (a worker's job) is a request only when the app marks it.
    _, tracer = provider_with(PinbaSpanProcessor(receiver.address))
    with tracer.start_as_current_span("job", attributes={attribute: "nightly-report"}):
        pass
    assert receiver.request().script_name == "nightly-report"
