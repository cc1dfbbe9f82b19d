"""``pynba``: the current request, as the original pynba proxy exposed it.

Inside a monitored request (or a ``ScriptMonitor`` unit of work)::

    from pynba import pynba

    with pynba.timer(group="db::select", server="db1"):
        ...
    pynba.scriptname = "/product/<id>"        # a low-cardinality name of what ran
    pynba.tags["user_type"] = "guest"         # request tags
    pynba.document_size = 123                 # instead of the bytes counted by the middleware
    pynba.enabled = False                     # do not report this request

Outside any request nothing raises: timers measure and record nothing, attributes read as
``None`` (``tags`` as an empty dict) and writes are ignored (a debug line says so).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from pynba_exporter.log import errors, logger
from pynba_exporter.spans import (
    MEASURE,
    RequestSpan,
    TimerSpec,
    current_request,
    safe_text,
    timer_spec,
)
from pynba_exporter.timers import Timer

__all__ = ["pynba"]

_UINT32_MAX = 0xFFFFFFFF


def _size(value: object, name: str) -> int | None:
    """A size set by the app, made acceptable: an int in 0..2**32-1, or None to measure."""
    if value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        errors.log(("size", name), f"pynba: pynba.{name} = {value!r} ignored: not a number")
        return None
    if math.isnan(number):
        errors.log(("size", name), f"pynba: pynba.{name} = NaN ignored")
        return None
    return int(min(max(number, 0), _UINT32_MAX))


def _outside(name: str) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("pynba: pynba.%s used outside any request: ignored", name)


class _Pynba:
    """Attribute access to the request current in this context."""

    __slots__ = ()

    def timer(self, **tags: Any) -> Timer:
        """A timer with these tags, in the current request (see :class:`pynba.Timer`)."""
        return Timer(tags)

    def timer_spec(self, **tags: Any) -> TimerSpec:
        """A prebuilt timer for hot loops: made once with its tags, then ``with spec:`` (or
        ``@spec``) times into the request current at each use, as ``pynba.timer(**tags)``
        does, without making a timer object per use. Same packets."""
        return timer_spec(tags)

    @property
    def timers(self) -> set[Timer]:
        """The timers made by :meth:`timer` in the current request (empty outside any), as
        the original's ``pynba.timers``."""
        request = current_request.get()
        return set(request.handles) if request is not None else set()

    @property
    def elapsed(self) -> float | None:
        """Seconds since the current request started (None outside any)."""
        request = current_request.get()
        return request.elapsed if request is not None else None

    @property
    def request(self) -> RequestSpan | None:
        """The current request itself (None outside any)."""
        return current_request.get()

    # -- request tags

    @property
    def tags(self) -> dict[str, Any]:
        request = current_request.get()
        return request.tags if request is not None else {}

    @tags.setter
    def tags(self, value: dict[str, Any]) -> None:
        request = current_request.get()
        if request is None:
            _outside("tags")
        else:
            request.tags = dict(value)

    # -- the switch

    @property
    def enabled(self) -> bool | None:
        request = current_request.get()
        return request.enabled if request is not None else None

    @enabled.setter
    def enabled(self, value: bool) -> None:
        request = current_request.get()
        if request is None:
            _outside("enabled")
        else:
            request.enabled = bool(value)

    # -- names

    def _get(self, attribute: str) -> Any:
        request = current_request.get()
        return getattr(request, attribute) if request is not None else None

    def _set_text(self, attribute: str, name: str, value: object) -> None:
        request = current_request.get()
        if request is None:
            _outside(name)
        else:
            setattr(request, attribute, safe_text(value, name))

    @property
    def scriptname(self) -> str | None:
        return self._get("script_name")  # type: ignore[no-any-return]

    @scriptname.setter
    def scriptname(self, value: str) -> None:
        self._set_text("script_name", "scriptname", value)

    @property
    def servername(self) -> str | None:
        return self._get("server_name")  # type: ignore[no-any-return]

    @servername.setter
    def servername(self, value: str) -> None:
        self._set_text("server_name", "servername", value)

    @property
    def hostname(self) -> str | None:
        return self._get("hostname")  # type: ignore[no-any-return]

    @hostname.setter
    def hostname(self, value: str) -> None:
        self._set_text("hostname", "hostname", value)

    @property
    def schema(self) -> str | None:
        return self._get("schema")  # type: ignore[no-any-return]

    @schema.setter
    def schema(self, value: str) -> None:
        self._set_text("schema", "schema", value)

    # -- sizes

    def _set_size(self, name: str, value: object) -> None:
        request = current_request.get()
        if request is None:
            _outside(name)
        else:
            size = _size(value, name)
            setattr(request, name, MEASURE if size is None else size)

    def _get_size(self, name: str) -> int | None:
        size = self._get(name)
        return None if size is None or size < 0 else int(size)

    @property
    def document_size(self) -> int | None:
        return self._get_size("document_size")

    @document_size.setter
    def document_size(self, value: int) -> None:
        self._set_size("document_size", value)

    @property
    def memory_peak(self) -> int | None:
        return self._get_size("memory_peak")

    @memory_peak.setter
    def memory_peak(self, value: int) -> None:
        self._set_size("memory_peak", value)

    @property
    def memory_footprint(self) -> int | None:
        return self._get_size("memory_footprint")

    @memory_footprint.setter
    def memory_footprint(self, value: int) -> None:
        self._set_size("memory_footprint", value)

    def __repr__(self) -> str:
        request = current_request.get()
        if request is None:
            return "<pynba: no current request>"
        return f"<pynba: {request.script_name!r} on {request.server_name!r}>"


#: The current request (see the module's documentation).
pynba = _Pynba()
