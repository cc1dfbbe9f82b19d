"""The WSGI contract kept: servers see the app's response as they would without the middleware
(``len()``, ``wsgi.file_wrapper`` and so ``Content-Length`` and ``sendfile``), and exceptions
raised by signal handlers (request timeouts) go through the library unchanged."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.util import FileWrapper, setup_testing_defaults

import pytest
from conftest import UdpReceiver

from pynba import PynbaMiddleware, pynba
from pynba_exporter import MemoryTransport, PinbaRequest, decode

Environ = dict[str, Any]
BODY = b"x" * 100_000


def make_app(path: Path) -> Callable[[Environ, Any], Iterable[bytes]]:
    """A list body, a generator body, and a file through wsgi.file_wrapper."""

    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        route = environ["PATH_INFO"].rsplit("/", 1)[-1]
        if route == "list":
            return [b"hello"]
        if route == "generator":
            return (chunk for chunk in (b"hel", b"lo"))
        return environ["wsgi.file_wrapper"](path.open("rb"), 8192)  # type: ignore[no-any-return]

    return app


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(BODY)
    return path


def ignore_start(*args: Any) -> Callable[[bytes], object]:
    return lambda data: None


def environ(path: str) -> Environ:
    env: Environ = {}
    setup_testing_defaults(env)
    env["PATH_INFO"] = path
    env["wsgi.file_wrapper"] = FileWrapper
    return env


# --------------------------------------------------------------------------------------------
# What the server is handed


def test_the_response_keeps_len_when_the_apps_has_one(
    receiver: UdpReceiver, data_file: Path
) -> None:
    app = PynbaMiddleware(make_app(data_file), receiver.address)
    listed = app(environ("/list"), ignore_start)
    assert len(listed) == 1  # type: ignore[arg-type]
    assert list(listed) == [b"hello"]
    listed.close()  # type: ignore[attr-defined]
    generated = app(environ("/generator"), ignore_start)
    assert not hasattr(generated, "__len__")
    assert b"".join(generated) == b"hello"
    generated.close()  # type: ignore[attr-defined]
    assert [r.document_size for r in receiver_requests(receiver, 2)] == [5, 5]


def test_file_wrapper_objects_pass_through_and_the_request_ends_at_close(
    receiver: UdpReceiver, data_file: Path
) -> None:
    app = PynbaMiddleware(make_app(data_file), receiver.address)
    result = app(environ("/file"), ignore_start)
    assert type(result) is FileWrapper  # the server recognises it: sendfile stays possible
    assert receiver.nothing()  # the file is not sent yet: neither is the request
    result.close()
    r = receiver.request()
    assert (r.script_name, r.status, r.document_size) == ("/file", 200, len(BODY))
    result.close()
    assert receiver.nothing()  # closed twice, reported once


def receiver_requests(receiver: UdpReceiver, n: int) -> list[PinbaRequest]:
    return [decode(p) for p in receiver.packets(n)]


# --------------------------------------------------------------------------------------------
# wsgiref and gunicorn serve the same bytes and headers with and without the middleware


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def wsgiref_serving(app: Callable[..., Any]) -> Iterator[int]:
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def fetch(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders() if k.lower() != "date"}
        return response.status, headers, body
    finally:
        conn.close()


def test_wsgiref_serves_the_same_with_and_without_the_middleware(
    receiver: UdpReceiver, data_file: Path
) -> None:
    plain = make_app(data_file)
    with (
        wsgiref_serving(plain) as p1,
        wsgiref_serving(PynbaMiddleware(plain, receiver.address)) as p2,
    ):
        for route in ("list", "generator", "file"):
            without, with_ = fetch(p1, f"/{route}"), fetch(p2, f"/{route}")
            assert without == with_, route
        assert fetch(p1, "/list")[1]["content-length"] == "5"  # what a len() of 1 gives
    sizes = sorted(r.document_size for r in receiver_requests(receiver, 3))
    assert sizes == sorted([5, 5, len(BODY)])


GUNICORN = Path(sys.executable).with_name("gunicorn")

GUNICORN_APP = """
import os
import socket
from pathlib import Path

from pynba import PynbaMiddleware

COUNT = Path(os.environ["SENDFILE_COUNT"])
_sendfile = socket.socket.sendfile


def counting_sendfile(self, *args, **kwargs):
    with COUNT.open("a") as f:
        f.write("x")
    return _sendfile(self, *args, **kwargs)


socket.socket.sendfile = counting_sendfile
DATA = Path(os.environ["DATA_FILE"])


def plain(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    route = environ["PATH_INFO"].rsplit("/", 1)[-1]
    if route == "list":
        return [b"hello"]
    if route == "generator":
        return (chunk for chunk in (b"hel", b"lo"))
    return environ["wsgi.file_wrapper"](DATA.open("rb"), 8192)


monitored = PynbaMiddleware(plain, os.environ["PINBA_ADDRESS"])


def application(environ, start_response):
    if environ["PATH_INFO"].startswith("/monitored/"):
        return monitored(environ, start_response)
    return plain(environ, start_response)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not GUNICORN.exists(), reason="gunicorn is not installed (a test extra)")
def test_gunicorn_serves_the_same_and_still_sendfiles(
    receiver: UdpReceiver, data_file: Path, tmp_path: Path
) -> None:
    (tmp_path / "contract_app.py").write_text(GUNICORN_APP)
    count = tmp_path / "sendfile.count"
    count.write_text("")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(tmp_path), SENDFILE_COUNT=str(count),
               DATA_FILE=str(data_file), PINBA_ADDRESS=receiver.address)  # fmt: skip
    server = subprocess.Popen(
        [str(GUNICORN), "-w", "1", "-b", f"127.0.0.1:{port}", "--log-level", "warning",
         "contract_app:application"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                fetch(port, "/plain/list")
                break
            except OSError:
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)
        for route in ("list", "generator", "file"):
            without = fetch(port, f"/plain/{route}")
            with_ = fetch(port, f"/monitored/{route}")
            assert without == with_, route
            assert without[2] == (BODY if route == "file" else b"hello")
        sendfiles = len(count.read_text())
        requests = receiver_requests(receiver, 3)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert sendfiles == 2  # both file responses, with and without the middleware
    assert {r.script_name: r.document_size for r in requests} == {
        "/monitored/list": 5,
        "/monitored/generator": 5,
        "/monitored/file": len(BODY),
    }


# --------------------------------------------------------------------------------------------
# Request timeouts raised by signal handlers are the app's


class RequestTimeout(Exception):
    """What a request-timeout signal handler raises (an Exception, as most are)."""


@pytest.fixture
def alarm_raises_timeout() -> Iterator[None]:
    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise RequestTimeout("request took too long")

    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        yield
    finally:
        signal.signal(signal.SIGALRM, old)


def _serve(app: Callable[..., Iterable[bytes]]) -> bytes:
    result = app(environ("/slow"), ignore_start)
    try:
        return b"".join(result)
    finally:
        result.close()  # type: ignore[attr-defined]


def test_a_timeout_in_the_app_propagates_and_the_request_is_reported(
    receiver: UdpReceiver, alarm_raises_timeout: None
) -> None:
    def app(environ: Environ, start_response: Any) -> list[bytes]:
        signal.raise_signal(signal.SIGALRM)
        return [b"never"]

    with pytest.raises(RequestTimeout):
        _serve(PynbaMiddleware(app, receiver.address))
    r = receiver.request()
    assert (r.script_name, r.status) == ("/slow", 500)


def test_a_timeout_while_the_library_reports_is_not_swallowed(alarm_raises_timeout: None) -> None:
    def app(environ: Environ, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        # A tag whose value is computed when the request is sent: the alarm fires while the
        # library's code runs (expanding tags), which catches its own failures.
        pynba.tags["slow"] = lambda: signal.raise_signal(signal.SIGALRM)
        return [b"body"]

    transport = MemoryTransport()
    with pytest.raises(RequestTimeout):
        _serve(PynbaMiddleware(app, transport=transport))
    assert transport.requests == []


def test_a_timeout_while_sending_is_not_swallowed(alarm_raises_timeout: None) -> None:
    class SlowTransport(MemoryTransport):
        def _deliver(self, data: bytes, requests: int) -> bool:
            signal.raise_signal(signal.SIGALRM)
            return super()._deliver(data, requests)

    def app(environ: Environ, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"body"]

    with pytest.raises(RequestTimeout):
        _serve(PynbaMiddleware(app, transport=SlowTransport()))
