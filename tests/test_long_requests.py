"""A request longer than the processor's ``max_age`` while other traffic flows: reported once,
when its root ends, with its timers (issue 19). The clock of span ages is moved by the test, so
a 12 s request takes milliseconds; the spans and the packets are real."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import UdpReceiver

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from pynba_exporter.otel import PinbaSpanProcessor, _shared


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("timer_rusage", [False, True])
def test_a_12_s_request_with_max_age_5_is_reported_once_with_its_timers(
    receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch, timer_rusage: bool
) -> None:
    clock = _Clock()
    monkeypatch.setattr(_shared, "_now", clock)
    processor = PinbaSpanProcessor(receiver.address, max_age=5.0, timer_rusage=timer_rusage)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("tests")
    export = tracer.start_span(
        "GET /export", kind=SpanKind.SERVER, attributes={"http.route": "/export"}
    )
    with trace.use_span(export, end_on_exit=False):
        query = tracer.start_span("SELECT", attributes={"db.system": "sqlite"})
    short = 0
    for _ in range(12):  # 12 s of traffic: 100 short requests a second, each with a query
        clock.now += 1.0
        for _ in range(100):
            with (
                tracer.start_as_current_span(
                    "GET /item", kind=SpanKind.SERVER, attributes={"http.route": "/item"}
                ),
                tracer.start_as_current_span("SELECT", attributes={"db.system": "sqlite"}),
            ):
                pass
            short += 1
    query.end()
    export.end()
    got = [receiver.request(timeout=10) for _ in range(short + 1)]
    assert receiver.nothing(0.3), "more packets than requests"
    provider.shutdown()
    names = Counter(r.script_name for r in got)
    assert names == {"/item": short, "/export": 1}  # the long one, once
    (long,) = [r for r in got if r.script_name == "/export"]
    assert [(t.tags["group"], t.hit_count) for t in long.timers] == [("db::SELECT", 1)]
    stats = processor.stats()
    assert (stats["evicted"], stats["requests"]) == (0, short + 1)


@pytest.mark.expect_pynba_errors  # the abandoned request is said once
def test_at_max_spans_old_running_requests_still_give_way(
    receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory first: when ``max_spans`` is reached, spans older than ``max_age`` are evicted
    even if their request is running (roots that never end must not stop all reporting)."""
    clock = _Clock()
    monkeypatch.setattr(_shared, "_now", clock)
    processor = PinbaSpanProcessor(receiver.address, max_age=5.0, max_spans=3)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("tests")
    stuck = [tracer.start_span(f"GET /stuck/{i}", kind=SpanKind.SERVER) for i in range(3)]
    clock.now += 6.0
    with tracer.start_as_current_span(
        "GET /next", kind=SpanKind.SERVER, attributes={"http.route": "/next"}
    ):
        pass
    assert receiver.request().script_name == "/next"
    for span in stuck:
        span.end()
    assert receiver.nothing(0.3)
    provider.shutdown()
    assert processor.stats()["evicted"] == 3
