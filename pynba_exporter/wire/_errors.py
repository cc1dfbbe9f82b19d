"""The codec's limits and its two exceptions.

A decode error carries a ``kind``: one stable word per rule of the servers that the bytes broke,
so that receivers count invalid packets by kind without reading the message, which is for people.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DECODE_ERROR_KINDS",
    "DEFAULT_MAX_PACKET_SIZE",
    "FLT_MAX",
    "FLT_MIN_NORMAL",
    "MAX_NESTING",
    "UINT32_MAX",
    "PinbaDecodeError",
    "PinbaEncodeError",
]

UINT32_MAX: Final = 0xFFFFFFFF
FLT_MAX: Final = 3.4028234663852886e38
FLT_MIN_NORMAL: Final = 1.1754943508222875e-38
#: The largest UDP payload over IPv4; both servers read with a 64 KiB buffer.
DEFAULT_MAX_PACKET_SIZE: Final = 65507
#: Nested requests deeper than this are refused by ``decode`` (servers read one level).
MAX_NESTING: Final = 8

# The kinds of decode errors.
TRUNCATED: Final = "truncated"  # a field runs past the end of the packet
WIRE_TYPE: Final = "wire_type"  # a known field with another wire type than the schema's
MISSING_FIELD: Final = "missing_field"  # a required field (1 to 9) is absent
INVALID_FLOAT: Final = "invalid_float"  # NaN, infinite, subnormal or a negative timer value
TIMER_ARRAYS: Final = "timer_arrays"  # hit_count, value and tag_count of different lengths
TIMER_TAG_COUNTS: Final = "timer_tag_counts"  # tag counts and tag arrays disagree
REQUEST_TAG_COUNTS: Final = "request_tag_counts"  # request tag names and values disagree
INDEX_RANGE: Final = "index_out_of_range"  # a tag index past the end of the dictionary
ZERO_HITS: Final = "zero_hits"  # a timer with hit_count 0
NESTED: Final = "nested"  # a nested request that is invalid, or nested too deep
MALFORMED: Final = "malformed"  # anything else that is not a protobuf message

#: Every ``PinbaDecodeError.kind``.
DECODE_ERROR_KINDS: Final = (
    TRUNCATED, WIRE_TYPE, MISSING_FIELD, INVALID_FLOAT, TIMER_ARRAYS, TIMER_TAG_COUNTS,
    REQUEST_TAG_COUNTS, INDEX_RANGE, ZERO_HITS, NESTED, MALFORMED,
)  # fmt: skip


class PinbaEncodeError(ValueError, TypeError):
    """A request that cannot be turned into a packet; ``field`` names the culprit.

    It is both a ``ValueError`` and a ``TypeError`` so that callers can catch whichever fits.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class PinbaDecodeError(ValueError):
    """Bytes that a Pinba server would reject: ``reason`` says why, ``kind`` is one of
    :data:`DECODE_ERROR_KINDS`."""

    def __init__(self, reason: str, kind: str = MALFORMED) -> None:
        self.reason = reason
        self.kind = kind
        super().__init__(reason)
