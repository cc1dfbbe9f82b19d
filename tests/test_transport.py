"""Transports: real datagrams on 127.0.0.1, addresses, names, faults, threads and fork."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from typing import Any

import pytest
from conftest import PynbaLog, UdpReceiver

from pynba_exporter import (
    MemoryTransport,
    PinbaEncodeError,
    PinbaRequest,
    PinbaSendError,
    PinbaTimer,
    UdpTransport,
    decode,
    encode,
    parse_addresses,
)

REQ = PinbaRequest(
    "web1", "example.com", "/index", request_time=0.25, status=200,
    tags={"app": "shop"}, timers=[PinbaTimer({"group": "db::select"}, 0.125)],
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Addresses


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("pinba", ["pinba:30002"]),
        ("pinba:3002", ["pinba:3002"]),
        ("10.0.0.1:30002,10.0.0.2", ["10.0.0.1:30002", "10.0.0.2:30002"]),
        ("a:1, b:2  c:3", ["a:1", "b:2", "c:3"]),
        ("[::1]:30003", ["[::1]:30003"]),
        ("[fe80::1]", ["[fe80::1]:30002"]),
        ("::1", ["[::1]:30002"]),
        (("127.0.0.1", 30002), ["127.0.0.1:30002"]),
        (("::1", "4000"), ["[::1]:4000"]),
        (["a:1", ("b", 2), "c:3,d"], ["a:1", "b:2", "c:3", "d:30002"]),
        (("a:1", "b:2"), ["a:1", "b:2"]),
        ("a:1,a:1", ["a:1"]),
    ],
)
def test_addresses_as_the_reference_client_reads_them(address: Any, expected: list[str]) -> None:
    assert [str(e) for e in parse_addresses(address)] == expected


@pytest.mark.parametrize(
    "address",
    ["", "host:port", "host:0", "host:70000", "[::1", "[::1]x", ":30002", 5, [("a", True)]],
)
def test_bad_addresses_are_a_clear_configuration_error(address: Any) -> None:
    with pytest.raises(ValueError, match="Pinba"):
        parse_addresses(address)


def test_default_address_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PINBA_SERVER", raising=False)
    assert [str(e) for e in parse_addresses(None)] == ["127.0.0.1:30002"]
    monkeypatch.setenv("PINBA_SERVER", "p1:1,p2")
    assert [str(e) for e in parse_addresses(None)] == ["p1:1", "p2:30002"]


def test_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINBA_MAX_PACKET_SIZE", "1432")
    monkeypatch.setenv("PINBA_PACKED", "1")
    monkeypatch.setenv("PINBA_RESOLVE_INTERVAL", "7.5")
    t = UdpTransport("127.0.0.1:1")
    assert (t.max_packet_size, t.packed, t.resolve_interval) == (1432, True, 7.5)
    t = UdpTransport("127.0.0.1:1", max_packet_size=2000, packed=False, resolve_interval=1)
    assert (t.max_packet_size, t.packed, t.resolve_interval) == (2000, False, 1.0)
    monkeypatch.setenv("PINBA_MAX_PACKET_SIZE", "lots")
    with pytest.raises(ValueError, match="PINBA_MAX_PACKET_SIZE"):
        UdpTransport("127.0.0.1:1")
    with pytest.raises(ValueError, match="max_packet_size"):
        UdpTransport("127.0.0.1:1", max_packet_size=100)


# --------------------------------------------------------------------------------------------
# Sending


def test_send_one_request(receiver: UdpReceiver) -> None:
    t = UdpTransport(receiver.address)
    assert t.send(REQ)
    data = receiver.packet()
    assert data == encode(REQ)
    assert decode(data).timers[0].tags == {"group": "db::select"}
    s = t.stats()
    assert (s.requests, s.packets, s.sent, s.dropped, s.encode_errors) == (1, 1, 1, 0, 0)


def test_same_bytes_to_every_server_ipv4_ipv6_and_by_name(receiver: UdpReceiver) -> None:
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        v6.bind(("::1", 0))
    except OSError:
        v6.close()
        pytest.skip("no IPv6 loopback here")
    v6.settimeout(5)
    try:
        t = UdpTransport(
            f"{receiver.address},[::1]:{v6.getsockname()[1]}, localhost:{receiver.port}",
            packed=True,
        )
        assert t.send(REQ)
        first = receiver.packet()
        assert v6.recv(65535) == first
        assert receiver.packet() == first == encode(REQ, packed=True)
        assert t.stats().sent == 3
    finally:
        v6.close()


def test_sockets_open_lazily_and_reopen_after_close(receiver: UdpReceiver) -> None:
    t = UdpTransport(receiver.address)
    assert all(srv.sock is None for srv in t._servers)
    assert t.send(REQ)
    t.close()
    assert t.send(REQ)
    assert len(receiver.packets(2)) == 2


@pytest.mark.expect_pynba_errors
def test_refused_is_counted_and_logged_once(pynba_log: PynbaLog) -> None:
    dead = UdpReceiver()
    address = dead.address
    dead.close()  # nobody listens: the kernel answers ICMP port unreachable
    t = UdpTransport(address)
    results = []
    for _ in range(20):
        results.append(t.send(REQ))
        time.sleep(0.002)
    s = t.stats()
    assert s.requests == 20
    assert s.errors.get("ECONNREFUSED", 0) >= 5
    assert s.sent + s.dropped == 20
    assert results.count(False) == s.dropped
    logged = [m for m in pynba_log.problems if "ECONNREFUSED" in m]
    assert len(logged) == 1


@pytest.mark.expect_pynba_errors
def test_unresolvable_host_never_raises_or_blocks(pynba_log: PynbaLog) -> None:
    t = UdpTransport("no-such-host.invalid:30002")
    started = time.monotonic()
    for _ in range(50):
        assert t.send(REQ) is False
    assert time.monotonic() - started < 3.0
    s = t.stats()
    assert s.dropped == 50
    assert s.errors["unresolved"] == 50
    assert s.errors["resolve"] == 1  # one lookup: the failure is kept until the retry time
    assert any("cannot resolve" in m for m in pynba_log.problems)


@pytest.mark.expect_pynba_errors
def test_a_host_that_starts_resolving_later(receiver: UdpReceiver) -> None:
    answers: dict[str, list[tuple[Any, ...]]] = {}
    lookups = []

    def resolver(host: str, port: int, **kw: Any) -> list[tuple[Any, ...]]:
        if kw.get("flags"):
            raise socket.gaierror(socket.EAI_NONAME, "not numeric")
        lookups.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    t = UdpTransport(f"pinba.test:{receiver.port}", resolver=resolver, resolve_interval=0.05)
    assert t.send(REQ) is False
    answers["pinba.test"] = socket.getaddrinfo("127.0.0.1", receiver.port, type=socket.SOCK_DGRAM)
    deadline = time.monotonic() + 5
    while not t.send(REQ):
        assert time.monotonic() < deadline, "the name was never looked up again"
        time.sleep(0.01)
    assert decode(receiver.packet()).script_name == "/index"
    assert len(lookups) >= 2


def test_names_are_looked_up_again_after_resolve_interval(receiver: UdpReceiver) -> None:
    other = UdpReceiver()
    target = [receiver.port]
    lookups = []

    def resolver(host: str, port: int, **kw: Any) -> list[tuple[Any, ...]]:
        if kw.get("flags"):
            raise socket.gaierror(socket.EAI_NONAME, "not numeric")
        lookups.append(host)
        return socket.getaddrinfo("127.0.0.1", target[0], type=socket.SOCK_DGRAM)

    try:
        t = UdpTransport("moving.test", resolver=resolver, resolve_interval=0.05)
        assert t.send(REQ)
        receiver.packet()
        target[0] = other.port  # the name now points elsewhere
        deadline = time.monotonic() + 5
        while True:
            t.send(REQ)
            if not other.nothing(0.02):
                break
            assert time.monotonic() < deadline
        assert len(lookups) >= 2
    finally:
        other.close()


@pytest.mark.expect_pynba_errors
def test_full_socket_buffer_drops_instead_of_blocking(receiver: UdpReceiver) -> None:
    receiver.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    t = UdpTransport(receiver.address)
    big = PinbaRequest("h", "s", "/big", tags={"pad": "x" * 60000})
    started = time.monotonic()
    for _ in range(2000):
        t.send(big)
    assert time.monotonic() - started < 30
    s = t.stats()
    assert s.requests == 2000
    assert s.sent + s.dropped == 2000


@pytest.mark.expect_pynba_errors
class _NoText:
    """A tag value without a text form: its str() raises."""

    def __str__(self) -> str:
        raise RuntimeError("no text")


@pytest.mark.expect_pynba_errors  # (the log line is the point: asserted below)
def test_encode_errors_are_counted_not_raised(receiver: UdpReceiver, pynba_log: PynbaLog) -> None:
    t = UdpTransport(receiver.address)
    bad = PinbaRequest("h", "s", "/p", tags={"t": _NoText()})  # type: ignore[dict-item]
    assert t.send(bad) is False
    assert t.stats().encode_errors == 1
    assert receiver.nothing()
    assert any("tags['t']" in m for m in pynba_log.problems)


@pytest.mark.expect_pynba_errors  # the failed lookup is logged by the background thread
def test_raise_on_fail_raises_instead(receiver: UdpReceiver) -> None:
    t = UdpTransport("no-such-host.invalid", raise_on_fail=True)
    with pytest.raises(PinbaSendError, match="unresolved"):
        t.send(REQ)
    t = UdpTransport(receiver.address, raise_on_fail=True)
    with pytest.raises(PinbaEncodeError):
        t.send(PinbaRequest("h", "s", "/p", tags={"t": _NoText()}))  # type: ignore[dict-item]


@pytest.mark.expect_pynba_errors
def test_oversize_request_is_shrunk_not_lost(receiver: UdpReceiver, pynba_log: PynbaLog) -> None:
    timers = [PinbaTimer({"group": f"db::q{i}", "server": "db1"}, i / 1000) for i in range(500)]
    big = PinbaRequest("h", "s", "/report", status=200, request_time=1.5, timers=timers)
    t = UdpTransport(receiver.address, max_packet_size=1432)
    assert t.send(big)
    data = receiver.packet()
    assert len(data) <= 1432
    d = decode(data)
    assert (d.script_name, d.status, d.request_time) == ("/report", 200, 1.5)
    assert d.tags == {"pynba_truncated": "timers"}
    assert sum(x.hit_count for x in d.timers) == 500
    kept = [x for x in d.timers if x.tags["group"] != "pynba::truncated"]
    assert [x.tags["group"] for x in kept] == [f"db::q{i}" for i in range(500 - len(kept), 500)]
    assert t.stats().shrunk == 1
    assert sum("did not fit" in m for m in pynba_log.problems) == 1


@pytest.mark.expect_pynba_errors
def test_packet_past_65507_bytes_never_reaches_the_socket(receiver: UdpReceiver) -> None:
    # EMSGSIZE cannot happen: the request is shrunk first (and the log says so).
    timers = [PinbaTimer({"group": "g" * 40 + str(i)}, 0.001) for i in range(3000)]
    big = PinbaRequest("h", "s", "/p", timers=timers)
    assert len(encode(big)) > 65507
    t = UdpTransport(receiver.address)
    assert t.send(big)
    data = receiver.packet()
    assert len(data) <= 65507
    assert decode(data).tags == {"pynba_truncated": "timers"}
    assert t.stats().errors.get("EMSGSIZE", 0) == 0


def test_threads_share_one_transport(receiver: UdpReceiver) -> None:
    t = UdpTransport(receiver.address)
    n_threads, per_thread = 8, 50

    def work(k: int) -> None:
        for i in range(per_thread):
            t.send(PinbaRequest("h", "s", f"/t{k}", request_count=i))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    got = [decode(p) for p in receiver.packets(n_threads * per_thread)]
    assert sorted((r.script_name, r.request_count) for r in got) == sorted(
        (f"/t{k}", i) for k in range(n_threads) for i in range(per_thread)
    )
    s = t.stats()
    assert (s.requests, s.sent, s.dropped) == (400, 400, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_gets_its_own_socket(receiver: UdpReceiver) -> None:
    t = UdpTransport(receiver.address)
    assert t.send(REQ)  # the parent's socket is open before the fork
    receiver.packet()
    parent_fd = t._servers[0].sock.fileno()  # type: ignore[union-attr]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether its socket is new, then send
        try:
            assert t._servers[0].sock is None
            ok = t.send(PinbaRequest("child", "s", "/forked"))
            os.write(w, b"1" if ok and t._servers[0].sock is not None else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)
    assert decode(receiver.packet()).hostname == "child"
    assert t._servers[0].sock is not None and t._servers[0].sock.fileno() == parent_fd
    assert t.send(REQ)  # the parent keeps working
    assert decode(receiver.packet()).hostname == "web1"


def test_memory_transport_for_tests() -> None:
    t = MemoryTransport()
    assert t.send(REQ)
    assert t.packets == [encode(REQ)]
    assert t.requests[0].timers[0].tags == {"group": "db::select"}
    t.clear()
    assert t.packets == []
    assert t.stats().sent == 1


@pytest.mark.expect_pynba_errors
def test_memory_transport_applies_the_size_limit() -> None:
    t = MemoryTransport(max_packet_size=512)
    timers = [PinbaTimer({"group": f"g{i}"}, 0.001) for i in range(200)]
    assert t.send(PinbaRequest("h", "s", "/p", timers=timers))
    assert len(t.packets[0]) <= 512
    assert t.stats().shrunk == 1


def test_every_option_is_registered_for_opentelemetry_instrument() -> None:
    from pynba_exporter import config, otel_environment_variables  # noqa: PLC0415

    names = {n for n in vars(otel_environment_variables) if n.isupper()}
    assert names == {env for o in config.OPTIONS.values() for env in o.env}
    assert all(getattr(otel_environment_variables, n) == n for n in names)


@pytest.mark.parametrize("text", ["1", "true", "YES", " on "])
def test_one_rule_for_true(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    from pynba_exporter import config  # noqa: PLC0415

    monkeypatch.setenv("PINBA_PACKED", text)
    assert config.value("packed") is True
    monkeypatch.setenv("OTEL_EXPORTER_PINBA_PACKED", "off")  # the OTel name comes first
    assert config.value("packed") is False


def test_a_boolean_that_is_neither_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pynba_exporter import config  # noqa: PLC0415

    monkeypatch.setenv("PINBA_ENABLED", "maybe")
    with pytest.raises(config.ConfigError, match="PINBA_ENABLED"):
        config.value("enabled")
    assert config.value("enabled", False) is False  # an argument never reads the environment


@pytest.mark.expect_pynba_errors
def test_only_the_first_send_ever_waits_for_a_slow_name(receiver: UdpReceiver) -> None:
    # A name whose lookup takes long (here: until released): the first send waits for it, up
    # to resolve_timeout; the sends made meanwhile do not wait at all, they drop their packet.
    release = threading.Event()

    def resolver(host: str, port: int, **kw: Any) -> list[tuple[Any, ...]]:
        if kw.get("flags"):
            raise socket.gaierror(socket.EAI_NONAME, "not numeric")
        release.wait(30)
        return socket.getaddrinfo("127.0.0.1", receiver.port, type=socket.SOCK_DGRAM)

    t = UdpTransport(f"slow.test:{receiver.port}", resolver=resolver, resolve_timeout=30)
    first: list[bool] = []
    waiting = threading.Thread(target=lambda: first.append(t.send(REQ)))
    waiting.start()
    while t._servers[0].waited is False:  # the first send is now waiting for the lookup
        time.sleep(0.001)
    others = threading.Thread(target=lambda: [t.send(REQ) for _ in range(6)])
    others.start()
    others.join(10)  # they would take 6 x 30 s if each waited
    assert not others.is_alive()
    assert t.stats().errors["unresolved"] == 6
    assert first == []  # the first one is still waiting
    release.set()
    waiting.join(10)
    assert first == [True]
    assert decode(receiver.packet()).script_name == "/index"


class _Timeout(Exception):
    """What a request-timeout signal handler raises in the app."""


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no interval timers here")
def test_a_signal_handler_raising_during_sends_never_leaves_the_transport_stuck() -> None:
    # A request timeout raised by a signal handler may land anywhere in a send. It must reach
    # the app and leave the transport usable: a lock left held would hang every later send.
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))  # never read: the kernel drops what does not fit
    transport = UdpTransport(f"127.0.0.1:{sink.getsockname()[1]}")
    assert transport.send_packet(b"first")  # its socket made: the sends below only send
    armed = False
    raised = 0

    def handler(signum: int, frame: Any) -> None:
        nonlocal armed, raised
        if armed:  # (only inside a send: the handler disarms itself as it raises)
            armed = False
            raised += 1
            raise _Timeout

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.00003, 0.00003)
    try:
        deadline = time.monotonic() + 3.0
        while raised < 3000 and time.monotonic() < deadline:
            try:
                armed = True
                transport.send_packet(b"x" * 100)
                armed = False
            except _Timeout:  # noqa: PERF203 - the exception is the point
                pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    try:
        assert raised > 100, raised  # the handler did interrupt sends
        free = transport._lock.acquire(timeout=2)
        assert free, f"the transport's lock was left held ({raised} timeouts raised)"
        transport._lock.release()
        assert transport.send_packet(b"after")
    finally:
        transport.close()
        sink.close()
