"""``LOCAL_STACK`` as pynba 0.4.3 had it (``pynba.stacked`` in 0.5.5).

``LOCAL_STACK.pynba`` is the request current in this context (thread, asyncio task, greenlet):
what :data:`pynba.pynba` reads and writes. Setting it makes a request current; deleting it
leaves none.
"""

from __future__ import annotations

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
        current_request.set(request)

    @pynba.deleter
    def pynba(self) -> None:
        current_request.set(None)


LOCAL_STACK = LocalStack()
