"""The classic timer: ``pynba.timer(**tags)`` and ``pynba.Timer``.

    with pynba.timer(group="db::select", server="db1"):
        ...

A timer object measures its own runs (``elapsed``, ``runs``) and adds each to the timer line of
its tag set in its request (:meth:`pynba_exporter.spans.RequestSpan.begin` and ``end``). For hot
loops, a prebuilt timer (:func:`pynba_exporter.spans.timer_spec`) makes no object per use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from pynba_exporter.log import errors, logger
from pynba_exporter.spans import (
    RequestSpan,
    TimerSpec,
    _opened,
    _timed,
    current_request,
    timer_spec,
)

__all__ = ["Timer"]

_perf_counter = time.perf_counter
# Timer objects a request keeps for pynba.timers (their measurements add up in lines anyway).
_MAX_HANDLES: Final = 1000


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
        if home is None:
            # (the classic request by the ContextVar's own C get first: a timer per use)
            request = self._request = _opened() or current_request.get()
        else:
            request = self._request = home()
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
        if self._start is not None and self.started:
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
                # The line may hold other uses of the same spec (clones): remove only ours (to
                # within a microsecond a use: the line truncated each use apart).
                line.usec = max(0, line.usec - int(self.elapsed_total * 1e6))
                line.hit_count = max(0, line.hit_count - self.runs)
        self.elapsed_total = 0.0
        self.runs = 0

    __hash__ = object.__hash__  # by identity: the original kept timers in a set

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Time every call of ``func`` into the request current at that call."""
        return _timed(func, self.spec)

    def __repr__(self) -> str:
        # The predecessors' shape, which their users' logs and doctests show:
        # <Timer({...}) started:EPOCH> while running, <Timer({...}) elapsed:SECONDS> after.
        tags = f"{type(self).__name__}({dict(self.spec.tags)!r})"
        start = self._start
        if start is not None and self.started:
            return f"<{tags} started:{time.time() - (_perf_counter() - start[0])}>"
        if self.elapsed_total:
            return f"<{tags} elapsed:{self.elapsed_total}>"
        return f"<{tags}>"
