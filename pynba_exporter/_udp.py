"""The UDP sender: each packet to every Pinba server, sockets shared by threads and opened anew
in a forked child, names looked up off the request path; and what the process keeps of all its
senders (their counts, where tests redirect them).

See ``_transport`` for what every transport promises the app it runs in.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from pynba_exporter import config
from pynba_exporter._transport import Transport, TransportStats
from pynba_exporter.address import Address, Endpoint, parse_addresses
from pynba_exporter.log import errors, note_loss

__all__ = ["UdpTransport", "all_stats", "redirected"]

#: getaddrinfo's signature, for injecting a resolver in tests.
Resolver: TypeAlias = Callable[..., list[tuple[Any, ...]]]

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
        # A with statement, not acquire() and release(): a signal handler that raises (a
        # request timeout) can run as acquire() returns, and would leave the lock held for
        # good, hanging every later send; the with statement gives it no such moment.
        with self._lock:
            self._requests += requests
            self._packets += requests
            self._sent += sent
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
            except BaseException:  # a signal handler's (a request timeout): the app's to see
                if sock is not None:
                    sock.close()  # (not left to the garbage collector)
                raise
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
