"""Where the OpenTelemetry SDK keeps a span's fields: the one module that knows.

The SDK's public properties (``span.context``, ``span.attributes``, ``span.start_time``...) are
Python functions, several per span, and ``span.attributes`` wraps the attributes in a mapping
whose every lookup runs Python code. The SDK's spans keep the same values in private attributes
that plain attribute loads read. Whether this SDK keeps them there is checked
once, at import, on a real SDK span started and ended: if every private field holds what its
property returns, the readers below read the private fields, else the public properties.
Nothing else in ``pynba_exporter.otel`` touches a span's private attributes.

A ``SpanContext`` is the tuple its type declares, ``(trace_id, span_id, is_remote, ...)``:
readers index it with :data:`SPAN_ID` and :data:`IS_REMOTE` rather than call its properties.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any, Final, NamedTuple

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    ReadableSpan,
    Span,
    SpanLimits,
    SpanProcessor,
    TracerProvider,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, set_span_in_context

#: Indexes of a ``SpanContext`` (a tuple by its declared type).
SPAN_ID: Final = 1
IS_REMOTE: Final = 2


def _private_attributes(span: ReadableSpan) -> Mapping[str, Any]:
    # The dict inside the SDK's BoundedAttributes; a span made by hand may hold a plain
    # mapping, or none.
    inner = getattr(getattr(span, "_attributes", None), "_dict", None)
    return inner if isinstance(inner, dict) else _public_attributes(span)


def _public_attributes(span: ReadableSpan) -> Mapping[str, Any]:
    return span.attributes or {}


class Readers(NamedTuple):
    """How spans are read: each reader is one call, whichever way it reads."""

    #: A span being started (``on_start``): ``(context, parent)``.
    started: Callable[[Any], tuple[SpanContext | None, SpanContext | None]]
    #: An ended span (``on_end``): ``(context, attributes, name, kind, start_time, end_time)``.
    ended: Callable[[Any], tuple[Any, ...]]
    #: A span's attributes as a mapping, for reading only.
    attributes: Callable[[ReadableSpan], Mapping[str, Any]]


PUBLIC: Final = Readers(
    attrgetter("context", "parent"),
    attrgetter("context", "attributes", "name", "kind", "start_time", "end_time"),
    _public_attributes,
)


def _started(span: Any) -> tuple[SpanContext | None, SpanContext | None]:
    return span._context, span._parent


def _ended(span: Any) -> tuple[Any, ...]:
    return (
        span._context, span._attributes._dict, span._name, span._kind, span._start_time,
        span._end_time,
    )  # fmt: skip


# Python functions, not attrgetters: their attribute loads specialize to the SDK's span
# classes, where attrgetter's generic lookups cost a child span about 2,500 instructions more.
PRIVATE: Final = Readers(_started, _ended, _private_attributes)


def _private_fields_agree() -> bool:
    """True if a real SDK span, as a processor sees it when it starts and when it ends, keeps
    in its private fields what its public properties return."""
    seen: list[Any] = []

    class Keep(SpanProcessor):
        def on_start(self, span: Span, parent_context: Context | None = None) -> None:
            seen.append(span)

        def on_end(self, span: ReadableSpan) -> None:
            seen.append(span)

    try:
        provider = TracerProvider(
            sampler=ALWAYS_ON, resource=Resource({}), shutdown_on_exit=False,
            span_limits=SpanLimits(max_span_attributes=8, max_span_attribute_length=8),
        )  # fmt: skip
        provider.add_span_processor(Keep())
        remote = NonRecordingSpan(SpanContext(1, 3, True))
        span = provider.get_tracer("pynba").start_span(
            "probe", set_span_in_context(remote, Context()), SpanKind.CLIENT, {"a": "b"},
            start_time=5,
        )  # fmt: skip
        span.end(end_time=7)
        started, ended = seen
        context: Any
        parent: Any
        context, parent = PRIVATE.started(started)
        fields = PRIVATE.ended(ended)
        public = PUBLIC.ended(ended)
        return (
            (context, parent) == PUBLIC.started(started)
            and (context[SPAN_ID], context[IS_REMOTE]) == (context.span_id, context.is_remote)
            and (parent[SPAN_ID], parent[IS_REMOTE]) == (3, True)
            and fields[0] is public[0]
            and type(fields[1]) is dict
            and fields[1] == dict(public[1]) == {"a": "b"}
            and fields[2:] == public[2:] == ("probe", SpanKind.CLIENT, 5, 7)
            and PRIVATE.attributes(ended) is fields[1]
        )
    except Exception:  # anything unexpected: the public way
        return False


#: Whether this SDK's spans are read through their private fields (see above).
PRIVATE_AGREES: Final = _private_fields_agree()

started, ended, attributes = PRIVATE if PRIVATE_AGREES else PUBLIC
