"""Zero-code warnings reach the operator (issue 19): under ``opentelemetry-instrument`` with the
logging instrumentation active (it puts OpenTelemetry's log handler on the root logger, which
silences Python's last-resort stderr output), a mistyped endpoint is said on stderr when the app
starts, and an app that sends no request span is told how to instrument itself."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import UdpReceiver

pytest.importorskip("opentelemetry.instrumentation.logging")

from test_otel_field import INSTRUMENT, zero_code_env

# A bare WSGI app, served and asked once: opentelemetry-instrument does not instrument it, so
# no span is ever made. It says which handlers the root logger has, then idles (IDLE_SLEEP
# seconds) past the warning's delay.
APP = textwrap.dedent(
    """
    import http.client
    import logging
    import os
    import threading
    import time
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
    conn.request("GET", "/checkout")
    print("STATUS", conn.getresponse().status)
    print("ROOT", sorted(type(h).__name__ for h in logging.getLogger().handlers))
    time.sleep(float(os.environ["IDLE_SLEEP"]))
    server.shutdown()
    """
)


def _run(tmp_path: Path, app: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if not INSTRUMENT.exists():
        pytest.skip("opentelemetry-instrument is not installed")
    script = tmp_path / "app.py"
    script.write_text(app, "utf-8")
    done = subprocess.run(
        [str(INSTRUMENT), sys.executable, str(script)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "STATUS 200" in done.stdout
    # OpenTelemetry's log handler, and only it, on the root logger while the app ran.
    assert "ROOT ['LoggingHandler']" in done.stdout
    assert "Traceback" not in done.stderr
    return done


#: The same app under the OpenTelemetry WSGI middleware: its requests are spans.
WRAPPED = APP.replace(
    "server = make_server(",
    "from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware\n"
    "app = OpenTelemetryMiddleware(app)\n"
    "server = make_server(",
)


def test_a_mistyped_endpoint_is_said_on_stderr_at_start_and_at_the_first_request(
    receiver: UdpReceiver, tmp_path: Path
) -> None:
    env = zero_code_env(
        receiver,
        OTEL_EXPORTER_PINBA_ENDPOINT="pinba-server.invalid:30002",  # a typo: no such name
        OTEL_EXPORTER_PINBA_IDLE_WARNING="0",
        IDLE_SLEEP="0.5",
    )
    lines = _run(tmp_path, WRAPPED, env).stderr.splitlines()
    # When the app starts (configuration), before any instrumentation:
    at_start = [line for line in lines if "cannot resolve the Pinba server" in line]
    assert len(at_start) == 1, lines
    assert "pinba-server.invalid:30002" in at_start[0]
    # At the first request, once the logging instrumentation has put OpenTelemetry's handler
    # on the root logger: said on stderr all the same.
    at_request = [line for line in lines if "cannot resolve Pinba server" in line]
    assert len(at_request) == 1, lines
    assert receiver.nothing(0.2)


def test_an_app_that_makes_no_request_span_is_told_how_to_instrument_itself(
    receiver: UdpReceiver, tmp_path: Path
) -> None:
    # The delay long enough for the app to have started (two shared cores), so that the
    # warning comes while OpenTelemetry's handler is on the root logger; the app lives past it.
    env = zero_code_env(receiver, OTEL_EXPORTER_PINBA_IDLE_WARNING="4", IDLE_SLEEP="5")
    lines = _run(tmp_path, APP, env).stderr.splitlines()
    idle = [line for line in lines if "no request span came in 4 s" in line]
    assert len(idle) == 1, lines
    assert "OpenTelemetryMiddleware" in idle[0]
    assert receiver.nothing(0.2)


def test_with_a_good_endpoint_and_requests_nothing_is_said(
    receiver: UdpReceiver, tmp_path: Path
) -> None:
    """The wrapped app: its request is reported, and no warning at all."""
    env = zero_code_env(receiver, OTEL_EXPORTER_PINBA_IDLE_WARNING="4", IDLE_SLEEP="5")
    done = _run(tmp_path, WRAPPED, env)
    assert "pynba" not in done.stderr, done.stderr
    request = receiver.request(timeout=10)
    assert (request.script_name, request.status) == ("/checkout", 200)
