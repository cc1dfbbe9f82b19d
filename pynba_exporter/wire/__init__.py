"""The Pinba wire codec: ``PinbaRequest`` <-> the bytes of one UDP datagram. No I/O here.

``encode`` builds exactly what the reference client (the PHP ``pinba`` extension) builds for the
same data, so real Pinba servers take our packets as they take PHP's:

- fields in ascending number order, hostname first (pinba2 drops a packet that does not start
  with field 1); fields 1-9, 16 and 17 always written, 19 only when non-empty, 18 only for nested
  requests;
- one dictionary shared by request tags and timer tags, filled in first-use order: request tags
  sorted by name, each VALUE before its NAME; then timers, each timer's tags sorted by name, NAME
  before VALUE;
- timers with identical tag sets merged into the first of them (hit counts, values and CPU summed);
- timer values and timer CPU times in whole microseconds, converted the way the reference client
  converts a ``double`` to a ``struct timeval`` (truncation, not rounding); request-level times
  written as float32 of the given value;
- tag values that are not strings written as PHP writes them: ``True`` -> ``"1"``, ``False`` ->
  ``""``, ints in decimal, floats with PHP's 14 significant digits (``0.1``, ``1.0E+20``).

``encode(..., packed=True)`` writes each repeated numeric field packed wherever that is smaller
(never for a single value): same content, about 30% smaller with many timers, accepted by
pinba_engine, pinba2 and every conforming protobuf parser.

``encode`` never writes what a server drops: negative, NaN or infinite floats become 0 (infinite
and too large ones the largest float32), float32 subnormals 0, integers are clamped to uint32,
hit counts to at least 1. What cannot be repaired (a tag mapping that is not a mapping, ``None``
for a name or tag value, an object whose ``str()`` raises, a timer without tags) raises
:class:`PinbaEncodeError`, naming the field.

``decode`` reads what any Pinba client sends (packed or not, any field order, unknown fields,
nested requests, strings that are not UTF-8: kept with ``surrogateescape``, so
``s.encode("utf-8", "surrogateescape")`` gives the original bytes back) and raises
:class:`PinbaDecodeError` for exactly what the servers reject.

Round trip: ``decode(encode(r)) == r`` once ``r`` is normalised the way ``encode`` normalises it:
tag values as text, identical timers merged, timer values to whole microseconds, floats to
float32.

The package, one job a module: ``_text`` (the reference client's text and number rules),
``_encode``, ``_fit`` (size limits), ``_pure`` (the pure-Python decoder and the servers' rules),
``_decode`` (``parse``/``decode``, through the protobuf runtime when installed), ``_errors``.
"""

from pynba_exporter.wire._decode import decode, parse
from pynba_exporter.wire._encode import encode
from pynba_exporter.wire._errors import (
    DECODE_ERROR_KINDS,
    DEFAULT_MAX_PACKET_SIZE,
    MAX_NESTING,
    PinbaDecodeError,
    PinbaEncodeError,
)
from pynba_exporter.wire._fit import FOLDED_TIMER_TAGS, MIN_PACKET_SIZE, TRUNCATED_TAG, Fitted, fit
from pynba_exporter.wire._pure import Packet
from pynba_exporter.wire._text import MAX_TIMER_SECONDS, php_text, usec

__all__ = [
    "DECODE_ERROR_KINDS",
    "DEFAULT_MAX_PACKET_SIZE",
    "FOLDED_TIMER_TAGS",
    "MAX_NESTING",
    "MAX_TIMER_SECONDS",
    "MIN_PACKET_SIZE",
    "TRUNCATED_TAG",
    "Fitted",
    "Packet",
    "PinbaDecodeError",
    "PinbaEncodeError",
    "decode",
    "encode",
    "fit",
    "parse",
    "php_text",
    "usec",
]
