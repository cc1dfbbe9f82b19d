"""PinbaSpanProcessor: spans followed from start to end, one packet when the request ends."""

from __future__ import annotations

import threading
import weakref
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanContext, SpanKind, get_current_span

from pynba_exporter._transport import Transport
from pynba_exporter.address import Address
from pynba_exporter.log import errors
from pynba_exporter.otel import _sdk, _shared
from pynba_exporter.otel._mapping import (
    ASGI_EVENT_ATTRIBUTE,
    TimerTags,
    _duration,
    _fill,
    _is_request,
    default_timer_tags,
    timer_spec,
)
from pynba_exporter.otel._sdk import IS_REMOTE, SPAN_ID
from pynba_exporter.otel._shared import _Sender
from pynba_exporter.spans import (
    CpuSample,
    RequestSpan,
    TimerSpec,
    cpu_delta,
    current_request,
    hostname,
    opened_request,
    thread_cpu,
)

# --------------------------------------------------------------------------------------------
# The processor


#: What a followed span is: the root of a request of its own, a SERVER span adopted by a classic
#: request, a timer measured on its own (CPU, or in a classic request), or a child of an own
#: request without CPU (all of them share one entry).
_OWN, _ADOPTED, _TIMER, _CHILD = range(4)


class _InFlight:
    __slots__ = ("born", "children", "cpu0", "initial", "kind", "request", "thread")

    def __init__(
        self, kind: int, request: RequestSpan, cpu0: CpuSample | None, born: float | None = None
    ) -> None:
        self.kind = kind
        self.request = request
        self.cpu0 = cpu0
        # The thread matters only for CPU: a span's or its request's own.
        self.thread = threading.get_ident() if cpu0 is not None or kind == _OWN else 0
        self.born = _shared._now() if born is None else born
        #: The entry every span under this one shares, if they can (no CPU of their own, the
        #: request is ours): a child starts with one dict lookup and one dict insert. (A child
        #: entry does not point at itself: a cycle would leave each request to the GC.)
        self.children: _InFlight | None = None
        if kind == _OWN:
            self.initial = (
                request.hostname, request.server_name, request.script_name, request.schema
            )  # fmt: skip
            if not request.timer_rusage:
                self.children = _InFlight(_CHILD, request, None, self.born)


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
    ``max_spans``: spans followed at once (``MAX_SPANS``, 100,000); ``max_age``: seconds after
    which an unfinished span whose request is over is evicted and counted (``MAX_AGE``, 300);
    a running request is never evicted by age, only when ``max_spans`` is reached.
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
        setting = self._sender.setting
        self.timer_rusage: bool = setting("span_rusage", timer_rusage, bool)
        self.max_spans: int = setting("max_spans", max_spans, int)
        self.max_age: float = setting("max_age", max_age, float)
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

    def requests_seen(self) -> bool:
        """True once a request was sent, or while a root that may be one is followed."""
        if self._sender.stats()["requests"]:
            return True
        try:
            return any(entry.kind == _OWN for entry in list(self._spans.values()))
        except RuntimeError:  # changed meanwhile: spans are coming
            return True

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        # A child of a request of ours, without CPU, shares its request's entry: the common
        # case, one dict lookup and one dict insert (no entry of its own to make: a child costs
        # the processor about a third less). Nothing is followed while disabled or shut down,
        # so the lookup finds nothing then.
        try:
            context, parent = _sdk.started(span)
            if context is None:
                return
            if parent is not None and not parent[IS_REMOTE]:
                spans = self._spans
                owner = spans.get(parent[SPAN_ID])
                if owner is not None:
                    shared = owner if owner.kind == _CHILD else owner.children
                    if (
                        shared is not None
                        and not shared.request.finished
                        and len(spans) < self.max_spans
                    ):
                        spans[context[SPAN_ID]] = shared
                        return
            sender = self._sender
            if not sender.enabled or sender.shut_down:
                return
            self._start(span, context[SPAN_ID], parent)
        except Exception as exc:  # never into the app
            errors.log(("otel", "on_start"), f"pynba: span not followed: {exc!r}", exc_info=exc)

    def _evict(self, pressed: bool = False) -> None:
        """Forget the spans followed for more than ``max_age`` whose request is over (spans
        that never ended: an instrumentation's bug), oldest first (the dict keeps the order
        of starts). A span whose request is still running is kept, moved to the back: a long
        request (an export, an upload, a long poll) is reported when its root ends, with its
        timers, and its age counts again from now. Only when ``pressed`` (``max_spans``
        reached) are old spans of running requests evicted too, their requests abandoned,
        counted, never sent: memory first."""
        spans = self._spans
        now = _shared._now()
        limit = now - self.max_age
        try:
            if next(iter(spans.values())).born >= limit:
                return  # the common case: the oldest span is young enough
        except (StopIteration, RuntimeError):  # empty, or changed meanwhile by another thread
            return
        if not self._evicting.acquire(blocking=False):
            return  # another thread is at it
        evicted = 0
        try:
            # Each span looked at once: the running ones moved to the back come last.
            for _ in range(len(spans)):
                try:
                    span_id = next(iter(spans))
                    entry = spans[span_id]
                except (StopIteration, KeyError, RuntimeError):  # ended meanwhile
                    break
                if entry.born >= limit:
                    break
                if spans.pop(span_id, None) is None:
                    continue  # ended meanwhile
                if not pressed and not entry.request.finished:
                    # Still running: kept, at the back, and looked at again in max_age (not at
                    # every pass: thousands of open websockets would cost every span start).
                    entry.born = now
                    spans[span_id] = entry
                    continue
                evicted += 1
                if entry.kind == _OWN:
                    entry.request.finished = True
                    entry.request.serving = False
        finally:
            self._evicting.release()
        if evicted:
            self._sender.drop("evicted", evicted)

    def _start(self, span: Span, span_id: int, parent: SpanContext | None) -> None:
        spans = self._spans
        self._starts += 1
        # Ages move slowly: a look every 64 starts is enough, and always before refusing one.
        if not self._starts & 63 or len(spans) >= self.max_spans:
            self._evict(pressed=len(spans) >= self.max_spans)
            if len(spans) >= self.max_spans:
                self._sender.drop("overflow")
                return
        # Only a request of the classic API (monitor, ScriptMonitor) set in this context can
        # take in a local root: an OTel request is bound to its own span's context.
        classic = opened_request()
        if classic is not None and classic.finished:
            classic = None
        if parent is None or parent[IS_REMOTE]:
            if classic is not None:
                # Inside a request of the classic API: the same HTTP request if this is a
                # server span, else one operation of it.
                kind = _ADOPTED if span.kind == SpanKind.SERVER else _TIMER
                cpu0 = thread_cpu() if kind == _TIMER and classic.timer_rusage else None
                spans[span_id] = _InFlight(kind, classic, cpu0)
                return
            # Followed until it ends: whether it is a request is known then (the app may
            # mark it with pinba.script_name while it runs).
            own = RequestSpan(hostname(), "unknown", span.name, timer_rusage=self.timer_rusage)
            own.serving = True  # a classic middleware inside reports through this request
            spans[span_id] = _InFlight(_OWN, own, None)
            return
        owner = spans.get(parent[SPAN_ID])
        request: RequestSpan | None = owner.request if owner is not None else classic
        if request is None or request.finished:
            return  # its request is gone or unknown: the exporter-side rules would drop it too
        cpu0 = thread_cpu() if request.timer_rusage else None
        spans[span_id] = _InFlight(_TIMER, request, cpu0)

    def on_end(self, span: ReadableSpan) -> None:
        try:
            context, a, name, kind, start, end = _sdk.ended(span)
            entry = self._spans.pop(context[SPAN_ID], None) if context is not None else None
            if entry is None:
                return
            if entry.kind in (_OWN, _ADOPTED):
                self._end_root(span, entry)
                return
            # A child span: a timer of its request.
            request = entry.request
            sender = self._sender
            if request.finished:
                sender.drop("late")
                return
            if ASGI_EVENT_ATTRIBUTE in a and not sender.asgi_events:
                return
            tags_of = sender.timer_tags
            # The default tags are made once per span shape (see timer_spec), not per span.
            spec = (
                timer_spec(span, a, name, kind)
                if tags_of is default_timer_tags
                else TimerSpec.of(tags_of(span))
            )
            value = (end - start) / 1e9 if end > start else 0.0  # both set: the span ended
            if entry.cpu0 is None:
                request.add(spec, value)
                return
            u = s = 0.0
            if entry.thread == threading.get_ident():
                u, s = cpu_delta(entry.cpu0, thread_cpu())
            request.add(spec, value, 1, u, s)
        except Exception as exc:
            errors.log(("otel", "on_end"), f"pynba: span not reported: {exc!r}", exc_info=exc)

    def _end_root(self, span: ReadableSpan, entry: _InFlight) -> None:
        request = entry.request
        if entry.kind == _ADOPTED:
            _fill(request, span, own=False)
            return
        sender = self._sender
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
