"""Sending packets: what every transport does (encode, keep within the size limit, count, never
raise), and an in-memory transport for tests. The UDP sender is in ``_udp``.

Usage::

    from pynba_exporter import PinbaRequest, UdpTransport

    transport = UdpTransport("pinba1:30002,pinba2")        # or ("127.0.0.1", 30002), or a list
    transport.send(PinbaRequest("web1", "example.com", "/index", request_time=0.02))
    transport.stats()                                      # counters: sent, dropped, by reason

Addresses are written as the reference client takes them: ``host``, ``host:port``,
``[v6addr]:port``, a bare IPv6 address, several separated by commas or spaces; or a
``(host, port)`` tuple, or a list of any of those. The port defaults to 30002.

What a transport promises the app it runs in: ``send`` never raises and never blocks on the
network. Encoding problems, unresolvable names, refused or failed sends are logged to the
``pynba`` logger (a repeated failure at most once a minute) and counted in ``stats()``; with
``raise_on_fail = True`` they raise instead, for debugging. Sockets open on first use, are shared
by all threads, and are opened anew in a forked child (pre-forking servers such as gunicorn
``--preload``). Names are resolved with getaddrinfo (IPv4 and IPv6) off the request path, in a
background thread, and the answer is kept for ``resolve_interval`` seconds.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from types import MappingProxyType

from pynba_exporter import config
from pynba_exporter._model import PinbaRequest, RequestLike
from pynba_exporter.log import errors, from_signal_handler, note_loss
from pynba_exporter.wire import (
    DEFAULT_MAX_PACKET_SIZE,
    MIN_PACKET_SIZE,
    PinbaEncodeError,
    decode,
    encode,
    fit,
)

__all__ = [
    "MemoryTransport",
    "PinbaSendError",
    "Transport",
    "TransportStats",
]


class PinbaSendError(OSError):
    """A packet could not be sent (raised only with ``raise_on_fail``)."""


@dataclass(frozen=True, slots=True)
class TransportStats:
    """Counters of a transport since it was made (a snapshot).

    ``requests``: requests handed to ``send``; ``packets``: datagrams built from them;
    ``sent``: datagrams handed to the kernel, counted once per server; ``dropped``: datagrams
    that did not leave for a server, with ``errors`` giving the reasons (``"ECONNREFUSED"``,
    ``"EMSGSIZE"``, ``"unresolved"``, ...); ``encode_errors``: requests that could not be
    encoded at all; ``shrunk``: requests cut down to fit ``max_packet_size``;
    ``renamed``: requests sent under ``<other>`` because the per-process name cap
    (:mod:`pynba_exporter.naming`) refused their name, by field (``"script_name"``,
    ``"server_name"``).
    """

    requests: int = 0
    packets: int = 0
    sent: int = 0
    dropped: int = 0
    encode_errors: int = 0
    shrunk: int = 0
    errors: MappingProxyType[str, int] = field(default_factory=lambda: MappingProxyType({}))
    renamed: MappingProxyType[str, int] = field(default_factory=lambda: MappingProxyType({}))


class Transport:
    """What every transport does: encode, keep within ``max_packet_size``, count, never raise.

    Subclasses provide ``_deliver(data, requests) -> bool``: send, count, never raise (unless
    ``raise_on_fail``).
    """

    def __init__(
        self,
        *,
        max_packet_size: int | None = None,
        packed: bool | None = None,
        raise_on_fail: bool = False,
    ) -> None:
        max_packet_size = config.value("max_packet_size", max_packet_size)
        if not MIN_PACKET_SIZE <= max_packet_size <= DEFAULT_MAX_PACKET_SIZE:
            raise ValueError(
                f"max_packet_size must be between {MIN_PACKET_SIZE} and "
                f"{DEFAULT_MAX_PACKET_SIZE}, got {max_packet_size}"
            )
        packed = config.value("packed", packed)
        self.max_packet_size = max_packet_size
        self.packed = packed
        #: Turn the library's failures into exceptions (for debugging, never in production).
        self.raise_on_fail = raise_on_fail
        self._lock = threading.Lock()
        self._requests = 0
        self._packets = 0
        self._sent = 0
        self._dropped = 0
        self._encode_errors = 0
        self._shrunk = 0
        self._errors: dict[str, int] = {}
        self._renamed: dict[str, int] = {}

    # -- what users call

    def send(self, request: RequestLike) -> bool:
        """Encode and send one request. True if every packet left for every server."""
        try:
            data = encode(request, packed=self.packed)
        except Exception as exc:
            return self._encode_failed(request, exc)
        if len(data) <= self.max_packet_size:
            return self._deliver(data, 1)
        return self._send_fitted(request, data)

    def send_packet(self, data: bytes) -> bool:
        """Send bytes that already are a packet. True if they left for every server."""
        return self._deliver(data, 0)

    def _deliver(self, data: bytes, requests: int) -> bool:
        """Send one packet and count it, with ``requests`` (0 or 1) requests and packets it
        stands for, all under one lock: this is the path every request takes."""
        raise NotImplementedError

    def stats(self) -> TransportStats:
        with self._lock:
            return self._stats()

    def _stats(self) -> TransportStats:
        return TransportStats(
            self._requests,
            self._packets,
            self._sent,
            self._dropped,
            self._encode_errors,
            self._shrunk,
            MappingProxyType(dict(self._errors)),
            MappingProxyType(dict(self._renamed)),
        )

    def count_renamed(self, which: str) -> None:
        """A request of this transport got ``<other>`` as its ``which`` (the name cap)."""
        with self._lock:
            self._renamed[which] = self._renamed.get(which, 0) + 1

    def close(self) -> None:
        """Release sockets; a later send opens them again."""

    # -- shared machinery

    def _send_fitted(self, request: RequestLike, data: bytes) -> bool:
        try:
            fitted = fit(request, self.max_packet_size, packed=self.packed, encoded=data)
        except Exception as exc:
            return self._encode_failed(request, exc)
        with self._lock:
            self._requests += 1
            self._packets += len(fitted.packets)
            if fitted.shrunk:
                self._shrunk += 1
        if fitted.shrunk:
            errors.log(
                ("shrunk", self.max_packet_size),
                f"pynba: a request for {request.script_name!r} did not fit in "
                f"{self.max_packet_size} bytes: {fitted.folded_timers} timer(s) folded, "
                f"{fitted.cut_strings} string(s) cut, {fitted.dropped_tags} request tag(s) "
                "left out (tag pynba_truncated marks such requests)",
            )
        ok = True
        for packet in fitted.packets:
            ok = self.send_packet(packet) and ok
        return ok

    def _encode_failed(self, request: object, exc: Exception) -> bool:
        if from_signal_handler(exc):
            raise exc  # the app's (a request timeout), not an encoding failure
        with self._lock:
            self._requests += 1
            self._encode_errors += 1
        note_loss()
        if self.raise_on_fail:
            raise exc
        if isinstance(exc, PinbaEncodeError):
            errors.log(
                ("encode", exc.field),
                f"pynba: request not sent, it cannot be encoded: {exc}",
            )
        else:  # a bug of ours: say so loudly, with the traceback
            errors.log(
                ("encode-bug", type(exc).__name__),
                f"pynba: internal error while encoding a request: {exc!r}",
                level=logging.ERROR,
                exc_info=exc,
            )
        return False

    def _count_dropped(self, reason: str, where: str, exc: BaseException | None = None) -> None:
        with self._lock:
            self._dropped += 1
            self._errors[reason] = self._errors.get(reason, 0) + 1
        note_loss()
        message = f"packet to {where} dropped ({reason})" + (f": {exc}" if exc else "")
        if self.raise_on_fail:
            raise PinbaSendError(getattr(exc, "errno", None) or 0, message) from exc
        errors.log(("send", reason, where), f"pynba: {message}")


class MemoryTransport(Transport):
    """Keeps the packets it is given, for tests (yours and ours). Same rules as UdpTransport:
    encoding, size limit, counters."""

    def __init__(self, *, max_packet_size: int | None = None, packed: bool | None = None) -> None:
        super().__init__(max_packet_size=max_packet_size, packed=packed)
        self.packets: list[bytes] = []

    def _deliver(self, data: bytes, requests: int) -> bool:
        self.packets.append(bytes(data))
        with self._lock:
            self._requests += requests
            self._packets += requests
            self._sent += 1
        return True

    @property
    def requests(self) -> list[PinbaRequest]:
        """The packets decoded."""
        return [decode(p) for p in self.packets]

    def clear(self) -> None:
        self.packets.clear()
