"""Environment variables read by pynba (the OpenTelemetry bridge and the classic API alike).

Registered under the ``opentelemetry_environment_variables`` entry point group, as the SDK's own
exporters register theirs, so that ``opentelemetry-instrument`` offers each ``OTEL_*`` one as a
command-line flag. The table they come from is :data:`pynba_exporter.config.OPTIONS` (a test
checks that the two agree); precedence everywhere: argument, then environment, then default.
"""

OTEL_EXPORTER_PINBA_ENDPOINT = "OTEL_EXPORTER_PINBA_ENDPOINT"
"""
.. envvar:: OTEL_EXPORTER_PINBA_ENDPOINT

The Pinba server(s): host, host:port, [v6]:port, several separated by commas (option ``server``,
default ``'127.0.0.1:30002'``).
"""

PINBA_SERVER = "PINBA_SERVER"
"""
.. envvar:: PINBA_SERVER

The Pinba server(s): host, host:port, [v6]:port, several separated by commas (option ``server``,
default ``'127.0.0.1:30002'``). Alias of ``OTEL_EXPORTER_PINBA_ENDPOINT``.
"""

OTEL_EXPORTER_PINBA_ENABLED = "OTEL_EXPORTER_PINBA_ENABLED"
"""
.. envvar:: OTEL_EXPORTER_PINBA_ENABLED

Report requests at all (0: a pass-through) (option ``enabled``, default ``True``).
"""

PINBA_ENABLED = "PINBA_ENABLED"
"""
.. envvar:: PINBA_ENABLED

Report requests at all (0: a pass-through) (option ``enabled``, default ``True``). Alias of
``OTEL_EXPORTER_PINBA_ENABLED``.
"""

OTEL_EXPORTER_PINBA_TIMER_RUSAGE = "OTEL_EXPORTER_PINBA_TIMER_RUSAGE"
"""
.. envvar:: OTEL_EXPORTER_PINBA_TIMER_RUSAGE

Measure each timer's CPU (two clock reads) (option ``timer_rusage``, default ``True``).
"""

PINBA_TIMER_RUSAGE = "PINBA_TIMER_RUSAGE"
"""
.. envvar:: PINBA_TIMER_RUSAGE

Measure each timer's CPU (two clock reads) (option ``timer_rusage``, default ``True``). Alias of
``OTEL_EXPORTER_PINBA_TIMER_RUSAGE``.
"""

OTEL_EXPORTER_PINBA_SPAN_RUSAGE = "OTEL_EXPORTER_PINBA_SPAN_RUSAGE"
"""
.. envvar:: OTEL_EXPORTER_PINBA_SPAN_RUSAGE

Measure each OTel child span's CPU too (option ``span_rusage``, default ``False``).
"""

PINBA_SPAN_RUSAGE = "PINBA_SPAN_RUSAGE"
"""
.. envvar:: PINBA_SPAN_RUSAGE

Measure each OTel child span's CPU too (option ``span_rusage``, default ``False``). Alias of
``OTEL_EXPORTER_PINBA_SPAN_RUSAGE``.
"""

OTEL_EXPORTER_PINBA_PACKED = "OTEL_EXPORTER_PINBA_PACKED"
"""
.. envvar:: OTEL_EXPORTER_PINBA_PACKED

Write repeated fields packed: smaller packets (option ``packed``, default ``False``).
"""

PINBA_PACKED = "PINBA_PACKED"
"""
.. envvar:: PINBA_PACKED

Write repeated fields packed: smaller packets (option ``packed``, default ``False``). Alias of
``OTEL_EXPORTER_PINBA_PACKED``.
"""

OTEL_EXPORTER_PINBA_MAX_PACKET_SIZE = "OTEL_EXPORTER_PINBA_MAX_PACKET_SIZE"
"""
.. envvar:: OTEL_EXPORTER_PINBA_MAX_PACKET_SIZE

Largest datagram (256 to 65507); larger shrink (option ``max_packet_size``, default ``65507``).
"""

PINBA_MAX_PACKET_SIZE = "PINBA_MAX_PACKET_SIZE"
"""
.. envvar:: PINBA_MAX_PACKET_SIZE

Largest datagram (256 to 65507); larger shrink (option ``max_packet_size``, default ``65507``).
Alias of ``OTEL_EXPORTER_PINBA_MAX_PACKET_SIZE``.
"""

OTEL_EXPORTER_PINBA_RESOLVE_INTERVAL = "OTEL_EXPORTER_PINBA_RESOLVE_INTERVAL"
"""
.. envvar:: OTEL_EXPORTER_PINBA_RESOLVE_INTERVAL

Seconds a looked-up server address is kept (option ``resolve_interval``, default ``60.0``).
"""

PINBA_RESOLVE_INTERVAL = "PINBA_RESOLVE_INTERVAL"
"""
.. envvar:: PINBA_RESOLVE_INTERVAL

Seconds a looked-up server address is kept (option ``resolve_interval``, default ``60.0``). Alias
of ``OTEL_EXPORTER_PINBA_RESOLVE_INTERVAL``.
"""

OTEL_EXPORTER_PINBA_MAX_SCRIPT_NAMES = "OTEL_EXPORTER_PINBA_MAX_SCRIPT_NAMES"
"""
.. envvar:: OTEL_EXPORTER_PINBA_MAX_SCRIPT_NAMES

Distinct script names per process (see naming) (option ``max_script_names``, default ``1000``).
"""

PINBA_MAX_SCRIPT_NAMES = "PINBA_MAX_SCRIPT_NAMES"
"""
.. envvar:: PINBA_MAX_SCRIPT_NAMES

Distinct script names per process (see naming) (option ``max_script_names``, default ``1000``).
Alias of ``OTEL_EXPORTER_PINBA_MAX_SCRIPT_NAMES``.
"""

OTEL_EXPORTER_PINBA_MAX_SERVER_NAMES = "OTEL_EXPORTER_PINBA_MAX_SERVER_NAMES"
"""
.. envvar:: OTEL_EXPORTER_PINBA_MAX_SERVER_NAMES

Distinct server names per process (see naming) (option ``max_server_names``, default ``100``).
"""

PINBA_MAX_SERVER_NAMES = "PINBA_MAX_SERVER_NAMES"
"""
.. envvar:: PINBA_MAX_SERVER_NAMES

Distinct server names per process (see naming) (option ``max_server_names``, default ``100``).
Alias of ``OTEL_EXPORTER_PINBA_MAX_SERVER_NAMES``.
"""

OTEL_EXPORTER_PINBA_ASGI_EVENTS = "OTEL_EXPORTER_PINBA_ASGI_EVENTS"
"""
.. envvar:: OTEL_EXPORTER_PINBA_ASGI_EVENTS

OTel: the ASGI instrumentation's http send/receive spans as timers (option ``asgi_events``, default
``False``).
"""

PINBA_ASGI_EVENTS = "PINBA_ASGI_EVENTS"
"""
.. envvar:: PINBA_ASGI_EVENTS

OTel: the ASGI instrumentation's http send/receive spans as timers (option ``asgi_events``, default
``False``). Alias of ``OTEL_EXPORTER_PINBA_ASGI_EVENTS``.
"""

OTEL_EXPORTER_PINBA_MAX_SPANS = "OTEL_EXPORTER_PINBA_MAX_SPANS"
"""
.. envvar:: OTEL_EXPORTER_PINBA_MAX_SPANS

OTel: unfinished spans followed at once (option ``max_spans``, default ``100000``).
"""

PINBA_MAX_SPANS = "PINBA_MAX_SPANS"
"""
.. envvar:: PINBA_MAX_SPANS

OTel: unfinished spans followed at once (option ``max_spans``, default ``100000``). Alias of
``OTEL_EXPORTER_PINBA_MAX_SPANS``.
"""

OTEL_EXPORTER_PINBA_MAX_AGE = "OTEL_EXPORTER_PINBA_MAX_AGE"
"""
.. envvar:: OTEL_EXPORTER_PINBA_MAX_AGE

OTel: seconds an unfinished span is followed, then evicted and counted (option ``max_age``, default
``300.0``).
"""

PINBA_MAX_AGE = "PINBA_MAX_AGE"
"""
.. envvar:: PINBA_MAX_AGE

OTel: seconds an unfinished span is followed, then evicted and counted (option ``max_age``, default
``300.0``). Alias of ``OTEL_EXPORTER_PINBA_MAX_AGE``.
"""

OTEL_EXPORTER_PINBA_MAX_TRACES = "OTEL_EXPORTER_PINBA_MAX_TRACES"
"""
.. envvar:: OTEL_EXPORTER_PINBA_MAX_TRACES

OTel exporter: traces waiting for their root (option ``max_traces``, default ``10000``).
"""

PINBA_MAX_TRACES = "PINBA_MAX_TRACES"
"""
.. envvar:: PINBA_MAX_TRACES

OTel exporter: traces waiting for their root (option ``max_traces``, default ``10000``). Alias of
``OTEL_EXPORTER_PINBA_MAX_TRACES``.
"""

OTEL_EXPORTER_PINBA_IDLE_WARNING = "OTEL_EXPORTER_PINBA_IDLE_WARNING"
"""
.. envvar:: OTEL_EXPORTER_PINBA_IDLE_WARNING

Zero-code: warn once if no request span came in that many seconds (0: never) (option
``idle_warning``, default ``60.0``).
"""

PINBA_IDLE_WARNING = "PINBA_IDLE_WARNING"
"""
.. envvar:: PINBA_IDLE_WARNING

Zero-code: warn once if no request span came in that many seconds (0: never) (option
``idle_warning``, default ``60.0``). Alias of ``OTEL_EXPORTER_PINBA_IDLE_WARNING``.
"""
