"""The span model: one Pinba request in the making, the timers under it, and the one way out.

Every source of data writes here: the classic WSGI middleware and ``ScriptMonitor`` open a
:class:`RequestSpan` (the local root) and make it current in a context variable; ``pynba.timer()``
and the OpenTelemetry bridge add timers to the current one. When the root ends, every source
calls :func:`finish_and_send` with what differs between them (the time if it measured it itself,
CPU or not): the request is finished, sealed into the shape the encoder reads
(:class:`pynba_exporter.RequestLike`, no copy), named within the cardinality guard and sent:
one request, one packet, one path.

Timers are aggregated as they stop, keyed by what they were made from: the calls of a decorated
function, or the uses of one ``Timer``, add up in one line (value, hits, CPU) instead of piling up
objects, and the encoder merges lines whose tags turn out identical, as the reference client does.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import resource
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
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
    "TimerSpec",
    "cpu_delta",
    "current_request",
    "expand_tags",
    "finish_and_send",
    "hostname",
    "opened_request",
    "safe_text",
    "thread_cpu",
]


class CurrentRequest:
    """The request the running code belongs to, if any: ``get``, ``set``, ``reset`` as a
    ``ContextVar``'s.

    A classic middleware or ``ScriptMonitor`` sets its request in this context (thread, task,
    greenlet). A request opened by an OpenTelemetry root span is not stored here: it is found
    through the span current in the OpenTelemetry context (the bridge registers a finder), so it
    is bound to its own context, and a root span that never ends cannot capture the later
    requests of its thread.
    """

    __slots__ = ("_var", "finders", "opened", "reset", "set")

    def __init__(self) -> None:
        self._var: ContextVar[RequestSpan | None] = ContextVar("pynba_request", default=None)
        #: Functions giving the request of what runs now, asked when none is set here.
        self.finders: list[Callable[[], RequestSpan | None]] = []
        # The variable's own methods, bound once: C-level calls on every request's path.
        #: Only the request set in this context (by the classic API), never a found one.
        self.opened: Callable[[], RequestSpan | None] = self._var.get
        self.set: Callable[[RequestSpan | None], Token[RequestSpan | None]] = self._var.set
        self.reset: Callable[[Token[RequestSpan | None]], None] = self._var.reset

    def get(self) -> RequestSpan | None:
        request = self._var.get()
        if request is not None or not self.finders:
            return request
        for finder in self.finders:
            request = finder()
            if request is not None:
                return request
        return None


#: The request being served in this context (thread, task, greenlet), if any.
current_request = CurrentRequest()
# Its context variable, read directly on the timer path (a C call); current_request.get() is
# asked only when it holds nothing and a finder may know better.
_current_var = current_request._var
_finders = current_request.finders
#: ``current_request.opened``, as a C-level call: the request the classic API set in this
#: context, if any (the OpenTelemetry processor asks it for every span it sees start).
opened_request = current_request.opened


def _current() -> RequestSpan | None:
    request = _current_var.get()
    if request is None and _finders:
        return current_request.get()
    return request


#: A size not given by the app: measured when the request finishes.
MEASURE: Final = -1

_perf_counter = time.perf_counter


class TimerSpec:
    """What timers made from the same call site share: their tags, expanded once unless a
    value is callable (then at each send, as the tags of the original pynba)."""

    __slots__ = ("_static", "tags")

    def __init__(self, tags: Mapping[Any, Any]) -> None:
        self.tags = tags
        self._static: dict[str, Any] | None = None

    def expanded(self) -> dict[str, Any]:
        static = self._static
        if static is not None:
            return static
        given = self.tags
        if type(given) is dict:
            for name, value in given.items():
                if type(name) is not str or type(value) is not str:
                    break
            else:  # plain text already (the common case): nothing to expand
                self._static = given
                return given
        tags = expand_tags(given)
        if not any(callable(v) for v in self.tags.values()):
            self._static = tags
        return tags

    @staticmethod
    def of(tags: Mapping[Any, Any]) -> TimerSpec:
        """The spec of these tags, shared process-wide by every timer with equal tags: the
        same ``pynba.timer(group=..., server=...)`` call site makes no new objects per call,
        its tags are expanded once, and its uses add up in one line of each request."""
        try:
            key = tuple(tags.items())
            spec = _SPECS.get(key)
        except TypeError:  # unhashable values: a spec of its own
            return TimerSpec(tags)
        if spec is None:
            spec = TimerSpec(tags)
            if len(_SPECS) >= _MAX_SPECS:
                _SPECS.clear()  # a flood of distinct tag sets: start over rather than grow
            _SPECS[key] = spec
        return spec


class _Line:
    """One timer line of a request: what the uses of one spec added up to. It has the
    attributes of a PinbaTimer, so the encoder takes it as it is."""

    __slots__ = ("cpu", "hit_count", "ru_stime", "ru_utime", "spec", "tags", "value")

    def __init__(self, spec: TimerSpec) -> None:
        self.spec = spec
        self.tags: dict[str, Any] = {}
        self.value = 0.0
        self.hit_count = 0
        self.ru_utime = 0.0
        self.ru_stime = 0.0
        #: CPU seconds of the thread's clock, split into user and system when sealed.
        self.cpu = 0.0


# Timer specs by tag content (see TimerSpec.of).
_SPECS: dict[tuple[tuple[Any, Any], ...], TimerSpec] = {}
_MAX_SPECS: Final = 4096
# Timer objects a request keeps for pynba.timers (their measurements add up in lines anyway).
_MAX_HANDLES: Final = 1000
_thread_time = time.thread_time
_getrusage = resource.getrusage
_get_ident = threading.get_ident

# A request's CPU is the thread's precise clock (time.thread_time) between its start and end,
# split into user and system time in the proportion getrusage saw over the same span. The
# kernel updates getrusage's figures for a thread only at its ticks and context switches, so
# over the short gap between two requests of one thread (a server reading the next request)
# they barely move: when a request starts less than _REUSE_RUSAGE seconds of the thread's CPU
# after the thread's previous request ended, the reading taken at that end stands for this
# start. One system call per request saved; the total is unchanged (the precise clock is read
# at both ends), and the split's span starts at most that much CPU time earlier. A thread that
# did more in between (a worker between jobs) reads getrusage anew.
_REUSE_RUSAGE: Final = 0.001
# The thread's last end reading, by thread ident (a new thread may reuse a dead one's ident:
# its clock is then behind the reading, which is not used).
_last_cpu: dict[int, CpuSample] = {}
_MAX_THREADS: Final = 1024
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_last_cpu.clear)


# --------------------------------------------------------------------------------------------
# The request


class RequestSpan:
    """One Pinba request in the making (the local root span).

    Sizes left at :data:`MEASURE` are measured when the request finishes: ``document_size`` by
    whoever serves the body, ``memory_peak``/``memory_footprint`` from the process. ``timer_rusage``
    says whether timers measure their own CPU (two getrusage calls per timer).
    """

    __slots__ = (
        "_cpu0",
        "_lines",
        "_running",
        "_start",
        "_thread",
        "document_size",
        "enabled",
        "finished",
        "handles",
        "hostname",
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

    def __init__(
        self,
        hostname: str,
        server_name: str,
        script_name: str,
        *,
        schema: str = "",
        tags: dict[str, Any] | None = None,
        timer_rusage: bool = True,
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
        self._lines: dict[TimerSpec, _Line] = {}
        self.timers: list[_Line] = []
        #: The timers' tag sets by identity once sealed, if all are fixed (see seal).
        self.timer_shape: tuple[TimerSpec, ...] | None = None
        self._running: set[Timer] = set()
        #: The timer objects made in this request (``pynba.timers``, as the original had it),
        #: the first thousand: a long unit of work must not keep every timer it ever made.
        self.handles: list[Timer] = []
        # The thread whose CPU is counted; None: the process's (ScriptMonitor).
        if process_cpu_time:
            self._thread = None
            self._cpu0 = process_cpu()
        else:
            thread = self._thread = _get_ident()
            now = _thread_time()
            last = _last_cpu.get(thread)
            if last is not None and 0.0 <= now - last[0] < _REUSE_RUSAGE:
                # The thread's previous request ended moments ago (in CPU time): its getrusage
                # reading stands for this start too (see _REUSE_RUSAGE).
                self._cpu0 = (now, last[1], last[2])
            else:
                ru = _getrusage(RUSAGE_THREAD)
                self._cpu0 = (now, ru.ru_utime, ru.ru_stime)
        self._start = _perf_counter()

    @property
    def elapsed(self) -> float:
        """Seconds since the request started; its time once finished."""
        if self.finished:
            return self.request_time
        return _perf_counter() - self._start

    # -- timers

    def add(
        self, spec: TimerSpec, value: float, hits: int = 1, ru_utime: float = 0.0,
        ru_stime: float = 0.0,
    ) -> None:  # fmt: skip
        """Add to the timer line of ``spec``: a measured time, its hits, its CPU."""
        line = self._lines.get(spec)
        if line is None:
            line = self._lines[spec] = _Line(spec)
        line.value += value
        line.hit_count += hits
        line.ru_utime += ru_utime
        line.ru_stime += ru_stime

    def add_timer(
        self, tags: Mapping[str, Any], value: float, hits: int = 1, ru_utime: float = 0.0,
        ru_stime: float = 0.0,
    ) -> None:  # fmt: skip
        """A finished timer given by its tags (an OpenTelemetry child span, for instance).

        Timers with the same tags share one spec, process-wide, so they add up in one line of
        the request (and the tags are expanded once, not per timer)."""
        # TimerSpec.of and add, inlined: this runs for every OpenTelemetry child span.
        try:
            spec = _SPECS.get(tuple(tags.items()))
        except TypeError:
            spec = None
        if spec is None:
            spec = TimerSpec.of(tags)
        line = self._lines.get(spec)
        if line is None:
            line = self._lines[spec] = _Line(spec)
        line.value += value
        line.hit_count += hits
        line.ru_utime += ru_utime
        line.ru_stime += ru_stime

    # -- the end

    def finish(self, now: float | None = None, *, cpu: bool = True) -> None:
        """Stop running timers, take the time and (unless ``cpu`` is False) the CPU.
        Idempotent."""
        if self.finished:
            return
        end = _perf_counter() if now is None else now
        if self._running:
            for timer in list(self._running):
                timer._stop_at(end)
        self.request_time = end - self._start
        if cpu:
            thread = self._thread
            if thread is None:
                self.ru_utime, self.ru_stime = cpu_delta(self._cpu0, process_cpu())
            elif thread == _get_ident():
                # thread_cpu(), inlined: this runs at the end of every request.
                ru = _getrusage(RUSAGE_THREAD)
                end_cpu = (_thread_time(), ru.ru_utime, ru.ru_stime)
                self.ru_utime, self.ru_stime = cpu_delta(self._cpu0, end_cpu)
                if len(_last_cpu) >= _MAX_THREADS:
                    _last_cpu.clear()  # threads come and go: forget rather than grow
                _last_cpu[thread] = end_cpu
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
        if not self.finished:
            self.finish()
        if self.document_size < 0:  # noqa: PLR1730 - a comparison is cheaper than max()
            self.document_size = 0
        if not self._lines:  # no timer was used (most requests of most apps)
            self.timers = []
            if self.tags:
                self.tags = expand_tags(self.tags)
            return self
        timers = []
        shape: list[TimerSpec] | None = []
        user_share = -1.0
        for line in self._lines.values():
            if line.hit_count > 0:
                spec = line.spec
                tags = spec._static
                if tags is None:
                    tags = spec.expanded()
                    if spec._static is None:  # a callable value: no fixed tag set
                        shape = None
                line.tags = tags
                if tags:
                    if shape is not None:
                        shape.append(spec)
                    cpu = line.cpu
                    if cpu > 0.0:
                        # Timers read only the thread's precise CPU clock (one call per edge);
                        # its user/system split is the request's own.
                        if user_share < 0.0:
                            total = self.ru_utime + self.ru_stime
                            user_share = self.ru_utime / total if total > 0.0 else 1.0
                        line.ru_utime += cpu * user_share
                        line.ru_stime += cpu - cpu * user_share
                        line.cpu = 0.0
                    timers.append(line)
        self.timers = timers
        # The interned specs stand for their fixed tag sets: the encoder finds the layout of
        # these timers by their identities (see wire._encode).
        self.timer_shape = tuple(shape) if shape else None
        if self.tags:
            self.tags = expand_tags(self.tags)
        return self


_script_names_admitted = script_names.admitted
_server_names_admitted = server_names.admitted


def finish_and_send(
    request: RequestSpan,
    transport: Transport,
    where: str,
    *,
    duration: float | None = None,
    cpu: bool = True,
) -> bool:
    """The one way a request leaves, whichever source made it.

    Finishes the request (running timers stopped, time, CPU unless ``cpu`` is False, memory),
    takes ``duration`` as its time when the source measured it itself (an OpenTelemetry span's
    own start and end), seals it, puts its script name through the cardinality guard
    (:mod:`pynba_exporter.naming`) and sends it, unless it was disabled. True if it left.

    The library's own failures are logged (``where`` names the caller) and counted, never
    raised, unless ``transport.raise_on_fail``; the app's code never runs here.
    """
    try:
        if not request.finished:
            request.finish(cpu=cpu)
        if duration is not None:
            request.request_time = duration
        request.seal()
        if not request.enabled:
            return False
        # The cardinality guards: a name seen before passes by one set lookup, without a call.
        if request.script_name not in _script_names_admitted:
            request.script_name = script_names.guard(request.script_name)
        if request.server_name not in _server_names_admitted:
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
        "_cpu",
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
        if spec is None:
            # TimerSpec.of, inlined for pynba.timer(): this runs for every timer.
            try:
                spec = _SPECS.get(tuple(tags.items()))
            except TypeError:
                spec = None
            if spec is None:
                spec = TimerSpec.of(dict(tags))  # a copy: the caller may change its dict
        self.spec = spec
        # Where the timer records: the request current in its context, or its owner's (a
        # ScriptMonitor's timers record into the monitor's unit of work, from any thread).
        self._home = home
        if home is None:
            request = _current_var.get()
            if request is None and _finders:
                request = current_request.get()
        else:
            request = home()
        self._request = request
        if request is not None:
            handles = request.handles
            if len(handles) < _MAX_HANDLES:  # a unit of work timing a million items: bounded
                handles.append(self)
        self._start: float | None = None
        self._cpu = -1.0  # the thread's CPU clock at start; negative: not measured
        self.elapsed_total = 0.0
        self.runs = 0
        #: Free slot for the app's own data, as the reference client's timer data.
        self.data: Any = None

    @property
    def tags(self) -> Mapping[Any, Any]:
        return self.spec.tags

    @property
    def started(self) -> bool:
        return self._start is not None

    @property
    def elapsed(self) -> float:
        """Seconds measured so far (including the current run if running)."""
        start = self._start
        if start is None:
            return self.elapsed_total
        return self.elapsed_total + (_perf_counter() - start)

    def start(self) -> Timer:
        if self._start is not None:
            errors.log(("timer", "started twice"), "pynba: timer started twice; ignored")
            return self
        request = self._request
        if request is None or request.finished:
            home = self._home
            request = self._request = _current() if home is None else home()
        if request is not None:
            if request.timer_rusage:
                self._cpu = _thread_time()
            request._running.add(self)
        self._start = _perf_counter()
        return self

    def stop(self) -> Timer:
        if self._start is None:
            errors.log(("timer", "not started"), "pynba: timer stopped but not started; ignored")
            return self
        self._stop_at(_perf_counter())
        return self

    def _stop_at(self, end: object = None, *_exc: object) -> None:
        """End the current run at ``end`` (a perf_counter reading), or now if ``end`` is not a
        float. It is also ``__exit__``, whose exception arguments are not a time: a ``with``
        block's end costs one call, not two."""
        start = self._start
        if start is None:
            return
        if type(end) is not float:
            end = _perf_counter()
        self._start = None
        value = end - start
        self.elapsed_total += value
        self.runs += 1
        request = self._request
        if request is None:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("pynba: timer %r ran outside any request: not recorded", self.tags)
            return
        request._running.discard(self)
        if request.finished:
            return
        # RequestSpan.add, inlined: this runs for every timer of every request.
        spec = self.spec
        line = request._lines.get(spec)
        if line is None:
            line = request._lines[spec] = _Line(spec)
        line.value += value
        line.hit_count += 1
        cpu0 = self._cpu
        if cpu0 >= 0.0:
            self._cpu = -1.0
            cpu = _thread_time() - cpu0
            if cpu > 0.0:  # stopped on another thread than it started on: nothing to say
                line.cpu += cpu

    def clone(self) -> Timer:
        """A new, stopped timer with the same tags, in the current request."""
        return Timer(self.spec.tags, spec=self.spec, home=self._home)

    def delete(self) -> None:
        """Take this timer's measurements out of its request: they will not be sent."""
        request = self._request
        if request is None:
            return
        request._running.discard(self)
        self._start = None
        line = request._lines.get(self.spec)
        if line is not None and not request.finished:
            # The line may hold other uses of the same spec (clones): remove only ours.
            line.value = max(0.0, line.value - self.elapsed_total)
            line.hit_count = max(0, line.hit_count - self.runs)
        self.elapsed_total = 0.0
        self.runs = 0

    __enter__ = start
    __exit__ = _stop_at

    __hash__ = object.__hash__  # by identity: running timers are kept in a set

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Time every call of ``func`` into the request current at that call."""
        spec = self.spec
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                token = _begin()
                try:
                    return await func(*args, **kwargs)
                finally:
                    _end(spec, token)

            return awrapper

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = _begin()
            try:
                return func(*args, **kwargs)
            finally:
                _end(spec, token)

        return wrapper

    def __repr__(self) -> str:
        state = "running" if self._start is not None else f"{self.elapsed_total:.6f}s"
        return f"<Timer {dict(self.spec.tags)!r} {state}>"


_NO_REQUEST: Final = (None, 0.0, -1.0)


def _begin() -> tuple[RequestSpan | None, float, float]:
    request = _current()
    if request is None:
        return _NO_REQUEST
    return request, _perf_counter(), _thread_time() if request.timer_rusage else -1.0


def _end(spec: TimerSpec, token: tuple[RequestSpan | None, float, float]) -> None:
    request, start, cpu0 = token
    if request is None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("pynba: timed call outside any request: not recorded (%r)", spec.tags)
        return
    value = _perf_counter() - start
    if request.finished:
        return
    line = request._lines.get(spec)
    if line is None:
        line = request._lines[spec] = _Line(spec)
    line.value += value
    line.hit_count += 1
    if cpu0 >= 0.0:
        cpu = _thread_time() - cpu0
        if cpu > 0.0:  # an async call resumed on another thread: nothing to say
            line.cpu += cpu
