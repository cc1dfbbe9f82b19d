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

import functools
import inspect
import logging
import math
import resource
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any, Final

from pynba_exporter._cache import BoundedCache
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
from pynba_exporter.log import errors, from_signal_handler
from pynba_exporter.naming import OVERFLOW, script_names, server_names
from pynba_exporter.wire import MAX_TIMER_SECONDS, PinbaEncodeError, usec

# What the API adapters (the classic API in ``pynba``, the OpenTelemetry bridge) build on; the
# probes and tag rules are re-exported so that they need nothing private.
__all__ = [
    "MEASURE",
    "CpuSample",
    "CurrentRequest",
    "RequestSpan",
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
_nextafter = math.nextafter
_INF: Final = math.inf
_UINT32_MAX: Final = 0xFFFFFFFF


# --------------------------------------------------------------------------------------------
# The current request


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
        # The variable's own methods, so that opening and closing a request costs C calls only.
        #: Only the request set in this context (by the classic API), never a found one.
        self.opened: Callable[[], RequestSpan | None] = self._var.get
        self.set: Callable[[RequestSpan | None], Token[RequestSpan | None]] = self._var.set
        self.reset: Callable[[Token[RequestSpan | None]], None] = self._var.reset

    def get(self) -> RequestSpan | None:
        """The request of the running code: the one set here, else the one a finder knows."""
        request = self._var.get()
        if request is None and self.finders:
            for finder in self.finders:
                request = finder()
                if request is not None:
                    break
        return request


#: The request being served in this context (thread, task, greenlet), if any.
current_request = CurrentRequest()
#: The request the classic API set in this context, if any (the OpenTelemetry processor asks).
opened_request = current_request.opened
# (the hot paths ask it first: one C call, where current_request.get() is a Python one)
_opened = opened_request


# --------------------------------------------------------------------------------------------
# Timer specs: interned tag sets

# Interned specs by their tag content. Keys are the raw items when every name and value is a
# plain str; otherwise the items with each value's type (and a float's repr), because values
# equal in Python are sent as different text: 0, False, 0.0 and -0.0 are "0", "", "0", "-0".
_SPECS: BoundedCache[Any, TimerSpec] = BoundedCache(4096)
_SCALARS: Final = (int, float, bool, bytes, type(None))


class TimerSpec:
    """One tag set, shared by every timer with these tags (see :func:`timer_spec`).

    It is also a prebuilt timer, for hot loops: ``with spec:`` or ``@spec`` times into the
    current request, like ``pynba.timer(**tags)`` without making a timer object per use.
    """

    __slots__ = ("tags", "text")

    def __init__(self, tags: Mapping[Any, Any]) -> None:
        #: The tags as given.
        self.tags = tags
        #: The tags as sent, expanded once; None while a value is callable (expanded per
        #: request, as the original pynba called them when sending).
        self.text: dict[str, Any] | None = None
        if not any(callable(v) for v in tags.values()):
            self.text = expand_tags(tags)

    def expanded(self) -> dict[str, Any]:
        """The tags as sent now."""
        return self.text if self.text is not None else expand_tags(self.tags)

    def __enter__(self) -> TimerSpec:
        request = _opened() or current_request.get()
        if request is not None:
            request.begin(self)
        return self

    def __exit__(self, *exc: object) -> None:
        request = _opened() or current_request.get()
        if request is not None:
            request.end(self)

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Time every call of ``func`` into the request current at that call."""
        return _timed(func, self)

    def __repr__(self) -> str:
        return f"<TimerSpec {dict(self.tags)!r}>"

    @staticmethod
    def of(tags: Mapping[Any, Any]) -> TimerSpec:
        """The same as :func:`timer_spec`."""
        return timer_spec(tags)


def timer_spec(tags: Mapping[Any, Any]) -> TimerSpec:
    """The spec of these tags, interned: every timer with the same tags (sent as the same
    text) shares one, its tags expanded once, its uses adding up in one line per request."""
    try:
        spec = _SPECS.get(tuple(tags.items()))
    except TypeError:  # an unhashable value: the slow path says what to do
        spec = None
    return spec if spec is not None else _intern(tags)


def _intern(tags: Mapping[Any, Any]) -> TimerSpec:
    try:
        items = tuple(tags.items())
    except Exception:  # not a mapping: expand_tags logs it, the spec has no tags
        return TimerSpec({})
    if all(type(n) is str and type(v) is str for n, v in items):
        key: Any = items
    elif all(type(n) is str and type(v) in _SCALARS for n, v in items):
        key = tuple((n, type(v), repr(v) if type(v) is float else v) for n, v in items)
        spec = _SPECS.get(key)
        if spec is not None:
            return spec
    else:  # several values, nested tags, callables, objects: a spec of its own
        return TimerSpec(dict(tags))
    return _SPECS.put(key, TimerSpec(dict(tags)))  # a copy: the caller may change its dict


# A line's tags until it is sealed (shared, never changed: an empty dict per line costs).
_UNSEALED: Final[dict[str, Any]] = {}


class TimerLine:
    """One timer line of a request: what the uses of one spec add up to. Once sealed it has the
    attributes of a PinbaTimer, so the encoder takes it as it is.

    Its time is kept in whole microseconds, each use truncated apart, as the reference client's
    timers are (``pinba_timer_add(tags, 3.24)`` and ``(tags, 3.9)`` make 7,140,000 us, where
    the sum of the seconds, truncated once, could be a microsecond more)."""

    __slots__ = (
        "cpu", "hit_count", "ru_stime", "ru_utime", "spec", "starts", "tags", "usec", "value",
    )  # fmt: skip

    def __init__(self, spec: TimerSpec) -> None:
        self.spec = spec
        self.tags: dict[str, Any] = _UNSEALED  # the spec's text, when sealed
        self.usec = 0.0  # a whole number
        #: Seconds, once sealed: the float whose whole microseconds are exactly ``usec``.
        self.value = 0.0
        self.hit_count = 0
        self.ru_utime = 0.0
        self.ru_stime = 0.0
        #: Thread CPU seconds of the timers, split into user and system when sealed.
        self.cpu = 0.0
        #: The open uses: (perf_counter, thread CPU or -1.0) at their start. Uses may overlap
        #: (threads, tasks, nesting); closing them in any order adds the same total.
        self.starts: list[tuple[float, float]] = []


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
        "request_count",
        "request_time",
        "requests",
        "ru_stime",
        "ru_utime",
        "schema",
        "script_name",
        "server_name",
        "serving",
        "status",
        "tags",
        "timer_columns",
        "timer_rusage",
        "timer_shape",
        "timers",
    )

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
        # What a PinbaRequest has and a span never sets (slots: the encoder reads them, and a
        # class attribute read through an instance is not a fast read).
        self.request_count = 0
        self.requests: tuple[PinbaRequest, ...] = ()
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
        #: Once sealed: the timers' numbers as the packet carries them (see wire.encode).
        self.timer_columns: tuple[list[int], list[float], list[float], list[float]] | None = None
        #: The first thousand timer objects made in this request (``pynba.timers``).
        self.handles: list[Any] = []
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
        try:
            # pinba_timer_add()'s whole microseconds (// 1.0 truncates a non-negative float as
            # int() does, without a call; whole floats add up exactly below 2**53). NaN fails
            # the test, a non-number raises.
            line.usec += value * 1e6 // 1.0 if 0.0 <= value < MAX_TIMER_SECONDS else _usec(value)
        except TypeError:
            line.usec += _usec(value)
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
            return 0.0  # never begun, or the request finished (and closed it)
        if start is None:
            start = line.starts.pop()
        else:
            try:
                line.starts.remove(start)
            except ValueError:  # closed already (the request finished)
                return now - start[0]
        value = now - start[0]  # (>= 0: perf_counter never goes back)
        if self.finished:  # (a use begun after the request finished counts for nothing)
            return value
        if start[1] >= 0.0:
            cpu = _thread_time() - start[1]
            if cpu > 0.0:  # (negative: stopped on another thread than it started on)
                line.cpu += cpu
        # As add() does, without its checks: a perf_counter interval is a float, not negative,
        # and far below MAX_TIMER_SECONDS.
        line.usec += value * 1e6 // 1.0
        line.hit_count += 1
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
                line.usec += max(0.0, end - started) * 1e6 // 1.0
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
            peak, rss = process_memory(end)
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
        host = self.hostname
        if not host or host[0] == "\0":
            # As pinba_hostname_set(""): a name that is empty as a C string is this machine's.
            self.hostname = hostname()
        if self.tags:
            self.tags = expand_tags(self.tags)
            if "" in self.tags:  # pinba_tag_set() refuses an empty name, and so do we
                del self.tags[""]
                errors.log(("tag", "empty name"), "pynba: a request tag with no name left out")
        if not self.lines:  # no timer was used (most requests of most apps)
            return self
        timers = []
        shape: list[TimerSpec] | None = []
        # The numbers as the packet carries them, worked out here where each line is at hand
        # (the encoder would read every line again), when every one is in the common range:
        # hits of 1 to 2**32-1, and times below a second, which the packet carries as their
        # whole microseconds / 1e6. Anything else (a second or more, NaN, a negative CPU...):
        # the encoder reads the lines and converts each value as the reference client does.
        hits: list[int] = []
        values: list[float] = []
        users: list[float] = []
        systems: list[float] = []
        common = True
        total = self.ru_utime + self.ru_stime
        user_share = self.ru_utime / total if total > 0.0 else 1.0
        for spec, line in self.lines.items():
            if line.hit_count <= 0:
                continue  # never closed
            tags = spec.text
            if tags is None:
                tags = spec.expanded()  # a callable value, called now
                shape = None  # no fixed tag set
            if not tags:
                continue  # a timer needs a tag: nothing to send
            line.tags = tags
            if shape is not None:
                shape.append(spec)
            cpu = line.cpu
            if cpu > 0.0:
                # Timers read only the thread's precise CPU clock; the split is the request's.
                line.ru_utime += cpu * user_share
                line.ru_stime += cpu * (1.0 - user_share)
                line.cpu = 0.0
            # The seconds that give back exactly these microseconds (us / 1e6 is a hair low
            # for about 2% of values, and the encoder truncates).
            us = line.usec
            value = us / 1e6
            line.value = value if value * 1e6 >= us else _nextafter(value, _INF)
            timers.append(line)
            if common:
                h = line.hit_count
                u = line.ru_utime
                s = line.ru_stime
                if not (0 < h <= _UINT32_MAX and us < 1e6):
                    common = False
                elif u or s:
                    try:  # (// 1.0: int()'s truncation without a call; + 0.0 makes -0.0 a 0.0)
                        u = (u * 1e6 + 0.0) // 1.0
                        s = (s * 1e6 + 0.0) // 1.0
                        common = 0.0 <= u < 1e6 and 0.0 <= s < 1e6
                        u /= 1e6
                        s /= 1e6
                    except TypeError:  # not numbers: the encoder says what is wrong
                        common = False
                elif type(u) is float and type(s) is float:
                    u = s = 0.0  # no CPU (timers without their own): nothing to convert
                else:
                    common = False  # 0j, None, a Decimal 0...: the encoder says what they are
                if common:
                    hits.append(h)
                    values.append(value)
                    users.append(u)
                    systems.append(s)
        self.timers = timers
        if shape:
            self.timer_shape = tuple(shape)
            self.timer_columns = (hits, values, users, systems) if common else None
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
            if request.script_name is OVERFLOW:
                _count_renamed(transport, "script_name")
        if request.server_name not in server_names.admitted:
            request.server_name = server_names.guard(request.server_name)
            if request.server_name is OVERFLOW:
                _count_renamed(transport, "server_name")
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


def _usec(value: object) -> int:
    """A timer time of any kind as whole microseconds (clamped as the encoder clamps it); what
    is not a number is logged and counts as 0."""
    try:
        return usec(value, "timer value")
    except PinbaEncodeError as exc:
        errors.log(("timer value", type(value).__name__), f"pynba: timer time taken as 0: {exc}")
        return 0


def _count_renamed(transport: Transport, which: str) -> None:
    # A transport-like object of the app's own may lack the counter: the request still leaves.
    count = getattr(transport, "count_renamed", None)
    if count is not None:
        count(which)


def _timed(func: Callable[..., Any], spec: TimerSpec) -> Callable[..., Any]:
    """``func`` with every call timed into the request current at that call."""
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            request = current_request.get()
            if request is None:
                return await func(*args, **kwargs)
            start = request.begin(spec)
            try:
                return await func(*args, **kwargs)
            finally:
                request.end(spec, start)

        return awrapper

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        request = current_request.get()
        if request is None:
            return func(*args, **kwargs)
        start = request.begin(spec)
        try:
            return func(*args, **kwargs)
        finally:
            request.end(spec, start)

    return wrapper
