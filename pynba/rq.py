"""RQ: one Pinba request per job, without OpenTelemetry.

Run the workers with this module's job class (RQ's documented extension point for what
happens around a job, kept by every worker class: forking, spawning or simple)::

    rq worker --job-class pynba.rq.Job high default

or in code, ``Worker(queues, connection=redis, job_class=pynba.rq.Job)``. The Pinba server is
``$PINBA_SERVER`` (else 127.0.0.1:30002); to set it and other options in code, call
:func:`monitor` where the worker starts (before it forks its work horses)::

    from pynba.rq import monitor
    monitor("pinba1:30002", tags={"app": "shop"})

A job class of your own subclasses :class:`Job` instead of ``rq.job.Job``.

Each job run is one request, measured in the process that runs it (the work horse): script
name = the job's function (``shop.jobs.resize``: a fixed set, whatever the arguments), request
tag ``queue`` (the queue it came from), status from the outcome: returned 0, raised 500, raised
with retries left (``Retry(max=...)`` given at enqueue) or returned an ``rq.Retry`` with retries
left 503 (each retry is a run of its own). A job killed from outside (a hard timeout's SIGKILL,
``send_stop_job_command``) is not reported. Timers and tags made in the job with
``pynba.timer()`` / ``pynba.tags`` are the job's.

Our own failures are logged to the ``pynba`` logger; the job and the worker go on.
"""

from __future__ import annotations

import threading
from typing import Any

import rq.job

from pynba._tasks import FAILURE, RETRY, SUCCESS, TaskRequests
from pynba_exporter import Address, Transport

__all__ = ["Job", "RqMonitor", "monitor"]


class RqMonitor(TaskRequests):
    """The requests of the jobs of this process (see :func:`monitor` for the options)."""

    __slots__ = ()

    @property
    def reporter(self) -> Transport:
        """The sender: ``reporter.stats()``, ``reporter.raise_on_fail``."""
        return self.transport


_monitor: RqMonitor | None = None
_making = threading.Lock()


def monitor(address: Address | None = None, **options: Any) -> RqMonitor:
    """Set where and how the jobs of this process are reported (the options of
    :class:`pynba.PynbaMiddleware`: ``tags``, ``prefix``, ``timer_rusage``, ``enabled``,
    ``transport``, the transport's keywords; and ``server_name``, ``hostname``: default this
    machine's host name). Without a call, the first job makes one from the environment."""
    global _monitor
    with _making:
        _monitor = RqMonitor("rq integration", address, **options)
        return _monitor


def current_monitor() -> RqMonitor:
    """The monitor the jobs of this process report through (made from the environment if
    :func:`monitor` was not called)."""
    global _monitor
    made = _monitor
    if made is not None:
        return made
    with _making:
        if _monitor is None:
            _monitor = RqMonitor("rq integration")
        return _monitor


# The class a job returns to ask for another run, where RQ's workers honour it (older RQs
# keep a returned Retry as the job's result: a success).
_RETURNED_RETRY: type[Any] | None = (
    getattr(rq.job, "Retry", None) if hasattr(rq.Worker, "handle_job_retry") else None
)


class Job(rq.job.Job):
    """An RQ job whose every run is reported to Pinba (see the module)."""

    def perform(self) -> Any:
        tasks = current_monitor()
        running = tasks.begin(*self._pinba_names(tasks))
        status = FAILURE
        try:
            result = super().perform()
            status = self._pinba_returned(result)
            return result
        except BaseException:
            # RQ retries a job that raised while it has retries left (Worker.handle_job_failure).
            status = RETRY if self._pinba_retries_left() else FAILURE
            raise
        finally:
            tasks.end(running, status)

    def _pinba_names(self, tasks: TaskRequests) -> tuple[str, dict[str, Any]]:
        try:
            return str(self.func_name), {"queue": self.origin} if self.origin else {}
        except Exception as exc:  # a job whose function cannot be named: reported all the same
            tasks.serving.failed("job name", exc)
            return "<unknown>", {}

    def _pinba_retries_left(self) -> bool:
        left = getattr(self, "retries_left", None)
        return isinstance(left, int) and left > 0

    def _pinba_returned(self, result: Any) -> int:
        # A job may return rq.Retry to ask for another run; RQ fails it once it ran
        # ``retry.max`` times already (Worker.handle_job_retry).
        if _RETURNED_RETRY is None or not isinstance(result, _RETURNED_RETRY):
            return SUCCESS
        done = getattr(self, "number_of_retries", None) or 0
        return RETRY if done < getattr(result, "max", 0) else FAILURE
