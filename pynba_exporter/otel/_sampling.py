"""PinbaSampler: every span records (Pinba needs every request), exporters see the sampled ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.context import (
    Context,
)
from opentelemetry.sdk.trace import sampling as _sampling
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import (
    Link,
    SpanKind,
    TraceState,
    get_tracer_provider,
)
from opentelemetry.util.types import Attributes

from pynba_exporter.log import errors

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
