"""The span model: one Pinba request in the making, the timers under it, and the one way out.

Every source of data writes here: the classic WSGI middleware and ``ScriptMonitor`` open a
:class:`RequestSpan` (the local root) and make it current (:data:`current_request`);
``pynba.timer()`` and the OpenTelemetry bridge add timers to the current one. When the root
ends, every source calls :func:`finish_and_send`: the request is finished, sealed into the shape
the encoder reads (:class:`pynba_exporter.RequestLike`, no copy), named within the cardinality
guard and sent: one request, one packet, one path.

A timer's tags are interned once as a :class:`TimerSpec`, shared process-wide by every timer
with the same tags; a request keeps one :class:`TimerLine` per spec, where every use of it adds
up (value, hits, CPU). ``add`` is the only place a measurement joins a line; ``begin``/``end``
open and close one use.
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from pynba_exporter._model import PinbaRequest
from pynba_exporter._probes import (
    RUSAGE_THREAD,
    CpuSample,
    cpu_delta,
    hostname,
    process_cpu,
    process_memory,
    thread_cpu,
)
from pynba_exporter._tags import expand_tags, safe_text
from pynba_exporter._timers import (
    CurrentRequest,
    TimerLine,
    TimerSpec,
    _timed,
    current_request,
    opened_request,
    timer_spec,
)
from pynba_exporter._transport import Transport
from pynba_exporter.log import errors, from_signal_handler, logger
from pynba_exporter.naming import script_names, server_names

# What the API adapters (the classic API in ``pynba``, the OpenTelemetry bridge) build on; the
# probes and tag rules are re-exported so that they need nothing private.
__all__ = [
    "MEASURE",
    "CpuSample",
    "CurrentRequest",
    "RequestSpan",
    "Timer",
    "TimerLine",
    "TimerSpec",
    "cpu_delta",
    "current_request",
    "expand_tags",
    "finish_and_send",
    "hostname",
    "opened_request",
    "safe_text",
    "thread_cpu",
    "timer_spec",
]

#: A size not given by the app: measured when the request finishes.
MEASURE: Final = -1

_perf_counter = time.perf_counter
_thread_time = time.thread_time
_thread_ident = threading.get_ident
_getrusage = resource.getrusage


# Timer objects a request keeps for pynba.timers (their measurements add up in lines anyway).
_MAX_HANDLES: Final = 1000


# --------------------------------------------------------------------------------------------
# The request


class RequestSpan:
    """One Pinba request in the making (the local root span).

    Sizes left at :data:`MEASURE` are measured when the request finishes: ``document_size`` by
    whoever serves the body, ``memory_peak``/``memory_footprint`` from the process.
    ``timer_rusage`` says whether timers measure their own CPU (the thread's CPU clock, read at
    each end). ``process_cpu_time``: the request's CPU is the process's (a script's unit of
    work), not the thread's.
    """

    __slots__ = (
        "_cpu0",
        "_start",
        "_thread",
        "document_size",
        "enabled",
        "finished",
        "handles",
        "hostname",
        "lines",
        "memory_footprint",
        "memory_peak",
        "request_time",
        "ru_stime",
        "ru_utime",
        "schema",
        "script_name",
        "server_name",
        "serving",
        "status",
        "tags",
        "timer_rusage",
        "timer_shape",
        "timers",
    )

    # What a PinbaRequest has and a span never sets.
    request_count = 0
    requests: tuple[PinbaRequest, ...] = ()

    def __init__(  # noqa: PLR0917 - positional for the entry points: keywords cost per request
        self,
        hostname: str,
        server_name: str,
        script_name: str,
        schema: str = "",
        tags: dict[str, Any] | None = None,
        timer_rusage: bool = True,
        *,
        process_cpu_time: bool = False,
    ) -> None:
        self.hostname = hostname
        self.server_name = server_name
        self.script_name = script_name
        self.schema = schema
        self.status = 0
        self.tags: dict[str, Any] = {} if tags is None else tags
        self.document_size: int = MEASURE
        self.memory_peak: int = MEASURE
        self.memory_footprint: int = MEASURE
        self.enabled = True
        self.finished = False
        #: True while the middleware that opened it is inside the app call (for nesting).
        self.serving = False
        self.timer_rusage = timer_rusage
        self.request_time = 0.0
        self.ru_utime = 0.0
        self.ru_stime = 0.0
        #: Timer lines by spec, in order of first use.
        self.lines: dict[TimerSpec, TimerLine] = {}
        #: The lines sent, once sealed.
        self.timers: list[TimerLine] = []
        #: Once sealed: the timers' specs, when every tag set is fixed; the encoder finds the
        #: layout of the packet by them (see wire._encode).
        self.timer_shape: tuple[TimerSpec, ...] | None = None
        #: The first thousand timer objects made in this request (``pynba.timers``).
        self.handles: list[Timer] = []
        # None: the process's CPU (ScriptMonitor), else the thread's, read where it started.
        if process_cpu_time:
            self._thread = None
            self._cpu0 = process_cpu()
        else:
            self._thread = _thread_ident()
            ru = _getrusage(RUSAGE_THREAD)  # (thread_cpu(), without a call: every request)
            self._cpu0 = (_thread_time(), ru.ru_utime, ru.ru_stime)
        self._start = _perf_counter()

    @property
    def elapsed(self) -> float:
        """Seconds since the request started; its time once finished."""
        if self.finished:
            return self.request_time
        return _perf_counter() - self._start

    # -- timers

    def add(  # noqa: PLR0917 - a timer line's columns, in the order of PinbaTimer's
        self, spec: TimerSpec, value: float, hits: int = 1, ru_utime: float = 0.0,
        ru_stime: float = 0.0, cpu: float = 0.0,
    ) -> None:  # fmt: skip
        """Add to the timer line of ``spec``: a measured time, its hits, its CPU (split into
        user and system, or the thread's CPU seconds, split when sealed)."""
        if self.finished:
            return
        line = self.lines.get(spec)
        if line is None:
            line = self.lines[spec] = TimerLine(spec)
        line.value += value
        line.hit_count += hits
        line.ru_utime += ru_utime
        line.ru_stime += ru_stime
        line.cpu += cpu

    def add_timer(
        self, tags: Mapping[str, Any], value: float, hits: int = 1, ru_utime: float = 0.0,
        ru_stime: float = 0.0,
    ) -> None:  # fmt: skip
        """A finished timer given by its tags (an OpenTelemetry child span, for instance)."""
        self.add(timer_spec(tags), value, hits, ru_utime, ru_stime)

    def begin(self, spec: TimerSpec) -> tuple[float, float]:
        """Open a use of ``spec``; returns what :meth:`end` takes to close this very use."""
        line = self.lines.get(spec)
        if line is None:
            line = self.lines[spec] = TimerLine(spec)
        start = (_perf_counter(), _thread_time() if self.timer_rusage else -1.0)
        line.starts.append(start)
        return start

    def end(self, spec: TimerSpec, start: tuple[float, float] | None = None) -> float:
        """Close a use of ``spec`` (``start``, or the last opened) and add it to its line.
        Returns its seconds (0.0 if no use was open)."""
        now = _perf_counter()
        line = self.lines.get(spec)
        if line is None or not line.starts:
            return 0.0
        if start is None:
            start = line.starts.pop()
        else:
            try:
                line.starts.remove(start)
            except ValueError:  # closed already (the request finished)
                return now - start[0]
        cpu = _thread_time() - start[1] if start[1] >= 0.0 else 0.0
        value = now - start[0]
        # A negative CPU: stopped on another thread than it started on, nothing to say.
        self.add(spec, value, 1, 0.0, 0.0, cpu if cpu > 0.0 else 0.0)
        return value

    # -- the end

    def finish(self, now: float | None = None, *, cpu: bool = True) -> None:
        """Close open timer uses, take the time and (unless ``cpu`` is False) the CPU and
        memory. Idempotent."""
        if self.finished:
            return
        end = _perf_counter() if now is None else now
        for line in self.lines.values() if self.lines else ():
            while line.starts:
                started, cpu0 = line.starts.pop()
                line.value += end - started
                line.hit_count += 1
                if cpu0 >= 0.0:
                    line.cpu += max(0.0, _thread_time() - cpu0)
        self.request_time = end - self._start
        if cpu:
            if self._thread is None:
                self.ru_utime, self.ru_stime = cpu_delta(self._cpu0, process_cpu())
            elif self._thread == _thread_ident():
                ru = _getrusage(RUSAGE_THREAD)
                now_cpu = (_thread_time(), ru.ru_utime, ru.ru_stime)
                self.ru_utime, self.ru_stime = cpu_delta(self._cpu0, now_cpu)
            # else: finished on another thread, whose CPU would say nothing about this request
        if self.memory_peak < 0 or self.memory_footprint < 0:
            peak, rss = process_memory()
            if self.memory_peak < 0:
                self.memory_peak = peak
            if self.memory_footprint < 0:
                self.memory_footprint = rss
        self.finished = True

    def seal(self) -> RequestSpan:
        """Finish, and make the request ready to encode as it is: the span has the shape of a
        PinbaRequest (``timers`` are its lines, tags expanded), so no copy is made."""
        self.finish()
        self.document_size = max(self.document_size, 0)
        if self.tags:
            self.tags = expand_tags(self.tags)
        if not self.lines:  # no timer was used (most requests of most apps)
            return self
        timers = []
        shape: list[TimerSpec] | None = []
        total = self.ru_utime + self.ru_stime
        user_share = self.ru_utime / total if total > 0.0 else 1.0
        for spec, line in self.lines.items():
            if line.hit_count <= 0:
                continue
            if spec.text is not None:
                line.tags = spec.text
            else:
                line.tags = spec.expanded()  # a callable value, called now
                shape = None  # no fixed tag set
            if not line.tags:
                continue  # a timer needs a tag: nothing to send
            if shape is not None:
                shape.append(spec)
            if line.cpu > 0.0:
                # Timers read only the thread's precise CPU clock; the split is the request's.
                line.ru_utime += line.cpu * user_share
                line.ru_stime += line.cpu * (1.0 - user_share)
                line.cpu = 0.0
            timers.append(line)
        self.timers = timers
        self.timer_shape = tuple(shape) if shape else None
        return self


def finish_and_send(
    request: RequestSpan,
    transport: Transport,
    where: str,
    *,
    duration: float | None = None,
    cpu: bool = True,
) -> bool:
    """The one way a request leaves, whichever source made it.

    Finishes the request (open timers closed, time, CPU unless ``cpu`` is False, memory),
    takes ``duration`` as its time when the source measured it itself (an OpenTelemetry span's
    own start and end), seals it, puts its names through the cardinality guards
    (:mod:`pynba_exporter.naming`) and sends it, unless it was disabled. True if it left.

    The library's own failures are logged (``where`` names the caller) and counted, never
    raised, unless ``transport.raise_on_fail``; the app's code never runs here.
    """
    try:
        if duration is not None or not cpu:
            request.finish(cpu=cpu)
            if duration is not None:
                request.request_time = duration
        request.seal()
        if not request.enabled:
            return False
        # The cardinality guards: a name seen before passes by one set lookup, without a call.
        if request.script_name not in script_names.admitted:
            request.script_name = script_names.guard(request.script_name)
        if request.server_name not in server_names.admitted:
            request.server_name = server_names.guard(request.server_name)
        return transport.send(request)
    except Exception as exc:
        if transport.raise_on_fail or from_signal_handler(exc):
            raise
        errors.log(
            (where, type(exc).__name__),
            f"pynba: internal error, the request is not reported: {exc!r}",
            level=logging.ERROR,
            exc_info=exc,
        )
        return False


# --------------------------------------------------------------------------------------------
# The classic timer


class Timer:
    """A timer with tags: ``start()``/``stop()``, a ``with`` block, or a decorator.

    A timer belongs to the request that is current when it is created or, if it was made
    outside any request (a module-level decorator, a background thread), to the request current
    when it starts; outside any request it measures but records nothing. Each start/stop adds
    to the timer (value and one hit); timers with identical tags are merged in the packet.
    As a decorator it times every call (sync or ``async def``) into the request of that call.
    """

    __slots__ = (
        "__weakref__",
        "_home",
        "_request",
        "_start",
        "data",
        "elapsed_total",
        "runs",
        "spec",
    )

    def __init__(
        self,
        tags: Mapping[Any, Any],
        *,
        spec: TimerSpec | None = None,
        home: Callable[[], RequestSpan | None] | None = None,
    ) -> None:
        self.spec = timer_spec(tags) if spec is None else spec
        # Where the timer records: the request current in its context, or its owner's (a
        # ScriptMonitor's timers record into the monitor's unit of work, from any thread).
        self._home = home
        request = self._request = current_request.get() if home is None else home()
        if request is not None and len(request.handles) < _MAX_HANDLES:
            request.handles.append(self)  # bounded: a unit of work timing a million items
        self._start: tuple[float, float] | None = None
        self.elapsed_total = 0.0
        self.runs = 0
        #: Free slot for the app's own data, as the reference client's timer data.
        self.data: Any = None

    @property
    def tags(self) -> Mapping[Any, Any]:
        return self.spec.tags

    @property
    def started(self) -> bool:
        if self._start is None:
            return False
        request = self._request
        return request is None or not request.finished  # a finished request stopped it

    @property
    def elapsed(self) -> float:
        """Seconds measured so far (including the current run if running)."""
        if not self.started:
            return self.elapsed_total
        assert self._start is not None
        return self.elapsed_total + (_perf_counter() - self._start[0])

    def start(self) -> Timer:
        if self.started:
            errors.log(("timer", "started twice"), "pynba: timer started twice; ignored")
            return self
        request = self._request
        if request is None or request.finished:
            request = self._request = current_request.get() if self._home is None else self._home()
        if request is None:
            self._start = (_perf_counter(), -1.0)
        else:
            self._start = request.begin(self.spec)
        return self

    def stop(self) -> Timer:
        self.__exit__()
        return self

    def __exit__(self, *exc: object) -> None:
        # (the work of stop(), here: a with block's end costs one call)
        start = self._start
        if start is None:
            errors.log(("timer", "not started"), "pynba: timer stopped but not started; ignored")
            return
        self._start = None
        request = self._request
        if request is None:
            self.elapsed_total += _perf_counter() - start[0]
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("pynba: timer %r ran outside any request: not recorded", self.tags)
        else:
            self.elapsed_total += request.end(self.spec, start)
        self.runs += 1

    __enter__ = start

    def clone(self) -> Timer:
        """A new, stopped timer with the same tags, in the current request."""
        return Timer(self.spec.tags, spec=self.spec, home=self._home)

    def delete(self) -> None:
        """Take this timer's measurements out of its request: they will not be sent."""
        request = self._request
        start, self._start = self._start, None
        if request is not None and not request.finished:
            line = request.lines.get(self.spec)
            if line is not None:
                if start is not None and start in line.starts:
                    line.starts.remove(start)
                # The line may hold other uses of the same spec (clones): remove only ours.
                line.value = max(0.0, line.value - self.elapsed_total)
                line.hit_count = max(0, line.hit_count - self.runs)
        self.elapsed_total = 0.0
        self.runs = 0

    __hash__ = object.__hash__  # by identity: the original kept timers in a set

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Time every call of ``func`` into the request current at that call."""
        return _timed(func, self.spec)

    def __repr__(self) -> str:
        state = "running" if self.started else f"{self.elapsed_total:.6f}s"
        return f"<Timer {dict(self.spec.tags)!r} {state}>"
