"""Celery: one Pinba request per task, without OpenTelemetry.

    from celery import Celery
    from pynba import pynba
    from pynba.celery import monitor

    app = Celery("shop", broker="redis://127.0.0.1:6379/0")
    monitor(app, tags={"app": "shop"})  # the server: $PINBA_SERVER, else 127.0.0.1:30002

    @app.task
    def resize(image_id):
        with pynba.timer(group="s3::get"):  # a timer of this task's request
            ...

Call :func:`monitor` where the worker imports the app (the module given to ``celery -A``): it
connects to Celery's ``task_prerun`` and ``task_postrun`` signals, which every pool (prefork,
threads, solo, eventlet, gevent) sends in the process and context that runs the task.

Each task run is one request: script name = the task's name (``shop.tasks.resize``: a fixed set,
whatever the arguments), request tag ``queue`` (the routing key it came by), status from the
outcome (``task_postrun``'s state): ``SUCCESS`` 0, ``RETRY`` 503 (the run that asked for a retry;
each retry is a run of its own), ``FAILURE`` 500, ``IGNORED`` 0, ``REJECTED`` 500; any other
state 500 if the task raised, else 0. Timers and tags made in the task with ``pynba.timer()``
/ ``pynba.tags`` are the task's. A task that runs inside a request already reported (eagerly,
inside a web request; or under OpenTelemetry's Celery instrumentation) is counted there, once.

Our own failures are logged to the ``pynba`` logger; the task and the worker go on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from pynba._tasks import FAILURE, RETRY, SUCCESS, Running, TaskRequests
from pynba_exporter import Address, Transport

__all__ = ["STATUSES", "CeleryMonitor", "monitor"]

#: Status of a task's request by the state ``task_postrun`` gives (other states: see the module).
#: ``IGNORED`` is a task that told the worker to forget it (``raise Ignore()``, and
#: ``self.replace()``, which hands the work to another task): not a failure. ``REJECTED`` is a
#: task that refused its message (``raise Reject()``): one.
STATUSES: Final[Mapping[str, int]] = {
    "SUCCESS": SUCCESS,
    "RETRY": RETRY,
    "FAILURE": FAILURE,
    "IGNORED": SUCCESS,
    "REJECTED": FAILURE,
}


class CeleryMonitor:
    """Reports the tasks of ``app`` (None: of every app of the process) to Pinba once
    :meth:`connect` ed. Options are those of :class:`pynba.PynbaMiddleware` (``address``,
    ``tags``, ``prefix``, ``timer_rusage``, ``enabled``, ``transport``, the transport's
    keywords), plus ``server_name`` and ``hostname`` (default: this machine's host name)."""

    def __init__(
        self,
        app: Any = None,
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
        self.app = app
        self.tasks = TaskRequests(
            "celery integration",
            address,
            tags=tags,
            prefix=prefix,
            server_name=server_name,
            hostname=hostname,
            timer_rusage=timer_rusage,
            enabled=enabled,
            transport=transport,
            **transport_options,
        )
        # Tasks in progress in this process, by task id. A list each: an eager task that
        # retries runs again inside its own run, under the same id.
        self._running: dict[str, list[Running | None]] = {}
        self._uid = f"pynba.celery.{id(self)}"

    @property
    def reporter(self) -> Transport:
        """The sender: ``reporter.stats()``, ``reporter.raise_on_fail``."""
        return self.tasks.transport

    def connect(self) -> CeleryMonitor:
        """Start reporting (once: connecting again changes nothing)."""
        from celery.signals import task_postrun, task_prerun  # noqa: PLC0415 - Celery when used

        # Strong references: the monitor lives as long as it is connected, whether or not the
        # caller keeps it.
        task_prerun.connect(self._prerun, weak=False, dispatch_uid=self._uid + ".prerun")
        task_postrun.connect(self._postrun, weak=False, dispatch_uid=self._uid + ".postrun")
        return self

    def disconnect(self) -> None:
        """Stop reporting; the tasks in progress are not reported."""
        from celery.signals import task_postrun, task_prerun  # noqa: PLC0415

        task_prerun.disconnect(self._prerun, dispatch_uid=self._uid + ".prerun")
        task_postrun.disconnect(self._postrun, dispatch_uid=self._uid + ".postrun")
        self._running.clear()

    def _ours(self, task: Any) -> bool:
        return self.app is None or getattr(task, "app", None) is self.app

    def _prerun(self, sender: Any = None, task_id: str = "", task: Any = None, **_: Any) -> None:
        task = task if task is not None else sender
        try:
            if not self._ours(task):
                return
            name = str(task.name)
            delivery = getattr(task.request, "delivery_info", None) or {}
            queue = delivery.get("routing_key")
            tags = {"queue": queue} if queue else {}
        except Exception as exc:
            self.tasks.serving.failed("task start", exc)
            return
        running = self.tasks.begin(name, tags)
        self._running.setdefault(task_id, []).append(running)

    def _postrun(
        self,
        sender: Any = None,
        task_id: str = "",
        task: Any = None,
        retval: Any = None,
        state: str | None = None,
        **_: Any,
    ) -> None:
        stack = self._running.get(task_id)
        if not stack:
            return  # not ours, or started before the monitor was connected
        running = stack.pop()
        if not stack:
            del self._running[task_id]
        status = STATUSES.get(str(state))
        if status is None:
            status = FAILURE if isinstance(retval, BaseException) else SUCCESS
        self.tasks.end(running, status)


def monitor(app: Any = None, address: Address | None = None, **options: Any) -> CeleryMonitor:
    """Report every task of ``app`` (None: of every Celery app of the process) to Pinba, one
    request per task run; returns the connected :class:`CeleryMonitor`."""
    return CeleryMonitor(app, address, **options).connect()
