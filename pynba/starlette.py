"""Starlette and FastAPI: every request reported to Pinba, named after its route.

    from fastapi import FastAPI            # or: from starlette.applications import Starlette
    from pynba.starlette import instrument

    app = FastAPI()
    instrument(app, "127.0.0.1:30002")

``GET /product/42`` is reported as ``/product/{pid}`` (the route's path, mounts included),
whatever the id; a URL that matches no route as ``<unmatched>``; a route that matched but not
its method (405) under the route's path. ``pynba.scriptname = ...`` in a handler still wins.
Other options are those of :class:`pynba.asgi.PynbaMiddleware`.

This module imports Starlette only when :func:`instrument` or :func:`route_name` runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pynba.asgi import PynbaMiddleware, RouteName, Scope
from pynba_exporter import Address

__all__ = ["instrument", "route_name"]


def _match(routes: Iterable[Any], scope: Scope, prefix: str) -> str | None:
    from starlette.routing import Match  # noqa: PLC0415 - Starlette only when used

    partial: str | None = None
    for route in routes:
        match, child = route.matches(scope)
        if match == Match.NONE:
            continue
        path = str(getattr(route, "path_format", None) or getattr(route, "path", "") or "")
        inner_routes = getattr(route, "routes", None)
        if inner_routes:  # Mount (or Host): the route inside it names the request
            inner = _match(inner_routes, {**scope, **child}, prefix + path)
            if inner is not None and match == Match.FULL:
                return inner
            name = inner
        else:
            name = prefix + path
        if match == Match.FULL:
            return name
        if partial is None:
            partial = name
    return partial


def route_name(app: Any) -> RouteName:
    """A ``route_name`` for :class:`pynba.asgi.PynbaMiddleware`: the path of the route of
    ``app`` (a Starlette or FastAPI app, or a router) that served a request; None if none."""
    router = getattr(app, "router", app)

    def name(entry: Scope, scope: Scope) -> str | None:
        route = scope.get("route")
        path = getattr(route, "path_format", None) or getattr(route, "path", None)
        if isinstance(path, str):
            # FastAPI leaves the route that served the request in the scope; mounts on the way
            # added their prefixes to root_path.
            outer = str(entry.get("root_path") or "")
            inner = str(scope.get("root_path") or "")
            mounts = inner[len(outer) :] if inner.startswith(outer) else ""
            return mounts + path
        if scope.get("type") not in ("http", "websocket"):
            return None
        # Starlette leaves only the endpoint: match the request again against the routes.
        return _match(router.routes, entry, "")

    return name


def instrument(app: Any, address: Address | None = None, **options: Any) -> Any:
    """Report every request of the Starlette or FastAPI ``app`` to Pinba, named by route.

    Adds :class:`pynba.asgi.PynbaMiddleware` as a middleware of the app: call it after adding
    the app's other middlewares (the last added is the outermost, which then times them too),
    before the app starts serving. Returns ``app``.
    """
    options.setdefault("route_name", route_name(app))
    app.add_middleware(PynbaMiddleware, address=address, **options)
    return app
