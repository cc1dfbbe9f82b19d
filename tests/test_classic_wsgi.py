"""The classic WSGI middleware: every field of the packet, decoded from a real UDP socket."""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.util import setup_testing_defaults

import pytest
from conftest import UdpReceiver

from pynba import PynbaMiddleware, monitor, pynba
from pynba_exporter import MemoryTransport, PinbaRequest, PinbaSendError, internal_errors
from pynba_exporter.spans import hostname

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


def environ(path: str = "/", **extra: Any) -> Environ:
    env: Environ = {}
    setup_testing_defaults(env)
    env["PATH_INFO"] = path
    env.update(extra)
    return env


def serve(
    app: Callable[[Environ, StartResponse], Iterable[bytes]], env: Environ | None = None
) -> tuple[str, bytes]:
    """Call the app as a WSGI server does: start_response, iterate, close."""
    seen: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[..., Any]:
        seen.append(status)
        return lambda data: None

    result = app(env or environ(), start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return seen[-1], body


def hello(env: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


# --------------------------------------------------------------------------------------------
# The fields


def test_a_request_as_a_pinba_server_sees_it(receiver: UdpReceiver) -> None:
    @monitor(("127.0.0.1", receiver.port), tags={"app": "shop"})
    def app(env: Environ, start_response: StartResponse) -> list[bytes]:
        with pynba.timer(group="db::select", server="db1"):
            time.sleep(0.002)
        start_response("201 Created", [])
        return [b"abc", b"defg"]

    assert serve(app, environ("/cart", HTTP_HOST="shop.example:8080")) == (
        "201 Created",
        b"abcdefg",
    )
    r = receiver.request()
    assert r.hostname == hostname() == socket.gethostname()
    assert r.server_name == "shop.example"
    assert r.script_name == "/cart"
    assert r.schema == "http"
    assert r.status == 201
    assert r.document_size == 7
    assert r.tags == {"app": "shop"}
    assert 0.002 <= r.request_time < 5
    (t,) = r.timers
    assert t.tags == {"group": "db::select", "server": "db1"}
    assert 0.002 <= t.value <= r.request_time
    assert t.hit_count == 1
    assert r.memory_peak > 0
    assert r.memory_footprint > 0
    assert app.reporter.stats().sent == 1


def test_status_500_when_the_app_raises_and_the_exception_passes_unchanged(
    receiver: UdpReceiver,
) -> None:
    error = KeyError("boom")

    @monitor(receiver.address)
    def app(env: Environ, start_response: StartResponse) -> list[bytes]:
        pynba.tags["stage"] = "before"
        raise error

    with pytest.raises(KeyError) as info:
        serve(app)
    assert info.value is error
    r = receiver.request()
    assert r.status == 500
    assert r.tags == {"stage": "before"}


def test_status_of_the_error_response_given_with_exc_info(receiver: UdpReceiver) -> None:
    @monitor(receiver.address)
    def app(env: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        try:
            raise ValueError("late")
        except ValueError:
            start_response("503 Service Unavailable", [], sys.exc_info())
        return [b"sorry"]

    assert serve(app)[0] == "503 Service Unavailable"
    assert receiver.request().status == 503


def test_a_body_that_fails_midway_is_a_500(receiver: UdpReceiver) -> None:
    @monitor(receiver.address)
    def app(env: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"part"
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        serve(app)
    r = receiver.request()
    assert (r.status, r.document_size) == (500, 4)


def test_a_streamed_body_is_timed_until_close_and_its_timers_belong_to_it(
    receiver: UdpReceiver,
) -> None:
    @monitor(receiver.address)
    def app(env: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        for i in range(3):
            with pynba.timer(group="chunk"):
                time.sleep(0.01)
            yield b"x" * (i + 1)

    result = app(environ(), lambda *a: lambda data: None)
    assert receiver.nothing(0.05)  # not before the body is consumed and closed
    assert b"".join(result) == b"xxxxxx"
    result.close()  # type: ignore[attr-defined]
    r = receiver.request()
    assert r.request_time >= 0.03
    assert r.document_size == 6
    (t,) = r.timers
    assert (t.tags, t.hit_count) == ({"group": "chunk"}, 3)
    assert t.value >= 0.03


def test_closing_a_streamed_response_early_still_reports(receiver: UdpReceiver) -> None:
    closed = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"first"
            yield b"second"

        def close(self) -> None:
            closed.append(True)

    @monitor(receiver.address)
    def app(env: Environ, start_response: StartResponse) -> Body:
        start_response("200 OK", [])
        return Body()

    result = app(environ(), lambda *a: lambda data: None)
    assert next(iter(result)) == b"first"
    result.close()  # type: ignore[attr-defined]
    assert closed == [True]
    r = receiver.request()
    assert (r.status, r.document_size) == (200, 5)


def test_app_set_values_win(receiver: UdpReceiver) -> None:
    @monitor(receiver.address)
    def app(env: Environ, start_response: StartResponse) -> list[bytes]:
        pynba.scriptname = "/product/<id>"
        pynba.servername = "api.example"
        pynba.hostname = "web7"
        pynba.schema = "https"
        pynba.document_size = 123
        pynba.memory_peak = 456
        start_response("200 OK", [])
        return [b"ignored size"]

    serve(app, environ("/product/42"))
    r = receiver.request()
    assert (r.script_name, r.server_name, r.hostname, r.schema) == (
        "/product/<id>", "api.example", "web7", "https",
    )  # fmt: skip
    assert (r.document_size, r.memory_peak) == (123, 456)
    assert r.memory_footprint not in (0, 456)  # measured, not copied from memory_peak


def test_names_from_the_environ(receiver: UdpReceiver) -> None:
    app = PynbaMiddleware(hello, receiver.address, prefix="[shop] ")
    env = environ("/caf\xc3\xa9", SERVER_NAME="backend.local", **{"wsgi.url_scheme": "https"})
    env.pop("HTTP_HOST", None)
    serve(app, env)
    r = receiver.request()
    assert (r.server_name, r.script_name, r.schema) == ("backend.local", "[shop] /café", "https")
    serve(app, environ("/", HTTP_HOST="[::1]:8080"))
    assert receiver.request().server_name == "[::1]"


def test_names_set_per_middleware(receiver: UdpReceiver) -> None:
    app = PynbaMiddleware(
        hello, receiver.address, hostname="web-a", server_name="shop",
        script_name=lambda env: env["PATH_INFO"].rsplit("/", 1)[0] + "/<id>", schema="https",
    )  # fmt: skip
    serve(app, environ("/item/77"))
    r = receiver.request()
    assert (r.hostname, r.server_name, r.script_name, r.schema) == (
        "web-a", "shop", "/item/<id>", "https",
    )  # fmt: skip


def test_request_tags_without_timers(receiver: UdpReceiver) -> None:
    @monitor(receiver.address)
    def app(env: Environ, start_response: StartResponse) -> list[bytes]:
        pynba.tags["user_type"] = "guest"
        pynba.tags["ab"] = 2
        start_response("200 OK", [])
        return []

    serve(app)
    r = receiver.request()
    assert r.tags == {"ab": "2", "user_type": "guest"}
    assert r.timers == ()


def test_thread_cpu_is_the_serving_threads(receiver: UdpReceiver) -> None:
    stop = threading.Event()

    def burn_elsewhere() -> None:
        while not stop.is_set():
            sum(range(1000))

    def burn(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            sum(range(1000))

    @monitor(receiver.address)
    def app(env: Environ, start_response: StartResponse) -> list[bytes]:
        with pynba.timer(group="burn"):
            burn(0.05)
        time.sleep(0.15)  # meanwhile the other thread burns
        start_response("200 OK", [])
        return []

    other = threading.Thread(target=burn_elsewhere)
    other.start()
    try:
        serve(app)
    finally:
        stop.set()
        other.join()
    r = receiver.request()
    cpu = r.ru_utime + r.ru_stime
    assert 0.04 <= cpu < 0.12, cpu  # ours (0.05), not the process's (0.05 + ~0.15)
    (t,) = r.timers
    assert 0.04 <= t.ru_utime + t.ru_stime < 0.12


def test_per_timer_cpu_can_be_turned_off(
    receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def app(env: Environ, start_response: StartResponse) -> list[bytes]:
        with pynba.timer(group="work"):
            sum(range(100000))
        start_response("200 OK", [])
        return []

    serve(PynbaMiddleware(app, receiver.address, timer_rusage=False))
    (t,) = receiver.request().timers
    assert (t.ru_utime, t.ru_stime) == (0.0, 0.0)
    monkeypatch.setenv("PINBA_TIMER_RUSAGE", "0")
    serve(PynbaMiddleware(app, receiver.address))
    (t,) = receiver.request().timers
    assert (t.ru_utime, t.ru_stime) == (0.0, 0.0)
    monkeypatch.setenv("PINBA_TIMER_RUSAGE", "1")
    serve(PynbaMiddleware(app, receiver.address))
    (t,) = receiver.request().timers
    assert t.ru_utime + t.ru_stime > 0


def test_timers_running_at_the_end_are_sent_never_started_ones_are_not(
    receiver: UdpReceiver,
) -> None:
    @monitor(receiver.address)
    def app(env: Environ, start_response: StartResponse) -> list[bytes]:
        pynba.timer(group="forgotten").start()
        pynba.timer(group="never")
        pynba.timer(group="tiny").start().stop()  # sub-microsecond: kept
        start_response("200 OK", [])
        return []

    serve(app)
    r = receiver.request()
    assert sorted(t.tags["group"] for t in r.timers) == ["forgotten", "tiny"]
    assert all(t.hit_count == 1 for t in r.timers)


def test_timer_forms_and_merging(receiver: UdpReceiver) -> None:
    @pynba.timer(group="render")  # made at import time, outside any request
    def render(n: int) -> int:
        return n * 2

    @pynba.timer(group="fetch")
    async def fetch() -> str:
        await asyncio.sleep(0)
        return "ok"

    @monitor(receiver.address)
    def app(env: Environ, start_response: StartResponse) -> list[bytes]:
        assert [render(i) for i in range(3)] == [0, 2, 4]
        assert asyncio.run(fetch()) == "ok"
        t = pynba.timer(group="db", server="db1").start()
        assert t.started
        t.stop()
        assert not t.started and t.elapsed > 0
        with pynba.timer(server="db1", group="db"):  # same tags, other order: merged
            pass
        c = t.clone()
        with c:
            pass
        gone = pynba.timer(group="deleted").start().stop()
        gone.delete()
        start_response("200 OK", [])
        return []

    assert render(5) == 10  # outside any request: works, records nothing
    serve(app)
    r = receiver.request()
    hits = {t.tags["group"]: t.hit_count for t in r.timers}
    assert hits == {"render": 3, "fetch": 1, "db": 3}
    assert render(1) == 2
    assert receiver.nothing(0.05)


def test_tag_values_as_in_the_original_readme(receiver: UdpReceiver) -> None:
    calls = []

    def late() -> str:
        calls.append(1)
        return "computed"

    @monitor(receiver.address)
    def app(env: Environ, start_response: StartResponse) -> list[bytes]:
        with pynba.timer(foo="bar", baz=["seq1", "seq2"], qux={"map1": "val1", "deep": {"x": 1}},
                         late=late, n=None, f=1.5):  # fmt: skip
            assert calls == []  # called when the request is sent
        start_response("200 OK", [])
        return []

    serve(app)
    (t,) = receiver.request().timers
    assert t.tags == {
        "foo": "bar", "baz": ("seq1", "seq2"), "qux.map1": "val1", "qux.deep.x": "1",
        "late": "computed", "n": "", "f": "1.5",
    }  # fmt: skip


@pytest.mark.expect_pynba_errors
def test_hostile_values_never_reach_the_app(receiver: UdpReceiver) -> None:
    class Evil:
        def __str__(self) -> str:
            raise RuntimeError("no")

    def gen() -> Iterator[int]:
        yield from (1, 2)

    @monitor(receiver.address)
    def app(env: Environ, start_response: StartResponse) -> list[bytes]:
        pynba.tags["evil"] = Evil()
        pynba.tags["huge"] = "x" * 1_000_000
        pynba.tags["bytes"] = b"\xff\xfe"
        pynba.document_size = float("nan")  # type: ignore[assignment]
        pynba.memory_peak = -5
        pynba.memory_footprint = "lots"  # type: ignore[assignment]
        with pynba.timer(group=Evil(), nan=float("nan"), gen=gen(), surrogate="\udcff"):
            pass
        for i in range(2000):
            pynba.tags[f"t{i}"] = i
        start_response("200 OK", [])
        return [b"ok"]

    assert serve(app) == ("200 OK", b"ok")
    r = receiver.request()
    assert len(receiver.sock.getsockname()) == 2
    assert r.tags["evil"] == "?"
    assert r.document_size == 2  # NaN ignored: the counted size
    assert r.memory_peak == 0
    assert r.timers[0].tags["nan"] == "NAN"
    assert r.timers[0].tags["gen"] == ("1", "2")


# --------------------------------------------------------------------------------------------
# Isolation


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.slow
def test_concurrent_requests_in_threads_keep_their_own_timers(receiver: UdpReceiver) -> None:
    @monitor(receiver.address)
    def app(env: Environ, start_response: StartResponse) -> list[bytes]:
        n = env["PATH_INFO"].strip("/")
        pynba.tags["n"] = n
        with pynba.timer(req=n):
            time.sleep(0.01)  # requests overlap
        with pynba.timer(group="common"):
            pass
        start_response("200 OK", [])
        return [n.encode()]

    server = make_server("127.0.0.1", 0, app, ThreadingWSGIServer, QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        n_requests = 40

        def get(i: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
            conn.request("GET", f"/{i}")
            assert conn.getresponse().read() == str(i).encode()
            conn.close()

        clients = [threading.Thread(target=get, args=(i,)) for i in range(n_requests)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        packets = [receiver.request() for _ in range(n_requests)]
    finally:
        server.shutdown()
        server.server_close()
    seen = set()
    for r in packets:
        n = str(r.tags["n"])
        assert r.script_name == f"/{n}"
        assert sorted(tuple(sorted(t.tags.items())) for t in r.timers) == [
            (("group", "common"),), (("req", n),),
        ]  # fmt: skip
        seen.add(n)
    assert seen == {str(i) for i in range(n_requests)}


def test_nested_middlewares_send_one_packet(receiver: UdpReceiver) -> None:
    inner = PynbaMiddleware(hello, receiver.address, tags={"inner": "yes", "app": "inner"})
    outer = PynbaMiddleware(inner, receiver.address, tags={"app": "outer"})
    serve(outer, environ("/twice"))
    r = receiver.request()
    assert r.tags == {"app": "outer", "inner": "yes"}
    assert receiver.nothing(0.1)

    def dispatcher(env: Environ, start_response: StartResponse) -> Iterable[bytes]:
        with pynba.timer(group="dispatch"):
            pass
        return inner(env, start_response)  # a monitored app mounted in another one

    serve(PynbaMiddleware(dispatcher, receiver.address), environ("/mounted"))
    r = receiver.request()
    assert r.script_name == "/mounted"
    assert [t.tags for t in r.timers] == [{"group": "dispatch"}]
    assert receiver.nothing(0.1)


def test_nothing_leaks_after_an_exception(receiver: UdpReceiver) -> None:
    @monitor(receiver.address)
    def app(env: Environ, start_response: StartResponse) -> list[bytes]:
        if env["PATH_INFO"] == "/fail":
            pynba.tags["leak"] = "yes"
            pynba.timer(group="leak").start()
            raise RuntimeError("x")
        start_response("200 OK", [])
        return []

    with pytest.raises(RuntimeError):
        serve(app, environ("/fail"))
    receiver.request()
    assert pynba.request is None
    serve(app, environ("/ok"))
    r = receiver.request()
    assert (r.tags, r.timers) == ({}, ())


def test_disabled_requests_and_the_global_switch(
    receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    @monitor(receiver.address)
    def app(env: Environ, start_response: StartResponse) -> list[bytes]:
        if env["PATH_INFO"] == "/health":
            pynba.enabled = False
        start_response("200 OK", [])
        return [b"ok"]

    serve(app, environ("/health"))
    assert receiver.nothing(0.1)
    monkeypatch.setenv("PINBA_ENABLED", "0")
    off = PynbaMiddleware(hello, receiver.address)
    assert serve(off) == ("200 OK", b"hello")
    assert receiver.nothing(0.1)
    assert off.reporter.stats().requests == 0


# --------------------------------------------------------------------------------------------
# Faults: the app never notices


@pytest.mark.expect_pynba_errors
def test_dead_and_unresolvable_servers_do_not_hurt_the_app() -> None:
    dead = UdpReceiver()
    address = dead.address
    dead.close()
    for target in (address, "no-such-host.invalid:30002"):
        app = PynbaMiddleware(hello, target)
        for _ in range(5):
            assert serve(app) == ("200 OK", b"hello")
        assert app.reporter.stats().requests == 5


@pytest.mark.expect_pynba_errors
def test_raise_on_fail_turns_failures_into_exceptions() -> None:
    app = PynbaMiddleware(hello, "no-such-host.invalid:30002")
    app.reporter.raise_on_fail = True
    with pytest.raises(PinbaSendError):
        serve(app)
    app.reporter.raise_on_fail = False
    assert serve(app) == ("200 OK", b"hello")


def test_monitor_takes_the_original_address_forms(receiver: UdpReceiver) -> None:
    second = UdpReceiver()
    try:
        app = monitor(f"127.0.0.1:{receiver.port},127.0.0.1:{second.port}")(hello)
        serve(app)
        assert receiver.packet() == second.packet()
        assert app.__name__ == "hello"  # type: ignore[attr-defined]
    finally:
        second.close()


def test_a_memory_transport_for_users_tests() -> None:
    transport = MemoryTransport()
    app = PynbaMiddleware(hello, transport=transport)
    serve(app, environ("/x"))
    (r,) = transport.requests
    assert isinstance(r, PinbaRequest)
    assert (r.script_name, r.status, r.document_size) == ("/x", 200, 5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_works_in_a_forked_child(receiver: UdpReceiver) -> None:
    app = PynbaMiddleware(hello, receiver.address)
    serve(app, environ("/parent"))
    assert receiver.request().script_name == "/parent"
    pid = os.fork()
    if pid == 0:
        try:
            serve(app, environ("/child"))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert receiver.request().script_name == "/child"


def test_greenlets_keep_their_own_requests(receiver: UdpReceiver) -> None:
    greenlet = pytest.importorskip("greenlet")
    hub = greenlet.getcurrent()

    @monitor(receiver.address)
    def app(env: Environ, start_response: StartResponse) -> list[bytes]:
        name = env["PATH_INFO"].strip("/")
        pynba.tags["who"] = name
        with pynba.timer(who=name):
            hub.switch()  # the other greenlet runs its request meanwhile
        start_response("200 OK", [])
        return []

    g1 = greenlet.greenlet(lambda: serve(app, environ("/g1")))
    g2 = greenlet.greenlet(lambda: serve(app, environ("/g2")))
    g1.switch()
    g2.switch()
    g1.switch()
    g2.switch()
    got = {r.script_name: r for r in (receiver.request(), receiver.request())}
    for name in ("g1", "g2"):
        r = got[f"/{name}"]
        assert r.tags == {"who": name}
        assert [t.tags for t in r.timers] == [{"who": name}]


def test_outside_any_request_timers_say_so_at_debug_level(pynba_log: Any) -> None:
    with pynba.timer(group="orphan"):
        pass
    assert any("outside any request" in r.getMessage() for r in pynba_log.records)


@pytest.mark.expect_pynba_errors
def test_internal_errors_are_counted() -> None:
    class Evil:
        def __str__(self) -> str:
            raise RuntimeError("no")

    app = PynbaMiddleware(hello, transport=MemoryTransport())

    def tagged(env: Environ, start_response: StartResponse) -> list[bytes]:
        pynba.tags["x"] = Evil()
        return hello(env, start_response)

    app.app = tagged
    for _ in range(3):
        serve(app)
    assert internal_errors()["tag"] == 3


@pytest.mark.expect_pynba_errors
@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("PINBA_ENABLED", "maybe"),
        ("PINBA_SERVER", "http://pinba:30002"),
        ("OTEL_EXPORTER_PINBA_ENDPOINT", "localhost:notaport"),
        ("PINBA_MAX_PACKET_SIZE", "10"),
        ("PINBA_RESOLVE_INTERVAL", "nan"),
    ],
)
def test_a_bad_environment_never_keeps_the_app_from_starting(
    monkeypatch: pytest.MonkeyPatch, pynba_log: Any, variable: str, text: str
) -> None:
    monkeypatch.setenv(variable, text)

    @monitor()
    def app(env: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        return [b"served"]

    assert not app.enabled  # off, said once, naming the variable
    assert [m for m in pynba_log.problems if variable in m and "Pinba is off" in m]
    assert b"".join(serve_body(app)) == b"served"
    assert app.reporter.stats().requests == 0


def serve_body(app: Any) -> list[bytes]:
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    return list(app(environ, lambda *a: None))


def test_an_address_given_in_code_that_cannot_work_raises_at_once() -> None:
    with pytest.raises(ValueError, match="Pinba"):
        monitor("localhost:notaport")(lambda env, sr: [])


def test_a_bytes_path_with_a_prefix_is_reported_not_raised(receiver: UdpReceiver) -> None:
    """Some servers hand PATH_INFO as bytes (against PEP 3333): the request is still named by
    its path, with the prefix, and close() raises nothing."""
    app = PynbaMiddleware(hello, receiver.address, prefix="[shop] ")
    assert serve(app, environ(b"/caf\xc3\xa9")) == ("200 OK", b"hello")  # type: ignore[arg-type]
    assert receiver.request().script_name == "[shop] /café"


def test_an_app_answering_none_is_reported_at_once(receiver: UdpReceiver) -> None:
    """No response object to close: the request is reported when the app returns."""

    def broken(env: Environ, start_response: StartResponse) -> Any:
        start_response("200 OK", [])
        return None

    app = monitor(receiver.address)(broken)
    assert app(environ("/none"), lambda *a: lambda data: None) is None
    got = receiver.request()
    assert (got.script_name, got.status) == ("/none", 200)
