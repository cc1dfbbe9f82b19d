"""``DataCollector`` and ``Timer`` as pynba 0.4.3 had them (``pynba.core`` in 0.5.5).

    from pynba.collector import DataCollector

    collector = DataCollector("/nightly", "web1", "http", {"job": "report"})
    collector.start()
    with collector.timer(group="db::select"):
        ...
    collector.stop()
    Reporter(address)(None, collector.hostname, collector.scriptname, collector.elapsed,
                      collector.timers, tags=collector.tags)

A collector is a clock plus the timers made from it (``timers``, a set, as in the original) and
the values a request carries (names, tags, sizes). ``flush()`` restarts the clock and forgets
the timers. Its timers measure on their own; they are sent by whoever is given them (a
:class:`pynba.reporter.Reporter`, or a :class:`pynba.util.ScriptMonitor`'s ``send()``).

What differs from the original on purpose: misuse (starting twice, stopping what was not
started) is logged to the ``pynba`` logger instead of raising ``RuntimeError``, and a timer's
``elapsed`` is 0.0, not None, before it first stops (see ``docs/migration.md``).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any

from pynba_exporter.log import errors
from pynba_exporter.timers import Timer as _Timer

__all__ = ["DataCollector", "Timer"]


class Timer(_Timer):
    """A :class:`pynba.Timer` that can belong to a :class:`DataCollector` (``parent``): then
    it is in ``parent.timers``, its clones are too, and ``delete()`` takes it out."""

    __slots__ = ("parent",)

    def __init__(self, tags: Mapping[Any, Any], parent: DataCollector | None = None) -> None:
        # A collector's timers record into no request: the collector is their request.
        super().__init__(tags, home=_nowhere if parent is not None else None)
        self.parent = parent

    def clone(self) -> Timer:
        twin = Timer(self.spec.tags, self.parent)
        twin.data = self.data
        if self.parent is not None:
            self.parent.timers.add(twin)
        return twin

    def delete(self) -> None:
        super().delete()
        if self.parent is not None:
            self.parent.timers.discard(self)

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        if self.parent is None:
            return super().__call__(func)
        # As the original: each call is timed by a clone, which stays in the collector.
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                with self.clone():
                    return await func(*args, **kwargs)

            return awrapper

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.clone():
                return func(*args, **kwargs)

        return wrapper


def _nowhere() -> None:
    return None


class DataCollector:
    """The original's per-request data container (see the module's documentation)."""

    def __init__(
        self,
        scriptname: str | None = None,
        hostname: str | None = None,
        schema: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        self.enabled = True
        self.timers: set[Timer] = set()
        self.scriptname = scriptname
        self.hostname = hostname
        self.schema = schema
        self.tags: dict[str, Any] = dict(tags or {})
        #: Set these to send them instead of nothing (the original measured none of them).
        self.document_size: int | None = None
        self.memory_peak: int | None = None
        self.memory_footprint: int | None = None
        self._start: float | None = None  # perf_counter at start
        self._wall: float | None = None  # time.time() at start
        self._elapsed: float | None = None

    @property
    def started(self) -> bool:
        return self._start is not None

    @property
    def elapsed(self) -> float | None:
        """Seconds between start and stop; None until stopped."""
        return self._elapsed

    @property
    def dt_start(self) -> float | None:
        """When it started, in seconds since the epoch; None before."""
        return self._wall

    def start(self) -> DataCollector:
        if self._start is not None:
            errors.log(("collector", "started twice"), "pynba: collector started twice; ignored")
            return self
        self._elapsed = None
        self._wall = time.time()
        self._start = time.perf_counter()
        return self

    def stop(self) -> DataCollector:
        """Stop the clock and every running timer."""
        start = self._start
        if start is None:
            errors.log(("collector", "not started"), "pynba: collector stopped but not started")
            return self
        end = time.perf_counter()
        self._start = None
        self._elapsed = end - start
        for timer in list(self.timers):
            if timer.started:
                timer.stop()
        return self

    def timer(self, **tags: Any) -> Timer:
        """A new timer of this collector."""
        timer = Timer(tags, self)
        self.timers.add(timer)
        return timer

    def flush(self) -> DataCollector:
        """Restart the clock and forget the timers."""
        self.timers.clear()
        self._start = None
        return self.start()

    def __repr__(self) -> str:
        return f"<DataCollector {self.scriptname!r} {len(self.timers)} timers>"
