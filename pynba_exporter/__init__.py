"""pynba_exporter: the Pinba engine of pynba.

- :class:`PinbaRequest`, :class:`PinbaTimer`: what one Pinba packet carries;
- :func:`encode`, :func:`decode`: the wire codec, byte-compatible with the PHP ``pinba``
  extension (the reference client), no I/O;
- :class:`UdpTransport`, :class:`MemoryTransport`: sending, to one or many servers, never
  raising into the app, with counters in ``stats()``;
- modules for those who build on the engine: ``wire`` (the codec), ``address``, ``config``
  (every option), ``spans`` (the request model and its one way out), ``naming`` (bounded
  script names), ``log`` (the ``pynba`` logger, repeats suppressed), ``health`` (the client's
  own counts: ``client_stats()``), ``testing`` (``PinbaCapture``, the ``pinba`` pytest
  fixture), ``collector``;
- :class:`PinbaSpanProcessor`, :class:`PinbaSpanExporter`, :class:`PinbaSampler`: the
  OpenTelemetry bridge (``pynba_exporter.otel``, imported on first use).
"""

from typing import TYPE_CHECKING, Any

from pynba_exporter import health  # noqa: F401 - its summary listens for lost data from now on
from pynba_exporter._model import PinbaRequest, PinbaTimer, RequestLike, TagValue, TimerLike
from pynba_exporter._transport import MemoryTransport, PinbaSendError, Transport, TransportStats
from pynba_exporter._udp import UdpTransport
from pynba_exporter.address import Address, parse_addresses
from pynba_exporter.log import internal_errors
from pynba_exporter.wire import PinbaDecodeError, PinbaEncodeError, decode, encode

if TYPE_CHECKING:
    from pynba_exporter.otel import PinbaSampler, PinbaSpanExporter, PinbaSpanProcessor

# The OpenTelemetry bridge is imported on first use: `import pynba_exporter` (and `import pynba`)
# must not import the OpenTelemetry SDK, which the classic API does not need.
_OTEL_NAMES = ("PinbaSampler", "PinbaSpanExporter", "PinbaSpanProcessor")


def __getattr__(name: str) -> Any:
    if name in _OTEL_NAMES:
        from pynba_exporter import otel  # noqa: PLC0415 - lazily, on purpose

        return getattr(otel, name)
    raise AttributeError(f"module 'pynba_exporter' has no attribute {name!r}")


__all__ = [
    "Address",
    "MemoryTransport",
    "PinbaDecodeError",
    "PinbaEncodeError",
    "PinbaRequest",
    "PinbaSampler",
    "PinbaSendError",
    "PinbaSpanExporter",
    "PinbaSpanProcessor",
    "PinbaTimer",
    "RequestLike",
    "TagValue",
    "TimerLike",
    "Transport",
    "TransportStats",
    "UdpTransport",
    "decode",
    "encode",
    "internal_errors",
    "parse_addresses",
]
