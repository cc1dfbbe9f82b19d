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
import inspect
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Final, TypeAlias

from pynba._configured import configured
from pynba._legacy import ReporterOption, call_reporter, split_reporter
from pynba_exporter import Address, Transport, UdpTransport
from pynba_exporter.log import errors, from_signal_handler, logger
from pynba_exporter.spans import RequestSpan, current_request, finish_and_send
from pynba_exporter.spans import hostname as _hostname

__all__ = ["PynbaMiddleware", "monitor"]

# The context's request, read, set and left by C-level calls (the ContextVar's own methods).
_opened = current_request.opened
_enter = current_request.set
_leave = current_request.reset
_finders = current_request.finders

_ExcInfo: TypeAlias = "tuple[type[BaseException], BaseException, TracebackType | None]"
StartResponse: TypeAlias = Callable[..., Callable[[bytes], object]]
WSGIApp: TypeAlias = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
NameOption: TypeAlias = "str | Callable[[dict[str, Any]], str] | None"


def _status_code(status: object) -> int:
    try:
        return int(str(status)[:3])
    except ValueError:
        return 0


# Status lines seen -> their code (bounded in number and length: a status line is the app's to
# make up).
_STATUS_CODES: dict[str, int] = {}
_MAX_STATUS_LINES: Final = 256


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


# The keyword arguments that configure the transport; any other unknown keyword is kept in
# ``config`` and ignored, as the original middlewares did with their ``**config``.
_TRANSPORT_OPTIONS: Final = frozenset(
    name
    for name, p in inspect.signature(UdpTransport.__init__).parameters.items()
    if p.kind is p.KEYWORD_ONLY
)


class PynbaMiddleware:
    """Reports every request of ``app`` to Pinba.

    ``address``: the Pinba server(s), in any form :class:`pynba_exporter.UdpTransport` takes
    (``None``: ``$PINBA_SERVER``, else 127.0.0.1:30002); or give a ready ``transport``.
    ``reporter`` (0.5.5's third argument): a transport, a :class:`pynba.reporter.Reporter`, or
    a callable taking the original reporter's arguments, called instead of sending.
    ``prefix`` is put before the script name when the request is sent (``PATH_INFO``, or what
    the app set in ``pynba.scriptname``), as in the originals. ``tags`` are request tags
    added to every request (a callable value is called per request). ``hostname``,
    ``server_name``, ``script_name`` and ``schema`` replace what is taken from the machine and
    the request: a string, or a callable taking the WSGI environ. ``timer_rusage`` (default
    ``$PINBA_TIMER_RUSAGE``, on) measures each timer's CPU; ``enabled`` (default
    ``$PINBA_ENABLED``, on) turns the whole thing into a pass-through. The transport's keyword
    arguments (``max_packet_size``, ``packed``, ``resolve_interval``...) go to it; any other
    keyword is kept in ``config`` and ignored, as the originals' ``**config`` was.

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
        transport_options = {k: v for k, v in config.items() if k in _TRANSPORT_OPTIONS}
        given, self._call = split_reporter(reporter)
        if transport is None:
            transport = given
        chosen = transport
        self.transport, self.timer_rusage, self.enabled = configured(
            "middleware",
            lambda: chosen if chosen is not None else UdpTransport(address, **transport_options),
            timer_rusage,
            enabled,
        )
        self.reporter: Any = reporter if reporter is not None else self.transport
        if ctx_factory is not None:
            errors.log(
                ("middleware", "ctx_factory"),
                "pynba: PynbaMiddleware(ctx_factory=...) is not supported and is ignored; "
                "see docs/migration.md",
            )
        self.prefix = prefix
        self.tags: dict[str, Any] = dict(tags or {})
        #: The keyword arguments as the originals kept them (``prefix``, ``tags`` and others).
        self.config: dict[str, Any] = {"prefix": prefix, "tags": self.tags, **config}
        ignored = sorted(set(config) - _TRANSPORT_OPTIONS)
        if ignored:
            logger.info("pynba: PynbaMiddleware keyword arguments ignored: %s", ignored)
        self.hostname: NameOption = hostname
        self.server_name: NameOption = server_name
        self.script_name = script_name
        self.schema = schema
        functools.update_wrapper(self, app, updated=())

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if not self.enabled:
            return self.app(environ, start_response)
        outer = _opened()
        if outer is None and _finders:  # an OpenTelemetry request this one may run inside
            outer = current_request.get()
        if outer is not None and outer.serving and not outer.finished:
            # Mounted inside another monitored app: that one reports this request. Add our
            # request tags to it, never replace what it has.
            for name, value in self.tags.items():
                outer.tags.setdefault(name, value)
            return self.app(environ, start_response)
        try:
            if (
                self.hostname is None
                and self.server_name is None
                and self.script_name is None
                and self.schema is None
            ):
                # _open() for the common case, inlined: no option to ask, no extra call.
                host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or "unknown"
                path = environ.get("PATH_INFO") or ""
                request = RequestSpan(
                    _hostname(),
                    host if ":" not in host else _server_name(environ),
                    path if path.isascii() else _path(environ),
                    schema=environ.get("wsgi.url_scheme") or "",
                    tags=dict(self.tags) if self.tags else None,
                    timer_rusage=self.timer_rusage,
                )
            else:
                request = self._open(environ)
        except Exception as exc:  # our bug: the app still runs, unmonitored
            if from_signal_handler(exc):
                raise  # a request timeout that fired here: the app's, not ours
            self._failed("open", exc)
            return self.app(environ, start_response)
        # One object per request observes start_response and then wraps the response: no
        # closure and no second wrapper to build on every request.
        response = _Response(request, start_response, _enter(request), self)
        request.serving = True
        try:
            result = response.result = self.app(environ, response)
        except BaseException:
            # Whatever it is (a timeout raised by a signal handler included), the app's
            # exception goes on unchanged; the request is reported first.
            request.serving = False
            request.status = 500
            response.done()
            self._close(request, response.token, 0)
            raise
        request.serving = False
        if type(result) is list or type(result) is tuple:
            # Most apps' answer: measured now, iterated by its own C iterator (see _Body).
            try:
                response._size = sum(map(len, result))
                response._upfront = True
            except TypeError:  # not bytes: the server will complain, not us
                pass
            response.__class__ = _SizedResponse
            return response
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None and (
            isinstance(wrapper, type)
            and isinstance(result, wrapper)
            and _hook_file_wrapper(result, request, response.token, self)
        ):
            response.done()
            return result
        if hasattr(result, "__len__"):
            response.__class__ = _SizedResponse
        return response

    @staticmethod
    def _value(option: NameOption, environ: dict[str, Any]) -> str | None:
        if option is None:
            return None
        return str(option(environ)) if callable(option) else option

    def _open(self, environ: dict[str, Any]) -> RequestSpan:
        return RequestSpan(
            self._value(self.hostname, environ) or _hostname(),
            self._value(self.server_name, environ) or _server_name(environ),
            self._value(self.script_name, environ) or _path(environ),
            schema=self._value(self.schema, environ) or environ.get("wsgi.url_scheme") or "",
            tags=dict(self.tags) if self.tags else None,
            timer_rusage=self.timer_rusage,
        )

    def _close(self, request: RequestSpan, token: Any, size: int) -> None:
        """The request is over: leave the context as it was, measure and send."""
        # (not contextlib.suppress: a context manager per request costs more than the rest here)
        try:  # noqa: SIM105
            _leave(token)
        except ValueError:  # closed in another context than opened in
            pass
        self._report(request, size)

    def _report(self, request: RequestSpan, size: int) -> None:
        if request.document_size < 0:  # not set by the app: what was served
            request.document_size = size
        if self.prefix:
            request.script_name = self.prefix + request.script_name
        if self._call is None:
            finish_and_send(request, self.transport, "middleware")
        else:
            call_reporter(self._call, request, "middleware")

    def _failed(self, stage: str, exc: Exception) -> None:
        errors.log(
            ("middleware", stage, type(exc).__name__),
            f"pynba: internal error ({stage}), the request is not reported: {exc!r}",
            level=logging.ERROR,
            exc_info=exc,
        )


def _length(chunk: object) -> int:
    try:
        return len(chunk)  # type: ignore[arg-type]
    except TypeError:  # not bytes: the server will complain, not us
        return 0


class _Body:
    """The app's start_response observed, then its response iterable counted and closed: the
    request ends in ``close()``.

    Made as a :class:`_Response` before the app is called (it is the app's start_response), and
    made a :class:`_SizedResponse` when the app's iterable has a length; ``close()`` turns it
    into this class, which has no destructor: once closed, nothing of the library runs when the
    server drops it (Python ignores exceptions raised in destructors, a request timeout
    included). A list or tuple body (most apps' answer) is measured up front and iterated by
    its own C iterator; only other iterables are counted chunk by chunk."""

    __slots__ = (
        "_closed",
        "_iter",
        "_middleware",
        "_request",
        "_size",
        "_start_response",
        "_upfront",
        "result",
        "token",
    )

    def __init__(
        self, request: RequestSpan, start_response: StartResponse, token: Any, mw: PynbaMiddleware
    ) -> None:
        self._request = request
        self._start_response = start_response
        self.token = token
        self._middleware = mw
        self.result: Iterable[bytes] = ()
        self._iter: Iterator[bytes] | None = None
        self._size = 0  # bytes of the body
        self._upfront = False  # measured before iterating (a list or tuple)
        self._closed = False

    def __call__(self, status: str, headers: Any, *exc_info: Any) -> Any:
        """start_response, as the app calls it: the status is the request's."""
        code = _STATUS_CODES.get(status) if type(status) is str else None
        if code is None:  # a status line not seen yet (an app uses a handful)
            code = _status_code(status)
            if type(status) is str and len(status) <= 64 and len(_STATUS_CODES) < _MAX_STATUS_LINES:
                _STATUS_CODES[status] = code
        self._request.status = code
        return self._start_response(status, headers, *exc_info)

    def done(self) -> None:
        """Reported without this object (the app raised, or a file wrapper took over)."""
        self._closed = True
        self.__class__ = _Body

    def __iter__(self) -> Iterator[bytes]:
        if self._upfront:
            return iter(self.result)
        return self

    def __next__(self) -> bytes:
        it = self._iter
        if it is None:
            it = self._iter = iter(self.result)
        try:
            chunk = next(it)
        except StopIteration:
            raise
        except BaseException:
            self._request.status = 500  # the body failed: so did the request
            raise
        self._size += len(chunk) if type(chunk) is bytes else _length(chunk)
        return chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.__class__ = _Body  # closed: no destructor any more
        try:
            # A list or tuple (measured up front) has no close(): no failed lookup to pay for.
            close = None if self._upfront else getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self._middleware._close(self._request, self.token, self._size)


class _Response(_Body):
    """A response not closed yet."""

    __slots__ = ()

    def __del__(self) -> None:
        # A server that never calls close() (against PEP 3333) must not lose the request.
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):  # raise_on_fail cannot reach anyone here
                self._middleware._report(self._request, self._size)


class _SizedResponse(_Response):
    """The same, for an app's iterable that has a length: servers read ``len()`` of the
    response (wsgiref sets ``Content-Length`` for a one-element list), so it keeps one."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self.result)  # type: ignore[arg-type]


def _file_size(wrapper: Any) -> int:
    """Bytes left to send in a ``wsgi.file_wrapper``'s file (0 if it cannot tell)."""
    filelike: Any = getattr(wrapper, "filelike", None)
    try:
        size = int(os.fstat(filelike.fileno()).st_size - filelike.tell())
    except (AttributeError, OSError, ValueError, TypeError):
        return 0
    return max(size, 0)


def _hook_file_wrapper(result: Any, request: RequestSpan, token: Any, mw: PynbaMiddleware) -> bool:
    """Give the server the app's own ``wsgi.file_wrapper`` object, so that it can still
    ``sendfile()`` it (servers recognise it by its type), with the request ending in its
    ``close()``. False if the object does not let its ``close`` be replaced."""
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
            mw._close(request, token, size)

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
