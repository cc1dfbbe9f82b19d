"""The task queue integrations in process: Celery's eager mode sends the same signals as a
worker, so the request's life around a task (its context, its nesting, our own failures) is
checked here in milliseconds; tests/test_task_queues.py runs the real workers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from celery import Celery
from celery.exceptions import Ignore, Reject
from conftest import PynbaLog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from pynba import monitor, pynba
from pynba.celery import CeleryMonitor
from pynba.celery import monitor as celery_monitor
from pynba.testing import PinbaCapture
from pynba.util import ScriptMonitor
from pynba_exporter import MemoryTransport, PinbaRequest
from pynba_exporter.otel import PinbaSpanProcessor
from pynba_exporter.spans import current_request


@pytest.fixture(autouse=True)
def fresh_context() -> Iterator[None]:
    current_request.set(None)
    yield
    current_request.set(None)


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("eager", broker="memory://", set_as_current=False)
    app.conf.task_always_eager = True  # run in the caller, with the worker's signals
    yield app
    app.close()


@pytest.fixture
def watched(app: Celery) -> Iterator[CeleryMonitor]:
    connected = celery_monitor(app, tags={"app": "shop"})
    yield connected
    connected.disconnect()


def tasks_of(app: Celery) -> tuple[Any, Any, Any]:
    @app.task(name="shop.add")  # type: ignore[untyped-decorator]
    def add(x: int, y: int) -> int:
        with pynba.timer(group="math::add"):
            return x + y

    @app.task(name="shop.fail")  # type: ignore[untyped-decorator]
    def fail() -> None:
        raise ValueError("a task that fails")

    @app.task(name="shop.flaky", bind=True, max_retries=1, default_retry_delay=0)  # type: ignore[untyped-decorator]
    def flaky(self: Any) -> str:
        with pynba.timer(group="attempt"):
            pass
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return "ok"

    return add, fail, flaky


def statuses(requests: list[PinbaRequest]) -> list[tuple[str, int]]:
    return [(r.script_name, r.status) for r in requests]


@pytest.mark.usefixtures("watched")
def test_each_task_run_is_a_request_with_its_outcome(pinba: PinbaCapture, app: Celery) -> None:
    add, fail, flaky = tasks_of(app)
    assert add.delay(2, 3).get() == 5
    assert fail.delay().state == "FAILURE"  # the task's exception is Celery's, untouched
    assert flaky.delay().get() == "ok"
    got = pinba.wait(4)
    assert sorted(statuses(got)) == [
        ("shop.add", 0), ("shop.fail", 500), ("shop.flaky", 0), ("shop.flaky", 503),
    ]  # fmt: skip
    assert all(r.tags == {"app": "shop"} for r in got)  # no queue when run eagerly
    assert [t.tags for t in pinba.request("shop.add").timers] == [{"group": "math::add"}]
    assert current_request.get() is None  # nothing of a task stays current after it


@pytest.mark.usefixtures("watched")
def test_ignored_and_rejected_tasks(pinba: PinbaCapture, app: Celery) -> None:
    @app.task(name="shop.skip")  # type: ignore[untyped-decorator]
    def skip() -> None:
        raise Ignore()

    @app.task(name="shop.poisoned")  # type: ignore[untyped-decorator]
    def poisoned() -> None:
        raise Reject("a message no run can take", requeue=False)

    skip.delay()
    poisoned.delay()
    assert statuses(pinba.wait(2)) == [("shop.skip", 0), ("shop.poisoned", 500)]


@pytest.mark.usefixtures("watched")
def test_the_context_is_given_back_after_a_task(pinba: PinbaCapture, app: Celery) -> None:
    add, _, _ = tasks_of(app)
    script = ScriptMonitor(script_name="nightly")
    unit = current_request.get()
    with pynba.timer(group="before"):
        add.delay(1, 1)  # a task run by a script: a request of its own
    assert current_request.get() is unit
    script.send()
    script.stop()
    got = pinba.wait(2)
    assert statuses(got) == [("shop.add", 0), ("nightly", 0)]
    assert [t.tags for t in got[0].timers] == [{"group": "math::add"}]
    assert [t.tags for t in got[1].timers] == [{"group": "before"}]


@pytest.mark.usefixtures("watched")
def test_a_task_run_inside_a_web_request_is_counted_there_once(
    pinba: PinbaCapture, app: Celery
) -> None:
    add, _, _ = tasks_of(app)

    @monitor()
    def web(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        add.delay(1, 2)  # eagerly, inside the web request
        start_response("200 OK", [])
        return [b"ok"]

    environ: dict[str, Any] = {"PATH_INFO": "/checkout"}
    setup_testing_defaults(environ)

    def start_response(*args: Any) -> Any:
        return lambda data: None

    body = web(environ, start_response)
    b"".join(body)
    body.close()  # type: ignore[attr-defined]
    (request,) = pinba.wait(1)
    assert request.script_name == "/checkout"
    assert [t.tags for t in request.timers] == [{"group": "math::add"}]
    assert len(pinba.requests) == 1


@pytest.mark.usefixtures("watched")
def test_a_task_under_an_opentelemetry_consumer_span_is_counted_once(
    pinba: PinbaCapture, app: Celery
) -> None:
    # What OpenTelemetry's Celery instrumentation does around a task, with the Pinba bridge:
    # its CONSUMER span is the request, and the task's timers are in it.
    add, _, _ = tasks_of(app)
    provider = TracerProvider()
    provider.add_span_processor(PinbaSpanProcessor())
    try:
        tracer = provider.get_tracer("tests")
        with tracer.start_as_current_span("run/shop.add", kind=SpanKind.CONSUMER):
            add.delay(1, 2)
        (request,) = pinba.wait(1)
        assert request.script_name == "run/shop.add"
        assert [t.tags for t in request.timers] == [{"group": "math::add"}]
        assert len(pinba.requests) == 1
    finally:
        provider.shutdown()


def test_only_the_given_app_is_reported(pinba: PinbaCapture, app: Celery) -> None:
    other = Celery("other", broker="memory://", set_as_current=False)
    other.conf.task_always_eager = True
    connected = celery_monitor(other)
    try:
        add, _, _ = tasks_of(app)
        add.delay(1, 1)
        pinba.assert_nothing()
    finally:
        connected.disconnect()
        other.close()


def test_disconnect_stops_reporting(pinba: PinbaCapture, app: Celery) -> None:
    connected = celery_monitor(app).connect()  # connecting twice: still once per task
    add, _, _ = tasks_of(app)
    add.delay(1, 1)
    assert len(pinba.wait(1)) == 1
    connected.disconnect()
    pinba.clear()
    add.delay(1, 1)
    pinba.assert_nothing()


class Broken(MemoryTransport):
    def send(self, request: Any) -> bool:
        raise OSError("the sender broke")


@pytest.mark.expect_pynba_errors
def test_our_failures_are_logged_and_the_task_runs_on(app: Celery, pynba_log: PynbaLog) -> None:
    connected = celery_monitor(app, transport=Broken())
    try:
        add, _, _ = tasks_of(app)
        assert add.delay(2, 2).get() == 4
    finally:
        connected.disconnect()
    assert any("the sender broke" in line for line in pynba_log.problems), pynba_log.problems
    assert current_request.get() is None


def test_disabled_sends_nothing(pinba: PinbaCapture, app: Celery) -> None:
    connected = celery_monitor(app, enabled=False)
    try:
        add, _, _ = tasks_of(app)
        assert add.delay(2, 2).get() == 4
        pinba.assert_nothing()
    finally:
        connected.disconnect()
