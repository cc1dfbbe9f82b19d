"""The Trends view in a real headless Chromium: graphs from the history a database keeps (after
a restart on it, on a clock the test moves), zoom, the comparison with the day before, the
lists; the live window without a database; hostile names; the scripts view with 10,000
scripts. Skipped as test_web_browser.py is where Chromium or playwright is missing."""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from collector_packets import raw_packet
from web_helpers import (
    DAY,
    DOCS_IMG,
    HOSTILE,
    T0,
    WAIT,
    Clock,
    Site,
    chart,
    drawn_text,
    first_column,
    follow,
    launch_chromium,
    open_page,
    req,
    unguarded_page,
    write_history,
)

from pynba_exporter import PinbaTimer
from pynba_exporter.collector import Collector, SqliteStore, WebServer
from pynba_exporter.collector._archive import SCHEMA, Archive
from pynba_exporter.collector._record import Record

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

RPS = 'table[data-chart="trend-rps"] tr[data-start]'


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch_chromium()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    yield from open_page(browser)


class Restarted:
    """A collector restarted on the file a previous run wrote (web_helpers.write_history), five
    seconds after the hour that run saw: its window is empty, its history is not."""

    def __init__(self, path: str) -> None:
        clock = Clock()
        write_history(path, clock)
        clock.t = T0 + 3600 + 5
        self.collector = Collector("127.0.0.1:0", clock=clock)
        self.collector.store = SqliteStore(path, self.collector.aggregator)
        self.collector.start()
        self.web = WebServer(self.collector, "127.0.0.1:0", refresh=0.5).start()
        self.url = self.web.url

    def close(self) -> None:
        self.web.stop()
        self.collector.stop()


@pytest.fixture
def restarted(tmp_path: Path) -> Iterator[Restarted]:
    r = Restarted(str(tmp_path / "p.db"))
    yield r
    r.close()


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(refresh=0.5)
    yield s
    s.close()


def wait_rows(page: Page, selector: str, n: int) -> None:
    page.locator(selector).nth(n - 1).wait_for(state="attached")


def test_a_restart_on_the_database_shows_the_previous_hours_graphs(
    restarted: Restarted, page: Page
) -> None:
    assert restarted.collector.aggregator.info()["req_count"] == 0  # nothing live
    page.goto(restarted.url + "#/trends?by=script&key=/a&compare=day")
    wait_rows(page, RPS, 61)
    rps = chart(page, "trend-rps")
    assert [p["start"] for p in rps] == [T0 + 60 * m for m in range(61)]
    assert [p["values"] for p in rps[:60]] == [[0.05]] * 60  # 3 requests a minute
    assert rps[60]["partial"] is True  # the minute the collector restarted in
    errors = chart(page, "trend-errors")
    assert errors[0]["values"][0] == pytest.approx(100 / 3)
    assert errors[1]["values"] == [0]
    time_ = chart(page, "trend-time")
    assert time_[0]["values"][0] == pytest.approx(0.1, rel=1e-6)  # mean
    assert time_[0]["values"][1] == pytest.approx(0.1, rel=0.011)  # p95, from histogram cells
    # The day before, dashed, shifted onto the same hour.
    before = chart(page, "trend-rps-compare")
    assert [p["start"] for p in before[:2]] == [T0 - DAY, T0 - DAY + 60]
    assert [p["values"] for p in before[:60]] == [[pytest.approx(2 / 60)]] * 60
    drawn = page.eval_on_selector_all(
        "#chart-trend-rps polyline", "ps => ps.map(p => p.dataset.series)"
    )
    assert sorted(set(drawn)) == ["compare-req_per_sec", "req_per_sec"]
    assert page.text_content('[data-card="requests"] .value') == "180"
    assert page.text_content('[data-card="requests"] .before') == "before: 120"
    assert page.text_content('[data-card="mean"] .before') == "before: 200 ms"
    assert page.text_content("#trend-key") == "script /a"
    source = page.text_content("#trend-source") or ""
    assert "From the history in the database" in source and "one point per 1 min" in source
    # The lists: /b is the slowest; /a's time halved against the day before.
    assert first_column(page, "slowest") == ["/b", "/a"]
    assert first_column(page, "changed-time") == ["/a"]
    change = page.text_content('#changed-time tr[data-key="/a"] td:last-child')
    assert change == "-50 %"
    drawn_text(page)


def _drag(page: Page, svg: str, a: float, b: float) -> None:
    box = page.locator(svg).bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + a * box["width"], y)
    page.mouse.down()
    page.mouse.move(box["x"] + (a + b) / 2 * box["width"], y, steps=4)
    page.mouse.move(box["x"] + b * box["width"], y, steps=4)
    page.mouse.up()


def _hash_number(page: Page, name: str) -> float:
    value: str = page.evaluate("n => new URLSearchParams(location.hash.split('?')[1]).get(n)", name)
    return float(value)


def test_zoom_by_dragging_and_by_buttons_and_the_ranges(restarted: Restarted, page: Page) -> None:
    page.goto(restarted.url + "#/trends?compare=none")
    wait_rows(page, RPS, 61)
    assert page.locator('table[data-chart="trend-rps-compare"]').count() == 0
    # The graph spans 61 minutes, T0 to T0 + 3660: a drag over its second quarter zooms there.
    _drag(page, "#chart-trend-rps svg", 0.25, 0.5)
    page.wait_for_function("() => location.hash.includes('from=')")
    start, end = _hash_number(page, "from"), _hash_number(page, "to")
    assert start == pytest.approx(T0 + 915, abs=15)
    assert end == pytest.approx(T0 + 1830, abs=15)
    first = math.floor(start / 60) * 60
    page.wait_for_function(
        "s => document.querySelector('table[data-chart=\"trend-rps\"] tr[data-start]')"
        "?.dataset.start === s",
        arg=str(int(first)),
    )
    rows = chart(page, "trend-rps")
    assert len(rows) == math.ceil((end - first) / 60) < 20
    assert all(p["values"] == [pytest.approx(4 / 60)] for p in rows)  # /a 3 a minute, /b 1
    assert page.get_attribute("#range-hour", "aria-pressed") == "false"
    # Zoom out doubles the span around its middle; "Whole hour" goes back.
    page.click("#zoom-out")
    page.wait_for_function(f"() => !location.hash.includes('from={start:.0f}')")
    assert _hash_number(page, "to") - _hash_number(page, "from") == pytest.approx(
        2 * (end - start), abs=2
    )
    page.click("#zoom-reset")
    page.wait_for_function("() => !location.hash.includes('from=')")
    wait_rows(page, RPS, 61)
    assert len(chart(page, "trend-rps")) == 61
    # A day by 5 minutes, a week by the hour.
    page.click("#range-day")
    wait_rows(page, RPS, 288)
    day = chart(page, "trend-rps")
    assert day[1]["start"] - day[0]["start"] == 300 and len(day) <= 300
    page.click("#range-week")
    page.wait_for_function(f"() => document.querySelectorAll('{RPS}').length === 169")
    week = chart(page, "trend-rps")
    assert week[1]["start"] - week[0]["start"] == 3600
    assert page.get_attribute("#range-week", "aria-pressed") == "true"
    drawn_text(page)


def test_timer_groups_compared_with_the_day_before(restarted: Restarted, page: Page) -> None:
    page.goto(restarted.url + "#/trends?lists=timer:group")
    page.locator("#slowest tbody tr").nth(1).wait_for()
    assert first_column(page, "slowest") == ["http::GET", "db::select"]
    assert first_column(page, "changed-time") == ["db::select"]  # per hit: 25 ms, 50 ms before
    follow(page, page.locator("#slowest").get_by_role("link", name="db::select", exact=True))
    page.wait_for_function(
        "() => document.getElementById('trend-key')?.textContent === 'timer group db::select'"
    )
    wait_rows(page, RPS, 61)
    time_ = chart(page, "trend-time")
    assert time_[0]["values"][0] == pytest.approx(0.1 / 2 / 4, rel=1e-5)  # mean per hit
    before = chart(page, "trend-time-compare")
    assert before[0]["values"][0] == pytest.approx(0.2 / 2 / 4, rel=1e-5)
    title = page.text_content("#chart-trend-rps figcaption span:first-child")
    assert title == "Requests with the timer/s"
    # No comparison: the dashed lines go.
    page.select_option("#compare", "")
    page.wait_for_function("() => location.hash.includes('compare=none')")
    page.wait_for_function(
        "() => !document.querySelector('table[data-chart=\"trend-rps-compare\"]')"
    )
    assert page.locator('#chart-trend-rps polyline[data-series^="compare-"]').count() == 0


def test_without_a_database_the_view_says_it_shows_the_live_window(site: Site, page: Page) -> None:
    site.now = T0 + 1
    db = [PinbaTimer({"group": "db::select", "server": "db1"}, 0.02, 2)]
    site.send(*(req("/a", 0.1, timers=db) for _ in range(4)), req("/a", 0.3, 503))
    site.now = T0 + 20
    page.goto(site.url + "#/scripts")
    follow(page, page.get_by_role("link", name="/a", exact=True))
    page.click("#script-trends")
    wait_rows(page, RPS, 180)
    source = page.text_content("#trend-source") or ""
    assert "No database: the live window only (the last 900 s" in source
    assert "one point per 5 s" in source
    rows = chart(page, "trend-rps")
    assert [p["values"] for p in rows if p["start"] == T0] == [[1.0]]  # 5 requests in 5 s
    assert page.is_disabled("#range-day") and page.is_disabled("#compare")
    assert "Comparisons need the history" in (page.text_content("#trend-lists") or "")
    assert first_column(page, "slowest") == ["/a"]
    # A timer group of the script page opens its own graphs.
    page.go_back()
    follow(page, page.locator("#timers-group").get_by_role("link", name="db::select"))
    page.wait_for_function(
        "() => document.getElementById('trend-key')?.textContent === 'timer group db::select'"
    )
    page.locator(RPS + '[data-requests="4"]').wait_for(state="attached")
    assert first_column(page, "slowest") == ["db::select"]


def test_names_that_are_not_utf8_keep_the_trends_view(site: Site, page: Page) -> None:
    site.now = T0 + 1
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for script in (b"/\xff", b"/caf\xe9/\xed\xa0\x80x"):
            sock.sendto(raw_packet(script, request_time=0.25), site.collector.address)
    finally:
        sock.close()
    site.send(req("/ok", 0.1))
    site.now = T0 + 10
    page.goto(site.url + "#/trends")
    page.locator("#slowest tbody tr").nth(2).wait_for()
    names = first_column(page, "slowest")
    assert set(names) == {"/\\udcff", "/caf\\udce9/\\udced\\udca0\\udc80x", "/ok"}
    for name in names:
        page.goto(site.url + "#/trends")
        page.locator("#slowest tbody tr").nth(2).wait_for()
        follow(page, page.locator("#slowest a").filter(has_text=name))
        page.wait_for_function(
            "n => document.getElementById('trend-key')?.textContent === 'script ' + n",
            arg=name,
        )
        page.locator(RPS + '[data-requests="1"]').wait_for(state="attached")
        page.reload()  # the address names it
        page.locator(RPS + '[data-requests="1"]').wait_for(state="attached")
        assert "cannot reach" not in (page.text_content("#updated") or "")


def test_a_drag_cut_short_by_leaving_the_view_leaves_the_next_graphs_drawn(
    site: Site, page: Page
) -> None:
    # A drag whose graph is taken away under it (the view changed meanwhile: a click that
    # straddled a redraw pressed on a graph, then the page went elsewhere) never gets its
    # pointerup. The graphs of the next view are drawn all the same, and so is a new answer.
    site.now = T0 + 1
    site.send(req("/ok", 0.1), req("/b", 0.2))
    site.now = T0 + 10
    page.goto(site.url + "#/trends")
    page.locator(RPS + '[data-requests="2"]').wait_for(state="attached")
    box = page.locator("#trend-charts svg").first.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 3, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.evaluate("location.hash = '#/trends?by=script&key=%2Fok'")
    page.wait_for_function(
        "() => document.getElementById('trend-key')?.textContent === 'script /ok'"
    )
    page.locator(RPS + '[data-requests="1"]').wait_for(state="attached")
    page.mouse.up()
    site.now = T0 + 11
    site.send(req("/ok", 0.1))  # in the next 5 s interval: a second point of one request
    page.locator(RPS + '[data-requests="1"]').nth(1).wait_for(state="attached")


def test_hostile_names_in_the_trends_view_render_as_text(browser: Browser, site: Site) -> None:
    site.now = T0 + 1
    for i, name in enumerate(HOSTILE):
        timers = [PinbaTimer({"group": name, "server": "db1"}, 0.001)]
        site.send(req(name, 0.01 * (i + 1), timers=timers))
    site.now = T0 + 10
    context, page, watch = unguarded_page(browser)
    try:
        for lists in ("script", "timer:group"):
            for name in HOSTILE:
                page.goto(site.url + f"#/trends?lists={lists}")
                page.locator("#slowest tbody tr").nth(len(HOSTILE) - 1).wait_for()
                assert sorted(first_column(page, "slowest")) == sorted(HOSTILE)
                follow(page, page.locator("#slowest").get_by_role("link", name=name, exact=True))
                kind = "script" if lists == "script" else "timer group"
                page.wait_for_function(
                    "n => document.getElementById('trend-key')?.textContent === n",
                    arg=f"{kind} {name}",
                )
                page.locator(RPS + '[data-requests="1"]').wait_for(state="attached")
        assert page.evaluate("window.__ran") == []
        assert watch.dialogs == [] and watch.errors == []
        assert page.evaluate("document.querySelectorAll('img, svg image, iframe').length") == 0
        assert page.evaluate("document.querySelectorAll('[onerror], [onload]').length") == 0
    finally:
        context.close()


def _scripts(n: int) -> list[bytes]:
    from pynba_exporter import PinbaRequest  # noqa: PLC0415
    from pynba_exporter.wire import encode  # noqa: PLC0415

    return [
        encode(PinbaRequest("web1", "shop", f"/script/{i}", request_time=0.001 * (1 + i % 100),
                            status=500 if i % 7 == 0 else 200))
        for i in range(n)
    ]  # fmt: skip


_MEASURE = """() => {
    delete window.__drawn;
    const start = performance.now();
    const watch = new MutationObserver(() => {
        const rows = document.querySelector("#scripts-table tbody");
        if (!rows || rows.children.length < 500) return;
        watch.disconnect();
        requestAnimationFrame(() => { window.__drawn = performance.now() - start; });
    });
    watch.observe(document.getElementById("main"), { childList: true, subtree: true });
    location.hash = "#/scripts";
}"""


def test_the_scripts_view_with_10000_scripts_is_usable_within_a_second(browser: Browser) -> None:
    site = Site(refresh=60.0)  # no update during the measure
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT)
    try:
        site.now = T0 + 1
        site.collector.handle(_scripts(10_000))  # straight in: UDP is not what is measured
        site.now = T0 + 10
        page.goto(site.url + "#/health")
        page.locator("#status tbody tr").first.wait_for()
        took = []
        for _ in range(3):
            # Each time from the hash change to the frame after the 500 rows are in the page,
            # measured by the page's own clock (playwright's polling would add its own
            # latency), the server making the answer anew (its cache emptied): what a user
            # clicking "Scripts" waits for.
            site.web._cache.clear()
            page.evaluate(_MEASURE)
            page.wait_for_function("() => window.__drawn !== undefined")
            took.append(page.evaluate("window.__drawn") / 1000)
            assert page.text_content("#shown") == "10000 of 10000 scripts"
            page.evaluate("location.hash = '#/health'")
            page.locator("#status tbody tr").first.wait_for()
        # The best of three, so that another process on a shared machine cannot fail it;
        # none may take more than 3 s.
        print(f"scripts view of 10,000 scripts drawn in {', '.join(f'{t:.2f}' for t in took)} s")
        assert min(took) < 1.0, took
        assert max(took) < 3.0, took
        page.evaluate("location.hash = '#/scripts'")
        page.locator("#scripts-table tbody tr").nth(499).wait_for()
        start = time.perf_counter()  # by the test's clock: polling included, a generous bound
        page.fill("#filter", "/script/99")
        page.wait_for_function(
            "() => document.getElementById('shown').textContent === '111 of 10000 scripts'"
        )
        assert time.perf_counter() - start < 1.0  # the filter, as the user types
        start = time.perf_counter()
        page.click('#scripts-table th[data-key="req_count"] button')
        page.wait_for_function(
            "() => document.querySelector('th[data-key=req_count]').ariaSort === 'descending'"
        )
        assert time.perf_counter() - start < 1.0
    finally:
        context.close()
        site.close()


def _week_of_history(path: str, now: float) -> None:
    """A day of minutes now and the same day a week before, with a daily shape, written
    through the archive (as the store writes it, faster than feeding packets)."""
    db = SqliteStore(path, Collector("127.0.0.1:0").aggregator)  # claims the file
    db.close()
    import sqlite3  # noqa: PLC0415

    archive = Archive()
    con = sqlite3.connect(path)
    try:
        con.executescript(SCHEMA)
        records = []
        change = {"/": 1.05, "/product/<id>": 0.9, "/cart": 1.1, "/checkout": 1.6, "/search": 1.25}
        for back in (7 * DAY, 0):
            for minute in range(24 * 60):
                t = now - back - DAY + 60 * minute
                shape = 1 + math.sin(2 * math.pi * minute / 1440) * 0.6
                for i, script in enumerate(("/", "/product/<id>", "/cart", "/checkout", "/search")):
                    for k in range(max(1, round(shape * (5 - i)))):
                        bad = script == "/checkout" and back == 0 and k == 0 and minute % 7 == 0
                        slower = change[script] if back == 0 else 1.0
                        seconds = 0.02 * (i + 1) * shape * slower
                        records.append(_record(t + k, script, seconds, 503 if bad else 200))
        archive.fold(records)
        with con:
            archive.flush(con)
    finally:
        con.close()


def _record(t: float, script: str, seconds: float, status: int) -> Record:
    timer = ((("group", "db::select"), ("server", "db1")), seconds / 3, 2, 0.0, 0.0)
    return Record(
        t, "web1", "shop", script, status, "https", seconds, 0.0, 0.0, 0, 0, 0, (), (timer,)
    )


def test_screenshots_of_the_trends_views(browser: Browser, tmp_path: Path) -> None:
    """The docs' pictures of the Trends view; in docs/img only when asked
    (PYNBA_UPDATE_SCREENSHOTS=1), as test_web_browser.py's."""
    out = DOCS_IMG if os.environ.get("PYNBA_UPDATE_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    now = T0 + 12 * 3600 + 30
    path = str(tmp_path / "week.db")
    _week_of_history(path, now)
    collector = Collector("127.0.0.1:0", clock=lambda: now)
    collector.store = SqliteStore(path, collector.aggregator)
    collector.start()
    web = WebServer(collector, "127.0.0.1:0", refresh=60).start()
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    shot = context.new_page()
    shot.set_default_timeout(WAIT)
    try:
        shot.goto(web.url + "#/trends?range=day&compare=week")
        wait_rows(shot, RPS, 288)
        shot.locator("#changed-time tbody tr").first.wait_for()
        shot.screenshot(path=str(out / "web-trends.png"), full_page=True)
        shot.goto(web.url + "#/trends?by=script&key=/checkout&range=day&compare=week"
                  f"&from={now - 5 * 3600:.0f}&to={now - 2 * 3600:.0f}")  # fmt: skip
        shot.locator("#trend-key").filter(has_text="/checkout").wait_for()
        wait_rows(shot, RPS, 36)
        shot.screenshot(path=str(out / "web-trends-script.png"), full_page=True)
    finally:
        context.close()
        web.stop()
        collector.stop()
    for name in ("web-trends.png", "web-trends-script.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
