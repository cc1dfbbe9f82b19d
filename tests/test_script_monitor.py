"""ScriptMonitor: one packet per unit of work; and timers in asyncio tasks."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext

import pytest
from conftest import UdpReceiver
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Tracer

from pynba import pynba
from pynba.testing import PinbaCapture
from pynba.util import ScriptMonitor
from pynba_exporter import PinbaSendError
from pynba_exporter.otel import PinbaSpanProcessor
from pynba_exporter.spans import current_request, hostname


@pytest.fixture(autouse=True)
def fresh_context() -> Iterator[None]:
    # A monitor makes its unit of work current in the context that made it; each test starts
    # and leaves without one.
    current_request.set(None)
    yield
    current_request.set(None)


def test_one_packet_per_send_with_reset_between(receiver: UdpReceiver) -> None:
    monitor = ScriptMonitor(receiver.address, tags={"worker": "mailer"})
    t = monitor.timer(step="render")
    t.start()
    time.sleep(0.02)
    t.stop()
    pynba.tags["job"] = "first"  # the monitor's unit is the current request here
    with pynba.timer(step="send"):
        pass
    assert monitor.send()
    assert monitor.send()  # an empty unit: time, CPU, tags, timers start afresh
    # (Both sent before reading: decoding the first packet must not count in the second unit.)
    first = receiver.request()
    assert first.hostname == first.server_name == hostname()
    assert first.script_name == " ".join(sys.argv)
    assert first.tags == {"worker": "mailer", "job": "first"}
    assert sorted(x.tags["step"] for x in first.timers) == ["render", "send"]
    assert first.request_time >= 0.02

    second = receiver.request()
    assert second.tags == {"worker": "mailer"}
    assert second.timers == ()
    assert second.request_time < first.request_time


def test_thousands_of_units_time_and_cpu_are_not_cumulative(receiver: UdpReceiver) -> None:
    monitor = ScriptMonitor(receiver.address, script_name="worker", timer_rusage=False)
    n = 2000
    for i in range(n):
        with monitor.timer(step="unit"):
            sum(range(200))
        monitor.request.tags["i"] = i
        monitor.send()
    got = [receiver.request() for _ in range(n)]
    assert [r.tags["i"] for r in got] == [str(i) for i in range(n)]
    assert all(len(r.timers) == 1 and r.timers[0].hit_count == 1 for r in got)
    assert max(r.request_time for r in got) < 0.5
    assert sum(r.ru_utime + r.ru_stime for r in got[-100:]) < 1.0
    assert monitor.reporter.stats().sent == n


def test_context_manager_sends_on_exit_with_500_when_it_raises(pinba: PinbaCapture) -> None:
    with ScriptMonitor(script_name="job", tags={"run": 1}) as monitor:
        monitor.timer(step="a").start()  # still running at exit: stopped and sent
    r = pinba.request("job", tags={"run": 1})
    assert (r.status, [t.tags for t in r.timers]) == (0, [{"step": "a"}])
    with pytest.raises(ZeroDivisionError), ScriptMonitor(script_name="job", tags={"run": 2}):
        1 / 0  # noqa: B018
    assert pinba.request("job", tags={"run": 2}).status == 500


def test_names_are_overridable(pinba: PinbaCapture) -> None:
    monitor = ScriptMonitor(hostname="batch1", server_name="reports", script_name="nightly")
    monitor.send(status=3)
    r = pinba.request("nightly", hostname="batch1", server_name="reports")
    assert r.status == 3


def test_timers_from_other_threads_record_into_the_monitor(receiver: UdpReceiver) -> None:
    monitor = ScriptMonitor(receiver.address)

    def work() -> None:
        with monitor.timer(step="thread"):
            pass

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    monitor.send()
    (t,) = receiver.request().timers
    assert (t.tags, t.hit_count) == ({"step": "thread"}, 4)


@pytest.mark.expect_pynba_errors
def test_raise_on_fail() -> None:
    monitor = ScriptMonitor("no-such-host.invalid")
    assert monitor.send() is False
    monitor.reporter.raise_on_fail = True
    with pytest.raises(PinbaSendError):
        monitor.send()


def test_asyncio_tasks_keep_their_own_timers(receiver: UdpReceiver) -> None:
    @pynba.timer(group="io")
    async def io(tag: str) -> None:
        pynba.tags["seen"] = tag
        await asyncio.sleep(0.001)

    async def task(tag: str) -> None:
        # Each task runs in its own copy of the context: its own unit of work.
        monitor = ScriptMonitor(receiver.address, script_name=tag)
        for _ in range(5):
            await io(tag)
            with pynba.timer(task=tag):
                await asyncio.sleep(0.001)
        monitor.send()

    async def main() -> None:
        await asyncio.gather(*(task(f"t{i}") for i in range(10)))

    asyncio.run(main())
    got = [receiver.request() for _ in range(10)]
    for r in got:
        assert r.tags == {"seen": r.script_name}
        assert sorted((tuple(t.tags.items()), t.hit_count) for t in r.timers) == [
            ((("group", "io"),), 5),
            ((("task", r.script_name),), 5),
        ]
    assert sorted(r.script_name for r in got) == [f"t{i}" for i in range(10)]


def test_timer_api(receiver: UdpReceiver) -> None:
    monitor = ScriptMonitor(receiver.address)
    t = monitor.timer(group="x")
    assert t.start() is t
    assert t.started
    time.sleep(0.001)
    assert t.elapsed > 0
    assert t.stop() is t
    first = t.elapsed
    with t:  # again: adds a hit
        pass
    assert t.elapsed >= first
    c = t.clone()
    assert not c.started and c.elapsed == 0 and c.tags == {"group": "x"}
    c.start().stop()
    d = monitor.timer(group="gone")
    d.start().stop()
    d.delete()
    t.data = {"anything": 1}
    assert "group" in repr(t)
    monitor.send()
    (line,) = receiver.request().timers
    assert (line.tags, line.hit_count) == ({"group": "x"}, 3)


@pytest.mark.expect_pynba_errors
def test_timer_misuse_is_logged_not_raised() -> None:
    monitor = ScriptMonitor("127.0.0.1:9", transport=None)
    t = monitor.timer(group="x")
    t.stop()  # not started
    t.start()
    t.start()  # started twice
    t.stop()


# -- What stays current when (a unit current after its end swallowed what came next)


def _otel_tracer() -> tuple[TracerProvider, Tracer]:
    provider = TracerProvider()
    processor = PinbaSpanProcessor()
    provider.add_span_processor(processor)
    return provider, provider.get_tracer("tests")


def test_after_a_with_block_nothing_of_the_monitor_is_current(pinba: PinbaCapture) -> None:
    provider, tracer = _otel_tracer()
    try:
        with ScriptMonitor(script_name="job"):
            pynba.tags["in"] = "job"
        assert current_request.get() is None
        with (
            tracer.start_as_current_span("consume", kind=SpanKind.CONSUMER),
            pynba.timer(group="inside"),
        ):
            pass
        pinba.wait(2)
        job = pinba.request("job", tags={"in": "job"})
        assert job.timers == ()
        consumer = pinba.request("consume")
        assert [t.tags for t in consumer.timers] == [{"group": "inside"}]
        assert len(pinba.requests) == 2  # each counted once
    finally:
        provider.shutdown()


def test_a_with_block_gives_back_the_request_current_around_it(pinba: PinbaCapture) -> None:
    outer = ScriptMonitor(script_name="outer")
    outer_unit = current_request.get()
    assert outer_unit is outer.request
    for status in (None, 500):
        with (
            pytest.raises(ZeroDivisionError) if status else nullcontext(),
            ScriptMonitor(script_name="inner", tags={"status": status}) as inner,
        ):
            assert current_request.get() is inner.request
            with pynba.timer(step="inner"):
                pass
            if status:
                1 / 0  # noqa: B018
        assert current_request.get() is outer_unit
        assert not inner.started
    with pynba.timer(step="outer"):
        pass
    outer.send()
    outer.stop()
    assert current_request.get() is None
    got = pinba.wait(3)
    assert [(r.script_name, r.status) for r in got] == [("inner", 0), ("inner", 500), ("outer", 0)]
    assert [[t.tags for t in r.timers] for r in got] == [
        [{"step": "inner"}],
        [{"step": "inner"}],
        [{"step": "outer"}],
    ]


def test_a_monitor_used_twice_as_a_context_manager_sends_twice(pinba: PinbaCapture) -> None:
    monitor = ScriptMonitor(script_name="again", autostart=False)
    assert current_request.get() is None
    for i in range(2):
        with monitor:
            pynba.tags["i"] = i
        assert current_request.get() is None
    assert [r.tags for r in pinba.wait(2)] == [{"i": "0"}, {"i": "1"}]
    pinba.clear()
    pinba.assert_nothing()  # and no third unit left to be sent


def test_send_keeps_the_next_unit_current_and_stop_gives_the_context_back(
    pinba: PinbaCapture,
) -> None:
    provider, tracer = _otel_tracer()
    try:
        monitor = ScriptMonitor(script_name="loop")
        for job in ("a", "b"):
            pynba.tags["job"] = job  # the unit in progress is current: a worker's loop
            monitor.send()
        assert current_request.get() is monitor.request
        monitor.stop()  # done with the monitor: the context is as before it
        assert current_request.get() is None
        with pynba.timer(group="outside"):  # outside any request: recorded nowhere
            pass
        with tracer.start_as_current_span("consume", kind=SpanKind.CONSUMER):
            pass
        assert [r.script_name for r in pinba.wait(3)] == ["loop", "loop", "consume"]
        monitor.send()  # the stopped unit still leaves on send(); the next one is current
        assert current_request.get() is monitor.request
        assert [r.tags for r in pinba.find("loop")] == [{"job": "a"}, {"job": "b"}, {}]
        assert all(r.timers == () for r in pinba.wait(4))
    finally:
        provider.shutdown()
