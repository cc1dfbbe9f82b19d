"""The collector's live page in a real headless Chromium (Debian's ``chromium``), after real
traffic: packets over UDP on loopback into a real collector, the page served by the real server.

Skipped where ``/usr/bin/chromium`` or the ``playwright`` package is missing, except in CI
(``CI=true``), where that is a failure: ``.ci/run`` installs both.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from collector_packets import raw_packet
from web_helpers import (
    DOCS_IMG,
    HOSTILE,
    T0,
    TIMES,
    WAIT,
    Site,
    cells,
    chart,
    drawn_text,
    first_column,
    follow,
    launch_chromium,
    open_page,
    req,
    unguarded_page,
)

from pynba_exporter import PinbaTimer
from pynba_exporter.collector import WebServer
from pynba_exporter.collector._aggregate import percentile

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch_chromium()


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(refresh=0.5, request_tags=[("user",)])
    yield s
    s.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    yield from open_page(browser)


def test_overview_charts_show_the_traffic(site: Site, page: Page) -> None:
    a_times = [0.01 * (i + 1) for i in range(40)]
    site.now = T0 + 1
    site.send(*(req("/a" if i % 2 else "/b", t, 500 if i % 10 == 0 else 200)
                for i, t in enumerate(a_times)))  # fmt: skip
    site.now = T0 + 6
    site.send(*(req("/a", 0.05) for _ in range(20)))
    site.now = T0 + 11

    page.goto(site.url)
    page.locator('table[data-chart="rps"] tr[data-start]').nth(2).wait_for(state="attached")
    rps = chart(page, "rps")
    assert [p["start"] for p in rps] == [T0, T0 + 5, T0 + 10]
    assert [p["values"] for p in rps] == [[8], [4], [0]]  # 40 and 20 requests per 5 s
    assert [p["partial"] for p in rps] == [False, False, True]
    assert [p["values"] for p in chart(page, "errors")] == [[10], [0], [None]]  # percent
    times = chart(page, "time")
    for got, p in zip(times[0]["values"], (50, 95, 99)):
        assert got == pytest.approx(percentile(a_times, p), rel=0.011)
    assert times[1]["values"] == [pytest.approx(0.05, rel=0.011)] * 3
    assert times[2]["values"] == [None] * 3
    # Each chart's headline is its last whole interval.
    assert page.text_content("#chart-rps .now") == "4"
    assert page.text_content("#chart-errors .now") == "0 %"
    headline = page.text_content("#chart-time .now") or ""
    assert re.fullmatch(r"p50 ([\d.]+) ms · p95 \1 ms · p99 \1 ms", headline), headline
    assert float(headline.split()[1]) == pytest.approx(50, rel=0.011)
    # Cards: the window's totals (60 requests over the 11 s since the collector started).
    assert page.text_content('[data-card="requests"] .value') == "60"
    assert page.text_content('[data-card="req_per_sec"] .value') == "5.45"
    assert page.text_content('[data-card="error_rate"] .value') == "6.67 %"
    assert first_column(page, "hosts") == ["web1"]
    assert first_column(page, "servers") == ["shop.example"]
    assert page.eval_on_selector("#chart-rps svg polyline", "p => p.getAttribute('points')")
    drawn_text(page)


def test_scripts_table_numbers_sorting_and_filter(site: Site, page: Page) -> None:
    site.now = T0 + 1
    site.send(*(req("/a", 0.01, ru_utime=0.002, document_size=2048) for _ in range(30)))
    site.send(*(req("/b", 0.2, 500 if i < 2 else 200) for i in range(10)))
    site.now = T0 + 10

    page.goto(site.url + "#/scripts")
    page.locator("#scripts-table tbody tr").nth(1).wait_for()
    for row in site.collector.request_report(("script_name",)):
        shown = cells(page, "scripts-table", "data-script", row["script_name"])
        assert shown["script_name"] == row["script_name"]
        for key in (
            *("req_count", "req_per_sec", "req_time_total", "req_time_percent"),
            *("req_time_median", "req_time_p95", "req_time_p99", "traffic_total"),
        ):
            assert float(shown[key]) == pytest.approx(row[key], rel=1e-9), key
        assert float(shown["cpu_total"]) == pytest.approx(
            row["ru_utime_total"] + row["ru_stime_total"], rel=1e-9
        )
    a = page.locator('#scripts-table tr[data-script="/a"]')
    assert a.locator("td").nth(2).text_content() == "30"
    assert a.locator("td").nth(3).text_content() == "300 ms"
    assert a.locator("td.statuses").text_content() == f"200 {TIMES}30"
    b_statuses = page.locator('#scripts-table tr[data-script="/b"] td.statuses .status')
    assert b_statuses.all_text_contents() == [f"200 {TIMES}8", f"500 {TIMES}2"]
    assert b_statuses.nth(1).get_attribute("class") == "status s5"

    # Sorted by total time at first; a click on a header sorts by it, a second click reverses.
    assert first_column(page, "scripts-table") == ["/b", "/a"]
    page.click('#scripts-table th[data-key="req_count"] button')
    assert first_column(page, "scripts-table") == ["/a", "/b"]
    assert page.get_attribute('th[data-key="req_count"]', "aria-sort") == "descending"
    page.click('#scripts-table th[data-key="req_count"] button')
    assert first_column(page, "scripts-table") == ["/b", "/a"]
    assert page.get_attribute('th[data-key="req_count"]', "aria-sort") == "ascending"

    page.fill("#filter", "/A")
    assert first_column(page, "scripts-table") == ["/a"]
    assert page.text_content("#shown") == "1 of 2 scripts"
    # Sort and filter outlive the page's redraws (new traffic: an answer that changed).
    site.send(req("/a", 0.01))
    page.wait_for_function(
        "() => document.querySelector('tr[data-script=\"/a\"] td:nth-child(3)')"
        "?.dataset.value === '31'"
    )
    assert first_column(page, "scripts-table") == ["/a"]
    assert page.input_value("#filter") == "/A"
    page.fill("#filter", "")
    assert first_column(page, "scripts-table") == ["/b", "/a"]


def test_script_page_shows_its_timers(site: Site, page: Page) -> None:
    site.now = T0 + 1
    timers = [
        PinbaTimer({"group": "db::select", "server": "db1"}, 0.02, 2),
        PinbaTimer({"group": "db::select", "server": "db2"}, 0.01, 1),
        PinbaTimer({"group": "http::POST", "server": "payments"}, 0.05, 1),
    ]
    site.send(*(req("/checkout", 0.1, 303 if i else 500, timers=timers) for i in range(10)))
    site.send(req("/other", 0.3))
    site.now = T0 + 10

    page.goto(site.url + "#/scripts")
    page.click("text=/checkout")
    page.locator("#timers-group tbody tr").nth(1).wait_for()
    assert page.evaluate("location.hash") == "#/script/%2Fcheckout"
    assert page.text_content("#script-name") == "/checkout"
    db = cells(page, "timers-group", "data-group", "db::select")
    assert (db["req_count"], db["hit_count"], db["hits_per_request"]) == ("10", "30", "3")
    assert float(db["time_per_request"]) == pytest.approx(0.03, rel=1e-6)
    assert float(db["time_percent"]) == pytest.approx(30, rel=1e-5)
    post = cells(page, "timers-group", "data-group", "http::POST")
    assert (post["hit_count"], post["hits_per_request"]) == ("10", "1")
    assert float(post["time_per_request"]) == pytest.approx(0.05, rel=1e-6)
    assert float(post["time_percent"]) == pytest.approx(50, rel=1e-5)
    assert first_column(page, "timers-group") == ["http::POST", "db::select"]  # by time
    assert first_column(page, "timers-group-server") == [
        "http::POST / payments", "db::select / db1", "db::select / db2",
    ]  # fmt: skip
    assert first_column(page, "statuses") == ["303", "500"]
    assert page.text_content('[data-card="requests"] .value') == "10"
    assert page.text_content('[data-card="p95"] .value') == "100 ms"
    bins = page.eval_on_selector_all(
        'table[data-chart="histogram"] td[data-value]',
        "tds => tds.map(t => Number(t.dataset.value))",
    )
    assert sum(bins) == 10
    drawn_text(page)
    page.click("text=← scripts")
    page.locator("#scripts-table").wait_for()


def test_an_answer_that_did_not_change_is_not_drawn_again(site: Site, page: Page) -> None:
    # A redraw replaces the elements under the pointer (a click straddling it is lost): the
    # page redraws only what changed.
    site.send(req("/a", 0.01), req("/b", 0.02))
    page.goto(site.url + "#/scripts")
    page.locator("#scripts-table tbody tr").nth(1).wait_for()
    mark = "document.querySelector('#scripts-table tbody tr').__pynbaMark"
    page.evaluate(f"{mark} = 'drawn once'")
    updates = int(page.evaluate("document.body.dataset.updates"))
    page.wait_for_function("n => Number(document.body.dataset.updates) > n", arg=updates + 2)
    assert page.evaluate(mark) == "drawn once"  # two refreshes, the same answer: the same rows
    site.send(req("/a", 0.01))
    page.wait_for_function(
        "() => document.querySelector('tr[data-script=\"/a\"] td:nth-child(3)')"
        "?.dataset.value === '2'"
    )
    assert page.evaluate(mark) is None  # a new answer: drawn anew


def test_page_updates_when_new_traffic_arrives(site: Site, page: Page) -> None:
    site.send(*(req("/live", 0.01) for _ in range(5)))
    page.goto(site.url + "#/scripts")
    # The requests column of /live's row shows n.
    live = (
        "n => document.querySelector('tr[data-script=\"/live\"] td:nth-child(3)')"
        "?.dataset.value === n"
    )
    card = "n => document.querySelector('[data-card=requests] .value')?.textContent === n"
    page.wait_for_function(live, arg="5")
    page.evaluate("window.__same_page = true")
    site.send(*(req("/live", 0.01) for _ in range(7)))
    page.wait_for_function(live, arg="12")
    assert page.evaluate("window.__same_page") is True  # updated in place, not reloaded

    page.goto(site.url)
    page.wait_for_function(card, arg="12")
    site.send(req("/live", 0.01))
    page.wait_for_function(card, arg="13")


def test_hostile_names_render_as_text_and_never_run(browser: Browser, site: Site) -> None:
    site.now = T0 + 1
    for i, name in enumerate(HOSTILE):
        other = HOSTILE[(i + 1) % len(HOSTILE)]
        site.send(req(
            name, 0.01 * (i + 1), 200 + i, hostname=other, server_name=name, tags={"user": name},
            timers=[PinbaTimer({"group": name, "server": other}, 0.001)],
        ))  # fmt: skip
    site.now = T0 + 10
    context, page, watch = unguarded_page(browser)
    page.add_init_script(  # (and a violation of the policy, were it on, is kept too)
        "document.addEventListener('securitypolicyviolation', (e) => window.__ran.push("
        "'csp ' + e.violatedDirective));"
    )
    try:
        page.goto(site.url)
        page.locator("#hosts tbody tr").nth(len(HOSTILE) - 1).wait_for()
        assert sorted(first_column(page, "hosts")) == sorted(HOSTILE)
        assert sorted(first_column(page, "servers")) == sorted(HOSTILE)

        page.goto(site.url + "#/scripts")
        page.locator("#scripts-table tbody tr").nth(len(HOSTILE) - 1).wait_for()
        assert sorted(first_column(page, "scripts-table")) == sorted(HOSTILE)
        for name in HOSTILE:
            page.goto(site.url + "#/scripts")
            page.locator("#scripts-table tbody tr").nth(len(HOSTILE) - 1).wait_for()
            follow(page, page.get_by_role("link", name=name, exact=True))
            page.locator("#timers-group tbody tr").wait_for()
            assert page.text_content("#script-name") == name
            assert first_column(page, "timers-group") == [name]
            assert page.evaluate("decodeURIComponent(location.hash)") == "#/script/" + name

        page.goto(site.url + "#/timers")
        page.locator("#timers-group_server tbody tr").nth(len(HOSTILE) - 1).wait_for()
        assert sorted(first_column(page, "timers-group")) == sorted(HOSTILE)
        page.goto(site.url + "#/tags")
        page.locator("#requests-user tbody tr").nth(len(HOSTILE) - 1).wait_for()
        assert sorted(first_column(page, "requests-user")) == sorted(HOSTILE)
        page.goto(site.url + "#/health")
        page.locator("#status").wait_for()
        # Nothing ran, nothing was even tried: no alert, no handler, no injected element.
        assert page.evaluate("window.__ran") == []
        assert watch.dialogs == []
        assert watch.errors == []
        assert page.evaluate("document.querySelectorAll('img, svg image, iframe').length") == 0
        assert page.evaluate("document.querySelectorAll('[onerror], [onload]').length") == 0
        assert page.evaluate("[...document.scripts].map(s => s.getAttribute('src'))") == [
            "/static/trends.js",
            "/static/app.js",
        ]
    finally:
        context.close()


def test_control_and_bidi_characters_show_as_escapes(site: Site, page: Page) -> None:
    # "/f\u202egnp.exe" must not pass for "/fexe.png", nor a name rewrite the line around it.
    site.now = T0 + 1
    spoof, bell = "/f\u202egnp.exe", "/bell\x07\x1b[2J"
    site.send(req(spoof, 0.5), req(bell, 0.4))
    site.now = T0 + 10
    page.goto(site.url + "#/scripts")
    page.locator("#scripts-table tbody tr").nth(1).wait_for()
    shown = first_column(page, "scripts-table")
    assert "/f\\u202egnp.exe" in shown
    assert "/bell\\u0007\\u001b[2J" in shown
    assert not any("\u202e" in s or "\x1b" in s for s in shown)


def test_a_name_that_is_not_utf8_keeps_the_scripts_view_and_opens_its_page(
    site: Site, page: Page
) -> None:
    # b"/\xff" decodes to "/\udcff": a lone surrogate, on which encodeURIComponent throws.
    site.now = T0 + 1
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for script in (b"/\xff", b"/caf\xe9/\xed\xa0\x80x"):  # a byte; an encoded surrogate
            sock.sendto(raw_packet(script, request_time=0.25), site.collector.address)
    finally:
        sock.close()
    site.send(req("/ok", 0.1), req("/ok", 0.1))
    site.now = T0 + 10
    page.goto(site.url + "#/scripts")
    page.locator("#scripts-table tbody tr").nth(2).wait_for()
    assert set(first_column(page, "scripts-table")) == {
        "/caf\\udce9/\\udced\\udca0\\udc80x", "/ok", "/\\udcff",
    }  # fmt: skip
    assert "cannot reach" not in (page.text_content("#updated") or "")
    for name in ("/\\udcff", "/caf\\udce9/\\udced\\udca0\\udc80x"):
        follow(page, page.locator("#scripts-table a").filter(has_text=name))
        page.wait_for_function(
            "() => document.querySelector('[data-card=\"requests\"] .value')"
            " && location.hash.startsWith('#/script/')"
        )
        assert page.text_content("#script-name") == name
        page.locator('[data-card="requests"] .value').wait_for()
        assert page.text_content('[data-card="requests"] .value') == "1"
        assert "cannot reach" not in (page.text_content("#updated") or "")
        # The address names it: reloaded, the page shows the same script.
        page.reload()
        page.locator('[data-card="requests"] .value').wait_for()
        assert page.text_content("#script-name") == name
        page.goto(site.url + "#/scripts")
        page.locator("#scripts-table tbody tr").nth(2).wait_for()


@pytest.mark.expect_pynba_errors  # the invalid packet is logged
def test_every_view_draws(site: Site, page: Page) -> None:
    site.now = T0 + 1
    site.send(*(
        req("/v", 0.01 * (i + 1), tags={"user": "guest" if i % 2 else "member"},
            timers=[PinbaTimer({"group": "db::select", "server": "db1"}, 0.001, 2)])
        for i in range(10)
    ))  # fmt: skip
    site.transport.send_packet(b"\xff\xff")
    site.now = T0 + 10

    page.goto(site.url)
    page.locator("#hosts tbody tr").wait_for()
    assert "Requests/s (per 5 s)" in drawn_text(page)
    page.goto(site.url + "#/scripts")
    page.locator("#scripts-table tbody tr").wait_for()
    drawn_text(page)
    page.goto(site.url + "#/script/%2Fv")
    page.locator("#timers-group-server tbody tr").wait_for()
    assert "Request time histogram" in drawn_text(page)
    page.goto(site.url + "#/timers")
    page.locator("#timers-group_server tbody tr").wait_for()
    assert first_column(page, "timers-group_server") == ["db::select"]
    assert "Timers by group, server" in drawn_text(page)
    page.goto(site.url + "#/tags")
    page.locator("#requests-user tbody tr").nth(1).wait_for()
    assert sorted(first_column(page, "requests-user")) == ["guest", "member"]
    drawn_text(page)
    page.goto(site.url + "#/health")
    page.locator("#status tbody tr").first.wait_for()
    text = drawn_text(page)
    assert re.search(r"[\d.]+ MiB of 256 MiB held \([\d.]+ %\) by 10 requests", text), text
    invalid = first_column(page, "invalid")
    assert invalid == list(site.collector.status()["invalid_by_reason"])
    status = dict(zip(first_column(page, "status"), page.eval_on_selector_all(
        "#status tbody td:nth-child(2)", "tds => tds.map(td => td.dataset.value)"
    )))  # fmt: skip
    assert status["packets_received"] == "11"
    assert status["requests_total"] == "10"
    assert status["invalid_packets"] == "1"
    assert page.text_content('[data-card="invalid"] .value') == "1"


def test_fits_a_phone(site: Site, browser: Browser) -> None:
    site.send(*(req(f"/a/rather/long/script/name/{i}", 0.01) for i in range(5)))
    context = browser.new_context(viewport={"width": 390, "height": 800}, is_mobile=True)
    page = context.new_page()
    page.set_default_timeout(WAIT)
    try:
        for view in ("", "#/scripts", "#/trends", "#/health"):
            page.goto(site.url + view)
            page.wait_for_function("() => Number(document.body.dataset.updates) >= 1")
            # Wide tables scroll inside their box; the page itself never scrolls sideways.
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        context.close()


def test_screenshot_after_demo_traffic(browser: Browser, tmp_path: Path) -> None:
    """The screenshots the docs show. They land in docs/img only when asked
    (PYNBA_UPDATE_SCREENSHOTS=1): every run draws them anew, and their bytes always differ."""
    from pynba._demo import run_demo  # noqa: PLC0415

    out = DOCS_IMG if os.environ.get("PYNBA_UPDATE_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    seen: list[str] = []

    def shoot(web: WebServer) -> None:
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        page = context.new_page()
        page.set_default_timeout(WAIT)
        try:
            page.goto(web.url)
            page.locator('table[data-chart="rps"] tr[data-start]').first.wait_for(state="attached")
            page.screenshot(path=str(out / "web-overview.png"), full_page=True)
            page.goto(web.url + "#/scripts")
            page.locator("#scripts-table tbody tr").nth(3).wait_for()
            seen.extend(first_column(page, "scripts-table"))
            page.screenshot(path=str(out / "web-scripts.png"), full_page=True)
            follow(page, page.get_by_role("link", name="/product/<id>", exact=True))
            page.locator("#timers-group tbody tr").nth(1).wait_for()
            page.screenshot(path=str(out / "web-script.png"), full_page=True)
        finally:
            context.close()

    collector = run_demo(600, http="127.0.0.1:0", after_traffic=shoot)
    assert "/product/<id>" in seen
    assert set(seen) <= {r["script_name"] for r in collector.request_report(("script_name",))}
    for name in ("web-overview.png", "web-scripts.png", "web-script.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
