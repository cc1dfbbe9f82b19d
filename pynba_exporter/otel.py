"""OpenTelemetry -> Pinba: each request span is a Pinba request, the spans under it its timers.

A request is a local root span (no parent, or a remote one) of kind SERVER or CONSUMER, or one
the app marks with the attribute ``pinba.script_name``. Other roots (a query at startup, a
poller's HTTP call) are counted and dropped. Names keep a bounded cardinality: the route
template, one name for requests that matched no route, and the per-process cap of
:mod:`pynba_exporter.naming`. The user documentation is ``docs/opentelemetry.md``.

Ways in, each constructible with no arguments (configuration from the environment, see
:mod:`pynba_exporter.config`; a bad value is logged once and turns Pinba off, never raises):

- :class:`PinbaSpanProcessor`: add it to a ``TracerProvider``. It sees spans start and end, so it
  measures CPU (of the thread, during the root; of each child that starts and ends on one
  thread), lets classic ``pynba.timer()`` calls inside a request land in its packet (the request
  is found through the current span), and turns OpenTelemetry spans inside a classic request
  (``monitor``, ``ScriptMonitor``) into timers of that request. One packet when the root ends.
- :class:`PinbaSampler` wraps the app's sampler so that every span records (Pinba needs every
  request) while exporters still only get the spans the app's sampler chose.
- :class:`PinbaConfigurator` (``OTEL_PYTHON_CONFIGURATOR=pinba``): zero-code, the two above
  set up by ``opentelemetry-instrument`` around whatever the ``OTEL_*`` variables configure.
- :class:`PinbaSpanExporter`: a ``SpanExporter`` (what ``OTEL_TRACES_EXPORTER=pinba`` gives
  with another configurator). Spans arrive in batches, children before their root; they are
  buffered per trace, bounded in count and age. It sees only sampled traces and no CPU.

This is the only module of the project that imports ``opentelemetry``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry.context import (
    _SUPPRESS_INSTRUMENTATION_KEY,
    Context,
    attach,
    detach,
    set_value,
)
from opentelemetry.sdk._configuration import (
    _import_sampler,
    _initialize_components,
    _OTelSDKConfigurator,
)
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace import sampling as _sampling
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import (
    Link,
    SpanKind,
    StatusCode,
    TraceState,
    get_current_span,
    get_tracer_provider,
)
from opentelemetry.util.types import Attributes

from pynba_exporter import config
from pynba_exporter._transport import MemoryTransport, Transport, UdpTransport
from pynba_exporter.address import Address
from pynba_exporter.log import errors
from pynba_exporter.naming import UNMATCHED
from pynba_exporter.spans import (
    MEASURE,
    CpuSample,
    RequestSpan,
    cpu_delta,
    current_request,
    finish_and_send,
    hostname,
    opened_request,
    thread_cpu,
)
from pynba_exporter.wire import DEFAULT_MAX_PACKET_SIZE

__all__ = [
    "PinbaConfigurator",
    "PinbaSampler",
    "PinbaSpanExporter",
    "PinbaSpanProcessor",
    "default_timer_tags",
]

#: Timer tags of a span: the default follows Pinba's conventions (group, category, server).
TimerTags = Callable[[ReadableSpan], Mapping[str, Any]]

TAG_PREFIX: Final = "pinba.tag."
REQUEST_TAG_PREFIX: Final = "pinba.request_tag."
SCRIPT_NAME_ATTRIBUTE: Final = "pinba.script_name"
#: Attributes by which the app marks a root span as a request and names it.
SCRIPT_NAME_ATTRIBUTES: Final = (
    SCRIPT_NAME_ATTRIBUTE, "pinba.scriptname", "pynba.script_name", "pynba.scriptname",
)  # fmt: skip
#: Set on the ASGI instrumentation's internal ``http send``/``http receive`` spans.
ASGI_EVENT_ATTRIBUTE: Final = "asgi.event.type"

#: The clock of span ages (a module name so that tests can move time).
_now = time.monotonic


# --------------------------------------------------------------------------------------------
# Configuration


def _address(address: Address | None) -> Address:
    """Argument, then OTEL_EXPORTER_PINBA_ENDPOINT, then PINBA_SERVER (see ``config``); the
    address rules (``udp://`` accepted, ``http(s)://`` refused) are in ``address``."""
    if address is not None:
        return address
    endpoint: str = config.value("server")
    return endpoint


def _sdk_disabled() -> bool:
    # The SDK's own variable, read exactly as the SDK reads it ("true", any case, and nothing
    # else): Pinba must be off exactly when the SDK is, not by a rule of ours.
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


class _Sender:
    """What the processor and the exporter share: a transport, the on/off switch, counters.

    A bad option (argument or environment) never raises: it is logged once and Pinba is off."""

    def __init__(
        self,
        address: Address | None,
        *,
        transport: Transport | None,
        enabled: bool | None,
        timer_tags: TimerTags | None,
        asgi_events: bool | None,
        transport_options: dict[str, Any],
    ) -> None:
        self.timer_tags: TimerTags = timer_tags or default_timer_tags
        self.shut_down = False
        self.lock = threading.Lock()
        #: Counters: requests sent, roots that were not requests, spans not reported by reason.
        self.counts: dict[str, int] = {}
        self.enabled = False
        self.asgi_events = False
        self.transport: Transport
        try:
            self.enabled = (
                (config.value("enabled") and not _sdk_disabled()) if enabled is None else enabled
            )
            self.asgi_events = config.value("asgi_events", asgi_events)
            self.transport = (
                transport
                if transport is not None
                else UdpTransport(_address(address), **transport_options)
            )
        except (ValueError, TypeError) as exc:
            # Pinba is off; a transport that is never used keeps the attribute typed.
            self.transport = (
                transport
                if transport is not None
                else MemoryTransport(max_packet_size=DEFAULT_MAX_PACKET_SIZE, packed=False)
            )
            self.disable(exc)

    def disable(self, exc: Exception) -> None:
        """A bad option: said once (the processor and the exporter share the line), and
        Pinba is off; the app runs as usual."""
        errors.log(
            ("config", str(exc)),
            f"pynba: {exc}; Pinba reporting is disabled (the app runs as usual)",
        )
        self.enabled = False

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def drop(self, reason: str, count: int = 1) -> None:
        self.count(reason, count)
        errors.log(("otel", reason), f"pynba: {count} span(s) not reported ({reason})")

    def stats(self) -> dict[str, int]:
        with self.lock:
            counts = dict(self.counts)
        for name in ("requests", "not_requests", "evicted", "overflow", "late", "abandoned"):
            counts.setdefault(name, 0)
        return counts

    def send(self, request: RequestSpan, duration: float, *, cpu: bool) -> bool:
        """Finish and send the request of a root span by the one path every request takes.
        Our own sending must not be traced (an instrumented socket library would otherwise
        make a span per packet, and a packet per span...)."""
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            sent = finish_and_send(request, self.transport, "otel", duration=duration, cpu=cpu)
        finally:
            detach(token)
        if sent:
            self.count("requests")
        return sent

    def close(self) -> None:
        self.transport.close()


# --------------------------------------------------------------------------------------------
# Mapping: span attributes -> Pinba fields


def _attributes(span: ReadableSpan) -> Mapping[str, Any]:
    """The span's attributes as a plain mapping, for reading only.

    The SDK wraps them in a mapping class whose every lookup runs Python code; the dict inside
    is read directly when it is there (a private detail of the SDK, hence the fallback)."""
    inner = getattr(getattr(span, "_attributes", None), "_dict", None)
    if isinstance(inner, dict):
        return inner
    return dict(span.attributes) if span.attributes else {}


def _first(attributes: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        value = attributes.get(name)
        if value is not None and value != "":
            return value
    return None


def _without_port(host: object) -> str:
    known = _PORTLESS.get(host) if type(host) is str else None
    if known is not None:
        return known
    text = _strip_port(str(host))
    if type(host) is str:
        if len(_PORTLESS) >= 4096:
            _PORTLESS.clear()
        _PORTLESS[host] = text
    return text


# Server names without their port, as they were last seen: a handful of hosts per app.
_PORTLESS: dict[str, str] = {}


def _strip_port(text: str) -> str:
    if text.startswith("["):
        end = text.find("]")
        return text[: end + 1] if end > 0 else text
    return text.partition(":")[0] if text.count(":") == 1 else text


def _path(value: object) -> str:
    text = str(value)
    if "://" in text:
        return urlsplit(text).path or "/"
    return text.split("?", 1)[0].split("#", 1)[0]


def default_timer_tags(span: ReadableSpan) -> dict[str, str]:
    """Low-cardinality timer tags in Pinba's conventions.

    ``group`` is ``<category>::<operation>``: ``db::SELECT`` (``db.system``/``db.system.name``
    and ``db.operation``/``db.operation.name``, old and new names), ``http::GET`` for HTTP
    clients, ``rpc::<method>``, ``messaging::<operation>``; else the span name. ``category``
    when known, ``server`` (the peer host, without port) when known, ``database`` for database
    spans, and every attribute ``pinba.tag.<name>`` as tag ``<name>``. Statements, full URLs
    and ids never become tags.
    """
    return _timer_tags(span, _attributes(span))


def _timer_tags(span: ReadableSpan, a: Mapping[str, Any]) -> dict[str, str]:
    # Runs for every child span: attribute lookups inline (``or`` skips None and "" as
    # _first does), no helper calls on the common paths.
    get = a.get
    tags: dict[str, str] = {}
    category = operation = None
    db = get("db.system.name") or get("db.system")
    if db:
        category = "db"
        # One group whatever the case of the statement (select/SELECT/Select); without the
        # attribute, the span name's first word ("SELECT users" in newer conventions).
        operation = get("db.operation.name") or get("db.operation") or span.name.split(" ", 1)[0]
        operation = str(operation).upper()
    else:
        method = get("http.request.method") or get("http.method")
        if method and span.kind == SpanKind.CLIENT:
            category, operation = "http", method
        elif get("rpc.system"):
            category = "rpc"
            operation = get("rpc.method") or span.name
        elif get("messaging.system"):
            category = "messaging"
            operation = get("messaging.operation.name") or get("messaging.operation") or span.name
    if category is not None:
        tags["group"] = f"{category}::{operation}"
        tags["category"] = category
    else:
        tags["group"] = span.name
    server = get("server.address") or get("net.peer.name") or get("net.sock.peer.addr")
    if not server:
        url = get("url.full") or get("http.url")
        if url and span.kind == SpanKind.CLIENT:
            server = urlsplit(str(url)).hostname
    if server:
        tags["server"] = _without_port(server)
    if db:
        database = get("db.namespace") or get("db.name")
        if database:
            tags["database"] = str(database)
    if TAG_PREFIX in "\0".join(a):  # one C-level scan of the names, not a loop over them
        for name in a:
            if name.startswith(TAG_PREFIX):
                tags[name[len(TAG_PREFIX) :]] = str(a[name])
    return tags


def _fill(
    request: RequestSpan,
    span: ReadableSpan,
    *,
    own: bool,
    initial: tuple[str, str, str, str] | None = None,
) -> None:
    """The request's fields from its root span. ``own``: the request is the span's (not a
    classic one it belongs to, whose middleware knows better). ``initial``: the names the
    request was opened with; a name the app has set since (``pynba.scriptname = ...``) wins
    over the span's attributes."""
    a = _attributes(span)
    resource = span.resource.attributes if span.resource is not None else {}
    for name, value in a.items():
        if name.startswith(REQUEST_TAG_PREFIX):
            request.tags[name[len(REQUEST_TAG_PREFIX) :]] = value
    host0, server0, script0, schema0 = initial or (
        request.hostname,
        request.server_name,
        request.script_name,
        request.schema,
    )
    override = _first(a, *SCRIPT_NAME_ATTRIBUTES)
    if override:
        request.script_name = str(override)
    if not own:
        return
    if not override and request.script_name is script0:
        request.script_name = _script_name(span, a)
    if request.server_name is server0:
        server = _first(a, "server.address", "http.host", "http.server_name")
        if server is None:
            service = resource.get("service.name")
            if service and not str(service).startswith("unknown_service"):
                server = service
        request.server_name = _without_port(server) if server is not None else "unknown"
    if request.hostname is host0:
        request.hostname = str(resource.get("host.name") or hostname())
    status = _first(a, "http.response.status_code", "http.status_code")
    if status is not None:
        with contextlib.suppress(TypeError, ValueError):
            request.status = int(status)
    elif span.status.status_code == StatusCode.ERROR:
        request.status = 500
    scheme = _first(a, "url.scheme", "http.scheme")
    if scheme is not None and request.schema is schema0:
        request.schema = str(scheme)
    size = _first(
        a,
        "http.response.body.size",
        "http.response_content_length",
        "http.response_content_length_uncompressed",
        CONTENT_LENGTH_ATTRIBUTE,  # the header, when the instrumentation captures it
    )
    if isinstance(size, (list, tuple)):
        size = size[0] if size else None
    if size is not None and request.document_size == MEASURE:
        with contextlib.suppress(TypeError, ValueError):
            request.document_size = int(size)


#: The response's Content-Length as the HTTP server instrumentations capture it
#: (``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE`` includes ``content-length``).
CONTENT_LENGTH_ATTRIBUTE: Final = "http.response.header.content_length"

#: What frameworks answer a request that matched none of their routes (Flask, Django,
#: FastAPI/Starlette alike); their instrumentations then record no ``http.route``.
_NO_ROUTE_STATUSES: Final = frozenset(("404", "405"))


def _script_name(span: ReadableSpan, a: Mapping[str, Any]) -> str:
    """A request's name with bounded cardinality: the route template with a leading ``/``;
    :data:`UNMATCHED` for an HTTP request without a route answered 404 or 405 (it matched no
    route: a scanner, a typo); the path for apps without a router; else the span name."""
    route = _first(a, "http.route")
    if route is not None:
        route = str(route)
        return route if route.startswith("/") else f"/{route}"
    method = _first(a, "http.request.method", "http.method")
    if span.kind == SpanKind.SERVER and method is not None:
        status = _first(a, "http.response.status_code", "http.status_code")
        if str(status) in _NO_ROUTE_STATUSES:
            return UNMATCHED
    path = _first(a, "url.path", "http.target", "http.url")
    if path is not None:
        return _path(path)
    # HTTP server spans are named "{method} {target}" (semantic conventions), and the
    # stable WSGI instrumentation records the path nowhere else.
    name = span.name
    if method is not None and name.startswith(f"{method} "):
        name = _path(name[len(method) + 1 :])
    return name


def _is_request(span: ReadableSpan) -> bool:
    """A local root is a request if it serves (SERVER), consumes (CONSUMER) or is marked:
    ``pinba.script_name``, or an INTERNAL root naming the route it serves (``http.route``: a
    request span made by hand). Never a CLIENT or PRODUCER root: an outgoing call."""
    if span.kind in (SpanKind.SERVER, SpanKind.CONSUMER):
        return True
    a = _attributes(span)
    if any(a.get(name) for name in SCRIPT_NAME_ATTRIBUTES):
        return True
    return span.kind == SpanKind.INTERNAL and bool(a.get("http.route"))


def _is_asgi_event(span: ReadableSpan) -> bool:
    return ASGI_EVENT_ATTRIBUTE in _attributes(span)


def _duration(span: ReadableSpan) -> float:
    if span.start_time is None or span.end_time is None:
        return 0.0
    return max(0, span.end_time - span.start_time) / 1e9


def _is_local_root(span: ReadableSpan) -> bool:
    parent = span.parent
    return parent is None or parent.is_remote


# --------------------------------------------------------------------------------------------
# The processor


_OWN, _ADOPTED, _TIMER = range(3)


class _InFlight:
    __slots__ = ("born", "cpu0", "initial", "kind", "request", "thread")

    def __init__(self, kind: int, request: RequestSpan, cpu0: CpuSample | None) -> None:
        self.kind = kind
        self.request = request
        self.cpu0 = cpu0
        # The thread matters only for CPU: a span's or its request's own.
        self.thread = threading.get_ident() if cpu0 is not None or kind == _OWN else 0
        self.born = _now()
        if kind == _OWN:
            self.initial = (
                request.hostname, request.server_name, request.script_name, request.schema
            )  # fmt: skip


#: Live processors, for the finder of the current request (see ``CurrentRequest``).
_PROCESSORS: weakref.WeakSet[PinbaSpanProcessor] = weakref.WeakSet()


def _request_of_current_span() -> RequestSpan | None:
    """The request whose span is current in the OpenTelemetry context: a classic
    ``pynba.timer()`` inside an OTel request lands in it."""
    if not _PROCESSORS:
        return None
    span_id = get_current_span().get_span_context().span_id
    for processor in list(_PROCESSORS):
        entry = processor._spans.get(span_id)
        if entry is not None and not entry.request.finished:
            return entry.request
    return None


class PinbaSpanProcessor(SpanProcessor):
    """Reports each request (a SERVER or CONSUMER local root, or a root the app marks with
    ``pinba.script_name``) and the spans under it as one Pinba request.

    ``address``: the server(s) (``None``: ``$OTEL_EXPORTER_PINBA_ENDPOINT``, then
    ``$PINBA_SERVER``, then 127.0.0.1:30002), or a ready ``transport``. ``timer_tags``: a
    function of a span giving its timer tags (default :func:`default_timer_tags`).
    ``timer_rusage``: measure each child span's CPU, and the CPU of classic timers inside its
    requests (``SPAN_RUSAGE``, off: two clock reads per span). ``enabled``:
    (``ENABLED``, on) and not ``$OTEL_SDK_DISABLED``. ``asgi_events``: the ASGI
    instrumentation's ``http send``/``http receive`` spans as timers (``ASGI_EVENTS``, off).
    ``max_spans``: spans followed at once (``MAX_SPANS``, 100,000); ``max_age``: seconds an
    unfinished span is followed (``MAX_AGE``, 300), then evicted and counted.
    Other keyword arguments go to the transport (``max_packet_size``, ``packed``...).
    Each option ``X`` is also ``$OTEL_EXPORTER_PINBA_X`` and ``$PINBA_X``.
    """

    def __init__(
        self,
        address: Address | None = None,
        *,
        transport: Transport | None = None,
        enabled: bool | None = None,
        timer_tags: TimerTags | None = None,
        timer_rusage: bool | None = None,
        asgi_events: bool | None = None,
        max_spans: int | None = None,
        max_age: float | None = None,
        **transport_options: Any,
    ) -> None:
        self._sender = _Sender(
            address, transport=transport, enabled=enabled, timer_tags=timer_tags,
            asgi_events=asgi_events, transport_options=transport_options,
        )  # fmt: skip
        self.timer_rusage: bool = config.OPTIONS["span_rusage"].default
        self.max_spans: int = config.OPTIONS["max_spans"].default
        self.max_age: float = config.OPTIONS["max_age"].default
        try:
            self.timer_rusage = config.value("span_rusage", timer_rusage)
            self.max_spans = int(config.value("max_spans", max_spans))
            self.max_age = float(config.value("max_age", max_age))
        except ValueError as exc:
            self._sender.disable(exc)
        self._spans: dict[int, _InFlight] = {}
        self._evicting = threading.Lock()
        self._starts = 0
        if self._sender.enabled:
            _PROCESSORS.add(self)
            if _request_of_current_span not in current_request.finders:
                current_request.finders.append(_request_of_current_span)

    @property
    def transport(self) -> Transport:
        return self._sender.transport

    @property
    def enabled(self) -> bool:
        return self._sender.enabled

    @property
    def dropped(self) -> dict[str, int]:
        return {
            k: v for k, v in self._sender.stats().items() if k not in ("requests", "not_requests")
        }

    def stats(self) -> dict[str, int]:
        """``requests`` sent; ``not_requests``: roots that were not requests (dropped);
        ``evicted``: unfinished spans older than ``max_age``; ``overflow``: spans not followed
        past ``max_spans``; ``late``: spans that ended after their request left."""
        return self._sender.stats()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        sender = self._sender
        if not sender.enabled or sender.shut_down:
            return
        try:
            self._start(span)
        except Exception as exc:  # never into the app
            errors.log(("otel", "on_start"), f"pynba: span not followed: {exc!r}", exc_info=exc)

    def _evict(self) -> None:
        """Forget the unfinished spans older than ``max_age`` (oldest first: the dict keeps
        the order of starts). Their requests are abandoned, counted, never sent."""
        spans = self._spans
        limit = _now() - self.max_age
        try:
            if next(iter(spans.values())).born >= limit:
                return  # the common case: the oldest span is young enough
        except (StopIteration, RuntimeError):  # empty, or changed meanwhile by another thread
            return
        if not self._evicting.acquire(blocking=False):
            return  # another thread is at it
        evicted = 0
        try:
            while spans:
                try:
                    span_id = next(iter(spans))
                    entry = spans[span_id]
                except (StopIteration, KeyError, RuntimeError):  # ended meanwhile
                    break
                if entry.born >= limit:
                    break
                if spans.pop(span_id, None) is not None:
                    evicted += 1
                    if entry.kind == _OWN:
                        entry.request.finished = True
                        entry.request.serving = False
        finally:
            self._evicting.release()
        if evicted:
            self._sender.drop("evicted", evicted)

    def _start(self, span: Span) -> None:
        spans = self._spans
        self._starts += 1
        # Ages move slowly: a look every 64 starts is enough, and always before refusing one.
        if not self._starts & 63 or len(spans) >= self.max_spans:
            self._evict()
            if len(spans) >= self.max_spans:
                self._sender.drop("overflow")
                return
        context = span.get_span_context()
        parent = span.parent
        # Only a request of the classic API (monitor, ScriptMonitor) set in this context can
        # take in a local root: an OTel request is bound to its own span's context.
        classic = opened_request()
        if classic is not None and classic.finished:
            classic = None
        if parent is None or parent.is_remote:
            if classic is not None:
                # Inside a request of the classic API: the same HTTP request if this is a
                # server span, else one operation of it.
                kind = _ADOPTED if span.kind == SpanKind.SERVER else _TIMER
                cpu0 = thread_cpu() if kind == _TIMER and classic.timer_rusage else None
                spans[context.span_id] = _InFlight(kind, classic, cpu0)
                return
            # Followed until it ends: whether it is a request is known then (the app may
            # mark it with pinba.script_name while it runs).
            own = RequestSpan(hostname(), "unknown", span.name, timer_rusage=self.timer_rusage)
            own.serving = True  # a classic middleware inside reports through this request
            spans[context.span_id] = _InFlight(_OWN, own, None)
            return
        owner = spans.get(parent.span_id)
        request: RequestSpan | None = owner.request if owner is not None else classic
        if request is None or request.finished:
            return  # its request is gone or unknown: the exporter-side rules would drop it too
        cpu0 = thread_cpu() if request.timer_rusage else None
        spans[context.span_id] = _InFlight(_TIMER, request, cpu0)

    def on_end(self, span: ReadableSpan) -> None:
        entry = self._spans.pop(span.context.span_id, None) if span.context else None
        if entry is None:
            return
        try:
            self._end(span, entry)
        except Exception as exc:
            errors.log(("otel", "on_end"), f"pynba: span not reported: {exc!r}", exc_info=exc)

    def _end(self, span: ReadableSpan, entry: _InFlight) -> None:
        request = entry.request
        sender = self._sender
        if entry.kind == _TIMER:
            if request.finished:
                sender.drop("late")
                return
            a = _attributes(span)
            if ASGI_EVENT_ATTRIBUTE in a and not sender.asgi_events:
                return
            tags_of = sender.timer_tags
            tags = _timer_tags(span, a) if tags_of is default_timer_tags else tags_of(span)
            start, end = span.start_time, span.end_time
            value = (
                (end - start) / 1e9
                if start is not None and end is not None and end > start
                else 0.0
            )
            if entry.cpu0 is None:
                request.add_timer(tags, value)
                return
            u = s = 0.0
            if entry.thread == threading.get_ident():
                u, s = cpu_delta(entry.cpu0, thread_cpu())
            request.add_timer(tags, value, 1, u, s)
            return
        if entry.kind == _ADOPTED:
            _fill(request, span, own=False)
            return
        request.serving = False
        if not _is_request(span):
            request.finished = True  # its descendants still running are dropped with it
            sender.count("not_requests")
            return
        _fill(request, span, own=True, initial=entry.initial)
        # Ended on another thread than it started on: that thread's CPU says nothing of it.
        sender.send(request, _duration(span), cpu=entry.thread == threading.get_ident())

    def shutdown(self) -> None:
        if not self._sender.shut_down:
            self._sender.shut_down = True
            _PROCESSORS.discard(self)
            self._spans.clear()
            self._sender.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # nothing waits: each request leaves when its root ends


# --------------------------------------------------------------------------------------------
# The exporter


class _Trace:
    __slots__ = ("born", "spans")

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.born = _now()


class PinbaSpanExporter(SpanExporter):
    """A ``SpanExporter``: each request (a SERVER or CONSUMER local root, or a root marked with
    ``pinba.script_name``) and its descendants become one Pinba request.

    An exporter only gets the spans of sampled traces: with a sampler that drops some, Pinba
    misses those requests (said once in the log). :class:`PinbaSpanProcessor` with
    :class:`PinbaSampler` (what ``OTEL_PYTHON_CONFIGURATOR=pinba`` sets up) sees them all.

    Spans of a trace may come in several ``export()`` calls, children first: they wait in a
    buffer until their local root comes. The buffer is bounded: ``max_traces`` traces,
    ``max_spans`` spans, ``max_age`` seconds; what is evicted, and spans that come after their
    root left, are counted in :meth:`stats` and logged. Other options as
    :class:`PinbaSpanProcessor` (no CPU: exported spans do not carry it).
    """

    def __init__(
        self,
        address: Address | None = None,
        *,
        transport: Transport | None = None,
        enabled: bool | None = None,
        timer_tags: TimerTags | None = None,
        asgi_events: bool | None = None,
        max_traces: int | None = None,
        max_spans: int | None = None,
        max_age: float | None = None,
        **transport_options: Any,
    ) -> None:
        self._sender = _Sender(
            address, transport=transport, enabled=enabled, timer_tags=timer_tags,
            asgi_events=asgi_events, transport_options=transport_options,
        )  # fmt: skip
        self.max_traces: int = config.OPTIONS["max_traces"].default
        self.max_spans: int = config.OPTIONS["max_spans"].default
        self.max_age: float = config.OPTIONS["max_age"].default
        try:
            self.max_traces = int(config.value("max_traces", max_traces))
            self.max_spans = int(config.value("max_spans", max_spans))
            self.max_age = float(config.value("max_age", max_age))
        except ValueError as exc:
            self._sender.disable(exc)
        self._traces: OrderedDict[int, _Trace] = OrderedDict()
        self._buffered = 0
        # Span ids of the requests sent recently: a child arriving after them is late.
        self._done: OrderedDict[int, None] = OrderedDict()
        self._lock = threading.Lock()
        self._sampling_checked = False

    @property
    def transport(self) -> Transport:
        return self._sender.transport

    @property
    def enabled(self) -> bool:
        return self._sender.enabled

    @property
    def dropped(self) -> dict[str, int]:
        return {
            k: v for k, v in self._sender.stats().items() if k not in ("requests", "not_requests")
        }

    def stats(self) -> dict[str, int]:
        """As :meth:`PinbaSpanProcessor.stats`, and ``abandoned``: buffered spans whose root
        never came."""
        return self._sender.stats()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        sender = self._sender
        if sender.shut_down:
            return SpanExportResult.FAILURE
        if not sender.enabled:
            return SpanExportResult.SUCCESS
        if not self._sampling_checked:
            self._sampling_checked = True
            _warn_if_sampling_hides_requests()
        try:
            requests = self._collect(spans)
        except Exception as exc:
            errors.log(("otel", "export"), f"pynba: batch not reported: {exc!r}", exc_info=exc)
            return SpanExportResult.FAILURE
        ok = True
        for request, duration in requests:
            # No CPU in exporter mode: exported spans do not carry it.
            ok = sender.send(request, duration, cpu=False) and ok
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def _collect(self, spans: Sequence[ReadableSpan]) -> list[tuple[RequestSpan, float]]:
        roots = []
        late = not_requests = 0
        with self._lock:
            for span in spans:
                if span.context is None:
                    continue
                if _is_local_root(span):
                    roots.append(span)
                    continue
                parent = span.parent
                if parent is not None and parent.span_id in self._done:
                    self._remember(span.context.span_id)
                    late += 1
                    continue
                trace = self._traces.get(span.context.trace_id)
                if trace is None:
                    trace = self._traces[span.context.trace_id] = _Trace()
                trace.spans.append(span)
                self._buffered += 1
            requests = []
            for root in roots:
                request = self._request(root)  # takes its descendants out of the buffer
                if _is_request(root):
                    requests.append((request, _duration(root)))
                else:
                    not_requests += 1
            evicted = self._evict()
        if not_requests:
            self._sender.count("not_requests", not_requests)
        if late:
            self._sender.drop("late", late)
        if evicted:
            self._sender.drop("abandoned", evicted)
        return requests

    def _request(self, root: ReadableSpan) -> RequestSpan:
        """The root's request, with its descendants taken out of the buffer."""
        request = RequestSpan(hostname(), "unknown", root.name, timer_rusage=False)
        _fill(request, root, own=True)
        trace = self._traces.get(root.context.trace_id)
        mine: list[ReadableSpan] = []
        if trace is not None:
            children: dict[int, list[ReadableSpan]] = {}
            for span in trace.spans:
                if span.parent is not None:
                    children.setdefault(span.parent.span_id, []).append(span)
            stack = [root.context.span_id]
            while stack:
                for child in children.pop(stack.pop(), ()):
                    mine.append(child)
                    stack.append(child.context.span_id)
            if mine:
                taken = {id(s) for s in mine}
                trace.spans = [s for s in trace.spans if id(s) not in taken]
                self._buffered -= len(mine)
                if not trace.spans:
                    del self._traces[root.context.trace_id]
        tags = self._sender.timer_tags
        asgi_events = self._sender.asgi_events
        for span in sorted(mine, key=lambda s: s.start_time or 0):
            if asgi_events or not _is_asgi_event(span):
                request.add_timer(tags(span), _duration(span))
            self._remember(span.context.span_id)
        self._remember(root.context.span_id)
        return request

    def _remember(self, span_id: int) -> None:
        done = self._done
        done[span_id] = None
        if len(done) > self.max_spans:
            done.popitem(last=False)

    def _evict(self) -> int:
        """Drop the oldest traces beyond the limits; how many spans went."""
        evicted = 0
        now = _now()
        traces = self._traces
        while traces:
            trace_id, oldest = next(iter(traces.items()))
            if (
                len(traces) <= self.max_traces
                and self._buffered <= self.max_spans
                and now - oldest.born <= self.max_age
            ):
                break
            del traces[trace_id]
            self._buffered -= len(oldest.spans)
            evicted += len(oldest.spans)
        return evicted

    def shutdown(self) -> None:
        if self._sender.shut_down:
            return
        self._sender.shut_down = True
        with self._lock:
            left = self._buffered
            self._traces.clear()
            self._buffered = 0
        if left:
            self._sender.drop("abandoned", left)
        self._sender.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # requests leave as soon as their root is exported


# --------------------------------------------------------------------------------------------
# Sampling


class PinbaSampler(Sampler):
    """Keeps every span recording, so Pinba sees every request, while the trace sampling
    decision that exporters see stays the wrapped sampler's: a span it would drop is recorded
    but not sampled (``RECORD_ONLY``), so ``BatchSpanProcessor`` exporters skip it and
    :class:`PinbaSpanProcessor` still reports it.

        TracerProvider(sampler=PinbaSampler(TraceIdRatioBased(0.01)))
    """

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(  # noqa: PLR0917 - the Sampler interface
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        result = self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision != Decision.DROP:
            return result
        # The SDK's samplers return no attributes on DROP, and a span starts with the
        # sampler's attributes only: without its own, an unsampled request would lose its
        # host, scheme, target... and make another row in Pinba than a sampled one.
        merged = dict(attributes or {})
        merged.update(result.attributes or {})
        return SamplingResult(Decision.RECORD_ONLY, merged, result.trace_state)

    def get_description(self) -> str:
        return f"PinbaSampler{{{self.delegate.get_description()}}}"


def _global_provider() -> Any:
    return get_tracer_provider()


def _warn_if_sampling_hides_requests() -> None:
    """The exporter gets only sampled spans: say once when the app's sampler may drop some."""
    sampler = getattr(_global_provider(), "sampler", None)
    if sampler is None or sampler is _sampling.ALWAYS_ON or isinstance(sampler, PinbaSampler):
        return
    errors.log(
        ("otel", "sampling"),
        "pynba: PinbaSpanExporter gets only the sampled traces (sampler "
        f"{sampler.get_description()}): requests that are not sampled are missing from Pinba. "
        "Use OTEL_PYTHON_CONFIGURATOR=pinba (zero-code), or PinbaSpanProcessor with "
        "PinbaSampler, to count every request",
    )


# --------------------------------------------------------------------------------------------
# Zero-code: OTEL_PYTHON_CONFIGURATOR=pinba


#: The name of pynba in OTEL_TRACES_EXPORTER (and of its entry points).
PINBA: Final = "pinba"
_TRACES_EXPORTER: Final = "OTEL_TRACES_EXPORTER"
_CAPTURE_RESPONSE_HEADERS: Final = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE"


class PinbaConfigurator(_OTelSDKConfigurator):
    """The SDK's own configuration (``opentelemetry-instrument``, the ``OTEL_*`` variables),
    and, when ``pinba`` is among ``OTEL_TRACES_EXPORTER``:

    - :class:`PinbaSpanProcessor` instead of the exporter (it sees every span, with CPU);
    - the sampler that ``OTEL_TRACES_SAMPLER`` configures wrapped in :class:`PinbaSampler`, so
      Pinba gets every request while the other exporters get only the sampled traces;
    - ``content-length`` added to the response headers the HTTP server instrumentations record
      (``document_size``).

    Selected by ``OTEL_PYTHON_CONFIGURATOR=pinba`` (entry point ``pinba`` in
    ``opentelemetry_configurator``).
    """

    def _configure(self, **kwargs: Any) -> None:
        names = [n.strip() for n in os.environ.get(_TRACES_EXPORTER, "").split(",") if n.strip()]
        given = list(kwargs.get("trace_exporter_names") or ())
        if PINBA not in names and PINBA not in given:
            super()._configure(**kwargs)  # type: ignore[no-untyped-call]
            return
        kwargs["trace_exporter_names"] = [n for n in given if n != PINBA]
        kwargs["sampler"] = PinbaSampler(kwargs.get("sampler") or _configured_sampler())
        processor = PinbaSpanProcessor()  # a bad option is logged and leaves it disabled
        if processor.enabled:
            _capture_content_length()
        others = ",".join(n for n in names if n != PINBA) or "none"
        with _environment(_TRACES_EXPORTER, others):  # the SDK must not make the exporter too
            if "span_processors" in inspect.signature(_initialize_components).parameters:
                kwargs["span_processors"] = [processor, *(kwargs.get("span_processors") or ())]
                super()._configure(**kwargs)  # type: ignore[no-untyped-call]
            else:  # older SDKs: added once the provider exists
                super()._configure(**kwargs)  # type: ignore[no-untyped-call]
                add = getattr(_global_provider(), "add_span_processor", None)
                if add is not None:
                    add(processor)


def _configured_sampler() -> Sampler:
    """What the SDK would use: ``OTEL_TRACES_SAMPLER`` (with its entry points), else the
    SDK's default (``parentbased_always_on``)."""
    sampler = _import_sampler(os.environ.get("OTEL_TRACES_SAMPLER"))
    return sampler if sampler is not None else _sampling._get_from_env_or_default()


def _capture_content_length() -> None:
    """Have the HTTP server instrumentations record the response's Content-Length."""
    headers = [h.strip() for h in os.environ.get(_CAPTURE_RESPONSE_HEADERS, "").split(",")]
    headers = [h for h in headers if h]
    if not any(h.lower() in ("content-length", ".*") for h in headers):
        os.environ[_CAPTURE_RESPONSE_HEADERS] = ",".join([*headers, "content-length"])


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
