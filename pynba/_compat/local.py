"""``LOCAL_STACK`` as pynba 0.4.3 had it (``pynba.stacked`` in 0.5.5).

``LOCAL_STACK.pynba`` is the request current in this context (thread, asyncio task, greenlet):
what :data:`pynba.pynba` reads and writes. Setting it makes a request current; deleting it
leaves none. Setting it to anything but a request (or None) is logged and ignored: the
originals' own tests put a stand-in object there, and every timer of the context would
otherwise fail on it.
"""

from __future__ import annotations

from pynba_exporter.log import errors
from pynba_exporter.spans import RequestSpan, current_request

__all__ = ["LOCAL_STACK", "LocalStack"]


class LocalStack:
    """The current request, per context (a context variable, not a dict of thread ids)."""

    __slots__ = ()

    @property
    def pynba(self) -> RequestSpan | None:
        return current_request.get()

    @pynba.setter
    def pynba(self, request: RequestSpan | None) -> None:
        # Checked here, once, so that the request path never meets a foreign object.
        if request is not None and not isinstance(request, RequestSpan):
            errors.log(
                ("local stack", "not a request"),
                f"pynba: LOCAL_STACK.pynba set to {type(request).__name__!r}, not a request;"
                " ignored",
            )
            return
        current_request.set(request)

    @pynba.deleter
    def pynba(self) -> None:
        current_request.set(None)


LOCAL_STACK = LocalStack()
