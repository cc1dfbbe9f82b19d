"""The graphs' API (``/api/series``, ``/api/changes``): from the history a database keeps,
after a restart, and from the live window without one; values from known packets, on a clock
the test moves; bounds, and bad queries refused."""

from __future__ import annotations

import gc
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from collector_packets import raw_packet
from web_helpers import DAY, T0, Clock, write_history
from web_helpers import history_request as req

from pynba_exporter.collector import Collector, SqliteStore, WebServer
from pynba_exporter.collector._trends import MAX_POINTS, fit_step


class Api:
    def __init__(self, web: WebServer) -> None:
        self.web = web

    def get(self, path: str, **params: Any) -> tuple[int, Any]:
        url = self.web.url + path.lstrip("/") + "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read()
                assert b"<" not in body and b">" not in body  # the one way out: _api.dumps
                return response.status, json.loads(body)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())

    def ok(self, path: str, **params: Any) -> Any:
        status, answer = self.get(path, **params)
        assert status == 200, answer
        return answer


@pytest.fixture
def restarted(tmp_path: Path) -> Iterator[Api]:
    """A collector restarted on the file a previous run wrote, five seconds after the hour
    that run saw."""
    path = str(tmp_path / "p.db")
    clock = Clock()
    write_history(path, clock)
    clock.t = T0 + 3600 + 5
    c = Collector("127.0.0.1:0", clock=clock)
    c.store = SqliteStore(path, c.aggregator)
    web = WebServer(c, "127.0.0.1:0").start()
    try:
        yield Api(web)
    finally:
        web.stop()
        c.store.close()


def test_series_of_a_script_by_the_minute_with_the_day_before(restarted: Api) -> None:
    answer = restarted.ok(
        "/api/series", by="script", key="/a", compare="day", **{"from": T0, "to": T0 + 3600}
    )
    assert answer["source"] == "history"
    drawn = answer["series"]
    assert (drawn["from"], drawn["step"], len(drawn["points"])) == (T0, 60, 60)
    first = drawn["points"][0]
    assert first["start"] == T0 and first["partial"] is False
    assert (first["requests"], first["errors"]) == (3, 1)
    assert first["req_per_sec"] == pytest.approx(3 / 60)
    assert first["error_rate"] == pytest.approx(1 / 3)
    assert first["time_mean"] == pytest.approx(0.1, rel=1e-6)
    for p in ("p50", "p95", "p99"):
        assert first[p] == pytest.approx(0.1, rel=0.011)
    assert [p["errors"] for p in drawn["points"]] == [1 if m % 10 == 0 else 0 for m in range(60)]
    before = answer["compare"]
    assert (before["name"], before["shift"], before["from"], before["step"]) == (
        "day", DAY, T0 - DAY, 60,
    )  # fmt: skip
    assert [p["requests"] for p in before["points"]] == [2] * 60
    assert before["points"][0]["time_mean"] == pytest.approx(0.2, rel=1e-6)
    assert before["points"][0]["start"] == T0 - DAY  # drawn shifted by the page


def test_the_bucket_fits_the_range_and_zoom(restarted: Api) -> None:
    end = T0 + 3600
    hour = restarted.ok("/api/series", by="total", range="hour", to=end)["series"]
    assert (hour["step"], len(hour["points"])) == (60, 60)
    assert sum(p["requests"] for p in hour["points"]) == 240
    day = restarted.ok("/api/series", by="total", range="day", to=end)["series"]
    assert (day["step"], len(day["points"])) == (300, 288)
    assert sum(p["requests"] for p in day["points"]) == 240  # the day before is 24 h back
    week = restarted.ok("/api/series", by="script", key="/a", range="week", to=end)["series"]
    assert (week["step"], len(week["points"])) == (3600, 168)
    assert sum(p["requests"] for p in week["points"]) == 120 + 180  # from the hour rows
    zoomed = restarted.ok("/api/series", by="total", **{"from": T0 + 600, "to": T0 + 1200})
    assert (zoomed["series"]["step"], len(zoomed["series"]["points"])) == (60, 10)
    assert zoomed["series"]["points"][0]["start"] == T0 + 600
    # Never more than MAX_POINTS, never finer than a minute from the history.
    assert fit_step(92 * DAY, 60) * MAX_POINTS >= 92 * DAY
    longest = restarted.ok("/api/series", by="total", **{"from": end - 92 * DAY, "to": end})
    assert len(longest["series"]["points"]) <= MAX_POINTS
    assert longest["series"]["step"] >= 3600  # the minutes of 92 days ago are gone
    tiny = restarted.ok("/api/series", by="total", **{"from": T0, "to": T0 + 10})
    assert tiny["series"]["step"] == 60


def test_a_file_younger_than_the_range_is_not_drawn_by_the_hour(tmp_path: Path) -> None:
    # Half an hour of history: the day before it has no rows at all, neither minutes nor
    # hours, so the day is drawn by 5 minutes (not by the hour, as where minutes expired).
    path = str(tmp_path / "p.db")
    clock = Clock()
    c = Collector("127.0.0.1:0", clock=clock)
    c.store = store = SqliteStore(path, c.aggregator)
    try:
        for minute in range(30, 60):
            clock.t = T0 + 60 * minute + 1
            c.handle([req("/a", 0.1)])
    finally:
        store.close()
    clock.t = T0 + 3600 + 5
    c = Collector("127.0.0.1:0", clock=clock)
    c.store = SqliteStore(path, c.aggregator)
    web = WebServer(c, "127.0.0.1:0").start()
    try:
        api = Api(web)
        drawn = api.ok("/api/series", by="script", key="/a", range="day")["series"]
        assert drawn["step"] == 300
        assert [p["requests"] for p in drawn["points"][-13:]] == [0] * 6 + [5] * 6 + [0]
        drawn = api.ok("/api/series", by="script", key="/a", range="hour")["series"]
        assert (drawn["step"], len(drawn["points"])) == (60, 61)
        assert [p["requests"] for p in drawn["points"]] == [0] * 30 + [1] * 30 + [0]
    finally:
        web.stop()
        c.store.close()


def test_series_of_a_timer_group(restarted: Api) -> None:
    answer = restarted.ok(
        "/api/series", by="timer:group", key='["db::select"]', **{"from": T0, "to": T0 + 120}
    )
    first = answer["series"]["points"][0]
    assert (first["requests"], first["hit_count"]) == (3, 12)  # 4 hits a request
    assert first["hits_per_sec"] == pytest.approx(12 / 60)
    assert first["time_mean"] == pytest.approx(0.05 / 4, rel=1e-5)  # per hit
    assert first["p50"] == pytest.approx(0.05 / 4, rel=0.011)
    # A key written by the page's JSON.stringify (no spaces) finds the history's.
    answer = restarted.ok(
        "/api/series", by="timer:group,server", key='["db::select","db1"]',
        **{"from": T0, "to": T0 + 120},
    )  # fmt: skip
    assert answer["key"] == '["db::select", "db1"]'
    assert answer["series"]["points"][0]["hit_count"] == 12


def test_changes_slowest_and_changed_most(restarted: Api) -> None:
    answer = restarted.ok(
        "/api/changes", by="script", compare="day", min_requests=1,
        **{"from": T0, "to": T0 + 3600},
    )  # fmt: skip
    assert answer["compare"] == {"name": "day", "shift": DAY}
    assert [(r["key"], r["requests"]) for r in answer["slowest"]] == [("/b", 60), ("/a", 180)]
    assert answer["slowest"][0]["time_mean"] == pytest.approx(1.0, rel=1e-6)
    assert answer["slowest"][0]["p95"] == pytest.approx(1.0, rel=0.011)
    (a,) = answer["time"]  # /b has no day before to compare with
    assert a["key"] == "/a" and a["time_ratio"] == pytest.approx(0.5, rel=1e-6)
    assert a["before"]["time_mean"] == pytest.approx(0.2, rel=1e-6)
    (e,) = answer["errors"]
    assert e["error_change"] == pytest.approx(100 * 6 / 180)  # points of percent
    # min_requests leaves out of the comparisons keys with too few requests in either period.
    few = restarted.ok("/api/changes", by="script", min_requests=150, to=T0 + 3600)
    assert [r["key"] for r in few["slowest"]] == ["/b", "/a"] and few["time"] == []
    groups = restarted.ok("/api/changes", by="timer:group", min_requests=1, to=T0 + 3600)
    assert [r["name"] for r in groups["slowest"]] == ["http::GET", "db::select"]
    assert groups["compare"]["name"] == "day"  # the default comparison of the lists


@pytest.mark.parametrize(
    ("path", "query", "reason"),
    [
        ("/api/series", {"by": "nothing", "key": "x"}, "by:"),
        ("/api/series", {"by": "script"}, "key:"),
        ("/api/series", {"range": "year"}, "range:"),
        ("/api/series", {"from": "x"}, "from is not a number"),
        ("/api/series", {"to": "nan"}, "to is not a finite number"),
        ("/api/series", {"from": "10", "to": "5"}, "from must come before to"),
        ("/api/series", {"from": "0", "to": str(T0)}, "days apart at most"),
        ("/api/series", {"compare": "month"}, "compare:"),
        ("/api/changes", {"top": "0"}, "top:"),
        ("/api/changes", {"top": "1.5"}, "top:"),
        ("/api/changes", {"min_requests": "-1"}, "min_requests:"),
    ],
)
def test_bad_queries_are_refused_with_the_reason(
    restarted: Api, path: str, query: dict[str, str], reason: str
) -> None:
    status, answer = restarted.get(path, **query)
    assert status == 400
    assert reason in answer["error"]


def _window_site(feed: Callable[[Collector, Clock], None]) -> tuple[Api, Collector]:
    clock = Clock(T0)
    c = Collector("127.0.0.1:0", clock=clock, window=900)
    feed(c, clock)
    return Api(WebServer(c, "127.0.0.1:0").start()), c


def test_without_a_database_the_series_are_the_live_window() -> None:
    def feed(c: Collector, clock: Clock) -> None:
        for second in range(0, 900, 30):
            clock.t = T0 + second
            c.handle([req("/a", 0.1), req("/a", 0.3, 503), req("/<b>", 0.5)])
        clock.t = T0 + 900

    api, _ = _window_site(feed)
    try:
        answer = api.ok("/api/series", by="script", key="/a", compare="day", range="week")
        assert (answer["source"], answer["window"], answer["compare"]) == ("window", 900, None)
        drawn = answer["series"]
        assert (drawn["from"], drawn["step"], len(drawn["points"])) == (T0, 5, 180)
        assert sum(p["requests"] for p in drawn["points"]) == 60
        first = drawn["points"][0]
        assert (first["requests"], first["errors"], first["time_mean"]) == (2, 1, 0.2)
        assert first["p99"] == pytest.approx(0.3, rel=0.011)
        group = api.ok("/api/series", by="timer:group", key='["db::select"]')["series"]
        assert group["points"][0]["hit_count"] == 12
        assert api.get("/api/series", by="script")[0] == 400
        changes = api.ok("/api/changes", by="script")
        assert changes["compare"] is None and changes["time"] == changes["errors"] == []
        assert [(r["key"], r["requests"]) for r in changes["slowest"]] == [
            ("/<b>", 30), ("/a", 60),
        ]  # fmt: skip
        assert changes["slowest"][1]["p95"] == pytest.approx(0.3, rel=0.011)
    finally:
        api.web.stop()


def test_names_that_are_not_utf8_or_too_long_find_their_series() -> None:
    long = "/" + "x" * 60_000

    def feed(c: Collector, clock: Clock) -> None:
        clock.t = T0 + 1
        c.handle([raw_packet(b"/\xff", request_time=0.1), req(long, 0.2)])
        clock.t = T0 + 10

    api, _ = _window_site(feed)
    try:
        status, answer = api.get("/api/changes", by="script")
        names = [r["key"] for r in answer["slowest"]]
        assert status == 200 and max(len(n) for n in names) == 256  # cut by the one place
        cut_name = next(n for n in names if n.startswith("/x"))
        # The page writes a lone surrogate as the UTF-8 form of its code unit.
        url = api.web.url + "api/series?by=script&key=/%ED%B3%BF"
        with urllib.request.urlopen(url, timeout=10) as response:
            points = json.loads(response.read())["series"]["points"]
        assert sum(p["requests"] for p in points) == 1
        points = api.ok("/api/series", by="script", key=cut_name)["series"]["points"]
        assert sum(p["requests"] for p in points) == 1
    finally:
        api.web.stop()


def test_a_name_that_is_not_utf8_finds_its_history(tmp_path: Path) -> None:
    # The history holds U+FFFD where the bytes were invalid; the page may ask with the name as
    # the live reports give it (a lone surrogate, written as the UTF-8 form of its code unit).
    path = str(tmp_path / "p.db")
    clock = Clock(T0 + 1)
    c = Collector("127.0.0.1:0", clock=clock)
    c.store = store = SqliteStore(path, c.aggregator)
    try:
        c.handle([raw_packet(b"/\xff", request_time=0.1)] * 3)
    finally:
        store.close()
    c = Collector("127.0.0.1:0", clock=clock)
    c.store = SqliteStore(path, c.aggregator)
    web = WebServer(c, "127.0.0.1:0").start()
    try:
        for key in ("/%ED%B3%BF", "/%EF%BF%BD"):
            url = f"{web.url}api/series?by=script&key={key}&from={T0:.0f}&to={T0 + 60:.0f}"
            with urllib.request.urlopen(url, timeout=10) as response:
                (point,) = json.loads(response.read())["series"]["points"]
            assert point["requests"] == 3, key
        changes = Api(web).ok("/api/changes", by="script", to=T0 + 60)
        assert [r["key"] for r in changes["slowest"]] == ["/\ufffd"]
    finally:
        web.stop()
        c.store.close()


def test_the_window_is_read_outside_the_aggregators_lock() -> None:
    # Without a database the answers walk the window's records: the lock is held only to copy
    # the list of them, so the receiving thread (here: this one) never waits long.
    packets = [req(f"/s/{i}", 0.001 * (1 + i % 50)) for i in range(1000)]

    def feed(c: Collector, clock: Clock) -> None:
        clock.t = T0 + 1
        for _ in range(100):
            c.handle(packets)
        clock.t = T0 + 10

    api, c = _window_site(feed)
    lock = c.aggregator._lock
    waits = []
    done = threading.Event()
    took: list[float] = []

    def ask() -> None:
        start = time.perf_counter()
        api.ok("/api/changes", by="timer:group")
        took.append(time.perf_counter() - start)
        done.set()

    try:
        thread = threading.Thread(target=ask)
        thread.start()
        while not done.is_set():
            start = time.perf_counter()
            with lock:
                waits.append(time.perf_counter() - start)
            time.sleep(0.001)
        thread.join()
    finally:
        api.web.stop()
    print(f"answer {took[0]:.2f} s, longest wait for the lock {max(waits) * 1000:.1f} ms")
    assert took[0] > 0.2  # 100,000 records walked (the answer took this long) ...
    assert max(waits) < 0.1, (max(waits), took)  # ... the lock never held long meanwhile


class _HeldFor:
    """The aggregator's lock, timing how long each outermost hold lasts."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.holds: list[float] = []
        self._local = threading.local()

    def __enter__(self) -> None:
        self.lock.acquire()
        depth = getattr(self._local, "depth", 0)
        if not depth:
            self._local.start = time.perf_counter()
        self._local.depth = depth + 1

    def __exit__(self, *exc: object) -> None:
        self._local.depth -= 1
        if not self._local.depth:
            self.holds.append(time.perf_counter() - self._local.start)
        self.lock.release()


@pytest.mark.parametrize("path", ["/api/scripts", "/metrics"])
def test_the_views_of_every_script_read_the_groups_a_chunk_at_a_time(path: str) -> None:
    # With 20,000 scripts a report of every script folded under the lock held the receiving
    # thread 40 ms here (a third of a second on a busy machine); its groups are now read a
    # chunk at a time under the lock, and folded outside it.
    pytest.importorskip("prometheus_client")
    packets = [req(f"/s/{i}", 0.001 * (1 + i % 50)) for i in range(20_000)]

    def feed(c: Collector, clock: Clock) -> None:
        clock.t = T0 + 1
        c.handle(packets)
        c.handle(packets)
        clock.t = T0 + 10

    api, c = _window_site(feed)
    held = _HeldFor(c.aggregator._lock)
    c.aggregator._lock = held  # type: ignore[assignment]
    # The garbage collector's pauses stop every thread whoever holds the lock (the window's
    # module says how they are kept short): off here, so that what is timed is the lock's.
    gc.collect()
    gc.disable()
    try:
        with urllib.request.urlopen(api.web.url + path.lstrip("/"), timeout=60) as response:
            body = response.read()
    finally:
        gc.enable()
        api.web.stop()
    longest = max(held.holds)
    print(f"{path}: {len(body)} bytes, {len(held.holds)} holds, longest {longest * 1000:.1f} ms")
    assert b"/s/19999" in body  # every script read ...
    assert longest < 0.015, longest  # ... and the lock never held for long
    rows = c.aggregator.request_report(["script_name"])
    assert len(rows) == 10_000  # (max_keys: the rest in <other>)
    assert sum(r["req_count"] for r in rows) == 40_000
