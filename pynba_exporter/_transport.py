"""Sending packets: one UDP sender for one or many Pinba servers, and an in-memory one for tests.

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

import errno
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from pynba_exporter import config
from pynba_exporter._model import PinbaRequest, RequestLike
from pynba_exporter.address import DEFAULT_PORT, Address, Endpoint, parse_addresses
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
    "DEFAULT_PORT",
    "Address",
    "MemoryTransport",
    "PinbaSendError",
    "Transport",
    "TransportStats",
    "UdpTransport",
    "parse_addresses",
    "redirected",
]

#: getaddrinfo's signature, for injecting a resolver in tests.
Resolver: TypeAlias = Callable[..., list[tuple[Any, ...]]]


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


# --------------------------------------------------------------------------------------------
# UDP

_TRANSPORTS: weakref.WeakSet[UdpTransport] = weakref.WeakSet()
_FORK_HOOK_LOCK = threading.Lock()
_fork_hook_installed = False
# The counts of UdpTransports garbage-collected: appended by __del__ (list.append needs no lock,
# and a finalizer must take none), folded into one entry by all_stats.
_RETIRED: list[TransportStats] = []
_RETIRED_LOCK = threading.Lock()


def _sum(items: list[TransportStats]) -> TransportStats:
    errors: dict[str, int] = {}
    for item in items:
        for reason, count in item.errors.items():
            errors[reason] = errors.get(reason, 0) + count
    return TransportStats(
        sum(i.requests for i in items), sum(i.packets for i in items),
        sum(i.sent for i in items), sum(i.dropped for i in items),
        sum(i.encode_errors for i in items), sum(i.shrunk for i in items),
        MappingProxyType(errors),
    )  # fmt: skip


def all_stats() -> list[TransportStats]:
    """The counts of every UdpTransport of the process, live or gone (see health)."""
    with _RETIRED_LOCK:
        if len(_RETIRED) > 1:
            gone: list[TransportStats] = []
            while _RETIRED:
                gone.append(_RETIRED.pop())
            _RETIRED.append(_sum(gone))
        retired = list(_RETIRED)
    return [t.stats() for t in list(_TRANSPORTS)] + retired


# Where every UdpTransport sends while `redirected` blocks run (innermost last), and the lock
# that keeps a transport made during a change from missing it.
_REDIRECTS: list[tuple[Endpoint, ...]] = []
_REDIRECT_LOCK = threading.Lock()


@contextmanager
def redirected(address: Address) -> Iterator[None]:
    """While the block runs, every :class:`UdpTransport` of the process (those already made and
    those made inside the block) sends to ``address`` instead of its own servers; each gets its
    own servers back when the block ends. Nothing changes on the send path: a transport's list
    of servers is swapped, once, here.

    For tests (the ``pinba`` pytest fixture): an app whose middleware was made at import time,
    with its production address, reports to a socket the test owns. Transports passed in by
    the user (a MemoryTransport, a reporter) are theirs and are left alone. Blocks nest.
    """
    endpoints = tuple(parse_addresses(address))
    with _REDIRECT_LOCK:
        _REDIRECTS.append(endpoints)
        for transport in list(_TRANSPORTS):
            transport._route(endpoints)
    try:
        yield
    finally:
        with _REDIRECT_LOCK:
            _REDIRECTS.remove(endpoints)
            to = _REDIRECTS[-1] if _REDIRECTS else None
            for transport in list(_TRANSPORTS):
                transport._route(to)


def _after_fork_in_child() -> None:
    for transport in list(_TRANSPORTS):
        transport._after_fork()


def _install_fork_hook() -> None:
    global _fork_hook_installed
    with _FORK_HOOK_LOCK:
        if not _fork_hook_installed and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook_installed = True


_ERRNO_NAMES: Final = {
    errno.ECONNREFUSED: "ECONNREFUSED",
    errno.EMSGSIZE: "EMSGSIZE",
    errno.ENOBUFS: "ENOBUFS",
    errno.EAGAIN: "EAGAIN",
    errno.EHOSTUNREACH: "EHOSTUNREACH",
    errno.ENETUNREACH: "ENETUNREACH",
}


class _Server:
    """One server: its address, its resolved socket address and its connected socket."""

    __slots__ = (
        "endpoint",
        "expires",
        "lock",
        "numeric",
        "resolved",
        "resolving",
        "sock",
        "sockaddr",
        "waited",
        "where",
    )

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.where = str(endpoint)
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        # (family, sockaddr) once known; numeric addresses are known without any lookup.
        self.sockaddr: tuple[int, tuple[Any, ...]] | None = None
        self.numeric = False
        self.expires = 0.0  # monotonic time after which the name is looked up again
        self.resolving: threading.Event | None = None  # set when a lookup in flight finishes
        self.resolved = False  # a lookup has finished at least once (success or not)
        # A send has waited for the first lookup: no other ever will, even if that lookup is
        # still running (a name that takes 5 s to resolve must not slow every request by
        # resolve_timeout until it does).
        self.waited = False


class UdpTransport(Transport):
    """Sends each packet to every server over UDP.

    ``address``: see :func:`parse_addresses` (``None``: ``$PINBA_SERVER`` or 127.0.0.1:30002).
    ``resolve_interval``: seconds a looked-up address is kept (``$PINBA_RESOLVE_INTERVAL``,
    60); a failed lookup is tried again after ``min(resolve_interval, 5)`` seconds.
    ``resolve_timeout``: how long the very first send waits for the first lookup of a name
    (0.5 s); later sends never wait. ``max_packet_size``: largest datagram
    (``$PINBA_MAX_PACKET_SIZE``, 65507; 1432 keeps a packet within one Ethernet frame).
    ``packed``: write repeated fields packed (``$PINBA_PACKED``; smaller, same content).
    """

    def __init__(
        self,
        address: Address | None = None,
        *,
        max_packet_size: int | None = None,
        packed: bool | None = None,
        raise_on_fail: bool = False,
        resolve_interval: float | None = None,
        resolve_timeout: float = 0.5,
        resolver: Resolver | None = None,
    ) -> None:
        super().__init__(
            max_packet_size=max_packet_size, packed=packed, raise_on_fail=raise_on_fail
        )
        resolve_interval = config.value("resolve_interval", resolve_interval)
        if not resolve_interval > 0:
            raise ValueError(f"resolve_interval must be positive, got {resolve_interval}")
        self.resolve_interval = float(resolve_interval)
        self.resolve_timeout = resolve_timeout
        self._resolver: Resolver = resolver or socket.getaddrinfo
        self.servers = tuple(parse_addresses(address))
        self._servers = [_Server(ep) for ep in self.servers]
        for srv in self._servers:
            self._try_numeric(srv)
        # Its own servers, kept while `redirected` has it send elsewhere (then _servers is
        # another list).
        self._own_servers = self._servers
        _install_fork_hook()
        with _REDIRECT_LOCK:
            if _REDIRECTS:
                self._route(_REDIRECTS[-1])
            _TRANSPORTS.add(self)

    def __repr__(self) -> str:
        return f"UdpTransport({', '.join(map(str, self.servers))!r})"

    def _deliver(self, data: bytes, requests: int) -> bool:
        ok = True
        sent = 0
        for srv in self._servers:
            sock = srv.sock
            if sock is None or (not srv.numeric and srv.expires <= time.monotonic()):
                sock = self._prepare(srv)
                if sock is None:
                    ok = False
                    self._count_dropped("unresolved", srv.where)
                    continue
            try:
                sock.send(data)
            except OSError as exc:
                ok = False
                self._count_dropped(
                    _ERRNO_NAMES.get(exc.errno or 0, type(exc).__name__), srv.where, exc
                )
            else:
                sent += 1
        # (acquire and release, not "with": the additions cannot raise, and a with statement
        # costs this path, which every request takes, a tenth of its instructions)
        lock = self._lock
        lock.acquire()
        self._requests += requests
        self._packets += requests
        self._sent += sent
        lock.release()
        return ok

    def close(self) -> None:
        for srv in self._all_servers():
            with srv.lock:
                sock, srv.sock = srv.sock, None
            if sock is not None:
                sock.close()

    def __del__(self) -> None:
        # A transport dropped without close() must not leak its sockets. No locks here: nobody
        # else can hold a reference, so nobody else is using them.
        for srv in [*getattr(self, "_servers", ()), *getattr(self, "_own_servers", ())]:
            sock, srv.sock = srv.sock, None
            if sock is not None:
                sock.close()
        # Its counts stay in the process's (health.client_stats): a ScriptMonitor made per job
        # must not take its losses with it.
        if getattr(self, "_requests", 0) or getattr(self, "_errors", None):
            # At interpreter exit this module's globals may be gone already (None), and with
            # them contextlib: a bare try, and there is no one left to read the counts.
            try:  # noqa: SIM105
                _RETIRED.append(self._stats())
            except Exception:
                pass

    def _all_servers(self) -> list[_Server]:
        own = self._own_servers
        return own if self._servers is own else own + self._servers

    def _route(self, endpoints: tuple[Endpoint, ...] | None) -> None:
        """Send to ``endpoints`` from now on (None: to its own servers again). Called by
        `redirected` under its lock."""
        old = self._servers
        if endpoints is None:
            self._servers = self._own_servers
        else:
            servers = [_Server(ep) for ep in endpoints]
            for srv in servers:
                self._try_numeric(srv)
            self._servers = servers  # one assignment: a send in flight uses one list or the other
        if old is not self._own_servers:
            for srv in old:
                with srv.lock:
                    sock, srv.sock = srv.sock, None
                if sock is not None:
                    sock.close()

    # -- sockets and names

    def _try_numeric(self, srv: _Server) -> None:
        ep = srv.endpoint
        try:
            infos = self._resolver(
                ep.host, ep.port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST
            )
        except (OSError, UnicodeError):
            return
        if infos:
            family, _type, _proto, _canon, sockaddr = infos[0]
            srv.sockaddr = (family, sockaddr)
            srv.numeric = True
            srv.resolved = True
            srv.expires = float("inf")

    def _prepare(self, srv: _Server) -> socket.socket | None:
        """The server's socket, after looking its name up again if that is due."""
        if not srv.numeric and srv.expires <= time.monotonic():
            self._refresh(srv)
        if srv.sockaddr is None:
            return None
        with srv.lock:
            if srv.sock is not None:
                return srv.sock
            family, sockaddr = srv.sockaddr
            sock = None
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
                # Never block the app: a full send buffer drops the packet (counted) instead.
                sock.setblocking(False)
                # Connected: the kernel routes once, and reports ECONNREFUSED from the server.
                sock.connect(sockaddr)
            except OSError as exc:
                if sock is not None:
                    sock.close()
                self._count_dropped(
                    _ERRNO_NAMES.get(exc.errno or 0, type(exc).__name__), srv.where, exc
                )
                return None
            srv.sock = sock
            return sock

    def _refresh(self, srv: _Server) -> None:
        """Start a lookup in the background if none is running; the very first send waits for
        it up to ``resolve_timeout``, so the first packet to "localhost" still goes out; no
        other send ever waits."""
        with srv.lock:
            if not srv.expires <= time.monotonic():
                return
            event = srv.resolving
            first = not srv.resolved and not srv.waited
            srv.waited = True
            if event is None:
                event = srv.resolving = threading.Event()
                thread = threading.Thread(
                    target=self._resolve, args=(srv, event), name="pynba-resolve", daemon=True
                )
                thread.start()
        if first:
            event.wait(self.resolve_timeout)

    def _resolve(self, srv: _Server, event: threading.Event) -> None:
        ep = srv.endpoint
        found: tuple[int, tuple[Any, ...]] | None = None
        failure: BaseException | None = None
        try:
            infos = self._resolver(ep.host, ep.port, type=socket.SOCK_DGRAM)
            if infos:
                family, _type, _proto, _canon, sockaddr = infos[0]
                found = (family, sockaddr)
            else:
                failure = OSError(f"no address for {ep.host!r}")
        except Exception as exc:  # socket.gaierror, UnicodeError (bad IDNA), ...
            failure = exc
        old = None
        with srv.lock:
            now = time.monotonic()
            if found is not None:
                if found != srv.sockaddr:
                    old, srv.sock = srv.sock, None  # reconnect to the new address
                srv.sockaddr = found
                srv.expires = now + self.resolve_interval
            else:
                # Keep a stale address if there is one: better than nothing, and retry soon.
                srv.expires = now + min(self.resolve_interval, 5.0)
            srv.resolved = True
            srv.resolving = None
        if old is not None:
            old.close()
        event.set()
        if failure is not None:
            with self._lock:
                self._errors["resolve"] = self._errors.get("resolve", 0) + 1
            note_loss()
            errors.log(
                ("resolve", srv.where),
                f"pynba: cannot resolve Pinba server {srv.where}: {failure}",
            )

    def _after_fork(self) -> None:
        # The parent's sockets and lookup threads do not belong to the child: start afresh.
        self._lock = threading.Lock()
        for srv in self._all_servers():
            srv.lock = threading.Lock()
            sock, srv.sock = srv.sock, None
            if sock is not None:
                sock.close()  # the child's copy of the descriptor; the parent keeps its own
            srv.resolving = None
            if not srv.numeric:
                srv.expires = 0.0
