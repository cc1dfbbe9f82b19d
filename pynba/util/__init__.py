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

The monitor's unit of work is also the current request of the context that started it, so
``pynba.timer()`` and ``pynba.tags`` work in the script's code too. What is current when:

- ``ScriptMonitor(...)`` (``autostart``) and ``start()`` make the new unit current in the calling
  context (a ``start()`` after a ``stop()`` only where nothing else is current);
- ``send()`` and ``flush()`` end the unit and make the next one current in its place (or where
  nothing is current: after a ``stop()``): one monitor, one unit per job, as a worker's loop
  wants;
- ``stop()`` ends the unit and leaves the context as it was before the unit was made current: a
  stopped unit takes no more timers, and holding the context would swallow what runs next (a
  later ``pynba.timer``, an OpenTelemetry root span: neither would ever be reported);
- the ``with`` block's end sends the unit and starts none: the context is as it was before the
  block (the ``ScriptMonitor(...)`` made in the ``with`` statement included). A later
  ``start()`` or ``with`` on the same monitor begins a new unit.

So a script that is done with a monitor used without ``with`` calls ``stop()`` (after its last
``send()``) before going on with other work in the same context.

The constructor takes the original's arguments in the original's order (0.4.3 and 0.5.5:
``ScriptMonitor(address, hostname, scriptname, servername, reporter, tags, autostart)``), and
the original's methods work as they did: ``start()``, ``stop()`` (``ru_utime``/``ru_stime``
set), ``flush()`` (forget the unit in progress), ``timer()``, ``send()``; ``collector`` is a
:class:`pynba.collector.DataCollector` holding the unit's timers and the monitor's tags.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping
from contextvars import Token
from types import TracebackType
from typing import Any

from pynba._compat.collector import DataCollector
from pynba._compat.options import ReporterOption, as_transport
from pynba._serving import Serving
from pynba_exporter import Address, Transport
from pynba_exporter.spans import MEASURE, RequestSpan, current_request, finish_and_send
from pynba_exporter.timers import Timer

__all__ = ["ScriptMonitor"]


class ScriptMonitor:
    """Reports units of work of a script to Pinba, one request per :meth:`send`.

    The arguments are the original's, in its order: ``address`` (the Pinba server(s), any form
    :class:`pynba_exporter.UdpTransport` takes; None: ``$PINBA_SERVER``, else 127.0.0.1:30002),
    ``hostname`` and ``servername`` (default: this machine's host name), ``scriptname`` (default:
    the command line), ``reporter`` (a transport, a :class:`pynba.reporter.Reporter`, or a
    callable taking the original reporter's arguments), ``tags`` (request tags of every unit),
    ``autostart`` (0.5.5: start the first unit now). Keyword-only: ``script_name``,
    ``server_name`` (the same as ``scriptname``, ``servername``), ``schema``, ``timer_rusage``,
    ``enabled``, ``transport`` and the transport's keywords.

    Every attribute is read when a unit is sent: ``monitor.tags["job"] = "1"`` or
    ``monitor.scriptname = "x"`` apply to the next :meth:`send`. ``pynba.tags`` and
    ``monitor.request.tags`` set during a unit are sent with that unit only.
    """

    def __init__(  # noqa: PLR0917 - the original's positional signature
        self,
        address: Address | None = None,
        hostname: str | None = None,
        scriptname: str | None = None,
        servername: str | None = None,
        reporter: ReporterOption | None = None,
        tags: Mapping[str, Any] | None = None,
        autostart: bool = True,
        *,
        script_name: str | None = None,
        server_name: str | None = None,
        schema: str = "",
        timer_rusage: bool | None = None,
        enabled: bool | None = None,
        transport: Transport | None = None,
        **transport_options: Any,
    ) -> None:
        serving = Serving(
            "script monitor",
            address,
            transport=transport or as_transport(reporter, "script-monitor"),
            timer_rusage=timer_rusage,
            enabled=enabled,
            **transport_options,
        )
        self.transport, self.timer_rusage, self.enabled = (
            serving.transport,
            serving.timer_rusage,
            serving.enabled,
        )
        #: What was given as ``reporter`` (else the transport): ``.raise_on_fail``, ``.stats()``.
        self.reporter: Any = reporter if reporter is not None else self.transport
        machine = socket.gethostname() or "unknown"
        self.hostname: str = hostname or machine
        self.scriptname: str = script_name or scriptname or " ".join(sys.argv) or "python"
        self.servername: str = server_name or servername or machine
        self.schema = schema
        self.collector = DataCollector(self.scriptname, self.hostname, schema or None, tags)
        #: CPU seconds of the last stopped unit (None until one stopped), as in the original.
        self.ru_utime: float | None = None
        self.ru_stime: float | None = None
        self._request: RequestSpan | None = None
        # The token of the first unit made current in a context: resetting it gives that
        # context back as it was before the monitor took it, however many units followed.
        self._token: Token[RequestSpan | None] | None = None
        self._names: tuple[str, str, str] = ("", "", "")
        if autostart:
            self.start()

    # -- the names, under both spellings

    @property
    def script_name(self) -> str:
        return self.scriptname

    @script_name.setter
    def script_name(self, value: str) -> None:
        self.scriptname = value

    @property
    def server_name(self) -> str:
        return self.servername

    @server_name.setter
    def server_name(self, value: str) -> None:
        self.servername = value

    @property
    def tags(self) -> dict[str, Any]:
        """Request tags of every unit (the collector's, as in the original)."""
        return self.collector.tags

    @tags.setter
    def tags(self, value: Mapping[str, Any]) -> None:
        self.collector.tags = dict(value)

    # -- the unit of work

    def _new(self) -> RequestSpan:
        request = RequestSpan(
            self.hostname,
            self.servername,
            self.scriptname,
            schema=self.schema,
            timer_rusage=self.timer_rusage,
            process_cpu_time=True,
        )
        self._names = (request.hostname, request.server_name, request.script_name)
        return request

    def _current(self) -> RequestSpan:
        if self._request is None:
            self.start()
        assert self._request is not None
        return self._request

    @property
    def request(self) -> RequestSpan:
        """The unit of work in progress (started if none is)."""
        return self._current()

    @property
    def started(self) -> bool:
        request = self._request
        return request is not None and not request.finished

    @property
    def elapsed(self) -> float | None:
        """Seconds of the unit: so far while it runs, its time once stopped; None before."""
        request = self._request
        if request is None:
            return None
        return request.request_time if request.finished else request.elapsed

    def start(self) -> ScriptMonitor:
        """Start a unit of work (the clock, the CPU count) unless one is running; it becomes the
        current request of this context (after a stopped unit, only if nothing else is)."""
        if self.started:
            return self
        previous = self._request
        self._request = self._new()
        if previous is None or current_request.get() in (None, previous):
            self._take_context(self._request)
        self.collector.timers.clear()
        if not self.collector.started:
            self.collector.start()
        return self

    def stop(self) -> ScriptMonitor:
        """Stop the unit's clock and its running timers; ``ru_utime``/``ru_stime`` are set.
        The unit is no longer current: the context is as it was before it was made current."""
        request = self._request
        if request is None or request.finished:
            return self
        self._stop(request)
        self._leave_context(request)
        return self

    def _stop(self, request: RequestSpan) -> None:
        request.finish()
        self.ru_utime, self.ru_stime = request.ru_utime, request.ru_stime
        if self.collector.started:
            self.collector.stop()

    def _take_context(self, request: RequestSpan) -> None:
        """Make ``request`` current here, keeping the way back to what was current before."""
        token = current_request.set(request)
        if self._token is None:
            self._token = token

    def _leave_context(self, request: RequestSpan) -> None:
        """If ``request`` is current here, give the context back as it was before the monitor
        took it (a request current around the monitor's, or none)."""
        token, self._token = self._token, None
        if current_request.opened() is not request:
            return  # not ours here (another context, or something current inside ours)
        if token is not None:
            try:
                current_request.reset(token)
                return
            except (ValueError, RuntimeError):  # made in another context, or used already
                pass
        current_request.set(None)

    def flush(self) -> ScriptMonitor:
        """Forget the unit in progress (its time and timers) and start a new one."""
        request = self._request
        if request is not None:
            request.enabled = False
            request.finished = True
        self._request = None
        self.collector.flush()
        here = current_request.get()
        self._request = self._new()
        if here is None or here is request:
            self._take_context(self._request)
        self.collector.timers.clear()
        return self

    def timer(self, **tags: Any) -> Timer:
        """A timer of this monitor's units of work (from any thread)."""
        timer = Timer(tags, home=self._current)
        self.collector.timers.add(timer)  # type: ignore[arg-type]
        return timer

    def send(self, status: int | None = None) -> bool:
        """Report the unit of work since the previous send, then start the next one (current
        where the sent one was).

        Running timers are stopped and sent. True if the packet left for every server.
        """
        return self._send(status, next_unit=True)

    def _send(self, status: int | None, *, next_unit: bool) -> bool:
        request = self._current()
        if not request.finished:
            self._stop(request)
        self._apply(request, status)
        sent = finish_and_send(request, self.transport, "script-monitor")
        self.collector.flush()
        if not next_unit:
            self._request = None
            self._leave_context(request)
            return sent
        # The next unit starts once this one is sent: its time does not include the sending.
        # It takes the sent one's place here, or the empty place a stop() left.
        self._request = self._new()
        if current_request.get() in (None, request):
            self._take_context(self._request)
        return sent

    def _apply(self, request: RequestSpan, status: int | None) -> None:
        """What the monitor's attributes say now, unless the unit changed it itself."""
        opened = self._names
        if request.hostname == opened[0]:
            request.hostname = self.hostname
        if request.server_name == opened[1]:
            request.server_name = self.servername
        if request.script_name == opened[2]:
            request.script_name = self.scriptname
        if request.schema == "":
            request.schema = self.schema
        request.tags = {**self.tags, **request.tags}
        if status is not None:
            request.status = status
        collector = self.collector
        if request.document_size < 0 and collector.document_size is not None:
            request.document_size = collector.document_size
        if request.memory_peak < 0 and collector.memory_peak is not None:
            request.memory_peak = collector.memory_peak
        if request.memory_footprint < 0 and collector.memory_footprint is not None:
            request.memory_footprint = collector.memory_footprint
        if not self.enabled:
            request.enabled = False

    # Settable per unit of work, as pynba.* is inside a request.

    @property
    def document_size(self) -> int | None:
        size = self._current().document_size
        return None if size == MEASURE else size

    @document_size.setter
    def document_size(self, value: int | None) -> None:
        self._current().document_size = MEASURE if value is None else value

    @property
    def status(self) -> int:
        return self._current().status

    @status.setter
    def status(self, value: int) -> None:
        self._current().status = value

    def __enter__(self) -> ScriptMonitor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The block was the unit of work: nothing of the monitor stays current after it.
        self._send(500 if exc_type is not None else None, next_unit=False)
