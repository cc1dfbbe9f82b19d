"""PinbaSpanExporter: spans buffered per trace until their root comes, as exporters get them."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from pynba_exporter._transport import Transport
from pynba_exporter.address import Address
from pynba_exporter.log import errors
from pynba_exporter.otel import _shared
from pynba_exporter.otel._mapping import (
    TimerTags,
    _duration,
    _fill,
    _is_asgi_event,
    _is_local_root,
    _is_request,
)
from pynba_exporter.otel._sampling import _warn_if_sampling_hides_requests
from pynba_exporter.otel._shared import _Sender
from pynba_exporter.spans import (
    RequestSpan,
    hostname,
)

# --------------------------------------------------------------------------------------------
# The exporter


class _Trace:
    __slots__ = ("born", "spans")

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.born = _shared._now()


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
        setting = self._sender.setting
        self.max_traces: int = setting("max_traces", max_traces, int)
        self.max_spans: int = setting("max_spans", max_spans, int)
        self.max_age: float = setting("max_age", max_age, float)
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
        now = _shared._now()
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
