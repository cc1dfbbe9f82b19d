"""pynba_exporter: the Pinba engine (records, wire codec, transport) and the OpenTelemetry
bridge."""

from pynba_exporter._model import PinbaRequest, PinbaTimer
from pynba_exporter._wire import PinbaDecodeError, PinbaEncodeError, decode, encode

__all__ = [
    "PinbaDecodeError",
    "PinbaEncodeError",
    "PinbaRequest",
    "PinbaTimer",
    "decode",
    "encode",
]
