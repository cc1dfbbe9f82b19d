"""Network faults seen from the app: its responses never change, the loss is counted.

(Faults inside the request, such as a body failing midway, a client closing early, an app
raising before start_response, or a fork, are in test_classic_wsgi.py; OpenTelemetry ones in
test_under_load.py.)
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from conftest import UdpReceiver
from test_classic_wsgi import environ, serve

from pynba import PynbaMiddleware, pynba
from pynba_exporter import UdpTransport, decode, internal_errors


def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
    with pynba.timer(group="db::select"):
        pass
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"fine"]


def many_timers(env: dict[str, Any], start_response: Any) -> list[bytes]:
    for i in range(5000):  # far past 65,507 bytes
        with pynba.timer(group=f"query-{i:05d}", server="db-server-with-a-long-name"):
            pass
    start_response("200 OK", [])
    return [b"fine"]


@pytest.mark.expect_pynba_errors
def test_collector_down() -> None:
    dead = UdpReceiver()
    address = dead.address
    dead.close()
    monitored = PynbaMiddleware(app, address)
    for _ in range(20):
        assert serve(monitored) == ("200 OK", b"fine")
        time.sleep(0.002)
    stats = monitored.reporter.stats()
    assert stats.requests == 20
    assert stats.errors["ECONNREFUSED"] >= 5  # every refusal the kernel reports is counted
    assert internal_errors()["send"] == stats.dropped


@pytest.mark.expect_pynba_errors
def test_unresolvable_host() -> None:
    monitored = PynbaMiddleware(app, "pinba.invalid:30002")
    for _ in range(10):
        assert serve(monitored) == ("200 OK", b"fine")
    stats = monitored.reporter.stats()
    assert (stats.requests, stats.dropped, stats.errors["unresolved"]) == (10, 10, 10)


@pytest.mark.expect_pynba_errors
def test_a_host_that_starts_resolving_later(receiver: UdpReceiver) -> None:
    known: dict[str, Any] = {}

    def resolver(host: str, port: int, **kw: Any) -> Any:
        if kw.get("flags") or host not in known:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return known[host]

    transport = UdpTransport(f"pinba.later:{receiver.port}", resolver=resolver,
                             resolve_interval=0.05)  # fmt: skip
    monitored = PynbaMiddleware(app, transport=transport)
    assert serve(monitored) == ("200 OK", b"fine")
    assert transport.stats().errors["unresolved"] == 1
    known["pinba.later"] = socket.getaddrinfo("127.0.0.1", receiver.port, type=socket.SOCK_DGRAM)
    deadline = time.monotonic() + 5
    while transport.stats().sent == 0:
        assert time.monotonic() < deadline
        assert serve(monitored) == ("200 OK", b"fine")
        time.sleep(0.02)
    assert decode(receiver.packet()).script_name == "/"


@pytest.mark.expect_pynba_errors  # the shrinking is logged once
def test_a_request_past_65507_bytes(receiver: UdpReceiver) -> None:
    monitored = PynbaMiddleware(many_timers, receiver.address)
    assert serve(monitored, environ("/report")) == ("200 OK", b"fine")
    data = receiver.packet()
    assert len(data) <= 65507
    r = decode(data)
    assert (r.script_name, r.status) == ("/report", 200)
    assert r.tags == {"pynba_truncated": "timers"}
    assert sum(t.hit_count for t in r.timers) == 5000  # folded, not lost
    stats = monitored.reporter.stats()
    assert (stats.shrunk, stats.dropped, stats.errors.get("EMSGSIZE", 0)) == (1, 0, 0)


@pytest.mark.expect_pynba_errors
def test_a_full_socket_buffer(receiver: UdpReceiver) -> None:
    monitored = PynbaMiddleware(app, receiver.address)
    sock = None
    for _ in range(3000):
        assert serve(monitored) == ("200 OK", b"fine")
        if sock is None:  # make the send buffer tiny once the socket exists
            sock = monitored.reporter._servers[0].sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024)
    stats = monitored.reporter.stats()
    assert stats.requests == 3000
    assert stats.sent + stats.dropped == 3000  # whatever did not leave is counted
