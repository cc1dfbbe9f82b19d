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

:func:`instrument_metrics` exports the client's own counts (packets sent, dropped by reason,
lookups failed...: :mod:`pynba_exporter.health`) as OpenTelemetry metrics; the processor and
the exporter call it for the global meter provider when they are made.

This package is the only part of the project that imports ``opentelemetry``; one job a
module: ``_sdk`` (where the SDK keeps a span's fields), ``_mapping`` (span attributes -> Pinba
fields), ``_shared`` (configuration and sending), ``_processor``, ``_exporter``, ``_sampling``,
``_configurator``, ``_metrics``.
"""

from pynba_exporter.otel._configurator import PinbaConfigurator
from pynba_exporter.otel._exporter import PinbaSpanExporter
from pynba_exporter.otel._mapping import (
    ASGI_EVENT_ATTRIBUTE,
    REQUEST_TAG_PREFIX,
    SCRIPT_NAME_ATTRIBUTE,
    SCRIPT_NAME_ATTRIBUTES,
    TAG_PREFIX,
    TimerTags,
    default_timer_tags,
)
from pynba_exporter.otel._metrics import instrument_metrics
from pynba_exporter.otel._processor import PinbaSpanProcessor
from pynba_exporter.otel._sampling import PinbaSampler

__all__ = [
    "ASGI_EVENT_ATTRIBUTE",
    "REQUEST_TAG_PREFIX",
    "SCRIPT_NAME_ATTRIBUTE",
    "SCRIPT_NAME_ATTRIBUTES",
    "TAG_PREFIX",
    "PinbaConfigurator",
    "PinbaSampler",
    "PinbaSpanExporter",
    "PinbaSpanProcessor",
    "TimerTags",
    "default_timer_tags",
    "instrument_metrics",
]
