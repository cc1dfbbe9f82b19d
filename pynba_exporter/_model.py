"""What one packet carries: the request shape the encoder reads, and its plain records.

:class:`RequestLike` is the one shape ``encode`` takes. Two kinds of objects have it: the frozen
records :class:`PinbaRequest`/:class:`PinbaTimer` (built by users' own code and by ``decode`` on
the receiving side), and the span model's finished requests (``pynba_exporter.spans``), which the
classic API and the OpenTelemetry bridge fill and which are encoded as they are, without a copy
into a record (a frozen dataclass costs microseconds to build on every request).

Neither does validation of its own: ``encode`` checks and normalises everything when it builds a
packet, so that filling a request stays cheap on the request path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import ClassVar, Protocol

__all__ = ["PinbaRequest", "PinbaTimer", "RequestLike", "TagValue", "TimerLike"]

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
    #: A record's timers have no fixed identity to find their layout by (see ``encode``).
    timer_shape: ClassVar[None] = None
    timer_columns: ClassVar[None] = None

    def __post_init__(self) -> None:
        if type(self.timers) is not tuple:
            _as_tuple(self, "timers")
        if type(self.requests) is not tuple:
            _as_tuple(self, "requests")


class TimerLike(Protocol):
    """What ``encode`` reads of a timer (read-only, so records and mutable lines both fit)."""

    @property
    def tags(self) -> Mapping[str, TagValue]: ...
    @property
    def value(self) -> float: ...
    @property
    def hit_count(self) -> int: ...
    @property
    def ru_utime(self) -> float: ...
    @property
    def ru_stime(self) -> float: ...


class RequestLike(Protocol):
    """What ``encode`` reads of a request: the fields of the packet, by their schema names."""

    @property
    def hostname(self) -> str: ...
    @property
    def server_name(self) -> str: ...
    @property
    def script_name(self) -> str: ...
    @property
    def request_count(self) -> int: ...
    @property
    def document_size(self) -> int: ...
    @property
    def memory_peak(self) -> int: ...
    @property
    def request_time(self) -> float: ...
    @property
    def ru_utime(self) -> float: ...
    @property
    def ru_stime(self) -> float: ...
    @property
    def status(self) -> int: ...
    @property
    def memory_footprint(self) -> int: ...
    @property
    def schema(self) -> str: ...
    @property
    def tags(self) -> Mapping[str, TagValue]: ...
    @property
    def timers(self) -> Sequence[TimerLike]: ...
    @property
    def requests(self) -> Sequence[PinbaRequest]: ...
