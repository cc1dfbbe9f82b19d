"""A Celery app whose worker runs in a subprocess (``celery -A apps.celery_tasks worker``) for
tests/test_task_queues.py; the broker is ``$PYNBA_TEST_BROKER`` (a Redis started by the test)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from pynba import pynba
from pynba.celery import monitor

app = Celery("pynba_tests", broker=os.environ.get("PYNBA_TEST_BROKER", "memory://"))
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    task_default_queue="pynba-tests",
)
pinba = monitor(app, tags={"app": "tests"})


@app.task(name="tests.add")  # type: ignore[untyped-decorator]
def add(x: int, y: int) -> int:
    with pynba.timer(group="math::add"):
        return x + y


@app.task(name="tests.fail")  # type: ignore[untyped-decorator]
def fail() -> None:
    pynba.tags["stage"] = "parse"
    with pynba.timer(group="parse"):
        raise ValueError("a task that fails")


@app.task(name="tests.flaky", bind=True, max_retries=1, default_retry_delay=0)  # type: ignore[untyped-decorator]
def flaky(self: Any) -> str:
    with pynba.timer(group="flaky::attempt"):
        pass
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "ok on the second run"
