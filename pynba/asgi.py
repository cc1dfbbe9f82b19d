"""The ASGI middleware: one Pinba request per HTTP request or websocket session.

    from pynba.asgi import PynbaMiddleware

    app = PynbaMiddleware(app, "127.0.0.1:30002", tags={"app": "shop"})

or as a decorator, like the WSGI one::

    from pynba.asgi import monitor

    @monitor("127.0.0.1:30002")
    async def app(scope, receive, send):
        ...

It sends the same packet fields as the WSGI middleware: the status from
``http.response.start``, the time until the last body message (``more_body`` false), the body
bytes sent, the machine's host name, the virtual host (``Host`` header), the path as the script
name, the scheme as the schema. Each request runs in its own task under every ASGI server, so
``pynba.timer()`` and ``pynba.tags`` inside the app belong to the request of that task.

Scopes: ``lifespan`` (and any other type) passes through untouched and sends nothing. A
``websocket`` scope is one request lasting the whole session: status 101 once accepted (403 if
closed before), bytes are those of the messages sent to the client.

Exceptions from the app (``CancelledError`` included) propagate unchanged; the request is still
reported, with status 500 if no response had started.

CPU times are those of the event loop's thread while the request ran: with many requests in
flight on one loop they include each other's (the OS cannot tell tasks apart); time, bytes,
status and timers are the request's own.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Final, TypeAlias

from pynba._serving import (
    NO_ROUTE_STATUSES,
    NameOption,
    Serving,
    host_without_port,
    option_value,
    unmatched,
)
from pynba_exporter import Address, Transport, naming
from pynba_exporter.log import errors
from pynba_exporter.spans import RequestSpan

__all__ = ["UNMATCHED", "ASGIApp", "PynbaMiddleware", "RouteName", "Scope", "monitor"]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
#: Names a request after the app ran, from the scope as it was when the request came in and
#: the scope as the app left it (routers add to it); None means that no route matched.
RouteName: TypeAlias = Callable[[Scope, Scope], "str | None"]

#: The script name of requests that matched no route (see ``route_name``).
UNMATCHED: Final = naming.UNMATCHED


def _header(scope: Mapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _server_name(scope: Mapping[str, Any]) -> str:
    """The virtual host asked for (Host header), else the server's address; without the port."""
    host = _header(scope, b"host")
    if not host:
        server = scope.get("server")
        host = str(server[0]) if server else "unknown"
        return host or "unknown"
    return host_without_port(host)


def _size(message: Mapping[str, Any], key: str) -> int:
    data = message.get(key)
    if data is None:
        return 0
    if isinstance(data, str):
        return len(data.encode("utf-8", "surrogatepass"))
    try:
        return len(data)
    except TypeError:
        return 0


class PynbaMiddleware:
    """Reports every HTTP request and websocket session of the ASGI ``app`` to Pinba.

    The options are those of :class:`pynba.PynbaMiddleware` (``address``, ``prefix``, ``tags``,
    ``hostname``, ``server_name``, ``script_name``, ``schema``, ``timer_rusage``, ``enabled``,
    ``transport`` and the transport's keywords), a callable option taking the ASGI scope instead
    of the WSGI environ. ``route_name`` names requests by route: called once the app is done,
    with the scope as it was when the request came in and the scope the app was given (which
    routers add to); what it returns becomes the script name
    (``prefix`` before it) unless the app set ``pynba.scriptname`` itself, and ``None`` (no route
    matched) gives the one name ``unmatched_name`` (``"<unmatched>"``). The framework
    integrations (:mod:`pynba.starlette`) pass it.
    """

    def __init__(
        self,
        app: ASGIApp,
        address: Address | None = None,
        *,
        prefix: str = "",
        tags: Mapping[str, Any] | None = None,
        hostname: NameOption = None,
        server_name: NameOption = None,
        script_name: NameOption = None,
        schema: NameOption = None,
        route_name: RouteName | None = None,
        unmatched_name: str = UNMATCHED,
        timer_rusage: bool | None = None,
        enabled: bool | None = None,
        transport: Transport | None = None,
        **transport_options: Any,
    ) -> None:
        self.app = app
        self.serving = Serving(
            "ASGI middleware",
            address,
            transport=transport,
            timer_rusage=timer_rusage,
            enabled=enabled,
            prefix=prefix,
            tags=tags,
            **transport_options,
        )
        self.reporter = self.serving.transport
        self.timer_rusage = self.serving.timer_rusage
        self.enabled = self.serving.enabled
        self.prefix = prefix
        self.tags = self.serving.tags
        self.hostname: NameOption = hostname
        self.server_name: NameOption = server_name
        self.script_name: NameOption = script_name
        self.schema: NameOption = schema
        self.route_name = route_name
        self.unmatched_name = unmatched_name
        functools.update_wrapper(self, app, updated=())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if not self.enabled or kind not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan and the like: nothing to report
            return
        serving = self.serving
        if serving.outer() is not None:
            await self.app(scope, receive, send)  # mounted in a monitored app: it reports
            return
        try:
            request, token = serving.open(
                option_value(self.server_name, scope) or _server_name(scope),
                option_value(self.script_name, scope) or str(scope.get("path") or ""),
                option_value(self.schema, scope) or str(scope.get("scheme") or ""),
                option_value(self.hostname, scope),
            )
        except Exception as exc:  # our bug: the app still runs, unmonitored
            serving.failed("open", exc)
            await self.app(scope, receive, send)
            return
        entry = dict(scope)  # routers change the scope in place; route_name wants it as it came
        opened_name = request.script_name
        exchange = _Exchange(request, kind == "websocket")
        try:
            await self.app(scope, receive, exchange.wrap(send))
        except BaseException:
            if request.status == 0 or not exchange.started:
                request.status = 500
            raise
        finally:
            self._name(request, entry, scope, opened_name)
            serving.close(request, token, exchange.size)

    def _name(self, request: RequestSpan, entry: Scope, scope: Scope, opened: str) -> None:
        """The route's name, unless the app named the request itself."""
        if self.route_name is None:
            if request.status in NO_ROUTE_STATUSES and self.script_name is None:
                unmatched(request, scope, opened)  # a bare app's raw path that matched nothing
            return
        if request.script_name != opened:
            return
        try:
            route = self.route_name(entry, scope)
        except Exception as exc:
            self.serving.failed("route", exc)
            return
        request.script_name = self.unmatched_name if route is None else route


class _Exchange:
    """What the app sent: status, body bytes, and when the response ended."""

    __slots__ = ("ended", "request", "size", "started", "websocket")

    def __init__(self, request: RequestSpan, websocket: bool) -> None:
        self.request = request
        self.websocket = websocket
        self.size = 0
        self.started = False
        self.ended: float | None = None

    def wrap(self, send: Send) -> Send:
        async def observing_send(message: Message) -> None:
            try:
                self.observe(message)
            except Exception as exc:  # a malformed message is the server's to reject, not ours
                errors.log(("asgi", "message"), f"pynba: ASGI message not understood: {exc!r}")
            await send(message)

        return observing_send

    def observe(self, message: Message) -> None:
        kind = message.get("type")
        request = self.request
        if kind == "http.response.start":
            self.started = True
            request.status = int(message.get("status") or 0)
        elif kind == "http.response.body":
            self.size += _size(message, "body")
            if not message.get("more_body", False) and self.ended is None:
                # The response is complete: so is the request (its time, CPU, timers), even if
                # the app goes on (background tasks); timers after this are not its own.
                self.ended = time.perf_counter()
                request.finish(self.ended)
        elif kind == "websocket.accept":
            self.started = True
            request.status = 101
        elif kind == "websocket.send":
            self.size += _size(message, "bytes") + _size(message, "text")
        elif kind == "websocket.close":
            if not self.started:
                self.started = True
                request.status = 403  # closed before accepting: the server answers 403
        elif kind == "websocket.http.response.start":  # denial response extension
            self.started = True
            request.status = int(message.get("status") or 0)
        elif kind == "websocket.http.response.body":
            self.size += _size(message, "body")


def monitor(address: Address | None = None, **options: Any) -> Callable[[ASGIApp], PynbaMiddleware]:
    """Decorate an ASGI app: ``@monitor("127.0.0.1:30002", tags={...})``; the options are those
    of :class:`PynbaMiddleware`."""

    def decorate(app: ASGIApp) -> PynbaMiddleware:
        return PynbaMiddleware(app, address, **options)

    return decorate
