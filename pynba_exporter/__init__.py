"""pynba_exporter: the Pinba engine of pynba.

- :class:`PinbaRequest`, :class:`PinbaTimer`: what one Pinba packet carries;
- :func:`encode`, :func:`decode`: the wire codec, byte-compatible with the PHP ``pinba``
  extension (the reference client), no I/O;
- :class:`UdpTransport`, :class:`MemoryTransport`: sending, to one or many servers, never
  raising into the app, with counters in ``stats()``.
"""

from pynba_exporter._log import internal_errors
from pynba_exporter._model import PinbaRequest, PinbaTimer, TagValue
from pynba_exporter._transport import (
    MemoryTransport,
    PinbaSendError,
    Transport,
    TransportStats,
    UdpTransport,
    parse_addresses,
)
from pynba_exporter._wire import PinbaDecodeError, PinbaEncodeError, decode, encode

__all__ = [
    "MemoryTransport",
    "PinbaDecodeError",
    "PinbaEncodeError",
    "PinbaRequest",
    "PinbaSendError",
    "PinbaTimer",
    "TagValue",
    "Transport",
    "TransportStats",
    "UdpTransport",
    "decode",
    "encode",
    "internal_errors",
    "parse_addresses",
]
