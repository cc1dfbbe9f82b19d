"""The OpenTelemetry bridge's cost, in interleaved rounds with a connected UDP send as the unit.

    python benchmarks/bench_otel.py

One root span with 5 children through the real SDK: with a no-op ``SimpleSpanProcessor`` (the
SDK's own cost), with ``PinbaSpanProcessor`` instead (sending over UDP to a listener drained by
another process), with the processor and per-span CPU off, and with ``PinbaSpanExporter`` under
``BatchSpanProcessor`` (the application thread's share; the export runs in the background).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from _common import Figure, connected_send, draining_listener, header, rounds, row, table
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from pynba_exporter.otel import PinbaSpanExporter, PinbaSpanProcessor


class NoopExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


PROVIDERS: list[TracerProvider] = []


def workload(processor: Any) -> Callable[[], None]:
    provider = TracerProvider()
    PROVIDERS.append(provider)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("bench")
    attributes = {"db.system": "postgresql", "db.operation": "SELECT", "server.address": "db1"}

    def run() -> None:
        with tracer.start_as_current_span("GET /product/{id}", attributes={"http.route": "/p"}):
            for _ in range(5):
                with tracer.start_as_current_span("query", attributes=attributes):
                    pass

    return run


def main() -> None:
    with draining_listener() as address:
        target = f"{address[0]}:{address[1]}"
        cases = {
            "SDK + no-op SimpleSpanProcessor (baseline)": workload(
                SimpleSpanProcessor(NoopExporter())
            ),
            "SDK + PinbaSpanProcessor": workload(PinbaSpanProcessor(target)),
            "SDK + PinbaSpanProcessor, span CPU on": workload(
                PinbaSpanProcessor(target, timer_rusage=True)
            ),
            "SDK + BatchSpanProcessor(PinbaSpanExporter)": workload(
                BatchSpanProcessor(PinbaSpanExporter(target), max_queue_size=1_000_000)
            ),
        }
        units, times = rounds(cases, connected_send(address))
        for provider in PROVIDERS:  # flush the batch exporter while the listener still runs
            provider.shutdown()
    sdk = times["SDK + no-op SimpleSpanProcessor (baseline)"]
    print(f"Python {sys.version.split()[0]}, a root span with 5 children; ratios to one send\n")
    print(table(units, times))
    print("\nOver the SDK with a no-op processor, per round:\n")
    print(header())
    for name, values in times.items():
        over = Figure(tuple((t / s - 1) * 100 for t, s in zip(values, sdk)))
        print(row(name, over, unit="%"))


if __name__ == "__main__":
    main()
