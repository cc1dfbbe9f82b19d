"""Checking in tests what an app sends to Pinba: :class:`PinbaCapture`, the ``pinba`` fixture.

With pynba installed, pytest has a ``pinba`` fixture (the plugin ``pynba_exporter.pytest_plugin``,
registered as a ``pytest11`` entry point)::

    def test_checkout_is_timed(pinba, client):
        client.post("/checkout")
        request = pinba.request("/checkout", tags={"user_type": "guest"})
        assert request.status == 200
        timer = pinba.timer({"group": "db::insert"}, script_name="/checkout")
        assert timer.hit_count == 2

What the fixture does, and why:

- it owns a UDP socket on 127.0.0.1 (a free port): every packet is really encoded, checked
  against the size limit, sent and received, then decoded with the collector's decoder (the
  servers' rejection rules included). A test sees what a Pinba server would see, not what the
  app meant to send;
- every ``UdpTransport`` of the process sends there while the test runs, including those made
  before it (a middleware built at import time with the production address): classic
  middleware, ``ScriptMonitor`` and the OpenTelemetry bridge alike. Their own servers are given
  back when the test ends. A transport you pass yourself (``MemoryTransport``, a reporter) is
  left alone;
- ``PINBA_SERVER`` and ``OTEL_EXPORTER_PINBA_ENDPOINT`` name the socket while the test runs, so
  subprocesses the test starts (a worker, ``pynba run``) report there too;
- the per-process script and server name caps start afresh, so one test's names do not push
  another's to ``<other>``; and no request is current when the test starts (a ``ScriptMonitor``
  of an earlier test would otherwise still own the thread's context);
- what the ``pynba`` logger says meanwhile (a packet dropped, a request that could not be
  encoded) is kept and shown when an assertion fails.

Without pytest, :class:`PinbaCapture` is a context manager doing the same; :func:`redirected`
is the redirection alone (to a collector of your own, say).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from contextvars import Token
from types import TracebackType
from typing import Any

from pynba_exporter._model import PinbaRequest, PinbaTimer
from pynba_exporter._udp import redirected
from pynba_exporter.log import logger
from pynba_exporter.naming import script_names, server_names
from pynba_exporter.spans import current_request
from pynba_exporter.wire import PinbaDecodeError, decode

__all__ = ["PinbaCapture", "redirected"]

#: The environment variables that name the Pinba server for code under test (and its children).
ADDRESS_VARIABLES = ("OTEL_EXPORTER_PINBA_ENDPOINT", "PINBA_SERVER")


class _Log(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _text(value: object) -> str:
    # Tags travel as text (42 -> "42"): compare as the receiver sees them.
    return value if isinstance(value, str) else str(value)


def _tags_match(have: Mapping[str, object], want: Mapping[str, object] | None) -> bool:
    if not want:
        return True
    return all(name in have and _text(have[name]) == _text(v) for name, v in want.items())


def _describe_timer(timer: PinbaTimer) -> str:
    tags = ", ".join(f"{k}={_text(v)}" for k, v in timer.tags.items())
    return f"{{{tags}}} x{timer.hit_count} {timer.value:.6f}s"


def describe(request: PinbaRequest) -> str:
    """One request on a few lines: what failure messages list."""
    tags = ", ".join(f"{k}={_text(v)}" for k, v in request.tags.items())
    head = (
        f"{request.script_name!r} status={request.status} server={request.server_name!r} "
        f"host={request.hostname!r} time={request.request_time:.6f}s"
        + (f" tags={{{tags}}}" if tags else "")
    )
    timers = "".join(f"\n      timer {_describe_timer(t)}" for t in request.timers)
    return f"    {head}{timers}"


class PinbaCapture:
    """A UDP socket on 127.0.0.1 that receives every Pinba packet of the process, decoded.

    Use it as the ``pinba`` fixture, or as a context manager (``with PinbaCapture() as
    pinba:``) that redirects the process's transports and the environment while it lasts.
    Reading (``requests``, ``find``...) takes what has arrived so far without waiting; the
    methods that expect something (``wait``, ``request``, ``timer``) wait up to ``timeout``
    seconds for it, for senders in other threads or processes.
    """

    def __init__(self, *, timeout: float = 2.0) -> None:
        #: How long ``wait``, ``request`` and ``timer`` wait by default for what they expect.
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # Room for bursts (load tests, a worker's many units) while the test is not reading.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self._sock.bind(("127.0.0.1", 0))
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        #: The socket's port, and its address as ``PINBA_SERVER`` takes it.
        self.port: int = self._sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._packets: list[bytes] = []
        self._requests: list[PinbaRequest] = []
        self._log = _Log()
        self._stack: ExitStack | None = None

    # -- lifecycle

    def start(self) -> PinbaCapture:
        """Redirect the process's transports and the environment here (once)."""
        if self._stack is not None:
            return self
        stack = ExitStack()
        stack.enter_context(redirected(self.address))
        saved = {name: os.environ.get(name) for name in ADDRESS_VARIABLES}

        def restore_environment() -> None:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

        stack.callback(restore_environment)
        for name in ADDRESS_VARIABLES:
            os.environ[name] = self.address
        logger.addHandler(self._log)
        stack.callback(logger.removeHandler, self._log)
        script_names.reset()
        server_names.reset()
        # Tests share their thread's context: a ScriptMonitor of an earlier test would still own
        # it (its next unit of work is current there) and take this test's timers and spans.
        token = current_request.set(None)
        stack.callback(_reset_quietly, token)
        self._stack = stack
        return self

    def close(self) -> None:
        """Give the transports their servers back, restore the environment, close the socket."""
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                stack.close()
        finally:
            self._sock.close()

    def __enter__(self) -> PinbaCapture:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- what arrived

    def _drain(self) -> None:
        while True:
            try:
                data = self._sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # closed
                return
            self._packets.append(data)
            try:
                self._requests.append(decode(data))
            except PinbaDecodeError as exc:
                raise AssertionError(
                    f"a packet Pinba servers would reject was sent ({exc.reason}); "
                    f"{len(data)} bytes: {data[:64]!r}..."
                ) from None

    @property
    def packets(self) -> list[bytes]:
        """Every packet received so far, as bytes."""
        self._drain()
        return list(self._packets)

    @property
    def requests(self) -> list[PinbaRequest]:
        """Every request received so far, decoded, in arrival order."""
        self._drain()
        return list(self._requests)

    def clear(self) -> None:
        """Forget what arrived so far (packets still in the socket included)."""
        self._drain()
        self._packets.clear()
        self._requests.clear()

    def wait(self, count: int = 1, timeout: float | None = None) -> list[PinbaRequest]:
        """Every request received, once there are at least ``count`` of them."""
        self._poll(lambda: len(self._requests) >= count, timeout)
        if len(self._requests) < count:
            raise AssertionError(self._failure(f"expected at least {count} Pinba request(s)"))
        return list(self._requests)

    def find(
        self,
        script_name: str | None = None,
        *,
        tags: Mapping[str, object] | None = None,
        status: int | None = None,
        server_name: str | None = None,
        hostname: str | None = None,
        where: Callable[[PinbaRequest], bool] | None = None,
    ) -> list[PinbaRequest]:
        """The requests received so far that match every criterion given (``tags``: these
        tags among the request's, values compared as the text they travel as)."""
        self._drain()
        return [
            r
            for r in self._requests
            if (script_name is None or r.script_name == script_name)
            and (status is None or r.status == status)
            and (server_name is None or r.server_name == server_name)
            and (hostname is None or r.hostname == hostname)
            and _tags_match(r.tags, tags)
            and (where is None or where(r))
        ]

    def request(
        self,
        script_name: str | None = None,
        *,
        tags: Mapping[str, object] | None = None,
        status: int | None = None,
        server_name: str | None = None,
        hostname: str | None = None,
        where: Callable[[PinbaRequest], bool] | None = None,
        timeout: float | None = None,
    ) -> PinbaRequest:
        """The one request that matches (see :meth:`find`), waiting up to ``timeout`` for it.
        Fails, listing what was captured, if none or several match."""
        criteria: dict[str, Any] = {
            "tags": tags, "status": status, "server_name": server_name,
            "hostname": hostname, "where": where,
        }  # fmt: skip
        self._poll(lambda: bool(self.find(script_name, **criteria)), timeout)
        found = self.find(script_name, **criteria)
        wanted = _wanted(script_name, criteria)
        if not found:
            raise AssertionError(self._failure(f"no Pinba request matched {wanted}"))
        if len(found) > 1:
            raise AssertionError(
                self._failure(f"{len(found)} Pinba requests matched {wanted}, expected one")
            )
        return found[0]

    def timers(
        self, tags: Mapping[str, object] | None = None, *, script_name: str | None = None
    ) -> list[PinbaTimer]:
        """The timers having ``tags`` (among their own) of the requests received so far (of
        the requests named ``script_name`` if given)."""
        return [t for r in self.find(script_name) for t in r.timers if _tags_match(t.tags, tags)]

    def timer(
        self,
        tags: Mapping[str, object] | None = None,
        *,
        script_name: str | None = None,
        timeout: float | None = None,
    ) -> PinbaTimer:
        """The one timer having ``tags`` (see :meth:`timers`), waiting up to ``timeout`` for
        it. Fails, listing what was captured, if none or several match."""
        self._poll(lambda: bool(self.timers(tags, script_name=script_name)), timeout)
        found = self.timers(tags, script_name=script_name)
        wanted = _wanted(script_name, {"tags": tags})
        if not found:
            raise AssertionError(self._failure(f"no Pinba timer matched {wanted}"))
        if len(found) > 1:
            raise AssertionError(
                self._failure(f"{len(found)} Pinba timers matched {wanted}, expected one")
            )
        return found[0]

    def assert_nothing(self, wait: float = 0.1) -> None:
        """Fail if any request arrived, or arrives within ``wait`` seconds."""
        self._poll(lambda: bool(self._requests), wait)
        if self._requests:
            raise AssertionError(self._failure("expected no Pinba request"))

    # -- helpers

    def _poll(self, done: Callable[[], bool], timeout: float | None) -> None:
        self._drain()
        if done():
            return
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self._sock], [], [], left)
            if readable:
                self._drain()
                if done():
                    return

    def _failure(self, what: str) -> str:
        lines = [f"{what}; captured {len(self._requests)}:"]
        lines += [describe(r) for r in self._requests] or ["    (nothing was sent)"]
        if self._log.lines:
            lines.append("the pynba logger said:")
            lines += [f"    {line}" for line in self._log.lines[-10:]]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<PinbaCapture {self.address}: {len(self.requests)} request(s)>"


def _reset_quietly(token: Token[Any]) -> None:
    try:
        current_request.reset(token)
    except ValueError:  # the test ended in another context than it started in
        current_request.set(None)


def _wanted(script_name: str | None, criteria: Mapping[str, Any]) -> str:
    parts: Sequence[str] = [
        *([f"script_name={script_name!r}"] if script_name is not None else []),
        *(
            f"{k}={'<callable>' if k == 'where' else v!r}"
            for k, v in criteria.items()
            if v is not None
        ),
    ]
    return ", ".join(parts) or "anything"
