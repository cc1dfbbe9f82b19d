"""What the compatibility modules share: reporters of the original kind."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from pynba.reporter import Reporter
from pynba_exporter import RequestLike, Transport
from pynba_exporter.log import errors, from_signal_handler
from pynba_exporter.spans import RequestSpan, finish_and_send
from pynba_exporter.wire import DEFAULT_MAX_PACKET_SIZE

__all__ = ["ReporterOption", "call_reporter", "split_reporter"]

#: What ``reporter=`` may be: a transport, the original's ``Reporter``, or any callable taking
#: the original reporter's arguments.
ReporterOption: TypeAlias = "Transport | Reporter | Callable[..., Any]"


class _SentTimer:
    """A timer as handed to a reporter callable: ``tags`` and ``elapsed``, as the original's."""

    __slots__ = ("elapsed", "runs", "tags")

    def __init__(self, tags: Mapping[str, Any], elapsed: float, runs: int) -> None:
        self.tags = tags
        self.elapsed = elapsed
        self.runs = runs

    def __repr__(self) -> str:
        return f"<Timer({dict(self.tags)!r}) elapsed:{self.elapsed}>"


def split_reporter(
    reporter: ReporterOption | None,
) -> tuple[Transport | None, Callable[..., Any] | None]:
    """(the transport to send with, or the callable to call instead)."""
    if reporter is None:
        return None, None
    if isinstance(reporter, Transport):
        return reporter, None
    if isinstance(reporter, Reporter):
        # Our own Reporter: send the whole packet (CPU, memory, status...) through its
        # transport rather than through the original's narrower call.
        return reporter.transport, None
    if not callable(reporter):
        raise TypeError(f"reporter must be a transport or a callable, got {reporter!r}")
    return None, reporter


class _CallingTransport(Transport):
    """A reporter callable of the original kind, behind the transport interface, so that its
    requests leave by the one path every request takes (finish, seal, name guards)."""

    def __init__(self, call: Callable[..., Any], where: str) -> None:
        super().__init__(max_packet_size=DEFAULT_MAX_PACKET_SIZE, packed=False,
                         raise_on_fail=bool(getattr(call, "raise_on_fail", False)))  # fmt: skip
        self._call = call
        self._where = where

    def send(self, request: RequestLike) -> bool:
        timers = [_SentTimer(t.tags, t.value, t.hit_count) for t in request.timers]
        try:
            self._call(
                request.server_name,
                request.hostname,
                request.script_name,
                request.request_time,
                timers,
                ru_utime=request.ru_utime,
                ru_stime=request.ru_stime,
                document_size=request.document_size,
                memory_peak=request.memory_peak,
                status=request.status or None,
                memory_footprint=request.memory_footprint,
                schema=request.schema or None,
                tags=request.tags,
            )
        except Exception as exc:
            if self.raise_on_fail or from_signal_handler(exc):
                raise
            errors.log(
                (self._where, "reporter", type(exc).__name__),
                f"pynba: the reporter raised {exc!r}; the request is not reported",
                level=logging.ERROR,
                exc_info=exc,
            )
            return False
        return True


def call_reporter(call: Callable[..., Any], request: RequestSpan, where: str) -> bool:
    """Finish ``request`` and hand it to ``call`` as the original did: ``call(servername,
    hostname, scriptname, elapsed, timers, ru_utime=..., ..., tags=...)``."""
    return finish_and_send(request, _CallingTransport(call, where), where)
