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

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import Token
from typing import Any, TypeAlias

from pynba._compat.options import ReporterOption, legacy_options
from pynba._serving import (
    NO_ROUTE_STATUSES,
    NameOption,
    Serving,
    host_without_port,
    option_value,
    unmatched,
)
from pynba_exporter import Address, Transport
from pynba_exporter.spans import RequestSpan, current_request, opened_request

__all__ = ["PynbaMiddleware", "monitor"]

StartResponse: TypeAlias = Callable[..., Callable[[bytes], object]]
WSGIApp: TypeAlias = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
_Token: TypeAlias = "Token[RequestSpan | None]"
_opened = opened_request
_finders = current_request.finders


def _server_name(environ: Mapping[str, Any]) -> str:
    """The virtual host asked for (Host header), else the server's name; without the port."""
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or "unknown"
    return host if ":" not in host else host_without_port(str(host))


def _path(environ: Mapping[str, Any]) -> str:
    path = environ.get("PATH_INFO") or ""
    if type(path) is str and path.isascii():
        return path
    # PEP 3333 carries the path's bytes as latin-1 text; the app's routes are usually UTF-8.
    # (Some servers hand bytes, against the PEP.)
    try:
        raw = path if isinstance(path, bytes) else str(path).encode("latin-1")
        return raw.decode("utf-8", "surrogateescape")
    except UnicodeError:
        return str(path)


class PynbaMiddleware:
    """Reports every request of ``app`` to Pinba.

    ``address``: the Pinba server(s), in any form :class:`pynba_exporter.UdpTransport` takes
    (``None``: ``$PINBA_SERVER``, else 127.0.0.1:30002); or give a ready ``transport``.
    ``prefix`` is put before the script name when the request is sent (``PATH_INFO``, or what
    the app set in ``pynba.scriptname``), as in the originals. ``tags`` are request tags
    added to every request (a callable value is called per request). ``hostname``,
    ``server_name``, ``script_name`` and ``schema`` replace what is taken from the machine and
    the request: a string, or a callable taking the WSGI environ. ``timer_rusage`` (default
    ``$PINBA_TIMER_RUSAGE``, on) measures each timer's CPU; ``enabled`` (default
    ``$PINBA_ENABLED``, on) turns the whole thing into a pass-through. The transport's keyword
    arguments (``max_packet_size``, ``packed``, ``resolve_interval``...) go to it.

    The predecessors' arguments work as they did (see docs/migration.md): ``reporter`` (0.5.5's
    third argument: a transport, a :class:`pynba.reporter.Reporter`, or a callable taking the
    original reporter's arguments), ``ctx_factory`` (ignored, said once) and unknown keywords
    (kept in ``config``, ignored).

    ``reporter`` is the transport unless one was given: ``app.reporter.raise_on_fail = True``
    turns the library's failures into exceptions (for debugging), ``app.reporter.stats()``
    counts what was sent.
    """

    def __init__(
        self,
        app: WSGIApp,
        address: Address | None = None,
        reporter: ReporterOption | None = None,
        ctx_factory: object = None,
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
        **config: Any,
    ) -> None:
        self.app = app
        self.address = address
        legacy = legacy_options("PynbaMiddleware", reporter, ctx_factory, config)
        self.serving = Serving(
            "middleware",
            address,
            transport=transport if transport is not None else legacy.transport,
            timer_rusage=timer_rusage,
            enabled=enabled,
            prefix=prefix,
            tags=tags,
            **legacy.transport_options,
        )
        self.transport = self.serving.transport
        self.reporter: Any = reporter if reporter is not None else self.transport
        #: The keyword arguments as the originals kept them (``prefix``, ``tags`` and others).
        self.config: dict[str, Any] = {"prefix": prefix, "tags": self.serving.tags, **config}
        self.hostname = hostname
        self.server_name = server_name
        self.script_name = script_name
        self.schema = schema
        self._named = any(o is not None for o in (hostname, server_name, script_name, schema))
        functools.update_wrapper(self, app, updated=())

    @property
    def enabled(self) -> bool:
        return self.serving.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.serving.enabled = bool(value)

    @property
    def timer_rusage(self) -> bool:
        return self.serving.timer_rusage

    @property
    def prefix(self) -> str:
        return self.serving.prefix

    @property
    def tags(self) -> dict[str, Any]:
        return self.serving.tags

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        serving = self.serving
        if not serving.enabled:
            return self.app(environ, start_response)
        # (outer() asked only when a request may be current: one set in this context, or a
        # finder's, the OpenTelemetry bridge's, installed)
        if (_opened() is not None or _finders) and serving.outer() is not None:
            return self.app(environ, start_response)  # mounted in a monitored app: it reports
        try:
            if self._named:
                request, token = serving.open(
                    option_value(self.server_name, environ) or _server_name(environ),
                    option_value(self.script_name, environ) or _path(environ),
                    option_value(self.schema, environ) or environ.get("wsgi.url_scheme") or "",
                    option_value(self.hostname, environ),
                    _WsgiRequest,
                )
            else:  # the common case: no option to ask (_server_name and _path, inline)
                host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or "unknown"
                path = environ.get("PATH_INFO") or ""
                request, token = serving.open(
                    host if ":" not in host else host_without_port(str(host)),
                    path if type(path) is str and path.isascii() else _path(environ),
                    environ.get("wsgi.url_scheme") or "",
                    None,
                    _WsgiRequest,
                )
            request.token = token
            request.owner = serving
            request.respond = start_response
            request.environ = environ
        except Exception as exc:  # our bug: the app still runs, unmonitored
            serving.failed("open", exc)
            return self.app(environ, start_response)
        try:
            result = self.app(environ, request)
        except BaseException:
            # Whatever it is (a timeout raised by a signal handler included), the app's
            # exception goes on unchanged; the request is reported first.
            request.status = 500
            request.served(0)
            raise
        request.serving = False
        if type(result) is list or type(result) is tuple:
            body = _ListBody(result)  # (no __init__ of ours: the list is made in C)
            body.request = request
            return body
        return _other_body(result, environ, request)


class _WsgiRequest(RequestSpan):
    """A request as the middleware serves it: the app's ``start_response`` (the status is the
    request's), then the request's end, once (one object per request, not two)."""

    __slots__ = ("environ", "owner", "respond", "token")
    environ: dict[str, Any]
    owner: Serving
    respond: StartResponse
    #: The context to give back when the request ends; None once it has ended.
    token: _Token | None

    def __call__(self, status: str, headers: Any, *exc_info: Any) -> Any:
        try:
            self.status = int(status[:3])
        except (TypeError, ValueError):  # not a status line: the server will say so
            self.status = 0
        return self.respond(status, headers, *exc_info)

    def served(self, size: int) -> None:
        """The request is over, ``size`` bytes served: report it (once)."""
        token, self.token = self.token, None
        if token is not None:
            if self.status in NO_ROUTE_STATUSES:
                # An answer that says no route matched (rare): if the request is still named
                # by its raw path, that names a scanner's or a typo's URL, never what ran.
                unmatched(self, self.environ, _path(self.environ))
            self.owner.close(self, token, size)


def _other_body(result: Any, environ: dict[str, Any], request: _WsgiRequest) -> Iterable[bytes]:
    """The response for an answer other than a list or tuple."""
    if not hasattr(result, "__iter__"):  # not a response (None...): the server will say so
        request.served(0)
        return result  # type: ignore[no-any-return]
    served: Iterable[bytes] = result
    wrapper = environ.get("wsgi.file_wrapper")
    if isinstance(wrapper, type) and isinstance(result, wrapper) and _end_in_close(result, request):
        return served  # the server's own object, so that it can still sendfile() it
    if hasattr(result, "__len__"):
        return _SizedStreamBody(result, request)
    return _StreamBody(result, request)


class _ListBody(list[bytes]):
    """A list or tuple answer (most apps'): a list, so that the server iterates it and takes
    its ``len()`` in C; measured when closed, its only Python call is ``close()``."""

    __slots__ = ("request",)
    request: _WsgiRequest

    def close(self) -> None:
        try:
            size = sum(map(len, self))
        except TypeError:  # not bytes: the server will complain, not us
            size = 0
        self.request.served(size)


class _StreamBody:
    """Any other iterable answer: counted chunk by chunk, closed with the app's ``close()``."""

    __slots__ = ("_iter", "_request", "_result", "_size")

    def __init__(self, result: Iterable[bytes], request: _WsgiRequest) -> None:
        self._result = result
        self._request = request
        self._iter: Iterator[bytes] | None = None
        self._size = 0

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iter is None:
            self._iter = iter(self._result)
        try:
            chunk = next(self._iter)
        except StopIteration:
            raise
        except BaseException:
            self._request.status = 500  # the body failed: so did the request
            raise
        # (not contextlib.suppress: a context manager per chunk costs more than the rest here)
        try:  # noqa: SIM105
            self._size += len(chunk)
        except TypeError:  # not bytes: the server will complain, not us
            pass
        return chunk

    def close(self) -> None:
        if self._request.token is None:
            return  # closed already
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._request.served(self._size)


class _SizedStreamBody(_StreamBody):
    """The same, for an answer that has a length: servers read ``len()`` of the response
    (wsgiref sets ``Content-Length`` for a one-element sequence), so it keeps one."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._result)  # type: ignore[arg-type]


def _file_size(wrapper: Any) -> int:
    """Bytes left to send in a ``wsgi.file_wrapper``'s file (0 if it cannot tell)."""
    filelike: Any = getattr(wrapper, "filelike", None)
    try:
        size = int(os.fstat(filelike.fileno()).st_size - filelike.tell())
    except (AttributeError, OSError, ValueError, TypeError):
        return 0
    return max(size, 0)


def _end_in_close(result: Any, request: _WsgiRequest) -> bool:
    """Make the server's ``wsgi.file_wrapper`` object end the request in its ``close()``.
    False if the object does not let its ``close`` be replaced."""
    size = _file_size(result)
    original = getattr(result, "close", None)
    closed = False

    def close() -> None:
        nonlocal closed
        if closed:
            return
        closed = True
        try:
            if original is not None:
                original()
        finally:
            request.served(size)

    try:
        result.close = close
    except (AttributeError, TypeError):
        return False
    return True


def monitor(address: Address | None = None, **options: Any) -> Callable[[WSGIApp], PynbaMiddleware]:
    """Decorate a WSGI app: ``@monitor(("127.0.0.1", 30002), tags={...})``. The options are
    those of :class:`PynbaMiddleware`; the decorated app has ``reporter``."""

    def decorate(app: WSGIApp) -> PynbaMiddleware:
        return PynbaMiddleware(app, address, **options)

    return decorate
