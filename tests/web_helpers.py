"""A collector with its web server on loopback, a clock the test moves, and real UDP traffic."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pynba_exporter import PinbaRequest, PinbaTimer, UdpTransport
from pynba_exporter.collector import Collector, History, SqliteStore, WebServer
from pynba_exporter.wire import encode

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page

#: A start time on an interval boundary (5 s; and on the hour), so that the test knows which
#: interval is which.
T0 = 1_800_000_000.0
DAY = 86400


class Site:
    """A started collector and web server; ``now`` is the collector's clock."""

    def __init__(self, *, max_keys: int = 10_000, **web: Any) -> None:
        self.now = T0
        self.collector = Collector("127.0.0.1:0", clock=lambda: self.now, max_keys=max_keys)
        history = History(interval=5.0, clock=lambda: self.now)
        self.web = WebServer(self.collector, "127.0.0.1:0", history=history, **web)
        self.collector.start()
        self.web.start()
        self.url = self.web.url
        self.transport = UdpTransport(self.collector.address_text)

    def send(self, *requests: PinbaRequest) -> None:
        """Send over UDP and wait until the collector has them (stamped with ``now``)."""
        before = self.collector.aggregator.requests_total
        for r in requests:
            self.transport.send(r)
        deadline = time.monotonic() + 10
        while self.collector.aggregator.requests_total < before + len(requests):
            assert time.monotonic() < deadline, self.collector.status()
            time.sleep(0.005)

    def get(self, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.url.rstrip("/") + path)
        if host is not None:
            request.add_unredirected_header("Host", host)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers), exc.read()

    def json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def close(self) -> None:
        self.transport.close()
        self.web.stop()
        self.collector.stop()


def req(script: str, seconds: float, status: int = 200, **kw: Any) -> PinbaRequest:
    kw.setdefault("hostname", "web1")
    kw.setdefault("server_name", "shop.example")
    return PinbaRequest(
        kw.pop("hostname"), kw.pop("server_name"), script, request_time=seconds, status=status,
        **kw,
    )  # fmt: skip


# -- a history in a database, written on a clock the test moves


def history_request(
    script: str, time_: float, status: int = 200, group: str = "db::select"
) -> bytes:
    """A packet: ``script`` in ``time_`` s, with one timer of ``group`` (4 hits, half the time)."""
    return encode(PinbaRequest(
        hostname="web1", server_name="shop", script_name=script, request_time=time_,
        status=status, timers=[PinbaTimer({"group": group, "server": "db1"}, time_ / 2, 4)],
    ))  # fmt: skip


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def write_history(path: str, clock: Clock) -> None:
    """A day before: /a twice a minute at 0.2 s for an hour. This hour: /a three times a
    minute at 0.1 s (one a minute a 500 every tenth minute), /b once a minute at 1 s."""
    c = Collector("127.0.0.1:0", clock=clock, window=900)
    c.store = store = SqliteStore(path, c.aggregator)
    try:
        for minute in range(60):
            clock.t = T0 - DAY + 60 * minute + 1
            c.handle([history_request("/a", 0.2) for _ in range(2)])
        for minute in range(60):
            clock.t = T0 + 60 * minute + 1
            c.handle([history_request("/a", 0.1, 500 if minute % 10 == 0 and i == 0 else 200)
                      for i in range(3)])  # fmt: skip
            c.handle([history_request("/b", 1.0, group="http::GET")])
    finally:
        store.close()


#: Names that would run as markup or script if the page let them (each test counts them).
HOSTILE = [
    "<script>window.__ran.push('script')</script>",
    "<script>alert(1)</script>",
    '"><img src=x onerror="window.__ran.push(\'img\')">',
    '"><img src=x onerror=alert(1)>',
    "javascript:window.__ran.push('href')",
    "</td></tr></table><svg onload=window.__ran.push('svg')>",
    "'-alert(1)-'",
    "${alert(1)}",
    "/q?x=1&y=<2>#frag %zz \u00e9",  # the name travels in the page's own URL and back
]


# -- the page in a real Chromium (test_web_browser.py, test_web_trends.py)

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium stalls on a network without the internet.
ARGS = [
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
    *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
]
WAIT = 15_000  # ms: the longest any wait for the page may take before the test fails
TIMES = "\u00d7"  # the page writes "200 x30" with a multiplication sign
DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


def launch_chromium() -> Iterator[Browser]:
    """Debian's Chromium through playwright (the body of each browser module's ``browser``
    fixture); skips where either is missing, except in CI, where that is a failure."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415 - optional here
    except ImportError:
        reason = "the playwright package is missing (pip install -e '.[test]')"
    if reason is None and not os.access(CHROMIUM, os.X_OK):
        reason = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser tests must run in CI: {reason}")
        pytest.skip(reason)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Watch:
    """What the page did that it should not: errors, dialogs."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)

        def dialog(d: Any) -> None:
            self.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)


def unguarded_page(browser: Browser) -> tuple[BrowserContext, Page, Watch]:
    """A page with the Content-Security-Policy switched off, so that the escaping alone must
    hold: any ``alert`` the page runs is kept in ``window.__ran``; close the context after."""
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(WAIT)
    watch = Watch(page)
    page.add_init_script(
        "window.__ran = []; window.alert = (m) => window.__ran.push('alert ' + m);"
    )
    return context, page, watch


def follow(page: Page, link: Locator) -> None:
    """Click ``link`` and wait until the page has gone elsewhere. The page redraws its tables
    at every refresh: a redraw between the press of the button and its release loses the
    click (a person clicks again, and so does this, up to five times)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: PLC0415

    before = page.evaluate("location.hash")
    for _ in range(5):
        link.click()
        try:
            page.wait_for_function("h => location.hash !== h", arg=before, timeout=3000)
        except PlaywrightTimeout:
            continue
        return
    raise AssertionError(f"clicking {link} five times never left {before!r}")


def open_page(browser: Browser) -> Iterator[Page]:
    """A page of its own context, watched: the test fails on any error or dialog."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    p.set_default_timeout(WAIT)
    watch = Watch(p)
    yield p
    context.close()
    assert watch.errors == [], watch.errors
    assert watch.dialogs == [], watch.dialogs


def chart(page: Page, name: str) -> list[dict[str, Any]]:
    """The points a chart drew, from its data table (one row per interval)."""
    rows: list[dict[str, Any]] = page.eval_on_selector_all(
        f'table[data-chart="{name}"] tr[data-start]',
        """rows => rows.map(r => ({
            start: Number(r.dataset.start), partial: r.dataset.partial === "true",
            values: [...r.querySelectorAll("td:not(:first-child)")].map(
                td => td.dataset.value === undefined ? null : Number(td.dataset.value)),
        }))""",
    )
    return rows


def cells(page: Page, table: str, attr: str, value: str) -> dict[str, str]:
    """A table row's cells by column key -> data-value (or text), the row found by attribute."""
    found: dict[str, str] | None = page.evaluate(
        """([table, attr, value]) => {
            const t = document.getElementById(table);
            const keys = [...t.querySelectorAll("thead th")].map(th => th.dataset.key);
            const rows = [...t.querySelectorAll("tbody tr")];
            const row = rows.find(r => r.getAttribute(attr) === value);
            if (!row) return null;
            const out = {};
            [...row.children].forEach((td, i) => {
                out[keys[i]] = td.dataset.value !== undefined ? td.dataset.value : td.textContent;
            });
            return out;
        }""",
        [table, attr, value],
    )
    assert found is not None, (table, value)
    return found


def first_column(page: Page, table: str) -> list[str]:
    texts: list[str] = page.eval_on_selector_all(
        f"#{table} tbody tr td:first-child", "tds => tds.map(td => td.textContent)"
    )
    return texts


def drawn_text(page: Page) -> str:
    """The page's visible text, checked for the marks of values drawn wrong."""
    text: str = page.evaluate("document.body.innerText")
    for wrong in ("[object", "undefined", "NaN", "null"):
        assert wrong not in text, (wrong, text)
    return text
