"""The embedded collector: real packets in (ours, PHP's, broken ones), reports and SQL out."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pynba import PynbaMiddleware
from pynba._cli import main as cli
from pynba_exporter import (
    PinbaDecodeError,
    PinbaRequest,
    PinbaTimer,
    UdpTransport,
    decode,
    encode,
)
from pynba_exporter.collector import Collector, CollectorError, SqliteStore
from pynba_exporter.collector._aggregate import percentile


def wait_for(collector: Collector, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while collector.aggregator.requests_total + sum(collector.aggregator.invalid.values()) < count:
        assert time.monotonic() < deadline, collector.status()
        time.sleep(0.01)


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector("127.0.0.1:0").start()
    yield c
    c.stop()


def req(script: str, time_: float, status: int = 200, **kw: Any) -> PinbaRequest:
    return PinbaRequest("web1", "shop.example", script, request_time=time_, status=status, **kw)


def test_reports_from_real_packets(collector: Collector) -> None:
    t = UdpTransport(collector.address_text)
    times = [0.01 * i for i in range(1, 101)]
    for i, x in enumerate(times):
        timer = PinbaTimer({"group": "db::select", "server": "db1"}, x / 2, 2)
        status = 500 if i % 10 == 0 else 200
        user = "guest" if i % 3 else "member"
        script = "/a" if i % 2 else "/b"
        t.send(req(script, x, status, document_size=1024, ru_utime=0.001, tags={"user": user},
                   timers=[timer]))  # fmt: skip
    wait_for(collector, 100)
    by_script = {row["script_name"]: row for row in collector.request_report(("script_name",))}
    a = by_script["/a"]
    a_times = sorted(x for i, x in enumerate(times) if i % 2)
    assert a["req_count"] == 50
    assert a["req_time_total"] == pytest.approx(sum(a_times), rel=1e-5)
    assert a["req_time_median"] == pytest.approx(percentile(a_times, 50), rel=1e-5)
    assert a["req_time_p95"] == pytest.approx(percentile(a_times, 95), rel=1e-5)
    assert a["traffic_total"] == pytest.approx(50.0)  # kilobytes
    assert a["ru_utime_total"] == pytest.approx(0.05, rel=1e-4)
    total = sum(times)
    assert a["req_time_percent"] + by_script["/b"]["req_time_percent"] == pytest.approx(100)
    assert a["req_time_percent"] == pytest.approx(100 * sum(a_times) / total, rel=1e-4)
    statuses = {row["status"]: row["req_count"] for row in collector.request_report(("status",))}
    assert statuses == {200: 90, 500: 10}
    (timers,) = collector.timer_report(("group", "server"))
    assert (timers["group"], timers["server"], timers["req_count"], timers["hit_count"]) == (
        "db::select", "db1", 100, 200,
    )  # fmt: skip
    assert timers["timer_value"] == pytest.approx(total / 2, rel=1e-5)
    per_script = collector.timer_report(("group",), per_script=True)
    assert sorted(row["script_name"] for row in per_script) == ["/a", "/b"]
    tags = {row["user"]: row["req_count"] for row in collector.tag_report(("user",))}
    assert tags == {"guest": 66, "member": 34}
    info = collector.info()
    assert info["req_count"] == 100
    assert info["time_total"] == pytest.approx(total, rel=1e-5)


def test_packed_nested_and_negative(collector: Collector) -> None:
    t = UdpTransport(collector.address_text, packed=True)
    batch = req("/outer", 0.5, requests=[req("/inner1", 0.25), req("/inner2", -1.0)])
    t.send(batch)
    wait_for(collector, 3)
    rows = {r["script_name"]: r for r in collector.request_report(("script_name",))}
    assert set(rows) == {"/outer", "/inner1", "/inner2"}
    assert rows["/inner2"]["req_time_total"] == 0.0  # clamped, as the servers do


@pytest.mark.expect_pynba_errors
def test_invalid_packets_are_counted_by_reason_and_never_stop_it(collector: Collector) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    good = encode(req("/ok", 0.1))
    bad = [b"", b"\xff" * 30, good[:-9], b"\x0a\x01h", good + b"\x0b"]
    for data in bad:
        sock.sendto(data, collector.address)
    sock.sendto(good, collector.address)
    sock.close()
    wait_for(collector, len(bad) + 1)
    status = collector.status()
    assert status["invalid_packets"] == len(bad)
    assert status["invalid_by_reason"]["missing required fields"] == 2
    assert status["invalid_by_reason"]["truncated"] >= 1
    assert status["requests_total"] == 1
    assert status["packets_received"] == len(bad) + 1


def _requests_in(data: bytes) -> int | None:
    """How many requests a packet holds (nested ones too), None if servers reject it."""
    try:
        r = decode(data)
    except PinbaDecodeError:
        return None

    def count(x: PinbaRequest) -> int:
        return 1 + sum(count(sub) for sub in x.requests)

    return count(r)


@pytest.mark.expect_pynba_errors
@given(st.lists(st.binary(max_size=200) | st.just(encode(req("/v", 0.1))), max_size=30))
@settings(max_examples=200, deadline=None)
def test_every_packet_is_counted_as_valid_or_invalid(packets: list[bytes]) -> None:
    c = Collector("127.0.0.1:0")
    c.handle(packets)
    counts = [_requests_in(p) for p in packets]
    assert sum(c.aggregator.invalid.values()) == counts.count(None)
    assert c.aggregator.requests_total == sum(n for n in counts if n is not None)
    assert c.packets == len(packets)


def test_rolling_window_and_memory_bounds() -> None:
    now = [1000.0]
    c = Collector("127.0.0.1:0", window=60, max_records=50, max_keys=5, clock=lambda: now[0])
    c.handle([encode(req(f"/s{i}", 0.1)) for i in range(30)])
    now[0] += 30
    c.handle([encode(req(f"/s{i}", 0.1)) for i in range(30, 60)])
    status = c.status()
    assert status["evicted_records"] == 10  # max_records: the oldest went first
    rows = c.request_report(("script_name",))
    assert len(rows) == 5
    assert rows[-1]["script_name"] == "<other>" or any(r["script_name"] == "<other>" for r in rows)
    assert sum(r["req_count"] for r in rows) == 50
    now[0] += 45  # the first batch is now older than the window
    assert c.info()["req_count"] == 30


def test_sqlite_view_while_the_collector_runs(tmp_path: Path) -> None:
    path = str(tmp_path / "pinba.db")
    c = Collector("127.0.0.1:0")
    c.store = SqliteStore(
        path, c.aggregator, reports_interval=0.1, flush_interval=0.05, request_tags=[("ab",)]
    )
    c.start()
    try:
        t = UdpTransport(c.address_text)
        for i in range(20):
            t.send(req(f"/p{i % 2}", 0.1 * (i + 1), tags={"ab": "x"},
                       timers=[PinbaTimer({"group": "db", "server": "db1"}, 0.05)]))  # fmt: skip
        wait_for(c, 20)
        deadline = time.monotonic() + 10
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        while True:  # a reader during the collector's writes: never blocked, never an error
            try:
                rows = reader.execute(
                    "select script_name, req_count, req_time_median from report_by_script_name"
                    " order by script_name"
                ).fetchall()
                if sum(r[1] for r in rows) == 20:
                    break
            except sqlite3.OperationalError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert [(r[0], r[1]) for r in rows] == [("/p0", 10), ("/p1", 10)]
        raw = reader.execute(
            "select request.script_name, timer.hit_count, tag.name, timertag.value"
            " from request join timer on timer.request_id = request.id"
            " join timertag on timertag.timer_id = timer.id join tag on tag.id = timertag.tag_id"
            " where tag.name = 'server'"
        ).fetchall()
        assert len(raw) == 20 and {r[3] for r in raw} == {"db1"}
        info = reader.execute("select req_count from info").fetchone()
        assert info == (20,)
        assert reader.execute("select value from status where name='requests_total'").fetchone()
        assert (
            reader.execute("select group_concat(tags) from request")
            .fetchone()[0]
            .startswith("ab=x")
        )
        assert reader.execute("select ab, req_count from report_by_request_tag_ab").fetchall() == [
            ("x", 20)
        ]
        tables = {r[0] for r in reader.execute("select name from sqlite_master")}
        assert {"request", "timer", "timertag", "tag", "report_by_hostname", "report_by_status",
                "report_by_server_and_script", "tag_info_group", "tag_report_group_server",
                "info", "status"} <= tables  # fmt: skip
        reader.close()
    finally:
        c.stop()


def test_errors_for_port_in_use_and_unwritable_database(tmp_path: Path) -> None:
    first = Collector("127.0.0.1:0").start()
    try:
        with pytest.raises(CollectorError, match="in use"):
            Collector(first.address_text).start()
    finally:
        first.stop()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(PermissionError, match="cannot write"):
        SqliteStore(str(not_a_dir / "x.db"), Collector("127.0.0.1:0").aggregator)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # (root may write anywhere)
            with pytest.raises(PermissionError, match="cannot write"):
                SqliteStore(str(ro / "x.db"), Collector("127.0.0.1:0").aggregator)
    finally:
        ro.chmod(0o700)


def test_never_binds_all_interfaces_unless_asked() -> None:
    c = Collector("127.0.0.1:0").start()
    assert c.address[0] == "127.0.0.1"
    c.stop()
    assert Collector().listen.host == "127.0.0.1"


def test_a_monitored_app_reports_to_it(collector: Collector) -> None:
    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"hi"]

    monitored = PynbaMiddleware(app, collector.address_text)
    for _ in range(5):
        result = monitored(
            {"PATH_INFO": "/x", "wsgi.url_scheme": "http"}, lambda *a: lambda data: None
        )
        list(result)
        result.close()  # type: ignore[attr-defined]
    wait_for(collector, 5)
    (row,) = collector.request_report(("script_name",))
    assert (row["script_name"], row["req_count"], row["traffic_total"]) == ("/x", 5, 10 / 1024)


PHP = shutil.which("php")


@pytest.mark.skipif(
    PHP is None, reason="the reference client is missing: apt-get install php-cli php-pinba"
)
def test_packets_of_the_php_extension(collector: Collector) -> None:
    code = (
        'pinba_script_name_set("/php"); pinba_tag_set("lang", "php");'
        'pinba_timer_add(["group" => "db::select"], 0.25); pinba_flush();'
    )
    assert PHP is not None
    for _ in range(3):
        subprocess.run(
            [PHP, "-d", "pinba.enabled=1", "-d", f"pinba.server={collector.address_text}",
             "-d", "pinba.auto_flush=0", "-r", code],
            check=True, timeout=60, capture_output=True,
        )  # fmt: skip
    wait_for(collector, 3)
    (row,) = collector.request_report(("script_name",))
    assert (row["script_name"], row["req_count"]) == ("/php", 3)
    (timer,) = collector.timer_report(("group",))
    assert (timer["group"], timer["hit_count"]) == ("db::select", 3)
    assert timer["timer_value"] == pytest.approx(0.75)
    assert collector.tag_report(("lang",))[0]["req_count"] == 3


# --------------------------------------------------------------------------------------------
# The command line


def test_cli_decode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    packet = tmp_path / "packet.bin"
    packet.write_bytes(encode(req("/d", 0.5, timers=[PinbaTimer({"group": "x"}, 0.1)])))
    assert cli(["decode", str(packet)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["script_name"], out["timers"][0]["tags"]) == ("/d", {"group": "x"})
    packet.write_bytes(b"\xff\xff")
    assert cli(["decode", str(packet)]) == 1
    assert "not a valid Pinba packet" in capsys.readouterr().err


def test_cli_decode_is_safe_on_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = "/g\x9b2J\x7f\u2028\u202e\x1b]0;title\x07"
    packet = tmp_path / "packet.bin"
    packet.write_bytes(encode(req(hostile, 0.5)))
    assert cli(["decode", str(packet)]) == 0
    text = capsys.readouterr().out
    assert text.isascii()  # every other character escaped, C1 and bidi controls included
    assert json.loads(text)["script_name"] == hostile  # and exact


@pytest.mark.slow
def test_cli_collect_then_report(tmp_path: Path) -> None:
    db = tmp_path / "pinba.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pynba._cli", "collect", "--listen", "127.0.0.1:0", "--db",
         str(db), "--interval", "0.5", "--duration", "3", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()
    address = line.split("listening on ")[1].split(",")[0].strip()
    t = UdpTransport(address)
    for i in range(10):
        t.send(req("/cli", 0.01 * i, timers=[PinbaTimer({"group": "g"}, 0.001)]))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    last = json.loads(out.strip().splitlines()[-1])
    assert last["by_script"][0]["script_name"] == "/cli"
    assert last["by_script"][0]["req_count"] == 10
    report = subprocess.run(
        [sys.executable, "-m", "pynba._cli", "report", "--db", str(db), "--json"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)[0]["req_count"] == 10
    timers = subprocess.run(
        [sys.executable, "-m", "pynba._cli", "report", "--db", str(db), "--by", "timer:group"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert timers.returncode == 0 and "tag_info_group" in timers.stdout


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["report", "--db", str(tmp_path / "missing.db")]) == 2
    assert "no database" in capsys.readouterr().err
    busy = Collector("127.0.0.1:0").start()
    try:
        assert cli(["collect", "--listen", busy.address_text, "--duration", "0.1"]) == 2
        assert "in use" in capsys.readouterr().err
    finally:
        busy.stop()
    with pytest.raises(SystemExit):
        cli(["collect", "--window", "-1"])


@pytest.mark.slow
def test_cli_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["demo", "--requests", "60"]) == 0
    out = capsys.readouterr().out
    assert "requests by script" in out
    assert "/product/<id>" in out
    assert "db::select" in out
    assert "invalid_packets=0" in out


@pytest.mark.slow
def test_ctrl_c_prints_a_final_report(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pynba._cli", "collect", "--listen", "127.0.0.1:0",
         "--interval", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    address = proc.stderr.readline().split("listening on ")[1].strip()
    UdpTransport(address).send(req("/before-ctrl-c", 0.1))
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "final report" in out
    assert "/before-ctrl-c" in out


def test_ipv6_on_request() -> None:
    try:
        c = Collector("[::1]:0").start()
    except CollectorError:
        pytest.skip("no IPv6 loopback here")
    try:
        UdpTransport(c.address_text).send(req("/v6", 0.1))
        wait_for(c, 1)
        assert c.request_report(("script_name",))[0]["script_name"] == "/v6"
    finally:
        c.stop()


@pytest.mark.expect_pynba_errors  # the truncated copy is logged
def test_a_huge_dictionary_is_fine() -> None:
    c = Collector("127.0.0.1:0")
    big = req(
        "/big", 0.1, timers=[PinbaTimer({"group": f"g{i}", "n": str(i)}) for i in range(3000)]
    )
    data = encode(big)
    assert len(data) > 30000
    c.handle([data, data[: len(data) // 2]])
    assert c.aggregator.requests_total == 1
    assert sum(c.aggregator.invalid.values()) == 1
    assert len(c.timer_report(("group",))) == 3000


@pytest.mark.slow
def test_memory_stays_bounded_with_100000_distinct_script_names() -> None:
    # Documented: about 0.7 KB per request kept (with one timer); reports keep max_keys rows.
    c = Collector("127.0.0.1:0", max_records=100_000, max_keys=1000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batch = []
    for i in range(110_000):
        batch.append(encode(req(f"/script/{i}", 0.01, timers=[PinbaTimer({"group": "db"}, 0.001)])))
        if len(batch) == 512:
            c.handle(batch)
            batch = []
    c.handle(batch)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 150, grown_mb
    assert c.status()["evicted_records"] == 10_000
    rows = c.request_report(("script_name",))
    assert len(rows) == 1000
    assert sum(r["req_count"] for r in rows) == 100_000
    assert any(r["script_name"] == "<other>" for r in rows)
