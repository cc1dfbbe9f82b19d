"""The ASGI middleware under a real uvicorn: the packet of each request, from a real UDP socket."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from asgi_server import get, uvicorn_serving
from conftest import UdpReceiver
from websockets.sync.client import connect

from pynba import pynba
from pynba.asgi import PynbaMiddleware, monitor
from pynba_exporter import decode
from pynba_exporter.spans import hostname

Scope = MutableMapping[str, Any]


async def body_of(receive: Any) -> None:
    while (await receive()).get("more_body"):
        pass


def shop(after_body: threading.Event | None = None) -> Any:
    """A raw ASGI app: a few routes, lifespan and a websocket."""
    lifespan_seen: list[str] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                lifespan_seen.append(message["type"])
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            if scope["path"] == "/ws/deny":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": "héllo"})  # 6 bytes in UTF-8
            await send({"type": "websocket.send", "bytes": b"1234"})
            await send({"type": "websocket.close", "code": 1000})
            return
        await body_of(receive)
        path = scope["path"]
        if path == "/boom":
            raise RuntimeError("the app failed")
        with pynba.timer(group="db::select"):
            await asyncio.sleep(0.01)
        pynba.tags["rid"] = path.rsplit("/", 1)[-1]
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
        await send({"type": "http.response.body", "body": b"world"})
        if after_body is not None:
            # Work after the last body message (background tasks) is not the request's.
            with pynba.timer(group="after"):
                await asyncio.sleep(0.2)
            after_body.set()

    app.lifespan_seen = lifespan_seen  # type: ignore[attr-defined]
    return app


def test_a_request_as_a_pinba_server_sees_it(receiver: UdpReceiver) -> None:
    app = PynbaMiddleware(shop(), receiver.address, tags={"app": "shop"})
    with uvicorn_serving(app) as port:
        status, body, _ = get(port, "/product/42?x=1")
        r = receiver.request()
    assert (status, body) == (201, b"hello world")
    assert (r.hostname, r.server_name, r.script_name, r.schema) == (
        hostname(),
        "shop.example",
        "/product/42",
        "http",
    )
    assert (r.status, r.document_size) == (201, 11)
    assert r.tags == {"app": "shop", "rid": "42"}
    (timer,) = r.timers
    assert timer.tags == {"group": "db::select"}
    assert 0.01 <= timer.value <= r.request_time
    assert r.memory_footprint > 0
    assert r.memory_peak >= r.memory_footprint


def test_time_stops_at_the_last_body_message(receiver: UdpReceiver) -> None:
    done = threading.Event()
    app = PynbaMiddleware(shop(done), receiver.address)
    with uvicorn_serving(app) as port:
        assert get(port, "/x")[0] == 201
        r = receiver.request()
        assert done.wait(5)
    assert r.request_time < 0.2  # the 0.2 s after the body is not counted
    assert [t.tags["group"] for t in r.timers] == ["db::select"]


def test_the_app_failing_is_a_500_and_the_exception_reaches_the_server(
    receiver: UdpReceiver,
) -> None:
    app = PynbaMiddleware(shop(), receiver.address)
    with uvicorn_serving(app) as port:
        status, _, _ = get(port, "/boom")  # uvicorn answers 500 because the error reached it
        r = receiver.request()
    assert status == 500
    assert (r.script_name, r.status, r.document_size) == ("/boom", 500, 0)


def test_lifespan_passes_through_and_sends_nothing(receiver: UdpReceiver) -> None:
    inner = shop()
    app = PynbaMiddleware(inner, receiver.address)
    with uvicorn_serving(app, lifespan="on"):
        pass
    assert inner.lifespan_seen == ["lifespan.startup", "lifespan.shutdown"]
    assert receiver.nothing()


def test_a_websocket_session_is_one_request(receiver: UdpReceiver) -> None:
    app = PynbaMiddleware(shop(), receiver.address)
    with uvicorn_serving(app) as port:
        with connect(f"ws://127.0.0.1:{port}/ws/chat") as ws:
            assert ws.recv(timeout=5) == "héllo"
            assert ws.recv(timeout=5) == b"1234"
        accepted = receiver.request()
        with pytest.raises(Exception, match="403"), connect(f"ws://127.0.0.1:{port}/ws/deny"):
            pass
        denied = receiver.request()
    assert (accepted.script_name, accepted.status, accepted.document_size) == ("/ws/chat", 101, 10)
    assert accepted.schema == "ws"
    assert (denied.script_name, denied.status) == ("/ws/deny", 403)


def test_concurrent_requests_keep_their_own_timers_and_tags(receiver: UdpReceiver) -> None:
    n = 40

    @monitor(receiver.address)
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        rid = scope["path"].strip("/")
        pynba.tags["rid"] = rid
        with pynba.timer(rid=rid):
            await asyncio.sleep(0.02)  # every request is in flight at once
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": rid.encode()})

    with uvicorn_serving(app) as port, ThreadPoolExecutor(max_workers=n) as pool:
        statuses = list(pool.map(lambda i: get(port, f"/{i}")[0], range(n)))
        got = receiver.packets(n)
    assert statuses == [200] * n
    requests = [decode(p) for p in got]
    assert sorted(int(str(r.tags["rid"])) for r in requests) == list(range(n))
    for r in requests:
        assert [t.tags for t in r.timers] == [{"rid": r.tags["rid"]}]
        assert r.document_size == len(str(r.tags["rid"]))


def test_nested_middlewares_send_one_packet(receiver: UdpReceiver) -> None:
    inner = PynbaMiddleware(shop(), receiver.address, tags={"inner": "1"})
    outer = PynbaMiddleware(inner, receiver.address, tags={"outer": "1"})
    with uvicorn_serving(outer) as port:
        get(port, "/n")
        r = receiver.request()
        assert receiver.nothing()
    assert r.tags == {"outer": "1", "inner": "1", "rid": "n"}


def test_disabled_is_a_pass_through(receiver: UdpReceiver) -> None:
    app = PynbaMiddleware(shop(), receiver.address, enabled=False)
    with uvicorn_serving(app) as port:
        assert get(port, "/off")[0] == 201
        assert receiver.nothing()
