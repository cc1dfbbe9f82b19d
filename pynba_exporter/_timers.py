"""The current request, and timer tag sets: what every timer and request of the process shares.

:data:`current_request` finds the request the running code belongs to. A :class:`TimerSpec`
is one tag set, interned process-wide by :func:`timer_spec` and shared by every timer with
these tags; a request keeps one :class:`TimerLine` per spec, where its uses add up. A spec is
also a prebuilt timer (``with spec:``). The requests themselves are in ``spans``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Final

from pynba_exporter._cache import BoundedCache
from pynba_exporter._tags import expand_tags

if TYPE_CHECKING:
    from pynba_exporter.spans import RequestSpan

__all__ = [
    "CurrentRequest",
    "TimerLine",
    "TimerSpec",
    "current_request",
    "opened_request",
    "timer_spec",
]


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
        request = current_request.get()
        if request is not None:
            request.begin(self)
        return self

    def __exit__(self, *exc: object) -> None:
        request = current_request.get()
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


class TimerLine:
    """One timer line of a request: what the uses of one spec add up to. It has the attributes
    of a PinbaTimer, so the encoder takes it as it is."""

    __slots__ = ("cpu", "hit_count", "ru_stime", "ru_utime", "spec", "starts", "tags", "value")

    def __init__(self, spec: TimerSpec) -> None:
        self.spec = spec
        self.tags: dict[str, Any] = {}  # the spec's text, when sealed
        self.value = 0.0
        self.hit_count = 0
        self.ru_utime = 0.0
        self.ru_stime = 0.0
        #: Thread CPU seconds of the timers, split into user and system when sealed.
        self.cpu = 0.0
        #: The open uses: (perf_counter, thread CPU or -1.0) at their start. Uses may overlap
        #: (threads, tasks, nesting); closing them in any order adds the same total.
        self.starts: list[tuple[float, float]] = []


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
