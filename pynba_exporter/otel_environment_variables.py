"""Environment variables read by pynba's OpenTelemetry exporter and processor.

Registered under the ``opentelemetry_environment_variables`` entry point group, as the SDK's own
exporters register theirs. Precedence everywhere: constructor argument, then environment
variable, then default.
"""

OTEL_EXPORTER_PINBA_ENDPOINT = "OTEL_EXPORTER_PINBA_ENDPOINT"
"""
.. envvar:: OTEL_EXPORTER_PINBA_ENDPOINT

The Pinba server(s): ``host:port``, ``[v6]:port``, several separated by commas (a ``udp://``
prefix is accepted). Before ``PINBA_SERVER``; default ``127.0.0.1:30002``.
"""

PINBA_SERVER = "PINBA_SERVER"
"""
.. envvar:: PINBA_SERVER

The Pinba server(s), for every part of pynba (the classic API too).
"""

PINBA_ENABLED = "PINBA_ENABLED"
"""
.. envvar:: PINBA_ENABLED

``0`` turns reporting off. ``OTEL_SDK_DISABLED=true`` does too.
"""

PINBA_MAX_PACKET_SIZE = "PINBA_MAX_PACKET_SIZE"
"""
.. envvar:: PINBA_MAX_PACKET_SIZE

Largest datagram, 256 to 65507 (default); requests that do not fit are shrunk, never split.
"""

PINBA_PACKED = "PINBA_PACKED"
"""
.. envvar:: PINBA_PACKED

``1``: repeated fields packed (smaller packets, same content).
"""

PINBA_RESOLVE_INTERVAL = "PINBA_RESOLVE_INTERVAL"
"""
.. envvar:: PINBA_RESOLVE_INTERVAL

Seconds a looked-up server address is kept (default 60).
"""

PINBA_TIMER_RUSAGE = "PINBA_TIMER_RUSAGE"
"""
.. envvar:: PINBA_TIMER_RUSAGE

``0``: do not measure each timer's CPU (the span processor's child spans included).
"""
