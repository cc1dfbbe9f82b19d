"""``Reporter`` and ``flattener`` as pynba 0.4.3 had them (``pynba.core`` in 0.5.5).

    from pynba.reporter import Reporter

    reporter = Reporter(("127.0.0.1", 30002))
    reporter("example.com", "web1", "/index", 0.02, timers, status=200, tags={"app": "shop"})

A call sends one packet: the positional and keyword arguments of the original
(``server_name, hostname, script_name, elapsed, timers, ru_utime, ru_stime, document_size,
memory_peak, status, memory_footprint, schema, tags``), a timer being anything with ``elapsed``
and ``tags`` (a :class:`pynba.Timer`, a :class:`pynba.collector.DataCollector`'s). As in the
original, a missing status is sent as 200 and ``request_count`` as 1.

The bytes go through this project's encoder and :class:`pynba_exporter.UdpTransport` (every
address form, IPv6, names looked up off the request path, never raising unless
``raise_on_fail``): see ``docs/migration.md`` for what differs from the original on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pynba_exporter import Address, PinbaRequest, PinbaTimer, Transport, UdpTransport, encode
from pynba_exporter.spans import expand_tags

__all__ = ["Reporter", "flattener"]


def flattener(tags: Mapping[Any, Any]) -> list[tuple[str, str]]:
    """Tags as sorted ``(name, value)`` text pairs, as the original flattened them:
    ``{"foo": [12, 13], "bar": {"baz": 1}, "qux": lambda: "x"}`` gives
    ``[("bar.baz", "1"), ("foo", "12"), ("foo", "13"), ("qux", "x")]``."""
    pairs: set[tuple[str, str]] = set()
    for name, value in expand_tags(tags).items():
        if isinstance(value, tuple):
            pairs.update((name, str(v)) for v in value)
        else:
            pairs.add((name, str(value)))
    return sorted(pairs)


def _timer(timer: Any) -> PinbaTimer | None:
    value = getattr(timer, "elapsed", None)
    if not value:  # never stopped (None) or nothing measured: the original left it out
        return None
    return PinbaTimer(
        expand_tags(getattr(timer, "tags", None) or {}),
        float(value),
        max(1, int(getattr(timer, "runs", 1) or 1)),
    )


def _request(  # noqa: PLR0917 - the original's positional arguments
    servername: Any,
    hostname: Any,
    scriptname: Any,
    elapsed: Any,
    timers: Iterable[Any] | None,
    ru_utime: Any = None,
    ru_stime: Any = None,
    document_size: Any = None,
    memory_peak: Any = None,
    status: Any = None,
    memory_footprint: Any = None,
    schema: Any = None,
    tags: Mapping[Any, Any] | None = None,
) -> PinbaRequest:
    records = [t for t in (_timer(timer) for timer in timers or ()) if t is not None]
    return PinbaRequest(
        str(hostname or ""),
        str(servername or ""),
        str(scriptname or ""),
        request_count=1,
        document_size=int(document_size or 0),
        memory_peak=int(memory_peak or 0),
        request_time=float(elapsed or 0.0),
        ru_utime=float(ru_utime or 0.0),
        ru_stime=float(ru_stime or 0.0),
        status=int(status or 200),
        memory_footprint=int(memory_footprint or 0),
        schema=str(schema or ""),
        tags=expand_tags(tags) if tags else {},
        timers=records,
    )


class Reporter:
    """Sends requests given as the original's arguments (see the module's documentation).

    ``address`` as the original took it (``(host, port)``) or in any form
    :class:`pynba_exporter.UdpTransport` takes; ``raise_on_fail`` as in the original. The
    transport underneath is ``transport``, shared with the middleware or monitor given this
    reporter.
    """

    def __init__(
        self, address: Address | None, raise_on_fail: bool = False, **transport_options: Any
    ) -> None:
        self.address = address
        self.transport: Transport = UdpTransport(
            address, raise_on_fail=raise_on_fail, **transport_options
        )

    @property
    def raise_on_fail(self) -> bool:
        return self.transport.raise_on_fail

    @raise_on_fail.setter
    def raise_on_fail(self, value: bool) -> None:
        self.transport.raise_on_fail = bool(value)

    def __call__(  # noqa: PLR0917 - the original's positional signature
        self,
        server_name: Any,
        hostname: Any,
        script_name: Any,
        elapsed: Any,
        timers: Iterable[Any] | None,
        ru_utime: Any = None,
        ru_stime: Any = None,
        document_size: Any = None,
        memory_peak: Any = None,
        status: Any = None,
        memory_footprint: Any = None,
        schema: Any = None,
        tags: Mapping[Any, Any] | None = None,
    ) -> None:
        """Send one request (the original's ``pinba_flush()``)."""
        request = _request(
            server_name, hostname, script_name, elapsed, timers, ru_utime, ru_stime,
            document_size, memory_peak, status, memory_footprint, schema, tags,
        )  # fmt: skip
        if type(self).send is not Reporter.send:
            self.send(encode(request))  # a subclass's own send(), as the original called it
        else:
            self.transport.send(request)  # within the size limit, counted

    @staticmethod
    def prepare(  # noqa: PLR0917 - the original's positional signature
        servername: Any,
        hostname: Any,
        scriptname: Any,
        elapsed: Any,
        timers: Iterable[Any] | None,
        ru_utime: Any = None,
        ru_stime: Any = None,
        document_size: Any = None,
        memory_peak: Any = None,
        status: Any = None,
        memory_footprint: Any = None,
        schema: Any = None,
        tags: Mapping[Any, Any] | None = None,
    ) -> bytes:
        """The packet the call would send, as bytes."""
        request = _request(
            servername, hostname, scriptname, elapsed, timers, ru_utime, ru_stime,
            document_size, memory_peak, status, memory_footprint, schema, tags,
        )  # fmt: skip
        return encode(request)

    def send(self, msg: bytes) -> bool:
        """Send a packet made by :meth:`prepare`. True if it left for every server."""
        return self.transport.send_packet(msg)

    def __repr__(self) -> str:
        return f"Reporter({self.address!r})"
