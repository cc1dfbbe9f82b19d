"""What the task queue integrations (``pynba.celery``, ``pynba.rq``) share: one Pinba request
per task, opened before the task's code runs and sent when it is over.

A queue adapter only says when a task starts (its name, its request tags) and how it ended (a
status); the request itself is the classic API's (:class:`pynba._serving.Serving`): current in
the task's context while it runs, so ``pynba.timer()`` and ``pynba.tags`` in the task land in it,
and the context is given back as it was when the task is over. Nothing here raises into the
worker: our own failures are logged to the ``pynba`` logger and the task runs on, unmeasured.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import Token
from typing import Any, Final, TypeAlias

from pynba._serving import Serving
from pynba_exporter import Address, Transport
from pynba_exporter.spans import RequestSpan

__all__ = ["FAILURE", "RETRY", "SUCCESS", "Running", "TaskRequests"]

# The status of a task's request, by outcome. A task that returned and one that raised get what
# a ScriptMonitor block and the OpenTelemetry bridge give them (0 and 500), so a task keeps its
# status whichever integration reports it; a task that will run again (a retry) gets 503
# ("try again later"), told apart from a failure that is final.
#: The task returned.
SUCCESS: Final = 0
#: The task raised (or was rejected) and will not run again.
FAILURE: Final = 500
#: The task did not finish and is scheduled to run again (a retry).
RETRY: Final = 503

#: A task in progress: its request and the token giving its context back.
Running: TypeAlias = "tuple[RequestSpan, Token[RequestSpan | None]]"


class TaskRequests:
    """Opens and sends the requests of the tasks of one queue integration (``who``, as its log
    lines name it). Options are the middleware's: ``address`` or ``transport``, ``tags``
    (request tags of every task), ``prefix`` (put before the task name), ``timer_rusage``,
    ``enabled`` and the transport's keywords; ``server_name`` and ``hostname`` default to this
    machine's host name."""

    __slots__ = ("hostname", "server_name", "serving")

    def __init__(
        self,
        who: str,
        address: Address | None = None,
        *,
        tags: Mapping[str, Any] | None = None,
        prefix: str = "",
        server_name: str | None = None,
        hostname: str | None = None,
        timer_rusage: bool | None = None,
        enabled: bool | None = None,
        transport: Transport | None = None,
        **transport_options: Any,
    ) -> None:
        self.serving = Serving(
            who,
            address,
            transport=transport,
            timer_rusage=timer_rusage,
            enabled=enabled,
            prefix=prefix,
            tags=tags,
            **transport_options,
        )
        self.hostname: str = hostname or self.serving.host
        self.server_name: str = server_name or self.serving.host

    @property
    def transport(self) -> Transport:
        return self.serving.transport

    def begin(self, name: str, tags: Mapping[str, Any]) -> Running | None:
        """A request for the task ``name`` (with these request tags), current in this context
        until :meth:`end`. None when there is nothing to report: Pinba is off, or the task runs
        inside a request already being reported (a web request running it eagerly, or the
        OpenTelemetry Celery instrumentation's span): that request counts it, once."""
        serving = self.serving
        try:
            if not serving.enabled or serving.outer(add_tags=False) is not None:
                return None
            request, token = serving.open(self.server_name, name, host=self.hostname)
            for tag, value in tags.items():
                request.tags.setdefault(tag, value)  # the monitor's own tags win
            return request, token
        except Exception as exc:
            serving.failed("task start", exc)
            return None

    def end(self, running: Running | None, status: int) -> bool:
        """The task is over with ``status``: the context is given back, the request sent.
        True if it left."""
        if running is None:
            return False
        request, token = running
        request.status = status
        return self.serving.close(request, token)
