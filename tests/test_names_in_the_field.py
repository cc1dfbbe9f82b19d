"""Script names as real servers, frameworks and instrumentations give them (issue 19): no
scanner, auth gate or framework can poison the per-process name cap, routes are named by their
template, database timers by their operation.

Every test serves a real app on 127.0.0.1 and reads the real packets it sends.
"""

from __future__ import annotations

import asyncio
import http.client
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import UdpReceiver

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from werkzeug.serving import make_server

from pynba import PynbaMiddleware
from pynba_exporter import PinbaRequest
from pynba_exporter.naming import OVERFLOW, UNMATCHED, script_names
from pynba_exporter.otel import PinbaSpanProcessor

FLOOD = 1500


def get(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@contextmanager
def wsgi_serving(app: Callable[..., Any]) -> Iterator[int]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=20)


def packets(receiver: UdpReceiver, count: int) -> list[PinbaRequest]:
    """Exactly ``count`` packets: that many arrive, and then no other."""
    got = [receiver.request(timeout=30) for _ in range(count)]
    assert receiver.nothing(0.3), "more packets than requests"
    return got


def shop(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A bare WSGI app (no router): /checkout, and 404 for anything else."""
    if environ["PATH_INFO"] == "/checkout":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"paid"]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such page"]


# --------------------------------------------------------------------------------------------
# The name cap cannot be poisoned


def test_a_404_flood_to_a_bare_wsgi_app_leaves_checkout_its_name(receiver: UdpReceiver) -> None:
    app = PynbaMiddleware(shop, receiver.address)
    with wsgi_serving(app) as port:
        for i in range(FLOOD):
            assert get(port, f"/wp-admin/{i}.php") == 404
        assert get(port, "/checkout") == 200
        got = packets(receiver, FLOOD + 1)
    # A threaded server sends each packet after its response, so the last two may cross: count.
    counted = Counter((r.script_name, r.status) for r in got)
    assert counted == {(UNMATCHED, 404): FLOOD, ("/checkout", 200): 1}  # one name for the flood
    assert app.transport.stats().renamed == {}  # and the cap never had to refuse a name


def test_a_404_flood_to_a_bare_asgi_app_goes_under_one_name(receiver: UdpReceiver) -> None:
    from asgi_server import uvicorn_serving  # noqa: PLC0415

    from pynba.asgi import PynbaMiddleware as AsgiMiddleware  # noqa: PLC0415

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        found = scope["path"] == "/checkout"
        await send({"type": "http.response.start", "status": 200 if found else 404})
        await send({"type": "http.response.body", "body": b"ok" if found else b"no"})

    with uvicorn_serving(AsgiMiddleware(app, receiver.address), lifespan="off") as port:
        for i in range(200):
            assert get(port, f"/scan/{i}") == 404
        assert get(port, "/checkout") == 200
        got = packets(receiver, 201)
    assert Counter(r.script_name for r in got) == {UNMATCHED: 200, "/checkout": 1}


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.expect_pynba_errors  # the cap says once that it refuses names
def test_a_flood_that_filled_the_cap_ages_out_and_checkout_gets_its_name(
    receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app that answers every URL with 200 (a catch-all) under a flood of distinct URLs:
    the flood fills the cap, and /checkout, refused meanwhile, gets its own name once the
    flood's names have been unseen for a generation, while the flood goes on."""
    clock = _Clock()
    monkeypatch.setenv("PINBA_MAX_SCRIPT_NAMES", "50")
    monkeypatch.setattr(script_names, "_clock", clock)
    script_names.reset()

    def catch_all(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    app = PynbaMiddleware(catch_all, receiver.address)
    rounds: list[Counter[str]] = []
    with wsgi_serving(app) as port:
        for scan in range(100):  # the flood fills the cap
            get(port, f"/scan/{scan}")
        first = Counter(r.script_name for r in packets(receiver, 100))
        scan = 100
        for _ in range(5):  # five rounds, 200 s apart (generations of 300 s): the flood goes on
            for _ in range(10):
                for _ in range(10):
                    get(port, f"/scan/{scan}")
                    scan += 1
                get(port, "/checkout")
            rounds.append(Counter(r.script_name for r in packets(receiver, 110)))
            clock.now += 200.0
    # (A packet leaves when the server closes the response: counted per round, not ordered.)
    assert first == {**{f"/scan/{i}": 1 for i in range(50)}, OVERFLOW: 50}
    # Generations turn on the first new name 300 s or more after the last turn: at 400 s the
    # flood's first names became the previous generation; unseen since, they left at the next
    # turn (800 s), and /checkout, refused until then, was admitted: the cap is not poisoned,
    # and the flood's later names, one-offs, never got in.
    assert rounds == [Counter({OVERFLOW: 110})] * 4 + [Counter({OVERFLOW: 100, "/checkout": 10})]
    assert app.transport.stats().renamed == {"script_name": 590}


def test_a_flask_auth_gate_under_the_otel_bridge_names_unknown_urls_unmatched(
    receiver: UdpReceiver,
) -> None:
    """A Flask app whose before_request answers 401 before routing, under the real Flask
    instrumentation as zero-code applies it (Flask instrumented before the app is made, so
    that its hook runs before the app's): the span has no http.route for unknown URLs, the
    bridge names them <unmatched>; routes keep their rule, refused or not."""
    import flask  # noqa: PLC0415
    from flask import request  # noqa: PLC0415
    from opentelemetry.instrumentation.flask import FlaskInstrumentor  # noqa: PLC0415

    provider = TracerProvider()
    processor = PinbaSpanProcessor(receiver.address)
    provider.add_span_processor(processor)
    instrumentor: Any = FlaskInstrumentor()  # BaseInstrumentor: untyped
    instrumentor.instrument(tracer_provider=provider)
    app = flask.Flask("gated")

    @app.before_request
    def gate() -> tuple[str, int] | None:
        if request.headers.get("Authorization") != "Bearer ok":
            return "who are you?", 401
        return None

    @app.route("/checkout")
    def checkout() -> str:
        return "paid"

    @app.route("/order/<int:oid>")
    def order(oid: int) -> str:
        return f"order {oid}"

    auth = {"Authorization": "Bearer ok"}
    try:
        with wsgi_serving(app) as port:
            for i in range(FLOOD):
                assert get(port, f"/admin/{i}/config.php") == 401
            assert get(port, "/order/7") == 401  # a route, refused
            assert get(port, "/checkout", auth) == 200
            assert get(port, "/order/8", auth) == 200
            assert get(port, "/nope", auth) == 404
            got = packets(receiver, FLOOD + 4)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    # (A packet leaves when the span ends, after the response: counted, not ordered.)
    assert Counter((r.script_name, r.status) for r in got) == {
        (UNMATCHED, 401): FLOOD,  # the flood under one name
        ("/order/<int:oid>", 401): 1,
        ("/checkout", 200): 1,
        ("/order/<int:oid>", 200): 1,
        (UNMATCHED, 404): 1,
    }
    assert processor.transport.stats().renamed == {}


def test_the_classic_flask_integration_keeps_a_routes_own_404(receiver: UdpReceiver) -> None:
    """A matched rule answering 404 (an order that does not exist) is that rule's request,
    not <unmatched>: the integration said it routed the request."""
    from flask import Flask, abort  # noqa: PLC0415

    from pynba.flask import instrument  # noqa: PLC0415

    app = Flask("orders")

    @app.route("/checkout")
    def checkout() -> str:
        abort(404)

    instrument(app, receiver.address)
    with wsgi_serving(app) as port:
        assert get(port, "/checkout") == 404
        assert get(port, "/elsewhere") == 404
        got = packets(receiver, 2)
    # Each packet leaves after its response, so the two may arrive in either order.
    assert sorted((r.script_name, r.status) for r in got) == [("/checkout", 404), (UNMATCHED, 404)]


def test_a_django_auth_gate_under_zero_code_names_routes_and_unmatched(
    receiver: UdpReceiver,
) -> None:
    """A Django middleware answering 401 before any URL is resolved, under
    opentelemetry-instrument: the span never gets http.route, but its name keeps the route
    Django's instrumentation resolved for it ('GET product/<int:pid>') or only the method
    ('GET') for a URL that resolves to nothing."""
    pytest.importorskip("django")
    from test_otel_field import zero_code, zero_code_env  # noqa: PLC0415

    env = zero_code_env(receiver, DJANGO_SETTINGS_MODULE="django_app", AUTH_GATE="1")
    auth = {"Authorization": "Bearer ok"}
    with zero_code("django_app.py", env) as app:
        port = int(app.url.rsplit(":", 1)[1])
        statuses = [get(port, f"/wp-admin/{i}.php") for i in range(50)]
        statuses += [get(port, "/product/7"), get(port, "/"), get(port, "/product/8", auth)]
        got = packets(receiver, 53)
    assert statuses == [401] * 52 + [200]
    assert Counter((r.script_name, r.status) for r in got) == {
        (UNMATCHED, 401): 50,
        ("/product/<int:pid>", 401): 1,
        ("/", 401): 1,  # the root URL: its empty route is recorded nowhere
        ("/product/<int:pid>", 200): 1,
    }


# --------------------------------------------------------------------------------------------
# Tornado: the route template from the span name


@contextmanager
def tornado_serving(provider: TracerProvider) -> Iterator[int]:
    import tornado.web  # noqa: PLC0415
    from opentelemetry.instrumentation.tornado import TornadoInstrumentor  # noqa: PLC0415

    class Item(tornado.web.RequestHandler):
        def get(self, item_id: str) -> None:
            self.write(f"item {item_id}")

    class Checkout(tornado.web.RequestHandler):
        def get(self) -> None:
            self.write("paid")

    instrumentor: Any = TornadoInstrumentor()  # type: ignore[no-untyped-call]
    instrumentor.instrument(tracer_provider=provider)
    started = threading.Event()
    state: dict[str, Any] = {}

    def run() -> None:
        async def main() -> None:
            app = tornado.web.Application([(r"/item/(\d+)", Item), (r"/checkout", Checkout)])
            server = app.listen(0, address="127.0.0.1")
            state["port"] = next(iter(server._sockets.values())).getsockname()[1]
            state["stop"] = stop = asyncio.Event()
            state["loop"] = asyncio.get_running_loop()
            started.set()
            await stop.wait()
            server.stop()
            await server.close_all_connections()

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert started.wait(20), "tornado did not start"
        yield int(state["port"])
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(timeout=20)
        instrumentor.uninstrument()


def test_tornado_routes_are_named_by_their_template(
    receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tornado")
    # What zero-code asks of the HTTP server instrumentations (read when instrumenting).
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "content-length"
    )
    provider = TracerProvider()
    provider.add_span_processor(PinbaSpanProcessor(receiver.address))
    try:
        with tornado_serving(provider) as port:
            statuses = [get(port, f"/item/{i}") for i in range(20)]
            statuses += [get(port, "/checkout"), get(port, "/nope/1"), get(port, "/nope/2")]
            got = packets(receiver, 23)
    finally:
        provider.shutdown()
    assert statuses == [200] * 21 + [404, 404]
    assert Counter((r.script_name, r.status) for r in got) == {
        ("/item/{item_id}", 200): 20,
        ("/checkout", 200): 1,
        (UNMATCHED, 404): 2,
    }
    # The body's size from the captured Content-Length.
    assert {r.document_size for r in got if r.script_name == "/checkout"} == {len(b"paid")}


# --------------------------------------------------------------------------------------------
# SQLAlchemy: timers by the operation's first word


def test_sqlalchemy_timers_are_grouped_by_operation(receiver: UdpReceiver, tmp_path: Path) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor  # noqa: PLC0415

    path = tmp_path / "shop.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("create table item (id integer primary key, name text)")
        db.commit()
    provider = TracerProvider()
    provider.add_span_processor(PinbaSpanProcessor(receiver.address))
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    instrumentor: Any = SQLAlchemyInstrumentor()  # BaseInstrumentor: untyped
    instrumentor.instrument(engine=engine, tracer_provider=provider)
    tracer = provider.get_tracer("jobs")
    try:
        job = {"pinba.script_name": "sync"}
        with tracer.start_as_current_span("sync", attributes=job), engine.begin() as conn:
            conn.execute(sqlalchemy.text("insert into item (name) values ('a')"))
            for _ in range(3):
                conn.execute(sqlalchemy.text("select name from item"))
            conn.execute(sqlalchemy.text("Select count(*) from item"))
        request = packets(receiver, 1)[0]
    finally:
        instrumentor.uninstrument()
        engine.dispose()
        provider.shutdown()
    groups: Counter[tuple[str, str | None]] = Counter()
    for timer in request.timers:
        database = timer.tags.get("database")
        groups[(str(timer.tags["group"]), None if database is None else str(database))] += (
            timer.hit_count
        )
    database = str(path)  # SQLAlchemy's db.name: the database as its URL names it
    assert groups == {
        ("db::CONNECT", database): 1,
        ("db::INSERT", database): 1,
        ("db::SELECT", database): 4,
    }
