"""The Pinba request and timer records: what one packet carries.

These are plain immutable values, built by the classic API, by the OpenTelemetry bridge, by users'
own code, and by :func:`pynba_exporter.decode` on the receiving side. They do no validation of
their own: :func:`pynba_exporter.encode` checks and normalises everything when it builds a packet,
so that building a record stays cheap on the request path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field

__all__ = ["PinbaRequest", "PinbaTimer", "TagValue"]

#: What a tag value may be. Anything else with a working ``str()`` is accepted at run time too;
#: numbers become text the way the reference client writes them (see ``encode``). A tuple (or
#: list) of values gives the tag once per value, as the original pynba sent multi-valued tags.
TagValue = str | bytes | int | float | tuple[str | bytes | int | float, ...]


def _as_tuple(owner: object, name: str) -> None:
    # Lists and tuples of timers must compare equal, so the record keeps a tuple. Strings and
    # mappings are sequences/iterables too, but never a valid value here: leave them for encode()
    # to reject with a message naming the field.
    value = getattr(owner, name)
    if type(value) is not tuple and not isinstance(value, (str, bytes, Mapping)):
        with contextlib.suppress(TypeError):  # not iterable: encode() reports it
            object.__setattr__(owner, name, tuple(value))


@dataclass(frozen=True, slots=True)
class PinbaTimer:
    """One Pinba timer: a duration of an operation named by its tags.

    ``value``, ``ru_utime`` and ``ru_stime`` are seconds. ``hit_count`` is how many operations the
    value covers. Timers of one request with identical tags are merged when the packet is built.
    """

    tags: Mapping[str, TagValue]
    value: float = 0.0
    hit_count: int = 1
    ru_utime: float = 0.0
    ru_stime: float = 0.0


@dataclass(frozen=True, slots=True)
class PinbaRequest:
    """One Pinba request: the content of one packet (message ``Pinba.Request``).

    Field names are the schema's. Times are seconds, sizes bytes. ``tags`` are the request tags,
    ``timers`` the request's timers, ``requests`` nested requests (field 18, a batch).
    """

    hostname: str
    server_name: str
    script_name: str
    _: KW_ONLY
    request_count: int = 0
    document_size: int = 0
    memory_peak: int = 0
    request_time: float = 0.0
    ru_utime: float = 0.0
    ru_stime: float = 0.0
    status: int = 0
    memory_footprint: int = 0
    schema: str = ""
    tags: Mapping[str, TagValue] = field(default_factory=dict)
    timers: Sequence[PinbaTimer] = ()
    requests: Sequence[PinbaRequest] = ()

    def __post_init__(self) -> None:
        if type(self.timers) is not tuple:
            _as_tuple(self, "timers")
        if type(self.requests) is not tuple:
            _as_tuple(self, "requests")
