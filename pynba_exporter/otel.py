"""OpenTelemetry -> Pinba: every local root span is a Pinba request, its descendants its timers.

Two ways in, both constructible with no arguments (configuration from the environment):

- :class:`PinbaSpanProcessor`: add it to a ``TracerProvider``. It sees spans start and end, so it
  measures CPU (of the thread, during the root; of each child that starts and ends on one
  thread), makes the request current so that classic ``pynba.timer()`` calls inside land in the
  same packet, and turns OpenTelemetry spans inside a classic request (``monitor``,
  ``ScriptMonitor``) into timers of that request. One packet when the local root ends.
- :class:`PinbaSpanExporter`: a ``SpanExporter`` for the SDK's ``BatchSpanProcessor`` (what
  ``OTEL_TRACES_EXPORTER=pinba`` gives). Spans arrive in batches, children before their root;
  they are buffered per trace, bounded in count and age, and each local root leaves as one
  packet with its descendants. Same packets as the processor, without CPU.

:class:`PinbaSampler` wraps the app's sampler so that every span records (Pinba needs every
request) while exporters still only get the spans the app's sampler chose.

This is the only module of the project that imports ``opentelemetry``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry.context import (
    _SUPPRESS_INSTRUMENTATION_KEY,
    Context,
    attach,
    detach,
    set_value,
)
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, StatusCode, TraceState
from opentelemetry.util.types import Attributes

from pynba_exporter import config
from pynba_exporter._transport import Transport, UdpTransport
from pynba_exporter.address import Address
from pynba_exporter.log import errors
from pynba_exporter.spans import (
    MEASURE,
    CpuSample,
    RequestSpan,
    cpu_delta,
    current_request,
    finish_and_send,
    hostname,
    thread_cpu,
)

__all__ = [
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


# --------------------------------------------------------------------------------------------
# Configuration


def _address(address: Address | None) -> Address:
    """Argument, then OTEL_EXPORTER_PINBA_ENDPOINT, then PINBA_SERVER (see ``config``)."""
    if address is not None:
        return address
    endpoint: str = config.value("server")
    # Accept URL forms too ("udp://host:port"), as OTel endpoints usually are URLs.
    return endpoint.split("://", 1)[-1].rstrip("/")


def _sdk_disabled() -> bool:
    text = os.environ.get("OTEL_SDK_DISABLED", "")
    try:
        return bool(text.strip()) and config.parse_bool(text)
    except ValueError:
        return False  # as the SDK reads it: only a true value disables


class _Sender:
    """What the processor and the exporter share: a transport and the on/off switch."""

    def __init__(
        self,
        address: Address | None,
        transport: Transport | None,
        enabled: bool | None,
        timer_tags: TimerTags | None,
        transport_options: dict[str, Any],
    ) -> None:
        self.enabled: bool = (
            (config.value("enabled") and not _sdk_disabled()) if enabled is None else enabled
        )
        self.transport: Transport = (
            transport
            if transport is not None
            else UdpTransport(_address(address), **transport_options)
        )
        self.timer_tags: TimerTags = timer_tags or default_timer_tags
        self.shut_down = False
        self.lock = threading.Lock()
        #: Spans not reported, by reason ("late", "abandoned", "overflow").
        self.dropped: dict[str, int] = {}

    def drop(self, reason: str, count: int = 1) -> None:
        with self.lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + count
        errors.log(("otel", reason), f"pynba: {count} span(s) not reported ({reason})")

    def send(self, request: RequestSpan, duration: float, *, cpu: bool) -> bool:
        """Finish and send the request of a root span by the one path every request takes.
        Our own sending must not be traced (an instrumented socket library would otherwise
        make a span per packet, and a packet per span...)."""
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            return finish_and_send(request, self.transport, "otel", duration=duration, cpu=cpu)
        finally:
            detach(token)


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
    text = str(host)
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
    when known, ``server`` (the peer host, without port) when known, and every attribute
    ``pinba.tag.<name>`` as tag ``<name>``. Statements, full URLs and ids never become tags.
    """
    a = _attributes(span)
    tags: dict[str, str] = {}
    category = operation = None
    db = _first(a, "db.system.name", "db.system")
    method = _first(a, "http.request.method", "http.method")
    if db is not None:
        category = "db"
        operation = _first(a, "db.operation.name", "db.operation") or span.name
    elif method is not None and span.kind == SpanKind.CLIENT:
        category, operation = "http", method
    elif _first(a, "rpc.system") is not None:
        category = "rpc"
        operation = _first(a, "rpc.method") or span.name
    elif _first(a, "messaging.system") is not None:
        category = "messaging"
        operation = _first(a, "messaging.operation.name", "messaging.operation") or span.name
    if category is not None:
        tags["group"] = f"{category}::{operation}"
        tags["category"] = category
    else:
        tags["group"] = span.name
    server = _first(a, "server.address", "net.peer.name", "net.sock.peer.addr")
    if server is None:
        url = _first(a, "url.full", "http.url")
        if url is not None and span.kind == SpanKind.CLIENT:
            server = urlsplit(str(url)).hostname
    if server is not None:
        tags["server"] = _without_port(server)
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
    override = a.get(SCRIPT_NAME_ATTRIBUTE)
    if override:
        request.script_name = str(override)
    if not own:
        return
    if not override and request.script_name is script0:
        route = _first(a, "http.route")
        if route is not None:
            request.script_name = str(route)
        else:
            path = _first(a, "url.path", "http.target", "http.url")
            if path is not None:
                request.script_name = _path(path)
            else:
                # HTTP server spans are named "{method} {target}" (semantic conventions), and
                # the stable WSGI instrumentation records the path nowhere else.
                method = _first(a, "http.request.method", "http.method")
                name = span.name
                if method is not None and name.startswith(f"{method} "):
                    name = _path(name[len(method) + 1 :])
                request.script_name = name
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
    )
    if size is not None and request.document_size == MEASURE:
        with contextlib.suppress(TypeError, ValueError):
            request.document_size = int(size)


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
    __slots__ = ("cpu0", "initial", "kind", "request", "thread", "token")

    def __init__(self, kind: int, request: RequestSpan, cpu0: CpuSample | None) -> None:
        self.kind = kind
        self.request = request
        self.cpu0 = cpu0
        self.thread = threading.get_ident()
        self.token: Any = None
        self.initial = (request.hostname, request.server_name, request.script_name, request.schema)


class PinbaSpanProcessor(SpanProcessor):
    """Reports each local root span and its descendants as one Pinba request.

    ``address``: the server(s) (``None``: ``$OTEL_EXPORTER_PINBA_ENDPOINT``, then
    ``$PINBA_SERVER``, then 127.0.0.1:30002), or a ready ``transport``. ``timer_tags``: a
    function of a span giving its timer tags (default :func:`default_timer_tags`).
    ``timer_rusage``: measure each child span's CPU (``$PINBA_TIMER_RUSAGE``, on).
    ``enabled``: ``$PINBA_ENABLED`` and not ``$OTEL_SDK_DISABLED``. ``max_spans``: spans
    followed at once (spans that never end must not grow memory without limit). Other keyword
    arguments go to the transport (``max_packet_size``, ``packed``...).
    """

    def __init__(
        self,
        address: Address | None = None,
        *,
        transport: Transport | None = None,
        enabled: bool | None = None,
        timer_tags: TimerTags | None = None,
        timer_rusage: bool | None = None,
        max_spans: int = 100_000,
        **transport_options: Any,
    ) -> None:
        self._sender = _Sender(address, transport, enabled, timer_tags, transport_options)
        self.timer_rusage: bool = config.value("timer_rusage", timer_rusage)
        self.max_spans = max_spans
        self._spans: dict[int, _InFlight] = {}

    @property
    def transport(self) -> Transport:
        return self._sender.transport

    @property
    def dropped(self) -> dict[str, int]:
        return dict(self._sender.dropped)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        sender = self._sender
        if not sender.enabled or sender.shut_down:
            return
        try:
            self._start(span)
        except Exception as exc:  # never into the app
            errors.log(("otel", "on_start"), f"pynba: span not followed: {exc!r}", exc_info=exc)

    def _start(self, span: Span) -> None:
        spans = self._spans
        if len(spans) >= self.max_spans:
            self._sender.drop("overflow")
            return
        context = span.get_span_context()
        parent = span.parent
        current = current_request.get()
        if current is not None and current.finished:
            current = None
        if parent is None or parent.is_remote:
            if current is not None:
                # Inside a request of the classic API (or of another root): the same HTTP
                # request if this is a server span, else one operation of it.
                kind = _ADOPTED if span.kind == SpanKind.SERVER else _TIMER
                cpu0 = thread_cpu() if kind == _TIMER and current.timer_rusage else None
                spans[context.span_id] = _InFlight(kind, current, cpu0)
                return
            own = RequestSpan(hostname(), "unknown", span.name, timer_rusage=self.timer_rusage)
            own.serving = True  # a classic middleware inside reports through this request
            entry = _InFlight(_OWN, own, None)
            entry.token = current_request.set(own)
            spans[context.span_id] = entry
            return
        owner = spans.get(parent.span_id)
        request: RequestSpan | None = owner.request if owner is not None else current
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
        if entry.kind == _TIMER:
            if request.finished:
                self._sender.drop("late")
                return
            u = s = 0.0
            if entry.cpu0 is not None and entry.thread == threading.get_ident():
                u, s = cpu_delta(entry.cpu0, thread_cpu())
            request.add_timer(self._sender.timer_tags(span), _duration(span), 1, u, s)
            return
        if entry.kind == _ADOPTED:
            _fill(request, span, own=False)
            return
        if entry.token is not None:
            with contextlib.suppress(ValueError):  # ended in another context than started in
                current_request.reset(entry.token)
        request.serving = False
        _fill(request, span, own=True, initial=entry.initial)
        # Ended on another thread than it started on: that thread's CPU says nothing of it.
        self._sender.send(request, _duration(span), cpu=entry.thread == threading.get_ident())

    def shutdown(self) -> None:
        if not self._sender.shut_down:
            self._sender.shut_down = True
            self._spans.clear()
            self._sender.transport.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # nothing waits: each request leaves when its root ends


# --------------------------------------------------------------------------------------------
# The exporter


class _Trace:
    __slots__ = ("born", "spans")

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.born = time.monotonic()


class PinbaSpanExporter(SpanExporter):
    """A ``SpanExporter``: each local root and its descendants become one Pinba request.

    Spans of a trace may come in several ``export()`` calls, children first: they wait in a
    buffer until their local root comes. The buffer is bounded: ``max_traces`` traces,
    ``max_spans`` spans, ``max_age`` seconds; what is evicted, and spans that come after their
    root left, are counted in ``dropped`` and logged. Other options as
    :class:`PinbaSpanProcessor` (no CPU: exported spans do not carry it).
    """

    def __init__(
        self,
        address: Address | None = None,
        *,
        transport: Transport | None = None,
        enabled: bool | None = None,
        timer_tags: TimerTags | None = None,
        max_traces: int = 10_000,
        max_spans: int = 100_000,
        max_age: float = 300.0,
        **transport_options: Any,
    ) -> None:
        self._sender = _Sender(address, transport, enabled, timer_tags, transport_options)
        self.max_traces = max_traces
        self.max_spans = max_spans
        self.max_age = max_age
        self._traces: OrderedDict[int, _Trace] = OrderedDict()
        self._buffered = 0
        # Span ids of the requests sent recently: a child arriving after them is late.
        self._done: OrderedDict[int, None] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def transport(self) -> Transport:
        return self._sender.transport

    @property
    def dropped(self) -> dict[str, int]:
        return dict(self._sender.dropped)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        sender = self._sender
        if sender.shut_down:
            return SpanExportResult.FAILURE
        if not sender.enabled:
            return SpanExportResult.SUCCESS
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
        late = 0
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
            requests = [(self._request(root), _duration(root)) for root in roots]
            evicted = self._evict()
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
        for span in sorted(mine, key=lambda s: s.start_time or 0):
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
        now = time.monotonic()
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
        self._sender.transport.close()

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
        if result.decision == Decision.DROP:
            return SamplingResult(Decision.RECORD_ONLY, result.attributes, result.trace_state)
        return result

    def get_description(self) -> str:
        return f"PinbaSampler{{{self.delegate.get_description()}}}"
