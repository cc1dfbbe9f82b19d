"""The collector's web server without a browser: JSON API, /metrics, history, safety, CLI.

Traffic is real: packets over UDP on loopback into a real collector; the API and /metrics are read
over HTTP from the real server. The page itself is driven in Chromium in test_web_browser.py.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from web_helpers import T0, Site, req

from pynba._cli import main as cli
from pynba_exporter import PinbaTimer, UdpTransport, encode
from pynba_exporter.collector import Collector, History, WebServer
from pynba_exporter.collector._aggregate import Record, percentile
from pynba_exporter.collector._http import parse_http_address

HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    'back\\slash "quoted"\nnew line',
    "&amp; ' </table>",
]


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(request_tags=[("user",)])
    yield s
    s.close()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text parsed by prometheus_client: sample name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


@pytest.mark.expect_pynba_errors  # the invalid packets are logged, once per kind
def test_metrics_match_the_collector_reports(site: Site) -> None:
    site.now = T0 + 1
    requests = []
    for i in range(60):
        script = ["/a", "/b", HOSTILE[i % len(HOSTILE)]][i % 3]
        timers = [
            PinbaTimer({"group": "db::select", "server": f"db{i % 2}"}, 0.002 * (i + 1), 2),
            PinbaTimer({"group": "cache::get"}, 0.0001, 1),
            PinbaTimer({"other": "no group"}, 0.5, 1),
        ]
        requests.append(
            req(script, 0.01 * (i + 1), 500 if i % 7 == 0 else 200, ru_utime=0.001,
                ru_stime=0.0005, document_size=100 * i, timers=timers,
                server_name="s1" if i % 2 else "s2")
        )  # fmt: skip
    site.send(*requests)
    bad = UdpTransport(site.collector.address_text)
    bad.send_packet(b"\xff" * 20)
    bad.send_packet(b"")
    bad.close()
    deadline = time.monotonic() + 10
    while site.collector.packets < 62:
        assert time.monotonic() < deadline
        time.sleep(0.005)

    status, headers, body = site.get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    m = samples(body.decode("utf-8"))

    report = site.collector.request_report(("script_name", "status", "server_name"))
    assert len(report) > 6
    counts = {
        (labels["script_name"], labels["status"], labels["server_name"]): v
        for labels, v in m["pinba_requests_total"]
    }
    times = {
        (labels["script_name"], labels["status"], labels["server_name"]): v
        for labels, v in m["pinba_request_time_seconds_total"]
    }
    assert len(counts) == len(report)
    # The collector sums times in whole nanoseconds per request (exact as requests leave the
    # window); /metrics adds the floats: they agree to far better than a microsecond.
    for row in report:
        key = (row["script_name"], str(row["status"]), row["server_name"])
        assert counts[key] == row["req_count"]
        assert times[key] == pytest.approx(row["req_time_total"], rel=1e-7)
    assert sum(counts.values()) == 60
    utime = sum(v for _, v in m["pinba_request_ru_utime_seconds_total"])
    assert utime == pytest.approx(site.collector.info()["ru_utime_total"], rel=1e-7)
    doc = sum(v for _, v in m["pinba_request_document_bytes_total"])
    assert doc == pytest.approx(site.collector.info()["kbytes_total"] * 1024)

    # Timers: per group (and server), only timers that have a group, as in the timer reports.
    for row in site.collector.timer_report(("group",)):
        hits = [v for labels, v in m["pinba_timer_hits_total"] if labels["group"] == row["group"]]
        secs = [v for lb, v in m["pinba_timer_seconds_total"] if lb["group"] == row["group"]]
        assert sum(hits) == row["hit_count"]
        assert sum(secs) == pytest.approx(row["timer_value"], rel=1e-7)
    assert {lb["group"] for lb, _ in m["pinba_timer_hits_total"]} == {"db::select", "cache::get"}
    assert ({"group": "cache::get", "server": ""}, 60) in m["pinba_timer_hits_total"]

    # Window gauges: the report's percentiles.
    by_script = {r["script_name"]: r for r in site.collector.request_report(("script_name",))}
    quantiles = {
        (lb["script_name"], lb["quantile"]): v for lb, v in m["pinba_window_request_time_seconds"]
    }
    for name, row in by_script.items():
        assert quantiles[(name, "0.5")] == row["req_time_median"]
        assert quantiles[(name, "0.95")] == row["req_time_p95"]
        assert quantiles[(name, "0.99")] == row["req_time_p99"]
    assert {lb["script_name"] for lb, _ in m["pinba_window_requests"]} == set(by_script)

    # Health.
    health = site.collector.status()
    assert m["pinba_collector_packets_total"] == [({}, 62)]
    invalid = {lb["reason"]: v for lb, v in m["pinba_collector_invalid_packets_total"]}
    assert invalid == health["invalid_by_reason"]
    assert sum(invalid.values()) == 2
    assert m["pinba_collector_records"] == [({}, 60)]
    held = health["window_bytes"] + health["dictionary_bytes"]
    assert m["pinba_collector_memory_bytes"] == [({}, held)]
    assert m["pinba_collector_memory_bytes_bound"] == [({}, health["max_bytes"])]


def test_metrics_label_sets_are_bounded_by_the_collector_limit() -> None:
    s = Site(max_keys=5)
    try:
        s.send(*(req(f"/s{i}", 0.01, timers=[PinbaTimer({"group": f"g{i}"}, 0.001)])
                 for i in range(40)))  # fmt: skip
        m = samples(s.get("/metrics")[2].decode())
        assert len(m["pinba_requests_total"]) == 5
        assert sum(v for _, v in m["pinba_requests_total"]) == 40
        other = [v for lb, v in m["pinba_requests_total"] if lb["script_name"] == "<other>"]
        assert other == [36]
        assert len(m["pinba_timer_hits_total"]) == 5
        assert sum(v for _, v in m["pinba_timer_hits_total"]) == 40
        assert len(m["pinba_window_requests"]) == 5  # the report's own <other> row
    finally:
        s.close()


def test_non_utf8_names_are_replaced_in_metrics_and_kept_in_json(site: Site) -> None:
    name = b"/caf\xe9".decode("utf-8", "surrogateescape")  # Latin-1 bytes from a PHP app
    site.send(req(name, 0.1))
    m = samples(site.get("/metrics")[2].decode())
    assert m["pinba_requests_total"][0][0]["script_name"] == "/caf\ufffd"
    rows = site.json("/api/scripts")["rows"]
    assert rows[0]["script_name"] == name


def test_api_escapes_markup_and_serves_safe_headers(site: Site) -> None:
    site.send(*(req(name, 0.1, tags={"user": name}) for name in HOSTILE))
    status, headers, body = site.get("/api/scripts")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    for char in b"<>&":
        assert char not in body
    assert body.isascii()
    names = {row["script_name"] for row in json.loads(body)["rows"]}
    assert names == set(HOSTILE)
    tags = site.json("/api/tags")["reports"][0]
    assert tags["tags"] == ["user"]
    assert {row["user"] for row in tags["rows"]} == set(HOSTILE)
    status, headers, page = site.get("/")
    assert status == 200
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert b"http://" not in page and b"https://" not in page  # nothing from elsewhere
    for path in ("/static/app.js", "/static/app.css"):
        status, _, text = site.get(path)
        assert status == 200
        assert b"http://" not in text.replace(b"http://www.w3.org/2000/svg", b"")
        for sink in (b".innerHTML", b".outerHTML", b"insertAdjacentHTML", b"document.write",
                     b"eval(", b"Function("):  # fmt: skip
            assert sink not in text


def test_script_api(site: Site) -> None:
    site.now = T0 + 1
    times = [0.001 * (i + 1) for i in range(100)]
    site.send(*(
        req("/p", t, 404 if i % 4 == 0 else 200, timers=[
            PinbaTimer({"group": "db::select", "server": "db1"}, t / 4, 3),
            PinbaTimer({"group": "db::select", "server": "db2"}, t / 4, 1),
        ])
        for i, t in enumerate(times)
    ))  # fmt: skip
    d = site.json("/api/script?name=%2Fp")
    assert d["name"] == "/p"
    assert d["row"]["req_count"] == 100
    assert d["percentiles"]["p95"] == pytest.approx(percentile(times, 95), rel=1e-6)
    assert sum(b["count"] for b in d["histogram"]) == 100
    assert d["histogram"][0]["low"] == pytest.approx(0.001, rel=1e-6)
    assert d["histogram"][-1]["high"] == pytest.approx(0.1, rel=1e-6)
    assert {s["status"]: s["req_count"] for s in d["statuses"]} == {200: 75, 404: 25}
    (group,) = d["timers_by_group"]
    assert (group["group"], group["hit_count"], group["hits_per_request"]) == ("db::select", 400, 4)
    assert group["time_per_request"] == pytest.approx(sum(times) / 2 / 100, rel=1e-5)
    assert group["time_percent"] == pytest.approx(50, rel=1e-5)
    servers = {t["server"]: t for t in d["timers_by_group_server"]}
    assert servers["db1"]["hit_count"] == 300 and servers["db2"]["hit_count"] == 100
    assert servers["db1"]["time_percent"] == pytest.approx(25, rel=1e-5)
    status, _, body = site.get("/api/script?name=%2Fnope")
    assert status == 404 and json.loads(body)["error"]
    assert site.get("/api/nothing")[0] == 404


def test_history_per_interval(site: Site) -> None:
    a = [0.001 * (i + 1) for i in range(200)]
    site.now = T0 + 1
    site.send(*(req("/h", t, 503 if i % 10 == 0 else 200) for i, t in enumerate(a)))
    site.now = T0 + 11  # one interval without traffic between
    site.send(req("/h", 0.5), req("/h", 0.7))
    site.now = T0 + 12
    points = site.json("/api/overview")["history"]
    assert [p["start"] for p in points] == [T0, T0 + 5, T0 + 10]
    assert [p["requests"] for p in points] == [200, 0, 2]
    assert [p["partial"] for p in points] == [False, False, True]
    assert points[0]["req_per_sec"] == 40
    assert points[0]["errors"] == 20 and points[0]["error_rate"] == 0.1
    assert points[1]["p95"] is None and points[1]["error_rate"] is None
    assert points[0]["time_total"] == pytest.approx(sum(a), rel=1e-5)
    for p in (50, 95, 99):
        # The histogram's cells are 2 % wide: within 1 % of the exact nearest-rank value.
        assert points[0][f"p{p}"] == pytest.approx(percentile(a, p), rel=0.011)
    assert points[2]["p50"] == pytest.approx(0.5, rel=0.011)


def test_history_is_bounded() -> None:
    now = [T0]
    collector = Collector("127.0.0.1:0", clock=lambda: now[0]).start()
    history = History(interval=1.0, size=4, clock=lambda: now[0])
    collector.listeners.append(history.add)
    transport = UdpTransport(collector.address_text)
    try:
        for i in range(10):
            now[0] = T0 + i
            transport.send(req("/x", 0.01))
            deadline = time.monotonic() + 10
            while collector.aggregator.requests_total < i + 1:
                assert time.monotonic() < deadline
                time.sleep(0.005)
        assert len(history._intervals) == 4
        points = history.points()
        assert [p["start"] for p in points] == [T0 + 6, T0 + 7, T0 + 8, T0 + 9]
        now[0] = T0 + 100
        assert [p["requests"] for p in history.points()] == [0, 0, 0, 0]
    finally:
        transport.close()
        collector.stop()


def test_overview_health_timers_and_tags_api(site: Site) -> None:
    site.now = T0 + 2
    site.send(
        req("/o", 0.2, 500, hostname="h1", server_name="a.example", tags={"user": "guest"},
            timers=[PinbaTimer({"group": "db::q", "server": "db1"}, 0.05, 2)]),
        req("/o", 0.4, 200, hostname="h2", server_name="a.example", tags={"user": "member"}),
        req("/p", 0.6, 200, hostname="h2", server_name="b.example", tags={"user": "guest"}),
    )  # fmt: skip
    site.now = T0 + 10
    o = site.json("/api/overview")
    assert o["info"]["req_count"] == 3
    assert o["req_per_sec"] == pytest.approx(3 / 10)
    assert o["errors"] == 1 and o["error_rate"] == pytest.approx(1 / 3)
    assert {h["name"]: h["req_count"] for h in o["hosts"]} == {"h1": 1, "h2": 2}
    assert {s["name"]: s["req_count"] for s in o["servers"]} == {"a.example": 2, "b.example": 1}
    assert o["packets_received"] == 3
    h = site.json("/api/health")
    assert h["status"]["packets_received"] == 3 and h["status"]["invalid_packets"] == 0
    assert h["memory"]["records"] == 3
    status = site.collector.status()
    assert h["memory"]["bytes"] == status["window_bytes"] + status["dictionary_bytes"] > 0
    assert h["memory"]["bytes_bound"] == status["max_bytes"]
    t = site.json("/api/timers")["reports"]
    assert [r["tags"] for r in t] == [["group"], ["group", "server"]]
    assert t[1]["rows"][0]["server"] == "db1" and t[1]["rows"][0]["hit_count"] == 2
    tags = site.json("/api/tags")["reports"][0]["rows"]
    assert {r["user"]: r["req_count"] for r in tags} == {"guest": 2, "member": 1}
    config = site.json("/api/config")
    assert config["percentiles"] == [95.0, 99.0]
    assert config["request_tags"] == [["user"]]


def test_loopback_server_answers_loopback_names_only(site: Site) -> None:
    port = site.web.address[1]
    assert site.get("/api/config", host=f"localhost:{port}")[0] == 200
    assert site.get("/api/config", host=f"127.0.0.1:{port}")[0] == 200
    status, _, _ = site.get("/api/config", host=f"attacker.example:{port}")
    assert status == 421  # a rebound DNS name pointing at 127.0.0.1 reads nothing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080", ("127.0.0.1", 8080)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("localhost:8080", ("localhost", 8080)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:8080", ("::", 8080)),
    ],
)
def test_http_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_http_address(text) == expected


@pytest.mark.parametrize("text", ["", "host", ":80", "::1:80", "[::1]", "h:99999", "h:x"])
def test_bad_http_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="HTTP address"):
        parse_http_address(text)


def test_default_is_loopback() -> None:
    web = WebServer(Collector("127.0.0.1:0"))
    assert (web.host, web.port) == ("127.0.0.1", 8080)


def test_cli_collect_http() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pynba._cli", "collect", "--listen", "127.0.0.1:0", "--http",
         "127.0.0.1:0", "--interval", "60", "--request-tags", "user"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        address = proc.stderr.readline().split("listening on ")[1].strip()
        url = proc.stderr.readline().split("live page at ")[1].strip()
        assert url.startswith("http://127.0.0.1:")
        transport = UdpTransport(address)
        transport.send(req("/from-cli", 0.1, tags={"user": "guest"}))
        transport.close()
        deadline = time.monotonic() + 10
        rows: list[Any] = []
        while not rows:
            assert time.monotonic() < deadline
            with urllib.request.urlopen(url + "api/scripts", timeout=10) as r:
                rows = json.loads(r.read())["rows"]
            time.sleep(0.02)
        assert rows[0]["script_name"] == "/from-cli"
        with urllib.request.urlopen(url + "api/tags", timeout=10) as r:
            assert json.loads(r.read())["reports"][0]["rows"][0]["user"] == "guest"
        with urllib.request.urlopen(url + "metrics", timeout=10) as r:
            assert b'pinba_requests_total{script_name="/from-cli"' in r.read()
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_cli_demo_prints_its_page() -> None:
    out = io.StringIO()
    assert cli(["demo", "--requests", "30"], out=out) == 0
    first = out.getvalue().splitlines()[0]
    assert first.startswith("pynba demo: live page at http://127.0.0.1:")


def test_slow_answers_are_reused_and_made_once(site: Site) -> None:
    made: list[int] = []

    def make() -> tuple[int, bytes, str]:
        made.append(1)
        time.sleep(1.0)  # an answer that takes 1 s is reused for the next 5 s
        return 200, b"{}", "application/json"

    threads = [threading.Thread(target=site.web.cached, args=("k", make)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert site.web.cached("k", make) == (200, b"{}", "application/json")
    assert made == [1]  # three threads at once and one after: made once


def test_cli_http_errors(capsys: pytest.CaptureFixture[str]) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        args = ["collect", "--listen", "127.0.0.1:0", "--duration", "0.1", "--http"]
        assert cli([*args, f"127.0.0.1:{port}"]) == 2
        assert "cannot serve HTTP on 127.0.0.1:" in capsys.readouterr().err
    finally:
        busy.close()
    assert cli([*args, "nowhere"]) == 2
    assert "HTTP address 'nowhere'" in capsys.readouterr().err


def test_cli_demo_serve_keeps_the_page_up_until_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pynba._cli", "demo", "--requests", "20", "--serve"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split("live page at ")[1].strip()
        deadline = time.monotonic() + 60
        received = 0
        while received <= 60:  # the 20 requests, the 20 jobs, then more every second
            assert time.monotonic() < deadline, received
            with urllib.request.urlopen(url + "api/health", timeout=10) as r:
                received = json.loads(r.read())["status"]["requests_total"]
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "requests by script" in out


@given(st.lists(st.floats(min_value=1e-6, max_value=1e4), min_size=1, max_size=300))
@settings(max_examples=200, deadline=None)
def test_history_percentiles_are_within_one_percent(times: list[float]) -> None:
    history = History(interval=5.0, clock=lambda: T0 + 1)
    history.add([Record.of(req("/p", t), T0 + 1) for t in times])
    (point,) = history.points()
    exact = sorted(max(0.0, t) for t in times)
    assert point["requests"] == len(times)
    for p in (50, 95, 99):
        assert point[f"p{p}"] == pytest.approx(percentile(exact, p), rel=0.0101)


def test_metrics_escape_what_a_terminal_would_obey_and_stay_small(site: Site) -> None:
    hostile = "/e\x1b]52;c;bad\x07\u202eexe.png"
    long = "/long/" + "x" * 8000
    site.send(req(hostile, 0.1), req(long, 0.1))
    text = site.get("/metrics")[2].decode()
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    names = {labels["script_name"] for labels, _ in samples(text)["pinba_requests_total"]}
    assert "/e\\u001b]52;c;bad\\u0007\\u202eexe.png" in names
    assert "/long/" + "x" * 247 + "..." in names  # cut: the counters outlive the window


def _strings(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for k, v in data.items():
            yield k
            yield from _strings(v)
    elif isinstance(data, list):
        for v in data:
            yield from _strings(v)


def test_long_names_leave_cut_and_what_metrics_keep_is_bounded_in_bytes() -> None:
    # 60 KB names, each distinct, as script names and timer tags: with --max-memory 4M the
    # window holds a few dozen, the counters (which outlive it) all of them.
    c = Collector("127.0.0.1:0", max_bytes=4 << 20, clock=lambda: T0)
    web = WebServer(c, "127.0.0.1:0", history=History(clock=lambda: T0))
    metrics = web.metrics
    assert metrics is not None
    n = 400
    for i in range(n):
        big = f"{i:04d}" + "n" * 60_000
        timers = [PinbaTimer({"group": big, "server": big, "x": big}, 0.001)]
        c.handle([encode(req("/" + big, 0.01, timers=timers))])
    body, _ = metrics.exposition()
    families = list(text_string_to_metric_families(body.decode()))
    label_sets = 0
    for family in families:
        for sample in family.samples:
            label_sets += 1
            assert all(len(v) <= 256 for v in sample.labels.values()), family.name
    # Every line is one label set of at most 3 x 256 characters and its figures.
    assert len(body) <= label_sets * 1200
    # The label sets and the tag-set cache stay inside their share of the budget.
    assert metrics.bytes <= metrics.max_bytes == (4 << 20) // 64
    kept = sum(len(s) for key in metrics._requests for s in key)
    kept += sum(len(s) for key in metrics._timers for s in key)
    kept += sum(len(n) + len(v) for tags in metrics._tag_keys for n, v in tags)
    assert kept <= metrics.max_bytes
    # Past the budget, label sets are summed in <other>: no request is lost.
    requests = sum(v for _, v in samples(body.decode())["pinba_requests_total"])
    assert requests == n
    # The JSON API cuts every string it sends the same way, and a cut name finds its script.
    web.start()
    try:
        for path in ("/api/scripts", "/api/overview", "/api/timers", "/api/health"):
            with urllib.request.urlopen(web.url.rstrip("/") + path, timeout=10) as r:
                data = json.loads(r.read())
            assert all(len(s) <= 256 for s in _strings(data)), path
        with urllib.request.urlopen(web.url + "api/scripts", timeout=10) as r:
            name = json.loads(r.read())["rows"][0]["script_name"]
        assert len(name) == 256 and name.endswith("...")
        query = urllib.parse.urlencode({"name": name})
        with urllib.request.urlopen(web.url + "api/script?" + query, timeout=10) as r:
            one = json.loads(r.read())
        assert one["row"]["req_count"] == 1 and one["name"] == name
        assert len(one["timers_by_group_server"]) == 1
    finally:
        web.stop()


class _TimedLock:
    """The aggregator's lock, noting the longest time it was held (outermost acquire to
    release): what the receiving thread may wait for."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._since = 0.0
        self.longest = 0.0

    def __enter__(self) -> _TimedLock:
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1:
            self._since = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.longest = max(self.longest, time.perf_counter() - self._since)
        self._lock.release()


def test_polling_script_pages_by_distinct_names_does_not_starve_the_receiver() -> None:
    # 20,000 scripts in the window; 4 clients ask for a different script page each time (no
    # answer can come from the cache) while packets arrive at 2,500 a second.
    scripts = 20_000
    c = Collector("127.0.0.1:0")
    lock = c.aggregator._lock = _TimedLock()  # type: ignore[assignment]
    c.handle([encode(req(f"/s{i}", 0.01)) for i in range(scripts)])
    web = WebServer(c, "127.0.0.1:0")
    c.start()
    web.start()
    stop = threading.Event()
    answers: list[tuple[int, float]] = []

    def poll(first: int) -> None:
        i = first
        while not stop.is_set():
            started = time.monotonic()
            url = web.url + "api/script?" + urllib.parse.urlencode({"name": f"/s{i % scripts}"})
            with urllib.request.urlopen(url, timeout=30) as r:
                r.read()
                answers.append((r.status, time.monotonic() - started))
            i += 7919

    pollers = [threading.Thread(target=poll, args=(k,)) for k in range(4)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for t in pollers:
            t.start()
        before = c.packets
        lock.longest = 0.0
        packet = encode(req("/live", 0.01))
        sent = 0
        for _ in range(100):  # 2,500 packets in about a second
            for _ in range(25):
                sock.sendto(packet, c.address)
                sent += 1
            time.sleep(0.01)
        deadline = time.monotonic() + 20
        while c.packets < before + sent and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        for t in pollers:
            t.join(timeout=30)
    finally:
        stop.set()
        sock.close()
        web.stop()
        c.stop()
    assert c.packets - before == sent  # every packet received
    assert len(answers) >= 8 and {status for status, _ in answers} == {200}
    # Each answer is quick, and the lock the receiving thread takes is never held long (an
    # answer that folded every script's report held it for about a quarter of a second here).
    assert max(took for _, took in answers) < 2.0
    assert lock.longest < 0.1, lock.longest


SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options",
                    "Referrer-Policy")  # fmt: skip


def test_answers_the_standard_library_writes_carry_the_security_headers(site: Site) -> None:
    # 501 for a method the server does not serve, 431 for too many header lines.
    for raw in (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
                b"BREW / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n"):  # fmt: skip
        with socket.create_connection(site.web.address, timeout=10) as s:
            s.sendall(raw)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        head = answer.split(b"\r\n\r\n")[0].decode("latin-1")
        assert head.split()[1] in ("501", "431"), head
        names = {line.split(":")[0] for line in head.split("\r\n")[1:]}
        assert set(SECURITY_HEADERS) <= names, head


def test_without_prometheus_client_metrics_answers_501_naming_what_installs(site: Site) -> None:
    site.web.metrics = None  # as when prometheus_client is not installed
    status, headers, body = site.get("/metrics")
    assert status == 501
    assert b"pip install prometheus_client" in body and b"pynba[web]" not in body
    assert all(name in headers for name in SECURITY_HEADERS)


@pytest.mark.expect_pynba_errors
def test_a_client_that_resets_its_connection_costs_one_line_not_a_traceback(
    site: Site, capfd: pytest.CaptureFixture[str], pynba_log: Any
) -> None:
    for partial in (b"GET /api/scr", b""):
        s = socket.create_connection(site.web.address, timeout=10)
        s.sendall(partial)
        time.sleep(0.05)
        # SO_LINGER 0: close() sends a reset, not a FIN.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    time.sleep(0.3)
    assert site.json("/api/config")["window"] == 900  # still serving
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    assert not pynba_log.problems  # a reset is not a problem of the collector
