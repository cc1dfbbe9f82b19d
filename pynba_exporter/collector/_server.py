"""The collector: receives Pinba packets over UDP, keeps the window's requests, makes reports.

    from pynba_exporter.collector import Collector

    with Collector("127.0.0.1:0") as collector:        # a free port; collector.address says which
        ...                                            # point any Pinba client at it
        collector.request_report(("script_name",))     # or timer_report(("group",)), info()...

It accepts packets from any Pinba client (this library, the PHP extension), packed or not;
nested requests count as requests of their own (and against the memory budget). Invalid packets
never stop it: they are counted by reason (``status()``), and the first of each kind is logged
to ``pynba``. ``stop()`` drains what the kernel already holds before it returns.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final, Protocol

from pynba_exporter.address import DEFAULT_PORT, parse_listen
from pynba_exporter.collector._aggregate import Aggregator
from pynba_exporter.collector._record import Record
from pynba_exporter.collector._text import printable
from pynba_exporter.log import errors
from pynba_exporter.wire import Packet, PinbaDecodeError, parse
from pynba_exporter.wire._errors import (
    INDEX_RANGE,
    INVALID_FLOAT,
    MALFORMED,
    MISSING_FIELD,
    NESTED,
    REQUEST_TAG_COUNTS,
    TIMER_ARRAYS,
    TIMER_TAG_COUNTS,
    TRUNCATED,
    WIRE_TYPE,
    ZERO_HITS,
)

__all__ = ["Collector", "CollectorError", "RecordStore", "invalid_reason"]

DEFAULT_LISTEN: Final = f"127.0.0.1:{DEFAULT_PORT}"
_BATCH: Final = 512  # packets read before they are aggregated together (one lock)
# Bytes of packets decoded before their records are kept (and their strings shared): a 60 KB
# packet may decode to megabytes of objects before it is compacted, so a batch of them is not
# decoded all at once.
_CHUNK_BYTES: Final = 256 * 1024
_RCVBUF: Final = 64 * 1024 * 1024
#: Seconds ``stop()`` spends at most decoding what the socket still holds.
DRAIN_SECONDS: Final = 1.0

# A decode error's kind -> the name invalid packets of that kind are counted under (stable: they
# are shown in reports and stored in SQL).
_COUNTED_AS: Final = {
    TRUNCATED: "truncated",
    WIRE_TYPE: "invalid wire type",
    MISSING_FIELD: "missing required fields",
    INVALID_FLOAT: "invalid float",
    TIMER_ARRAYS: "timer arrays of different lengths",
    TIMER_TAG_COUNTS: "timer tag counts",
    REQUEST_TAG_COUNTS: "request tag counts",
    INDEX_RANGE: "dictionary index out of range",
    ZERO_HITS: "zero hit count",
    NESTED: "invalid nested request",
    MALFORMED: "malformed",
}


def invalid_reason(exc: PinbaDecodeError) -> str:
    """The name an invalid packet is counted under (stable: shown in reports, stored in SQL)."""
    return _COUNTED_AS.get(exc.kind, "malformed")


class RecordStore(Protocol):
    """Where the collector hands the records it kept (the SQLite store is one)."""

    @property
    def dropped(self) -> int: ...
    def add(self, records: list[Record]) -> None: ...
    def close(self) -> None: ...


class CollectorError(OSError):
    """The collector cannot listen where it was asked (port in use, bad address...)."""


def passive_address(host: str, port: int, socktype: int, what: str) -> tuple[int, Any]:
    """The address family and socket address to bind ``host``:``port`` to; a name that does
    not resolve is a :class:`CollectorError` saying what could not be done (``what``)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socktype, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CollectorError(f"cannot {what}: {exc}") from None
    family, _type, _proto, _canon, sockaddr = infos[0]
    return family, sockaddr


def _flatten(p: Packet, now: float, out: list[Record]) -> None:
    out.append(Record.of_packet(p, now))
    for sub in p.requests:
        _flatten(sub, now, out)


class Collector:
    """A Pinba collector listening on UDP (``listen``: ``host:port``, ``[v6]:port``; port 0
    for a free one; ``127.0.0.1:30002`` by default: all interfaces only when asked, with
    ``0.0.0.0:30002`` or ``[::]:30002``).

    ``window``: seconds of requests kept for the reports (900). ``max_bytes``: estimated bytes
    the window's requests and reports may hold (256 MiB; the oldest leave first, counted);
    ``max_dictionary_bytes``: bytes of the shared strings (an eighth of ``max_bytes``);
    ``max_records``: requests kept at most (no limit but the bytes by default); ``max_keys``:
    distinct keys per report before an ``<other>`` row; ``percentiles``: the percentile
    columns; ``timer_tags`` and ``request_tags``: the tag sets whose reports are kept up to
    date. ``store``: a :class:`RecordStore`, fed with the records kept (the SQLite store).
    """

    def __init__(
        self,
        listen: str = DEFAULT_LISTEN,
        *,
        window: float = 900.0,
        max_bytes: int = 256 * 1024 * 1024,
        max_dictionary_bytes: int | None = None,
        max_records: int | None = None,
        max_keys: int = 10_000,
        percentiles: Sequence[float] = (95.0, 99.0),
        timer_tags: Sequence[Sequence[str]] = (("group",), ("group", "server")),
        request_tags: Sequence[Sequence[str]] = (),
        store: RecordStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.listen = parse_listen(listen)
        self.aggregator = Aggregator(
            window=window, max_bytes=max_bytes, max_dictionary_bytes=max_dictionary_bytes,
            max_records=max_records, max_keys=max_keys, percentiles=percentiles,
            timer_tags=timer_tags, request_tags=request_tags, clock=clock,
        )  # fmt: skip
        self.store = store
        self.clock = clock
        self.packets = 0
        #: Called with each batch of records received, from the receiving thread (the web
        #: page's history and the Prometheus counters subscribe here); must be quick.
        self.listeners: list[Callable[[Sequence[Record]], None]] = []
        self.unread_at_stop = 0  # packets still in the socket when the drain ran out of time
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- life

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually listened on."""
        if self._sock is None:
            raise RuntimeError("the collector is not started")
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def address_text(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def bind(self) -> socket.socket:
        ep = self.listen
        family, sockaddr = passive_address(ep.host, ep.port, socket.SOCK_DGRAM, f"listen on {ep}")
        sock = socket.socket(family, socket.SOCK_DGRAM)
        # A big receive buffer absorbs bursts while the reports are rebuilt (the interpreter is
        # shared). The kernel caps SO_RCVBUF at net.core.rmem_max; SO_RCVBUFFORCE goes past it
        # where the process may (CAP_NET_ADMIN), as pinba servers' docs advise for load.
        force = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)
        try:
            if force is None:
                raise OSError
            sock.setsockopt(socket.SOL_SOCKET, force, _RCVBUF)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise CollectorError(
                    exc.errno, f"cannot listen on {ep}: the port is in use (another collector?)"
                ) from None
            raise CollectorError(exc.errno, f"cannot listen on {ep}: {exc.strerror}") from None
        return sock

    def start(self) -> Collector:
        """Listen and receive in a background thread."""
        if self._thread is not None:
            return self
        self._sock = self.bind()
        self._sock.settimeout(0.1)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pynba-collector", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, close_store: bool = True) -> None:
        """Stop receiving, take in what the kernel already holds (for up to ``DRAIN_SECONDS``;
        what is left then is counted in ``unread_at_stop``), write it, close. With
        ``close_store`` False the store is left to the caller to close (``pynba collect``
        prints the final report first, then lets the writer finish)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()
        sock, self._sock = self._sock, None
        if sock is not None:
            if thread is not None:
                self._drain(sock)
            sock.close()
        if self.store is not None and close_store:
            self.store.close()

    def _drain(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        deadline = time.monotonic() + DRAIN_SECONDS
        batch: list[bytes] = []
        try:
            while True:
                batch.append(sock.recv(65535))
                if len(batch) >= _BATCH:
                    if time.monotonic() < deadline:
                        self.handle(batch)
                    else:
                        self.unread_at_stop += len(batch)
                    batch = []
        except OSError:  # BlockingIOError: the socket is empty
            pass
        self.handle(batch)

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- receiving

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stop.is_set():
            try:
                first = sock.recv(65535)
            except TimeoutError:
                continue
            except OSError as exc:
                errors.log(("collector", "recv"), f"pynba collector: receive failed: {exc}")
                time.sleep(0.01)
                continue
            batch = [first]
            sock.setblocking(False)
            try:
                size = len(first)
                while len(batch) < _BATCH and size < 4 * _CHUNK_BYTES:
                    data = sock.recv(65535)
                    batch.append(data)
                    size += len(data)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                pass
            finally:
                sock.settimeout(0.1)
            self.handle(batch)

    def handle(self, packets: Sequence[bytes]) -> None:
        """Decode and keep packets (the receiving thread calls this; tests and benchmarks may
        too). Never raises: invalid packets are counted by reason."""
        now = self.clock()
        records: list[Record] = []
        pending = 0
        for data in packets:
            self.packets += 1
            try:
                _flatten(parse(data), now, records)
            except PinbaDecodeError as exc:
                kind = invalid_reason(exc)
                self.aggregator.add_invalid(kind)
                errors.log(
                    ("collector-invalid", kind),
                    f"pynba collector: invalid packet ({kind}): {printable(exc.reason)}",
                )
            except Exception as exc:  # a bug of ours must not stop the collector
                self.aggregator.add_invalid("internal error")
                errors.log(
                    ("collector", "bug"), f"pynba collector: {printable(repr(exc))}", exc_info=exc
                )
            pending += len(data)
            if pending >= _CHUNK_BYTES and records:
                self._keep(records)
                records = []
                pending = 0
        if records:
            self._keep(records)

    def _keep(self, records: list[Record]) -> None:
        # Without a store, the kept records are not needed: the aggregator does not build them.
        kept = self.aggregator.add(records, self.store is not None)
        if self.store is not None and kept:
            self.store.add(kept)
        for listener in self.listeners:
            self._notify(listener, records)

    def _notify(self, listener: Callable[[Sequence[Record]], None], records: list[Record]) -> None:
        try:
            listener(records)
        except Exception as exc:  # a listener's bug must not stop the collector
            errors.log(
                ("collector", "listener"), f"pynba collector: {printable(repr(exc))}", exc_info=exc
            )

    # -- reports

    def request_report(self, keys: Sequence[str] = ("script_name",)) -> list[dict[str, Any]]:
        return self.aggregator.request_report(keys)

    def timer_report(
        self, tag_names: Sequence[str] = ("group",), *, per_script: bool = False
    ) -> list[dict[str, Any]]:
        return self.aggregator.timer_report(tag_names, per_script=per_script)

    def tag_report(self, tag_names: Sequence[str]) -> list[dict[str, Any]]:
        return self.aggregator.tag_report(tag_names)

    def info(self) -> dict[str, Any]:
        return self.aggregator.info()

    def status(self) -> dict[str, Any]:
        status = self.aggregator.status()
        status["packets_received"] = self.packets
        if self.unread_at_stop:
            status["unread_at_stop"] = self.unread_at_stop
        if self.store is not None:
            status["store_dropped"] = self.store.dropped
            status["store_dropped_by_reason"] = dict(getattr(self.store, "dropped_by", {}))
        return status
