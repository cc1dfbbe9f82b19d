"""``pynba`` and ``LocalProxy`` as pynba 0.4.3 had them (``pynba.wsgi.pynba`` and
``pynba.stacked.LocalProxy`` in 0.5.5).

``pynba`` is the one proxy of this package (:data:`pynba.pynba`): the request current in this
context. ``LocalProxy(**defaults)`` makes another proxy to the same current request whose
attributes read as ``defaults`` outside any request (``LocalProxy(enabled=False).enabled`` is
False there), as the original's did; reading or writing outside a request never raises.
"""

from __future__ import annotations

from typing import Any

from pynba._proxy import _Pynba, pynba
from pynba_exporter.spans import current_request

__all__ = ["LocalProxy", "pynba"]


class LocalProxy(_Pynba):
    """A proxy to the current request with ``defaults`` for outside any request."""

    __slots__ = ("defaults",)

    def __init__(self, **defaults: Any) -> None:
        self.defaults = defaults

    def _get(self, attribute: str) -> Any:
        request = current_request.get()
        if request is None:
            return self.defaults.get(attribute)
        return getattr(request, attribute)

    @property
    def enabled(self) -> bool | None:
        request = current_request.get()
        if request is None:
            return self.defaults.get("enabled")
        return request.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        request = current_request.get()
        if request is not None:
            request.enabled = bool(value)
