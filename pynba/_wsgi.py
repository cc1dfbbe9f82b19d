"""The WSGI middleware: one Pinba request per HTTP request.

    from pynba import monitor

    @monitor(("127.0.0.1", 30002), tags={"app": "shop"})
    def app(environ, start_response):
        ...

The request starts when the server calls the app and ends when the server has consumed the
response and called its ``close()``: streamed bodies are timed and counted, and timers used while
the body is generated belong to the request.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeAlias

from pynba_exporter import Address, Transport, UdpTransport, config
from pynba_exporter.log import errors
from pynba_exporter.spans import RequestSpan, current_request, finish_and_send
from pynba_exporter.spans import hostname as _hostname

__all__ = ["PynbaMiddleware", "monitor"]

_ExcInfo: TypeAlias = "tuple[type[BaseException], BaseException, TracebackType | None]"
StartResponse: TypeAlias = Callable[..., Callable[[bytes], object]]
WSGIApp: TypeAlias = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
NameOption: TypeAlias = "str | Callable[[dict[str, Any]], str] | None"


def _status_code(status: object) -> int:
    try:
        return int(str(status)[:3])
    except ValueError:
        return 0


def _server_name(environ: Mapping[str, Any]) -> str:
    """The virtual host asked for (Host header), else the server's name; without the port."""
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or "unknown"
    if host.startswith("["):  # [v6addr]:port
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.partition(":")[0]


def _path(environ: Mapping[str, Any]) -> str:
    # PEP 3333 carries the path's bytes as latin-1 text; the app's routes are usually UTF-8.
    path = environ.get("PATH_INFO") or ""
    try:
        return str(path.encode("latin-1").decode("utf-8", "surrogateescape"))
    except (UnicodeError, AttributeError):
        return str(path)


class PynbaMiddleware:
    """Reports every request of ``app`` to Pinba.

    ``address``: the Pinba server(s), in any form :class:`pynba_exporter.UdpTransport` takes
    (``None``: ``$PINBA_SERVER``, else 127.0.0.1:30002); or give a ready ``transport``.
    ``prefix`` is put before ``PATH_INFO`` to make the script name. ``tags`` are request tags
    added to every request (a callable value is called per request). ``hostname``,
    ``server_name``, ``script_name`` and ``schema`` replace what is taken from the machine and
    the request: a string, or a callable taking the WSGI environ. ``timer_rusage`` (default
    ``$PINBA_TIMER_RUSAGE``, on) measures each timer's CPU; ``enabled`` (default
    ``$PINBA_ENABLED``, on) turns the whole thing into a pass-through. Other keyword arguments
    go to the transport (``max_packet_size``, ``packed``, ``resolve_interval``...).

    ``reporter`` is the transport: ``app.reporter.raise_on_fail = True`` turns the library's
    failures into exceptions (for debugging), ``app.reporter.stats()`` counts what was sent.
    """

    def __init__(
        self,
        app: WSGIApp,
        address: Address | None = None,
        *,
        prefix: str = "",
        tags: Mapping[str, Any] | None = None,
        hostname: NameOption = None,
        server_name: NameOption = None,
        script_name: NameOption = None,
        schema: NameOption = None,
        timer_rusage: bool | None = None,
        enabled: bool | None = None,
        transport: Transport | None = None,
        **transport_options: Any,
    ) -> None:
        self.app = app
        self.reporter: Transport = (
            transport if transport is not None else UdpTransport(address, **transport_options)
        )
        self.prefix = prefix
        self.tags: dict[str, Any] = dict(tags or {})
        self.hostname: NameOption = hostname
        self.server_name: NameOption = server_name
        self.script_name = script_name
        self.schema = schema
        self.timer_rusage: bool = config.value("timer_rusage", timer_rusage)
        self.enabled: bool = config.value("enabled", enabled)
        functools.update_wrapper(self, app, updated=())

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if not self.enabled:
            return self.app(environ, start_response)
        outer = current_request.get()
        if outer is not None and outer.serving and not outer.finished:
            # Mounted inside another monitored app: that one reports this request. Add our
            # request tags to it, never replace what it has.
            for name, value in self.tags.items():
                outer.tags.setdefault(name, value)
            return self.app(environ, start_response)
        try:
            request = self._open(environ)
        except Exception as exc:  # our bug: the app still runs, unmonitored
            self._failed("open", exc)
            return self.app(environ, start_response)
        token = current_request.set(request)

        def observing_start_response(status: str, headers: Any, *exc_info: Any) -> Any:
            request.status = _status_code(status)
            return start_response(status, headers, *exc_info)

        request.serving = True
        try:
            result = self.app(environ, observing_start_response)
        except BaseException:
            request.serving = False
            request.status = 500
            self._close(request, token, 0)
            raise
        request.serving = False
        return _Response(result, request, token, self)

    @staticmethod
    def _value(option: NameOption, environ: dict[str, Any]) -> str | None:
        if option is None:
            return None
        return str(option(environ)) if callable(option) else option

    def _open(self, environ: dict[str, Any]) -> RequestSpan:
        if self.hostname is None and self.server_name is None and self.script_name is None:
            # The common case, without the option lookups.
            host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or "unknown"
            path = environ.get("PATH_INFO") or ""
            return RequestSpan(
                _hostname(),
                host if ":" not in host else _server_name(environ),
                self.prefix + (path if path.isascii() else _path(environ)),
                schema=self._value(self.schema, environ) or environ.get("wsgi.url_scheme") or "",
                tags=dict(self.tags) if self.tags else None,
                timer_rusage=self.timer_rusage,
            )
        return RequestSpan(
            self._value(self.hostname, environ) or _hostname(),
            self._value(self.server_name, environ) or _server_name(environ),
            self._value(self.script_name, environ) or self.prefix + _path(environ),
            schema=self._value(self.schema, environ) or environ.get("wsgi.url_scheme") or "",
            tags=dict(self.tags) if self.tags else None,
            timer_rusage=self.timer_rusage,
        )

    def _close(self, request: RequestSpan, token: Any, size: int) -> None:
        """The request is over: measure, send, and leave the context as it was."""
        with contextlib.suppress(ValueError):  # closed in another context than opened in
            current_request.reset(token)
        self._report(request, size)

    def _report(self, request: RequestSpan, size: int) -> None:
        if request.document_size < 0:  # not set by the app: what was served
            request.document_size = size
        finish_and_send(request, self.reporter, "middleware")

    def _failed(self, stage: str, exc: Exception) -> None:
        errors.log(
            ("middleware", stage, type(exc).__name__),
            f"pynba: internal error ({stage}), the request is not reported: {exc!r}",
            level=logging.ERROR,
            exc_info=exc,
        )


class _Response:
    """The app's response iterable, counted and closed: the request ends in ``close()``."""

    __slots__ = ("_closed", "_iter", "_middleware", "_request", "_result", "_size", "_token")

    def __init__(
        self, result: Iterable[bytes], request: RequestSpan, token: Any, mw: PynbaMiddleware
    ) -> None:
        self._result = result
        self._iter: Iterator[bytes] | None = None
        self._request = request
        self._token = token
        self._middleware = mw
        self._size = 0
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        it = self._iter
        if it is None:
            it = self._iter = iter(self._result)
        try:
            chunk = next(it)
        except StopIteration:
            raise
        except BaseException:
            self._request.status = 500  # the body failed: so did the request
            raise
        with contextlib.suppress(TypeError):  # not bytes: the server will complain, not us
            self._size += len(chunk)
        return chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._middleware._close(self._request, self._token, self._size)

    def __del__(self) -> None:
        # A server that never calls close() (against PEP 3333) must not lose the request.
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):  # raise_on_fail cannot reach anyone here
                self._middleware._report(self._request, self._size)


def monitor(address: Address | None = None, **options: Any) -> Callable[[WSGIApp], PynbaMiddleware]:
    """Decorate a WSGI app: ``@monitor(("127.0.0.1", 30002), tags={...})``. The options are
    those of :class:`PynbaMiddleware`; the decorated app has ``reporter``."""

    def decorate(app: WSGIApp) -> PynbaMiddleware:
        return PynbaMiddleware(app, address, **options)

    return decorate
