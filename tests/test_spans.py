"""Unit tests of the span model and of the one way a request leaves (no sockets, no server).

The packets are real (encoded, then decoded from the bytes a MemoryTransport kept); what is
tested is the model's own rules: finishing, sealing, the cardinality guard, the error path.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from pynba_exporter import (
    MemoryTransport,
    PinbaEncodeError,
    PinbaRequest,
    PinbaTimer,
    Transport,
    decode,
    encode,
    spans,
)
from pynba_exporter.naming import OVERFLOW, UNMATCHED, ScriptNames, script_names, server_names
from pynba_exporter.spans import (
    MEASURE,
    RequestSpan,
    current_request,
    finish_and_send,
    timer_spec,
)
from pynba_exporter.timers import Timer


def _request(script: str = "/p", **options: object) -> RequestSpan:
    return RequestSpan("h", "s", script, **options)  # type: ignore[arg-type]


def test_a_finished_request_leaves_once_with_its_timers_and_sizes() -> None:
    memory = MemoryTransport()
    request = _request(tags={"app": "shop"})
    token = current_request.set(request)
    try:
        with Timer({"group": "db"}):
            pass
        running = Timer({"group": "left-running"}).start()
    finally:
        current_request.reset(token)
    assert finish_and_send(request, memory, "test")
    assert finish_and_send(request, memory, "test")  # a second call sends the same request
    first, second = memory.requests
    assert first == second
    assert first.tags == {"app": "shop"}
    assert {t.tags["group"] for t in first.timers} == {"db", "left-running"}
    assert not running.started  # finishing stopped it
    assert first.document_size == 0  # nobody measured a body
    assert first.memory_peak >= first.memory_footprint > 0


def test_the_source_may_give_the_time_and_leave_out_the_cpu() -> None:
    memory = MemoryTransport()
    request = _request()
    deadline = time.thread_time() + 0.01
    while time.thread_time() < deadline:  # some CPU that would otherwise be counted
        pass
    finish_and_send(request, memory, "test", duration=1.5, cpu=False)
    (got,) = memory.requests
    assert got.request_time == 1.5
    assert (got.ru_utime, got.ru_stime) == (0.0, 0.0)


def test_cpu_is_that_of_the_thread_that_ran_the_request() -> None:
    memory = MemoryTransport()
    request = _request()
    deadline = time.thread_time() + 0.02
    while time.thread_time() < deadline:
        pass
    finish_and_send(request, memory, "test")
    assert memory.requests[0].ru_utime + memory.requests[0].ru_stime >= 0.015

    other = _request()
    done = threading.Thread(target=finish_and_send, args=(other, memory, "test"))
    done.start()
    done.join()
    # Finished on another thread: that thread's CPU says nothing of this request.
    assert (memory.requests[1].ru_utime, memory.requests[1].ru_stime) == (0.0, 0.0)


def test_sizes_set_by_the_app_are_kept_and_the_others_measured() -> None:
    memory = MemoryTransport()
    request = _request()
    request.document_size = 123
    request.memory_footprint = 7
    assert request.memory_peak == MEASURE
    finish_and_send(request, memory, "test")
    (got,) = memory.requests
    assert (got.document_size, got.memory_footprint) == (123, 7)
    assert got.memory_peak > 7


def test_a_disabled_request_is_not_sent() -> None:
    memory = MemoryTransport()
    request = _request()
    request.enabled = False
    assert finish_and_send(request, memory, "test") is False
    assert memory.packets == []


class _Broken(Transport):
    def _deliver(self, data: bytes, requests: int) -> bool:
        raise RuntimeError("a bug in a transport")


@pytest.mark.expect_pynba_errors
def test_the_library_failures_are_logged_not_raised(pynba_log: object) -> None:
    assert finish_and_send(_request(), _Broken(), "test") is False
    broken = _Broken(raise_on_fail=True)
    with pytest.raises(RuntimeError, match="a bug in a transport"):
        finish_and_send(_request(), broken, "test")


@pytest.mark.expect_pynba_errors
def test_script_names_beyond_the_cap_go_under_one_name() -> None:
    guard = ScriptNames(limit=2)
    assert [guard.guard(n) for n in ("/a", "/b", "/a", "/c", "/d", "/b")] == [
        "/a", "/b", "/a", OVERFLOW, OVERFLOW, "/b",
    ]  # fmt: skip
    assert guard.guard(UNMATCHED) == UNMATCHED  # the fixed names never count against the cap
    assert guard.stats() == {"distinct": 2, "overflowed": 2}


@pytest.mark.expect_pynba_errors
def test_the_cap_applies_on_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINBA_MAX_SCRIPT_NAMES", "3")
    script_names.reset()
    memory = MemoryTransport()
    for i in range(5):
        finish_and_send(_request(f"/product/{i}"), memory, "test")
    names = [r.script_name for r in memory.requests]
    assert names == ["/product/0", "/product/1", "/product/2", OVERFLOW, OVERFLOW]
    assert script_names.stats()["overflowed"] == 2


@pytest.mark.expect_pynba_errors
def test_a_bad_name_cap_in_the_environment_keeps_the_default(
    monkeypatch: pytest.MonkeyPatch, pynba_log: Any
) -> None:
    monkeypatch.setenv("PINBA_MAX_SCRIPT_NAMES", "abc")
    script_names.reset()
    memory = MemoryTransport()
    assert finish_and_send(_request("/a"), memory, "test")  # sent all the same
    assert memory.requests[0].script_name == "/a"
    assert script_names.limit == 1000
    assert [m for m in pynba_log.problems if "PINBA_MAX_SCRIPT_NAMES" in m]


@pytest.mark.expect_pynba_errors
def test_server_names_are_capped_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # They come from the Host header, which any client chooses.
    monkeypatch.setenv("PINBA_MAX_SERVER_NAMES", "2")
    server_names.reset()
    memory = MemoryTransport()
    for i in range(4):
        finish_and_send(RequestSpan("h", f"evil{i}.example", "/p"), memory, "test")
    assert [r.server_name for r in memory.requests] == [
        "evil0.example", "evil1.example", OVERFLOW, OVERFLOW,
    ]  # fmt: skip


def test_timer_layouts_found_by_identity_give_the_bytes_found_by_content() -> None:
    """Sealed requests name their timers' fixed tag sets by identity (timer_shape) and the
    encoder files their layout under it: the second request of a shape, encoded that way, has
    the bytes of the same request given as a plain record."""

    def sealed(tags: dict[str, Any]) -> RequestSpan:
        request = _request(tags={"app": "shop"})
        for i in range(3):
            request.add_timer({"group": f"g{i}", "server": "db1"}, 0.001 * (i + 1), 2, 0.0001)
        request.add_timer(tags, 0.25)
        request.status, request.document_size = 200, 10
        return request.seal()

    def as_record(r: RequestSpan) -> PinbaRequest:
        return PinbaRequest(
            r.hostname, r.server_name, r.script_name, document_size=r.document_size,
            memory_peak=r.memory_peak, request_time=r.request_time, ru_utime=r.ru_utime,
            ru_stime=r.ru_stime, status=r.status, memory_footprint=r.memory_footprint,
            schema=r.schema, tags=r.tags, timers=[
                PinbaTimer(dict(t.tags), t.value, t.hit_count, t.ru_utime, t.ru_stime)
                for t in r.timers
            ],
        )  # fmt: skip

    for _ in range(3):
        fixed = sealed({"group": "last"})
        assert fixed.timer_shape is not None and len(fixed.timer_shape) == 4
        assert encode(fixed) == encode(as_record(fixed))
        # Another tag set in the last slot: another shape, another layout.
        other = sealed({"group": "other"})
        assert other.timer_shape != fixed.timer_shape
        assert encode(other) == encode(as_record(other))
    # A callable value is expanded anew for every request: no identity stands for its text.
    varying = sealed({"group": lambda: "called"})
    assert varying.timer_shape is None
    assert encode(varying) == encode(as_record(varying))


@pytest.mark.parametrize("order", [(0, False), (False, 0), (0.0, -0.0, 0, False)])
def test_tag_values_equal_in_python_are_sent_as_their_own_text(order: tuple[object, ...]) -> None:
    """0, False, 0.0 and -0.0 are equal in Python but the reference client sends "0", "",
    "0" and "-0": timers interned by equal tags must not share one text, in either order,
    however many requests of the process used the other value first."""
    memory = MemoryTransport()
    for value in order:
        request = _request()
        token = current_request.set(request)
        try:
            with Timer({"a": value}):
                pass
        finally:
            current_request.reset(token)
        finish_and_send(request, memory, "test")
        (timer,) = memory.requests[-1].timers
        text = {"0": "0", "False": "", "0.0": "0", "-0.0": "-0"}[repr(value)]
        assert timer.tags == {"a": text}, value


def test_a_prebuilt_timer_sends_what_an_ordinary_timer_sends() -> None:
    """``with spec:`` and ``@spec`` time into the current request as ``Timer(tags)`` does:
    same tags, hits and a time; uses that overlap (nested here) add up the same total."""
    spec = spans.timer_spec({"group": "db::select", "server": "db1"})
    memory = MemoryTransport()

    @spec
    def query() -> None:
        time.sleep(0.001)

    request = _request()
    token = current_request.set(request)
    try:
        with spec, spec:
            query()
        with Timer({"group": "db::select", "server": "db1"}):
            pass
    finally:
        current_request.reset(token)
    with spec:  # outside any request: nothing recorded, nothing raised
        pass
    assert finish_and_send(request, memory, "test")
    (timer,) = memory.requests[0].timers
    assert timer.tags == {"group": "db::select", "server": "db1"}
    assert timer.hit_count == 4
    assert 0.003 <= timer.value < 1.0  # the outer and inner uses both hold the sleep


# -- the reference client's rules for the span model (tests/conformance checks them against PHP)


def test_each_timer_use_is_whole_microseconds_before_it_joins_its_line() -> None:
    span = RequestSpan("h", "s", "/p", timer_rusage=False)
    for value in (0.0000015, 0.0000015, 3.24, 3.9):
        span.add_timer({"t": "a" if value < 1 else "b"}, value)
    span.add_timer({"t": "c"}, float("nan"))
    span.add_timer({"t": "c"}, -2.0)
    lines = {line.tags["t"]: line for line in span.seal().timers}
    assert {k: line.usec for k, line in lines.items()} == {"a": 2, "b": 7_140_000, "c": 0}
    (decoded,) = [t for t in decode(encode(span)).timers if t.tags == {"t": "a"}]
    assert decoded.value == pytest.approx(2e-6)


@pytest.mark.parametrize("us", [0, 1, 249, 251, 489, 999_999, 1_000_001, 3_899_999, 4_294_967_295])
def test_a_sealed_line_holds_seconds_that_encode_back_to_its_microseconds(us: int) -> None:
    span = RequestSpan("h", "s", "/p", timer_rusage=False)
    span.add(timer_spec({"t": "x"}), 0.0)
    span.lines[timer_spec({"t": "x"})].usec = us
    (line,) = span.seal().timers
    assert int(line.value * 1e6) == us


@pytest.mark.parametrize(
    ("us", "cpu", "hits"),
    [(0, 0.0, 3), (1, 0.0000015, 127), (999_999, 0.25, 128), (1_000_000, 3.9, 3),
     (3_899_999, 1e12, 2**32 - 1), (4_294_967_295_000_000, float("nan"), 2**32 + 3),
     (2**52, -1.0, 3), (5, float("inf"), 3), (5, 0.1, float("nan")), (5, 0.1, 3.0),
     (5, 0.1, 1e300)],
)  # fmt: skip
def test_the_numbers_worked_out_when_sealed_make_the_packet_the_timers_make(
    us: int, cpu: float, hits: int
) -> None:
    # The seal works out the timers' numbers as the packet carries them (timer_columns) when
    # they are in the common range; the encoder otherwise reads them from each timer. Both
    # ways give the same bytes, the first packet of a layout (the careful path) and the next.
    span = RequestSpan("h", "s", "/p", timer_rusage=False)
    span.add(timer_spec({"t": "x"}), 0.0, hits, ru_utime=cpu, ru_stime=cpu / 3)
    span.add(timer_spec({"t": "y", "n": 1}), 0.5)
    span.lines[timer_spec({"t": "x"})].usec = us
    span.seal()
    common = us < 1e6 and 0 <= cpu < 1 and 0 < hits < 2**32
    assert (span.timer_columns is not None) == common
    record = PinbaRequest(
        span.hostname, span.server_name, span.script_name,
        request_time=span.request_time, ru_utime=span.ru_utime, ru_stime=span.ru_stime,
        memory_peak=span.memory_peak, memory_footprint=span.memory_footprint,
        timers=[PinbaTimer(t.tags, t.value, t.hit_count, t.ru_utime, t.ru_stime)
                for t in span.timers],
    )  # fmt: skip
    for packed in (False, True):
        assert encode(span, packed=packed) == encode(record, packed=packed)
        assert encode(span, packed=packed) == encode(record, packed=packed)  # layout cached


@pytest.mark.parametrize(
    "odd", [-0.0, 0j, None, "0.5", 0, Fraction(1, 3000), Decimal("0.0005"), Decimal(0)]
)
@pytest.mark.parametrize("other_cpu", [0.0, 0.25])
def test_odd_timer_cpu_values_go_out_as_the_encoder_makes_them_first_packet_or_next(
    odd: object, other_cpu: float
) -> None:
    # What the seal does not recognise as a plain CPU time it leaves to the encoder: sent as
    # the encoder converts it from a record, or refused alike, on every packet.
    span = RequestSpan("h", "s", "/p", timer_rusage=False)
    span.add(timer_spec({"t": "odd"}), 0.001)
    span.add(timer_spec({"t": "other"}), 0.002, 1, other_cpu)
    span.lines[timer_spec({"t": "odd"})].ru_utime = odd  # type: ignore[assignment]
    span.seal()  # never raises for them
    record = PinbaRequest(
        "h", "s", "/p", request_time=span.request_time, ru_utime=span.ru_utime,
        ru_stime=span.ru_stime, memory_peak=span.memory_peak,
        memory_footprint=span.memory_footprint,
        timers=[PinbaTimer(t.tags, t.value, t.hit_count, t.ru_utime, t.ru_stime)
                for t in span.timers],
    )  # fmt: skip

    def outcome(request: Any, packed: bool) -> object:
        try:
            return encode(request, packed=packed)
        except PinbaEncodeError as exc:
            return exc.field

    for packed in (False, True):
        for _ in range(2):  # the first packet of a layout, then with the layout cached
            assert outcome(span, packed) == outcome(record, packed)


def test_an_empty_hostname_is_the_machines_and_an_empty_tag_name_is_left_out(
    pynba_log: Any,
) -> None:
    span = RequestSpan("", "s", "/p", tags={"": "v", "k": "w"}).seal()
    assert span.hostname == spans.hostname() != ""
    assert span.tags == {"k": "w"}
    assert RequestSpan("\0web", "s", "/p").seal().hostname == spans.hostname()
    assert pynba_log.problems == ["pynba: a request tag with no name left out"]
    pynba_log.records.clear()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.expect_pynba_errors
def test_a_name_refused_while_the_cap_was_full_is_admitted_once_the_flood_ages_out() -> None:
    """A scanner's one-off names fill the cap; they age out (unseen for a generation) and a
    real route asked again takes a place, while the scanner's new names never do."""
    clock = _Clock()
    guard = ScriptNames(limit=10, period=300.0, clock=clock)
    assert [guard.guard(f"/scan/{i}") for i in range(10)] == [f"/scan/{i}" for i in range(10)]
    assert guard.guard("/checkout") == OVERFLOW  # the cap is full
    scan = 10
    answers = []
    for _ in range(4):  # the flood goes on, /checkout asked between its names
        clock.now += 200.0
        for _ in range(10):
            for _ in range(5):
                assert guard.guard(f"/scan/{scan}") == OVERFLOW  # one-offs never get in
                scan += 1
            answers.append(guard.guard("/checkout"))
    # Generations turn on the first new name at least 300 s after the last turn: at t+400 s
    # the flood's first names became the previous generation; unseen since, they left at the
    # next turn (t+800 s), and /checkout, asked again, has had a place since then.
    assert answers[:30] == [OVERFLOW] * 30
    assert answers[30:] == ["/checkout"] * 10
    assert guard.stats()["distinct"] == 1


@pytest.mark.expect_pynba_errors
def test_names_in_use_keep_their_place_across_generations() -> None:
    clock = _Clock()
    guard = ScriptNames(limit=3, period=60.0, clock=clock)
    for name in ("/a", "/b", "/c"):
        assert guard.guard(name) == name
    for _ in range(10):  # /a and /b asked every 30 s, /c never again
        clock.now += 30.0
        assert guard.guard("/a") == "/a"
        assert guard.guard("/b") == "/b"
        assert guard.guard("/new") in ("/new", OVERFLOW)
    assert guard.guard("/a") == "/a"
    assert guard.guard("/b") == "/b"
    assert guard.guard("/new") == "/new"  # /c's place, once /c was unseen for a generation
    assert guard.stats() == {"distinct": 3, "overflowed": guard.overflowed}


@pytest.mark.expect_pynba_errors
def test_the_memory_of_refused_names_is_bounded() -> None:
    clock = _Clock()
    guard = ScriptNames(limit=5, period=60.0, clock=clock)
    for i in range(10_000):
        guard.guard(f"/{'x' * 1000}/{i}")  # long one-off URLs
    assert len(guard._asked) <= 5
    assert len(guard.admitted) - 2 + len(guard._previous) <= 5


@pytest.mark.expect_pynba_errors
def test_script_and_server_names_warn_each_once_and_count_refusals_per_transport(
    monkeypatch: pytest.MonkeyPatch, pynba_log: Any
) -> None:
    monkeypatch.setenv("PINBA_MAX_SCRIPT_NAMES", "1")
    monkeypatch.setenv("PINBA_MAX_SERVER_NAMES", "1")
    memory = MemoryTransport()
    for i in range(3):
        finish_and_send(RequestSpan("h", f"s{i}.example", f"/p{i}"), memory, "test")
    warnings = [m for m in pynba_log.problems if OVERFLOW in m]
    assert len(warnings) == 2
    assert any("script names" in m for m in warnings)
    assert any("server names" in m for m in warnings)
    assert dict(memory.stats().renamed) == {"script_name": 2, "server_name": 2}
