"""``ScriptMonitor``: Pinba for scripts, workers and batch jobs.

    from pynba.util import ScriptMonitor

    monitor = ScriptMonitor(("127.0.0.1", 30002), tags={"worker": "mailer"})
    for job in jobs:
        with monitor.timer(step="render"):
            render(job)
        monitor.send()              # one Pinba request per unit of work

Each ``send()`` reports the unit of work since the previous one (or since the monitor was made):
its time, the process's CPU, its timers and its request tags; then all of those start afresh,
like the reference client's reset flag. As a context manager it sends on exit, with status 500
when the block raised (the exception still propagates)::

    with ScriptMonitor(script_name="nightly-report") as monitor:
        ...

The monitor's unit of work is also the current request of the context that made it (and of
each ``send()``), so ``pynba.timer()`` and ``pynba.tags`` work in the script's code too.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from pynba_exporter import Address, Transport, UdpTransport, config
from pynba_exporter.spans import (
    MEASURE,
    RequestSpan,
    Timer,
    current_request,
    finish_and_send,
    hostname,
)

__all__ = ["ScriptMonitor"]


class ScriptMonitor:
    """Reports units of work of a script to Pinba, one request per :meth:`send`.

    ``hostname`` and ``server_name`` default to this machine's host name, ``script_name`` to
    the command line. ``tags`` are request tags sent with every unit. ``status`` is sent as the
    request's status (0 unless set; 500 when a ``with`` block raises). Other options as for
    :class:`pynba.PynbaMiddleware`.
    """

    def __init__(
        self,
        address: Address | None = None,
        *,
        tags: dict[str, Any] | None = None,
        hostname: str | None = None,
        server_name: str | None = None,
        script_name: str | None = None,
        schema: str = "",
        timer_rusage: bool | None = None,
        enabled: bool | None = None,
        transport: Transport | None = None,
        **transport_options: Any,
    ) -> None:
        self.reporter: Transport = (
            transport if transport is not None else UdpTransport(address, **transport_options)
        )
        self.hostname = hostname
        self.server_name = server_name
        self.script_name = script_name or " ".join(sys.argv) or "python"
        self.schema = schema
        self.tags: dict[str, Any] = dict(tags or {})
        self.timer_rusage: bool = config.value("timer_rusage", timer_rusage)
        self.enabled: bool = config.value("enabled", enabled)
        self._request = self._new()
        current_request.set(self._request)

    def _new(self) -> RequestSpan:
        host = self.hostname or hostname()
        return RequestSpan(
            host,
            self.server_name or host,
            self.script_name,
            schema=self.schema,
            tags=dict(self.tags),
            timer_rusage=self.timer_rusage,
            process_cpu_time=True,
        )

    @property
    def request(self) -> RequestSpan:
        """The unit of work in progress."""
        return self._request

    def timer(self, **tags: Any) -> Timer:
        """A timer of this monitor's units of work (from any thread)."""
        return Timer(tags, home=self._current)

    def _current(self) -> RequestSpan:
        return self._request

    def send(self, status: int | None = None) -> bool:
        """Report the unit of work since the previous send, then start the next one.

        Running timers are stopped and sent. True if the packet left for every server.
        """
        request = self._request
        was_current = current_request.get() is request
        self._request = self._new()
        if was_current:
            current_request.set(self._request)
        if status is not None:
            request.status = status
        if not self.enabled:
            request.enabled = False
        return finish_and_send(request, self.reporter, "script-monitor")

    # Settable per unit of work, as pynba.* is inside a request.

    @property
    def document_size(self) -> int | None:
        size = self._request.document_size
        return None if size == MEASURE else size

    @document_size.setter
    def document_size(self, value: int | None) -> None:
        self._request.document_size = MEASURE if value is None else value

    @property
    def status(self) -> int:
        return self._request.status

    @status.setter
    def status(self, value: int) -> None:
        self._request.status = value

    def __enter__(self) -> ScriptMonitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.send(500 if exc_type is not None else None)
