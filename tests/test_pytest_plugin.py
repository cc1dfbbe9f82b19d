"""The ``pinba`` fixture (pynba_exporter.testing, pynba_exporter.pytest_plugin): real packets on a
real socket, from every entry point, and failure messages that say what was sent."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from conftest import PynbaLog, UdpReceiver
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from test_classic_wsgi import Environ, StartResponse, environ, serve

from pynba import monitor, pynba
from pynba.testing import PinbaCapture
from pynba.util import ScriptMonitor
from pynba_exporter import PinbaRequest, PinbaTimer, UdpTransport
from pynba_exporter.otel import PinbaSpanProcessor

SAMPLE = Path(__file__).parent / "sample_project"


def shop(env: Environ, start_response: StartResponse) -> list[bytes]:
    with pynba.timer(group="db::select"):
        pass
    start_response("200 OK", [])
    return [b"ok"]


def test_the_plugin_is_registered_for_pytest() -> None:
    (plugin,) = entry_points(group="pytest11", name="pynba")
    assert plugin.value == "pynba_exporter.pytest_plugin"


def test_a_transport_made_before_is_redirected_and_given_back(receiver: UdpReceiver) -> None:
    app = monitor(receiver.address)(shop)  # "production": made before the capture
    with PinbaCapture() as pinba:
        serve(app, environ("/cart"))
        assert pinba.request("/cart").timers[0].tags == {"group": "db::select"}
        assert receiver.nothing(0.05)
    serve(app, environ("/after"))
    assert receiver.request().script_name == "/after"


@pytest.mark.slow
def test_transports_made_during_the_test_and_subprocesses_report_to_it(
    pinba: PinbaCapture, receiver: UdpReceiver
) -> None:
    assert os.environ["PINBA_SERVER"] == os.environ["OTEL_EXPORTER_PINBA_ENDPOINT"] == pinba.address
    ScriptMonitor(receiver.address, script_name="explicit").send()
    ScriptMonitor(script_name="default").send()
    code = "from pynba.util import ScriptMonitor; ScriptMonitor(script_name='child').send(7)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert pinba.request("child").status == 7
    assert sorted(r.script_name for r in pinba.requests) == ["child", "default", "explicit"]
    assert receiver.nothing(0.05)


def test_the_opentelemetry_bridge_is_captured(pinba: PinbaCapture) -> None:
    provider = TracerProvider()
    provider.add_span_processor(PinbaSpanProcessor())
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span("job", kind=SpanKind.CONSUMER),
        tracer.start_as_current_span("SELECT", attributes={"db.system": "sqlite"}),
    ):
        pass
    provider.shutdown()
    assert pinba.timer({"category": "db"}, script_name="job").hit_count == 1


def test_find_and_timers_match_names_tags_and_status(pinba: PinbaCapture) -> None:
    transport = UdpTransport("127.0.0.1:9")
    for name, status, tags in [("a", 200, {"n": "1"}), ("a", 500, {"n": "2"}), ("b", 200, {})]:
        timer = PinbaTimer({"group": f"db::{name}", "n": 1}, 0.5, hit_count=3)
        transport.send(PinbaRequest("h", "s", name, status=status, tags=tags, timers=[timer]))
    pinba.wait(3)
    assert [r.tags for r in pinba.find("a")] == [{"n": "1"}, {"n": "2"}]
    assert pinba.find("a", status=500)[0].tags == {"n": "2"}
    assert pinba.find(tags={"n": 2}) == pinba.find(status=500)  # values compared as sent: text
    assert pinba.find(where=lambda r: r.script_name == "b", status=200)[0].script_name == "b"
    assert pinba.request("a", tags={"n": "1"}).status == 200
    assert len(pinba.timers({"n": 1})) == 3
    assert pinba.timer({"group": "db::b"}).hit_count == 3
    pinba.clear()
    assert pinba.requests == []
    pinba.assert_nothing()


def test_failures_say_what_was_captured(pinba: PinbaCapture) -> None:
    with pytest.raises(AssertionError, match=r"(?s)matched script_name='x'.*nothing was sent"):
        pinba.request("x", timeout=0)
    ScriptMonitor(script_name="job", tags={"kind": "nightly"}).send()
    ScriptMonitor(script_name="job").send()
    with pytest.raises(AssertionError) as failed:
        pinba.request("job", tags={"kind": "daily"}, timeout=0)
    message = str(failed.value)
    assert message.startswith("no Pinba request matched script_name='job', tags={'kind': 'daily'}")
    assert "captured 2:" in message
    assert "'job' status=0" in message and "tags={kind=nightly}" in message
    with pytest.raises(AssertionError, match="2 Pinba requests matched script_name='job'"):
        pinba.request("job")
    with pytest.raises(AssertionError, match="expected no Pinba request; captured 2"):
        pinba.assert_nothing(0)
    with pytest.raises(AssertionError, match=r"no Pinba timer matched tags=\{'group': 'x'\}"):
        pinba.timer({"group": "x"}, timeout=0)


@pytest.mark.expect_pynba_errors
def test_failures_show_what_the_library_logged(pinba: PinbaCapture, pynba_log: PynbaLog) -> None:
    bad = PinbaRequest("h", "s", "bad", timers=[PinbaTimer({}, 1.0)])  # a timer needs a tag
    assert not UdpTransport().send(bad)
    with pytest.raises(AssertionError) as failed:
        pinba.request("bad", timeout=0)
    assert "the pynba logger said:\n    pynba: request not sent, it cannot be encoded" in str(
        failed.value
    )
    assert pynba_log.problems


def test_a_packet_servers_would_reject_fails_the_test(pinba: PinbaCapture) -> None:
    UdpTransport().send_packet(b"\x12\x01x")  # no hostname first: pinba2 drops it
    with pytest.raises(AssertionError, match="a packet Pinba servers would reject was sent"):
        pinba.wait(1, timeout=1)


def test_waits_for_senders_in_other_threads(pinba: PinbaCapture) -> None:
    import threading  # noqa: PLC0415

    timer = threading.Timer(0.1, lambda: ScriptMonitor(script_name="later").send())
    timer.start()
    try:
        assert pinba.request("later", timeout=5).script_name == "later"
    finally:
        timer.join()


@pytest.mark.slow
def test_a_sample_project_uses_the_fixture_as_a_user_would() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PINBA_", "OTEL_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(SAMPLE)],
        cwd=SAMPLE, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed" in done.stdout


def test_captures_nest_the_innermost_receives(pinba: PinbaCapture) -> None:
    transport = UdpTransport()
    with PinbaCapture() as inner:
        transport.send(PinbaRequest("h", "s", "inner"))
        assert inner.request("inner")
    transport.send(PinbaRequest("h", "s", "outer"))
    assert [r.script_name for r in pinba.requests] == ["outer"]
