"""The client reports on itself: client_stats() over every transport, a periodic summary while
data is lost, and the same counts as OpenTelemetry metrics."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest
from conftest import PynbaLog, UdpReceiver
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from pynba.util import ScriptMonitor
from pynba_exporter import PinbaRequest, PinbaTimer, UdpTransport, decode, health
from pynba_exporter.health import ClientStats, client_stats
from pynba_exporter.naming import script_names
from pynba_exporter.otel import instrument_metrics
from pynba_exporter.spans import current_request


def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def points(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[tuple[str, object], ...]], int]:
    """Every counter's value by (name, attributes)."""
    data = reader.get_metrics_data()
    assert data is not None
    return {
        (metric.name, tuple(sorted((point.attributes or {}).items()))): int(point.value)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
        if isinstance(point, NumberDataPoint)  # counters only here
    }


@pytest.mark.expect_pynba_errors
def test_a_mistyped_address_shows_in_the_opentelemetry_metrics(pynba_log: PynbaLog) -> None:
    reader = InMemoryMetricReader()
    assert instrument_metrics(MeterProvider(metric_readers=[reader]))
    before = points(reader)
    transport = UdpTransport("pinba.invalid:30002")  # a typo of the operator's
    for _ in range(3):
        assert not transport.send(PinbaRequest("web1", "shop", "/cart"))
    until(lambda: client_stats().resolve_failures > 0)
    after = points(reader)

    def grew(name: str, **attributes: str) -> int:
        key = (name, tuple(sorted(attributes.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("pinba.client.datagrams.dropped", reason="unresolved") == 3
    assert grew("pinba.client.requests") == 3
    assert grew("pinba.client.datagrams.sent") == 0
    assert grew("pinba.client.resolve_failures") >= 1
    assert any("cannot resolve Pinba server pinba.invalid" in p for p in pynba_log.problems)
    transport.close()


@pytest.mark.slow
def test_the_bridge_exports_them_through_the_global_meter_provider() -> None:
    # The operator's set-up: OpenTelemetry configured with a meter provider, the Pinba bridge
    # added, the server name mistyped. A process of its own: the global providers are set once.
    code = textwrap.dedent("""
        import time
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.trace import SpanKind
        from pynba_exporter.otel import PinbaSpanProcessor

        reader = InMemoryMetricReader()
        provider = TracerProvider()
        provider.add_span_processor(PinbaSpanProcessor("pinba.invalid"))
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))  # later: followed
        with provider.get_tracer("t").start_as_current_span("job", kind=SpanKind.CONSUMER):
            pass
        for resource in reader.get_metrics_data().resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        print(metric.name, dict(point.attributes), point.value)
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "pinba.client.datagrams.dropped {'reason': 'unresolved'} 1" in lines, lines
    assert "pinba.client.requests {} 1" in lines, lines


def test_client_stats_sum_every_transport_gone_ones_included(receiver: UdpReceiver) -> None:
    before = client_stats()
    live = UdpTransport(receiver.address)
    gone = UdpTransport(receiver.address)
    for transport in (live, gone, gone):
        transport.send(PinbaRequest("h", "s", "job"))
    del gone
    gc.collect()
    after = client_stats()
    assert (after.requests - before.requests, after.sent - before.sent) == (3, 3)
    assert after.lost == before.lost
    receiver.packets(3)
    live.close()


@pytest.mark.expect_pynba_errors
@pytest.mark.parametrize(("interval", "summaries"), [(0.0, 2), (60.0, 0)])
def test_a_summary_is_logged_while_data_is_lost(
    receiver: UdpReceiver,
    pynba_log: PynbaLog,
    monkeypatch: pytest.MonkeyPatch,
    interval: float,
    summaries: int,
) -> None:
    monkeypatch.setattr(health, "SUMMARY_INTERVAL", interval)
    transport = UdpTransport(receiver.address)
    unencodable = PinbaRequest("h", "s", "x", timers=[PinbaTimer({}, 1.0)])  # a timer needs a tag
    transport.send(PinbaRequest("h", "s", "ok"))
    for _ in range(3):  # the first loss has its own line; then one summary per interval
        assert not transport.send(unencodable)
    lines = [p for p in pynba_log.problems if "Pinba is missing data" in p]
    assert (
        lines
        == [
            "pynba: Pinba is missing data: 1 lost, 0 datagrams sent (not encodable 1); 0 resolve "
            "failures, 0 requests shrunk, 0 sent as <other> past the name caps, since the last "
            "summary (pynba_exporter.health.client_stats() has the totals)"
        ]
        * summaries
    )
    receiver.packet()
    transport.close()


def test_nothing_is_summarised_when_nothing_is_lost(
    receiver: UdpReceiver, pynba_log: PynbaLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "SUMMARY_INTERVAL", 0.0)
    transport = UdpTransport(receiver.address)
    for _ in range(3):
        assert transport.send(PinbaRequest("h", "s", "ok"))
    receiver.packets(3)
    assert pynba_log.records == []
    assert isinstance(client_stats(), ClientStats)
    transport.close()


@pytest.mark.expect_pynba_errors
def test_names_refused_by_the_cap_show_in_the_metrics(
    receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PINBA_MAX_SCRIPT_NAMES", "1")
    script_names.reset()  # the cap is read again
    reader = InMemoryMetricReader()
    instrument_metrics(MeterProvider(metric_readers=[reader]))
    before = points(reader).get(("pinba.client.names.refused", (("kind", "script"),)), 0)
    monitor = ScriptMonitor(receiver.address, script_name="first")
    monitor.send()
    monitor.scriptname = "second"
    monitor.send()
    assert [decode(p).script_name for p in receiver.packets(2)] == ["first", "<other>"]
    after = points(reader)[("pinba.client.names.refused", (("kind", "script"),))]
    assert after - before == 1
    assert client_stats().script_names_refused == script_names.stats()["overflowed"] == 1
    monitor.transport.close()
    current_request.set(None)  # the monitor's next unit is current in this context: not beyond
