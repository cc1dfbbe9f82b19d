"""Django, Flask and FastAPI apps with their integration, driven over HTTP: one script name per
route plus one for unmatched URLs, whatever the ids in the URLs."""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import django
import fastapi
import flask
import pytest
from asgi_server import uvicorn_serving
from conftest import UdpReceiver
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from pynba import PynbaMiddleware, pynba
from pynba.flask import instrument as instrument_flask
from pynba.starlette import instrument as instrument_starlette
from pynba_exporter import PinbaRequest, decode

IDS = 100
UNMATCHED = 10


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def wsgi_serving(app: Callable[..., Any]) -> Iterator[int]:
    server = make_server("127.0.0.1", 0, app, _ThreadingServer, _Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(timeout=20)
        server.server_close()


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def drive(
    port: int, receiver: UdpReceiver, routes: list[str]
) -> tuple[list[int], list[PinbaRequest]]:
    """Every route with IDS distinct ids, then UNMATCHED URLs; the packets that came of them."""
    paths = [route.format(i) for route in routes for i in range(IDS)]
    paths += [f"/no/such/page/{i}" for i in range(UNMATCHED)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda p: get(port, p), paths))
    return statuses, [decode(p) for p in receiver.packets(len(paths))]


# --------------------------------------------------------------------------------------------
# Flask


def test_flask_names_requests_by_url_rule(receiver: UdpReceiver) -> None:
    app = flask.Flask("shop")
    shop = flask.Blueprint("shop", "shop", url_prefix="/shop")

    @app.route("/product/<int:pid>")
    def product(pid: int) -> str:
        with pynba.timer(group="db::select"):
            return f"product {pid}"

    @shop.route("/item/<slug>")
    def item(slug: str) -> str:
        return slug

    @app.route("/named/<int:n>")
    def named(n: int) -> str:
        pynba.scriptname = "chosen-by-the-view"  # the app's own name wins
        return "ok"

    app.register_blueprint(shop)
    instrument_flask(app, receiver.address)
    with wsgi_serving(app) as port:
        statuses, got = drive(port, receiver, ["/product/{}", "/shop/item/s{}", "/named/{}"])
    assert Counter(statuses) == {200: 3 * IDS, 404: UNMATCHED}
    assert Counter(r.script_name for r in got) == {
        "/product/<int:pid>": IDS,
        "/shop/item/<slug>": IDS,
        "chosen-by-the-view": IDS,
        "<unmatched>": UNMATCHED,
    }
    products = [r for r in got if r.script_name == "/product/<int:pid>"]
    assert all(r.status == 200 and len(r.timers) == 1 for r in products)
    assert all(r.status == 404 for r in got if r.script_name == "<unmatched>")


# --------------------------------------------------------------------------------------------
# FastAPI and Starlette


def test_fastapi_names_requests_by_route_path(receiver: UdpReceiver) -> None:
    app = fastapi.FastAPI()
    items = fastapi.APIRouter(prefix="/shop")

    @app.get("/product/{pid}")
    async def product(pid: int) -> dict[str, int]:
        with pynba.timer(group="db::select"):
            return {"pid": pid}

    @items.get("/item/{slug}")
    def item(slug: str) -> dict[str, str]:  # a sync endpoint: FastAPI runs it in a thread
        return {"slug": slug}

    app.include_router(items)
    instrument_starlette(app, receiver.address)
    with uvicorn_serving(app) as port:
        statuses, got = drive(port, receiver, ["/product/{}", "/shop/item/s{}"])
    assert Counter(statuses) == {200: 2 * IDS, 404: UNMATCHED}
    assert Counter(r.script_name for r in got) == {
        "/product/{pid}": IDS,
        "/shop/item/{slug}": IDS,
        "<unmatched>": UNMATCHED,
    }
    products = [r for r in got if r.script_name == "/product/{pid}"]
    assert all(r.status == 200 and [t.tags for t in r.timers] == [{"group": "db::select"}]
               for r in products)  # fmt: skip
    assert all(r.document_size > 0 for r in got)


def test_starlette_mounts_and_methods(receiver: UdpReceiver) -> None:
    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(request.path_params))

    app = Starlette(
        routes=[
            Route("/product/{pid:int}", page),
            Mount("/api", routes=[Route("/v1/user/{uid}", page, methods=["GET"])]),
        ]
    )
    instrument_starlette(app, receiver.address)
    with uvicorn_serving(app) as port:
        statuses, got = drive(port, receiver, ["/product/{}", "/api/v1/user/u{}"])
        assert get(port, "/api/v1/user/1?x") == 200
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/api/v1/user/7")
        assert conn.getresponse().status == 405
        conn.close()
        extra = [receiver.request(), receiver.request()]
    assert Counter(statuses) == {200: 2 * IDS, 404: UNMATCHED}
    assert Counter(r.script_name for r in got + extra) == {
        "/product/{pid}": IDS,
        "/api/v1/user/{uid}": IDS + 2,  # the 405 is named by the route it missed
        "<unmatched>": UNMATCHED,
    }


# --------------------------------------------------------------------------------------------
# Django


def _django(receiver: UdpReceiver) -> None:
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF="django_urls",
            MIDDLEWARE=["pynba.django.PynbaMiddleware"],
            INSTALLED_APPS=[],
            SECRET_KEY="test",
            LOGGING_CONFIG=None,
        )
        django.setup()
    settings.PYNBA = {"address": receiver.address, "tags": {"app": "django"}}


def test_django_wsgi_names_requests_by_route(receiver: UdpReceiver) -> None:
    _django(receiver)
    app = WSGIHandler()
    with wsgi_serving(app) as port:
        statuses, got = drive(port, receiver, ["/product/{}", "/shop/item/s{}", "/re/{}"])
    assert Counter(statuses) == {200: 3 * IDS, 404: UNMATCHED}
    assert Counter(r.script_name for r in got) == {
        "/product/<int:pid>": IDS,
        "/shop/item/<slug:slug>": IDS,
        "/re/(?P<n>[0-9]+)$": IDS,
        "<unmatched>": UNMATCHED,
    }
    products = [r for r in got if r.script_name == "/product/<int:pid>"]
    assert all(r.tags == {"app": "django"} and len(r.timers) == 1 for r in products)
    assert all(r.document_size == len(f"product {r.timers[0].tags['pid']!s}") for r in products)


@pytest.mark.expect_pynba_errors
def test_django_with_a_bad_environment_starts_and_serves_unmeasured(
    receiver: UdpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PINBA_ENABLED=maybe is logged once, naming the variable, and Django serves unmeasured,
    as every other entry point does (it used to stop the app at start)."""
    _django(receiver)
    monkeypatch.setenv("PINBA_ENABLED", "maybe")
    app = WSGIHandler()
    with wsgi_serving(app) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/product/1")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"product 1")
        conn.close()
    assert receiver.nothing()


def test_django_asgi_names_requests_by_route(receiver: UdpReceiver) -> None:
    _django(receiver)
    app = ASGIHandler()
    with uvicorn_serving(app, lifespan="off") as port:
        statuses, got = drive(port, receiver, ["/product/{}", "/async/{}"])
    assert Counter(statuses) == {200: 2 * IDS, 404: UNMATCHED}
    assert Counter(r.script_name for r in got) == {
        "/product/<int:pid>": IDS,
        "/async/<int:n>": IDS,
        "<unmatched>": UNMATCHED,
    }
    asyncs = [r for r in got if r.script_name == "/async/<int:n>"]
    assert all([t.tags["group"] for t in r.timers] == ["async"] for r in asyncs)


def test_django_behind_the_wsgi_middleware_only_names_its_requests(receiver: UdpReceiver) -> None:
    # The WSGI app wrapped too (for streamed bodies): one packet per request, the outer
    # middleware's, named by the Django middleware.
    _django(receiver)
    app = PynbaMiddleware(WSGIHandler(), receiver.address, tags={"outer": "1"})
    with wsgi_serving(app) as port:
        statuses, got = drive(port, receiver, ["/product/{}"])
        assert receiver.nothing()
    assert Counter(statuses) == {200: IDS, 404: UNMATCHED}
    assert Counter(r.script_name for r in got) == {"/product/<int:pid>": IDS, "<unmatched>": 10}
    assert all(r.tags == {"outer": "1"} for r in got)
