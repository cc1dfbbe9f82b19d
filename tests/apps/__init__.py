"""Real apps for the OpenTelemetry bridge tests: importable, and runnable as servers."""
