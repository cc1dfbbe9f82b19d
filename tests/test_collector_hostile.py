"""The collector on hostile traffic and under an operator's hands (issue 11), finding by finding:

1. names that reach a terminal: escaped in every text output, exact in JSON;
2. memory bounded in bytes: the RSS of a real ``pynba collect`` under a tag bomb and a
   long-URL flood stays under the documented bound; nested requests count; the raw tables
   hold the window, no more;
3. every record that does not reach SQL is counted by reason, the real error logged; a
   database the collector does not own is refused;
4. SIGINT/SIGTERM: what the kernel holds is drained, written and reported, at once;
5. pinba2's semantics: first value of a repeated tag name, hit-weighted timer percentiles,
   percentile columns as asked, ``report --by tag:NAME``, a clear error for a non-SQLite file.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import unicodedata
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from collector_packets import CollectProcess, raw_packet, status_of
from hypothesis import given, settings
from hypothesis import strategies as st

from pynba._cli import main as cli
from pynba_exporter import PinbaRequest, PinbaTimer, encode
from pynba_exporter.collector import Collector, Record, SqliteStore, StoreError, printable
from pynba_exporter.collector._aggregate import percentile

MiB = 1024 * 1024

EVIL = [
    "/\x1b]52;c;ZXZpbA==\x07clip",  # OSC 52: writes the operator's clipboard
    "/\x1b[2Jclear",
    "/\x1b]0;owned\x07title",
    "/cr\rlf\nnul\x00",
    "/bidi\u202etxt.exe",
    "/zero\u200bwidth",
    "/c1\x9bcsi",
]


def _unsafe(text: str) -> list[str]:
    """Characters a terminal acts upon (other than newline) found in ``text``."""
    return [
        c for c in text
        if c != "\n" and (unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs"))
    ]  # fmt: skip


def cli_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pynba._cli", *args],
        capture_output=True, text=True, timeout=60, check=False, errors="surrogateescape",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# 1. terminal injection


def test_printable_escapes_what_a_terminal_acts_upon() -> None:
    for name in EVIL:
        out = printable(name)
        assert not _unsafe(out), (name, out)
    assert printable("/\x1b[2J") == "/\\x1b[2J"
    assert printable("/a\\x1b") == "/a\\\\x1b"  # a forged escape stays distinguishable
    assert printable("/caf\u00e9 \u4e2d") == "/caf\u00e9 \u4e2d"  # printable text untouched
    assert printable("\udcff") == "\\udcff"  # an undecodable byte


@pytest.mark.expect_pynba_errors  # the invalid packet sent last is logged
def test_names_from_packets_never_reach_the_terminal_raw(tmp_path: Path) -> None:
    db = tmp_path / "pinba.db"
    c = CollectProcess("--db", str(db), "--interval", "3600", "--request-tags", "t",
                       "--timer-tags", "group")  # fmt: skip
    try:
        packets = [
            raw_packet(name, [(1, 0.01, [("group", name)])], tags=[("t", name)]) for name in EVIL
        ]
        packets.append(raw_packet(b"/bad-utf8-\xff\xfe\x1b[31m"))
        packets.append(b"\x0a\x1b[2J")  # invalid, truncated: its reason is logged
        c.send(packets)
        out, err = c.stop(signal.SIGINT)
    finally:
        c.kill()
    assert c.proc.returncode == 0, err
    assert "/\\x1b]52;c;ZXZpbA==\\x07clip" in out
    assert "/bidi\\u202etxt.exe" in out
    assert not _unsafe(out), _unsafe(out)
    assert not _unsafe(err), _unsafe(err)
    for by in ("script", "timer:group", "tag:t", "script-status"):
        report = cli_run("report", "--db", str(db), "--by", by)
        assert report.returncode == 0, report.stderr
        assert "\\x1b" in report.stdout, (by, report.stdout)
        assert not _unsafe(report.stdout + report.stderr), (by, report.stdout)
    # JSON stays exact: the names as sent.
    rows = json.loads(cli_run("report", "--db", str(db), "--json").stdout)
    assert {r["script_name"] for r in rows} >= set(EVIL)
    missing = cli_run("report", "--db", str(db), "--by", "tag:\x1b]0;x\x07")
    assert missing.returncode == 2 and not _unsafe(missing.stderr), missing.stderr


@pytest.mark.expect_pynba_errors
def test_log_lines_escape_what_came_from_a_packet(pynba_log: Any) -> None:
    c = Collector("127.0.0.1:0")

    class Evil(Exception):
        def __repr__(self) -> str:
            return "Evil('\x1b]52;c;x\x07')"

    def boom(*_: Any) -> None:
        raise Evil

    c.aggregator.add = boom  # type: ignore[method-assign,assignment]
    with pytest.raises(Evil):  # a failure outside the per-packet guard surfaces
        c.handle([encode(PinbaRequest("h", "s", "/x"))])
    c.handle([b"\x0a\x1b[2J"])  # invalid: its reason is logged, escaped
    assert pynba_log.records
    assert not any(_unsafe(r.getMessage()) for r in pynba_log.records)


# --------------------------------------------------------------------------------------------
# 2. memory bounded in bytes

# The documented bound (docs/collector.md): RSS at start + 1.25 x --max-memory + --max-queue
# (when --db) + 16 MiB of work space.


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="RSS is read from /proc (Linux)"
)


def _bound(start: int, max_memory: int, queue: int = 0) -> float:
    return start + 1.25 * max_memory + queue + 16 * MiB


def _distinct_bomb(i: int) -> bytes:
    # ~56 KB: one timer with 4,000 tags, every name distinct: the worst bytes per byte sent.
    pairs = [(f"{i:04x}{k:04x}", "") for k in range(4000)]
    return raw_packet(f"/bomb{i % 7}", [(1, 0.01, pairs)])


def _repeated_bomb(i: int) -> bytes:
    # ~60 KB: 30,000 pairs over 100 names (the tag bomb): first values are kept.
    words = [f"w{k}" for k in range(100)]
    pairs = [(words[k % 100], words[(k * 7 + i) % 100]) for k in range(30_000)]
    return raw_packet(f"/bomb{i % 7}", [(1, 0.01, pairs)])


@needs_proc
def test_rss_under_a_tag_bomb_stays_under_the_documented_bound() -> None:
    max_memory = 24 * MiB
    c = CollectProcess("--interval", "3600", "--max-memory", "24M")
    try:
        start = c.rss
        for chunk in range(8):  # 320 distinct-name bombs: 18 MB sent, ~300 MB kept naively
            c.send([_distinct_bomb(chunk * 40 + k) for k in range(40)])
            c.settle()
        c.send([_repeated_bomb(k) for k in range(60)])
        c.settle()
        peak = c.peak_rss
        out, err = c.stop()
    finally:
        c.kill()
    assert c.proc.returncode == 0, err
    status = status_of(out)
    assert status["packets_received"] == c.sent
    assert status["requests_total"] == c.sent
    assert status["evicted_records"] > 0  # the budget was reached and held
    assert status["window_bytes"] <= max_memory
    assert peak <= _bound(start, max_memory), (peak / MiB, start / MiB)


@needs_proc
def test_rss_under_a_long_url_flood_stays_under_the_documented_bound(tmp_path: Path) -> None:
    max_memory, queue = 24 * MiB, 8 * MiB
    c = CollectProcess("--interval", "3600", "--max-memory", "24M", "--max-queue", "8M",
                       "--db", str(tmp_path / "flood.db"))  # fmt: skip
    try:
        start = c.rss
        for chunk in range(8):  # 8,000 distinct 8 KB paths: 66 MB sent
            c.send([raw_packet(f"/{chunk}/{k:06d}/" + "a" * 8180) for k in range(1000)])
            c.settle()
        peak = c.peak_rss
        out, err = c.stop()
    finally:
        c.kill()
    assert c.proc.returncode == 0, err
    status = status_of(out)
    assert status["requests_total"] == c.sent
    assert status["evicted_records"] > 0
    assert status["window_bytes"] <= max_memory
    assert peak <= _bound(start, max_memory, queue), (peak / MiB, start / MiB)
    # The raw table holds the window and nothing more: each request of the window is in it,
    # or counted as dropped by the store (8 KB records arrive faster than a writer starved of
    # CPU writes them: its queue, --max-queue, fills and it drops, as documented).
    db = sqlite3.connect(tmp_path / "flood.db")
    (rows,) = db.execute("select count(*) from request").fetchone()
    db.close()
    assert rows <= status["requests_in_window"]
    assert rows + status["store_dropped"] >= status["requests_in_window"]


@needs_proc
def test_rss_under_60_kb_names_with_metrics_and_the_api_scraped_stays_under_the_bound() -> None:
    # Names of 60 KB, all distinct, as script names and timer groups; /metrics and the JSON API
    # read after each chunk. One scrape used to answer every name whole (255 MiB for 8,000).
    max_memory = 24 * MiB
    c = CollectProcess("--interval", "3600", "--max-memory", "24M", "--http", "127.0.0.1:0")
    try:
        assert c.proc.stderr is not None
        url = c.proc.stderr.readline().split("live page at ")[1].strip()
        start = c.rss
        sizes = []
        for chunk in range(6):  # 1,200 names of 60 KB: 72 MB sent
            c.send([
                raw_packet(f"/{chunk}/{k:04d}/" + "n" * 60_000,
                           [(1, 0.001, [("group", f"{chunk}{k:04d}" + "g" * 4000)])])
                for k in range(200)
            ])  # fmt: skip
            c.settle()
            for path in ("metrics", "api/scripts", "api/timers", "api/overview"):
                with urllib.request.urlopen(url + path, timeout=60) as r:
                    sizes.append((path, len(r.read())))
        peak = c.peak_rss
        out, err = c.stop()
    finally:
        c.kill()
    assert c.proc.returncode == 0, err
    status = status_of(out)
    assert status["requests_total"] == c.sent
    assert status["evicted_records"] > 0  # the window's budget was reached
    # Every answer is a few hundred bytes a name, not 60 KB.
    assert max(size for _, size in sizes) < 4 * MiB, sizes
    # The documented bound, with the web server's 16 MiB (answers made and cached); measured
    # 44 MiB over the start here, where a scrape used to write every name whole.
    assert peak <= _bound(start, max_memory) + 16 * MiB, (peak / MiB, start / MiB)


def test_nested_requests_count_against_the_budget() -> None:
    sub = encode(PinbaRequest("h", "s", "/sub", request_time=0.001))
    packet = raw_packet("/outer", nested=[sub] * 500)
    c = Collector("127.0.0.1:0", max_bytes=2 * MiB)
    c.handle([packet] * 10)
    s = c.status()
    assert s["requests_total"] == 10 * 501
    assert s["evicted_records"] > 0
    assert s["window_bytes"] <= 2 * MiB
    assert s["requests_in_window"] < 10 * 501


def test_a_record_larger_than_the_budget_is_refused_and_counted() -> None:
    c = Collector("127.0.0.1:0", max_bytes=64 * 1024, max_dictionary_bytes=0)
    c.handle([_distinct_bomb(0), encode(PinbaRequest("h", "s", "/ok"))])
    s = c.status()
    assert s["evicted_by_reason"] == {"larger than max_bytes": 1}
    assert s["requests_in_window"] == 1


def test_raw_tables_hold_the_window_and_no_more(tmp_path: Path) -> None:
    path = tmp_path / "pinba.db"
    c = Collector("127.0.0.1:0", max_bytes=300_000)
    c.store = SqliteStore(str(path), c.aggregator, reports_interval=0.05, flush_interval=0.02)
    for i in range(20):
        c.handle([encode(PinbaRequest("h", "s", f"/p{i}/{k}", request_time=0.01,
                                      timers=[PinbaTimer({"group": "db"}, 0.001)]))
                  for k in range(100)])  # fmt: skip
    c.stop()
    s = c.status()
    assert s["evicted_records"] > 0
    db = sqlite3.connect(path)
    ids = [r[0] for r in db.execute("select id from request order by id")]
    timers = db.execute("select count(*), min(request_id) from timer").fetchone()
    tags = db.execute("select count(*) from timertag").fetchone()[0]
    db.close()
    assert len(ids) == s["requests_in_window"]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert timers == (len(ids), ids[0])
    assert tags == len(ids)


def _reference(records: list[Record], key: str) -> dict[Any, tuple[int, float, float]]:
    groups: dict[Any, list[float]] = {}
    for r in records:
        groups.setdefault(getattr(r, key), []).append(r.req_time)
    return {k: (len(v), sum(v), percentile(sorted(v), 95)) for k, v in groups.items()}


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(1, 50), st.integers(0, 3)),
                min_size=1, max_size=120))  # fmt: skip
@settings(max_examples=60, deadline=None)
def test_reports_kept_up_to_date_equal_reports_computed_afresh(
    steps: list[tuple[int, int, int]],
) -> None:
    now = [1000.0]
    c = Collector("127.0.0.1:0", window=10, max_bytes=40_000, clock=lambda: now[0])
    for script, ms, advance in steps:
        c.handle([encode(PinbaRequest("h", "s", f"/s{script}", request_time=ms / 1000,
                                      timers=[PinbaTimer({"group": f"g{script % 2}"},
                                                         ms / 2000, script + 1)]))])  # fmt: skip
        now[0] += advance
    records = c.aggregator.records()
    rows = {r["script_name"]: r for r in c.request_report(("script_name",))}
    ref = _reference(records, "script_name")
    assert set(rows) == set(ref)
    for k, (n, total, p95) in ref.items():
        assert rows[k]["req_count"] == n
        assert rows[k]["req_time_total"] == pytest.approx(total, rel=1e-6, abs=1e-9)
        assert rows[k]["req_time_p95"] == p95
    timers = {r["group"]: r for r in c.timer_report(("group",))}
    for g in timers.values():
        assert g["req_count"] == sum(
            1 for r in records if any(dict(t.tags).get("group") == g["group"] for t in r.timers)
        )
    assert c.info()["req_count"] == len(records)
    c.aggregator.clock = lambda: now[0] + 100  # everything leaves
    assert c.request_report(("script_name",)) == []
    assert c.status()["window_bytes"] == 0


@given(st.lists(st.tuples(st.integers(0, 3),
                          st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2),
                                             st.integers(1, 4)), max_size=5),
                          st.integers(0, 3)),
                min_size=1, max_size=80))  # fmt: skip
@settings(max_examples=60, deadline=None)
def test_timer_reports_kept_up_to_date_count_each_request_once_per_group(
    steps: list[tuple[int, list[tuple[int, int, int]], int]],
) -> None:
    # Several timers of one request in one group, requests leaving by age and by the byte
    # budget: each group counts a request once while it stays, and nothing once it left.
    now = [1000.0]
    c = Collector("127.0.0.1:0", window=10, max_bytes=30_000, clock=lambda: now[0])
    for script, timers, advance in steps:
        c.handle([encode(PinbaRequest("h", "s", f"/s{script}", request_time=0.01, timers=[
            PinbaTimer({"group": f"g{g}", "server": f"db{d}"}, hits / 1000, hits)
            for g, d, hits in timers
        ]))])  # fmt: skip
        now[0] += advance
    records = c.aggregator.records()
    for names in (("group",), ("group", "server")):
        rows = c.timer_report(names, per_script=True)
        expected: dict[tuple[str, ...], list[int]] = {}
        for r in records:
            counted: set[tuple[str, ...]] = set()
            for t in r.timers:
                tags = dict(t.tags)
                key = (r.script_name, *(tags[n] for n in names))
                row = expected.setdefault(key, [0, 0])
                row[1] += t.hit_count
                if key not in counted:
                    counted.add(key)
                    row[0] += 1
        got = {tuple(r[k] for k in ("script_name", *names)): [r["req_count"], r["hit_count"]]
               for r in rows}  # fmt: skip
        assert got == expected
    c.aggregator.clock = lambda: now[0] + 100  # everything leaves
    assert c.timer_report(("group",)) == []
    assert c.status()["window_bytes"] == 0


# --------------------------------------------------------------------------------------------
# 3. losses counted, foreign databases refused


@pytest.mark.expect_pynba_errors
def test_records_lost_to_a_locked_database_are_counted_and_writing_resumes(
    tmp_path: Path, pynba_log: Any
) -> None:
    path = tmp_path / "pinba.db"
    c = Collector("127.0.0.1:0")
    store = c.store = SqliteStore(str(path), c.aggregator, flush_interval=0.02,
                                  reports_interval=0.05, busy_timeout=0.05)  # fmt: skip
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    for i in range(30):
        c.handle([encode(PinbaRequest("h", "s", f"/locked{i}"))])
    _wait(lambda: store.dropped == 30)  # each batch waited busy_timeout, then was counted
    locker.execute("ROLLBACK")
    locker.close()
    c.handle([encode(PinbaRequest("h", "s", "/after"))])
    c.stop()
    db = sqlite3.connect(path)
    stored = db.execute("select count(*) from request").fetchone()[0]
    status = dict(db.execute("select name, value from status").fetchall())
    db.close()
    assert store.dropped_by.get("database locked", 0) == store.dropped > 0
    assert stored + store.dropped == 31  # every record: stored or counted
    assert status["store_dropped"] == str(store.dropped)
    assert status["store_dropped:database locked"] == str(store.dropped)
    assert any("database is locked" in m for m in pynba_log.problems), pynba_log.problems


def _wait(condition: Any, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.expect_pynba_errors
def test_a_full_database_is_counted_with_the_real_error(tmp_path: Path, pynba_log: Any) -> None:
    path = tmp_path / "pinba.db"
    c = Collector("127.0.0.1:0")
    store = c.store = SqliteStore(str(path), c.aggregator, flush_interval=0.02,
                                  reports_interval=3600, max_db_bytes=200_000)  # fmt: skip
    for i in range(40):
        c.handle([encode(PinbaRequest("h", "s", f"/{i}/" + "x" * 4000)) for _ in range(10)])
    c.stop()
    db = sqlite3.connect(path)
    stored = db.execute("select count(*) from request").fetchone()[0]
    db.close()
    assert store.dropped_by.get("database full", 0) > 0
    assert stored + store.dropped == 400
    messages = " ".join(pynba_log.problems)
    assert "full" in messages
    assert "cannot rollback" not in messages


@pytest.mark.expect_pynba_errors
def test_a_slow_writer_drops_by_bytes_and_counts(tmp_path: Path) -> None:
    c = Collector("127.0.0.1:0")
    store = c.store = SqliteStore(str(tmp_path / "p.db"), c.aggregator,
                                  max_pending_bytes=50_000, flush_interval=0.02)  # fmt: skip
    with store._lock:  # the writer is busy: nothing leaves the queue
        c.handle([encode(PinbaRequest("h", "s", f"/{i}/" + "x" * 1000)) for i in range(200)])
        queued = store._pending
    c.stop()
    assert queued <= 50_000
    assert store.dropped_by.get("queue full", 0) > 0
    db = sqlite3.connect(tmp_path / "p.db")
    stored = db.execute("select count(*) from request").fetchone()[0]
    db.close()
    assert stored + store.dropped == 200


def _foreign(path: Path, script: str) -> None:
    db = sqlite3.connect(path)
    db.executescript(script)
    db.commit()
    db.close()


FOREIGN = {
    "its own tables": "create table users (id integer primary key, name text);"
    "insert into users (name) values ('ada');"
    "create table status (k text, v text); insert into status values ('ok', '1');",
    # Nothing but the collector's table names: still another application's rows.
    "tables named like ours": "create table status (name text, value text);"
    "insert into status values ('ok', '1'); create table info (x); insert into info values (42);"
    "create table tag (id integer primary key, name text); insert into tag (name) values ('t');"
    "create table request (id integer primary key); insert into request values (7);"
    "create table report_by_script_name (script_name text); insert into report_by_script_name"
    " values ('/mine');",
    "another application id": "pragma application_id = 1234; create table t (x);",
    "an id and no table": "pragma application_id = 1234;",
    "a view": "create view v as select 1;",
}


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_a_foreign_database_is_refused_and_left_byte_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    path = tmp_path / "app.db"
    _foreign(path, FOREIGN[case])
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(StoreError, match=r"not a pynba collector database"):
        SqliteStore(str(path), Collector("127.0.0.1:0").aggregator)
    assert cli(["collect", "--listen", "127.0.0.1:0", "--db", str(path), "--duration", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "not a pynba collector database" in err and "Traceback" not in err
    # No id stamped, no WAL switch, no table: the very same bytes.
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert not (tmp_path / "app.db-wal").exists()


@pytest.mark.parametrize(
    "content", [b"not a database at all\n" * 10, b"SQLite format 3\x00" + bytes(200)]
)
def test_a_file_that_is_not_a_database_is_refused_and_left_byte_identical(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(StoreError, match=r"not a pynba collector database"):
        SqliteStore(str(path), Collector("127.0.0.1:0").aggregator)
    assert path.read_bytes() == content


def test_new_empty_and_own_databases_are_taken(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")  # touch FILE, then --db FILE
    SqliteStore(str(empty), Collector("127.0.0.1:0").aggregator).close()
    own = tmp_path / "own.db"
    SqliteStore(str(own), Collector("127.0.0.1:0").aggregator).close()
    SqliteStore(str(own), Collector("127.0.0.1:0").aggregator).close()  # an earlier run's
    for path in (empty, own):
        db = sqlite3.connect(path)
        assert db.execute("pragma application_id").fetchone()[0] == 0x50594E42
        db.close()


def test_missing_and_read_only_paths_say_what_is_wrong(tmp_path: Path) -> None:
    aggregator = Collector("127.0.0.1:0").aggregator
    with pytest.raises(StoreError, match=r"directory .*nowhere does not exist"):
        SqliteStore(str(tmp_path / "nowhere" / "p.db"), aggregator)
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match=r"file is not a directory"):
        SqliteStore(str(tmp_path / "file" / "p.db"), aggregator)
    if os.geteuid() != 0:  # (root may write anywhere)
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(StoreError, match=r"directory .*ro is read-only"):
                SqliteStore(str(ro / "p.db"), aggregator)
        finally:
            ro.chmod(0o700)


@pytest.mark.expect_pynba_errors
def test_writes_into_a_deleted_database_are_counted(tmp_path: Path, pynba_log: Any) -> None:
    path = tmp_path / "p.db"
    c = Collector("127.0.0.1:0")
    store = c.store = SqliteStore(str(path), c.aggregator, flush_interval=0.01)
    c.handle([raw_packet("/a")])
    deadline = time.monotonic() + 10
    while store.dropped == 0 and time.monotonic() < deadline:
        db = sqlite3.connect(path)
        stored = db.execute("select count(*) from request").fetchone()[0]
        db.close()
        if stored:
            break
        time.sleep(0.01)
    path.unlink()
    c.handle([raw_packet(f"/b{i}") for i in range(5)])
    c.stop()
    assert store.dropped_by == {"database deleted": 5}
    assert c.status()["store_dropped"] == 5
    assert any("was deleted or replaced" in m for m in pynba_log.problems)


# --------------------------------------------------------------------------------------------
# 4. stopping


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_drains_the_socket_and_reports_everything_at_once(
    tmp_path: Path, sig: int
) -> None:
    db = tmp_path / "pinba.db"
    c = CollectProcess("--interval", "3600", "--db", str(db), "--json")
    try:
        c.proc.send_signal(signal.SIGSTOP)  # packets pile up in the kernel, unread
        c.send([encode(PinbaRequest("h", "s", f"/q{i % 10}", request_time=0.01))
                for i in range(1000)])  # fmt: skip
        c.proc.send_signal(sig)
        c.proc.send_signal(signal.SIGCONT)
        out, err = c.stop(sig, timeout=30)  # an --interval of an hour: it must not wait it out
    finally:
        c.kill()
    assert c.proc.returncode == 0, err
    final = json.loads(out.strip().splitlines()[-1])
    assert final["status"]["packets_received"] == 1000
    assert final["info"]["req_count"] == 1000
    sql = sqlite3.connect(db)
    assert sql.execute("select count(*) from request").fetchone()[0] == 1000
    assert sql.execute("select value from status where name='requests_total'").fetchone() == (
        "1000",
    )
    sql.close()


def test_the_final_report_comes_within_2_s_of_sigterm_whatever_the_store_holds(
    tmp_path: Path,
) -> None:
    # 20,000 distinct scripts and timer groups: a rebuild of the report tables takes seconds,
    # and the final report used to wait for the writer's last one (10-13 s: past a container
    # runtime's 10 s grace).
    n = 20_000
    db = tmp_path / "pinba.db"
    c = CollectProcess("--interval", "3600", "--db", str(db))
    try:
        packets = [
            encode(PinbaRequest("h", f"srv{i % 50}", f"/script/{i}", request_time=0.01,
                                status=200 + i % 5,
                                timers=[PinbaTimer({"group": f"g{i}", "server": f"s{i % 7}"},
                                                   0.001)]))
            for i in range(n)
        ]  # fmt: skip
        for i in range(0, n, 2000):
            c.send(packets[i : i + 2000])
            time.sleep(0.05)  # paced: the kernel's buffer never overflows
        c.settle()
        assert c.proc.stdout is not None
        c.sock.close()
        signalled = time.monotonic()
        c.proc.send_signal(signal.SIGTERM)
        report_after = None
        out = []
        for line in c.proc.stdout:
            out.append(line)
            if report_after is None and line.startswith("final report"):
                report_after = time.monotonic() - signalled
        c.proc.wait(timeout=30)
        exited_after = time.monotonic() - signalled
        assert c.proc.stderr is not None
        err = c.proc.stderr.read()
    finally:
        c.kill()
        for pipe in (c.proc.stdout, c.proc.stderr):
            if pipe is not None:
                pipe.close()
    assert c.proc.returncode == 0
    assert report_after is not None and report_after < 2.0, report_after
    assert exited_after < 9.0, exited_after  # the writer's time at stop is bounded too
    assert status_of("".join(out))["requests_total"] == n
    # What the writer had not written when its time ran out is counted (and logged), never
    # silently missing.
    sql = sqlite3.connect(db)
    stored = sql.execute("select count(*) from request").fetchone()[0]
    sql.close()
    assert stored == n or "not written at stop" in err, (stored, err[-2000:])


# --------------------------------------------------------------------------------------------
# 5. pinba2's semantics


def test_a_repeated_timer_tag_name_keeps_its_first_value() -> None:
    c = Collector("127.0.0.1:0", timer_tags=[("baz",)])
    c.handle([raw_packet("/r", [(1, 0.5, [("baz", "a"), ("baz", "b")]),
                                (2, 0.25, [("baz", "b"), ("baz", "a")])])])  # fmt: skip
    rows = {r["baz"]: r for r in c.timer_report(("baz",))}
    assert set(rows) == {"a", "b"}
    assert (rows["a"]["hit_count"], rows["b"]["hit_count"]) == (1, 2)
    (record,) = c.aggregator.records()
    assert [t.tags for t in record.timers] == [(("baz", "a"),), (("baz", "b"),)]
    scan = Collector("127.0.0.1:0", timer_tags=[])  # a report computed from the records
    scan.handle([raw_packet("/r", [(1, 0.5, [("baz", "a"), ("baz", "b")])])])
    assert [r["baz"] for r in scan.timer_report(("baz",))] == ["a"]


def test_timer_percentiles_are_weighted_by_hits() -> None:
    # pinba2, same packets: p50 0.15 ms, p95 0.196 ms, p99 9.9 ms (histogram buckets; exact
    # ranks here: 0.2, 0.2, 10 ms). Unweighted, p95 would be 10 ms.
    timers = [PinbaTimer({"group": "g", "n": str(i)}, 0.010, 1) for i in range(10)]
    timers += [PinbaTimer({"group": "g", "n": str(i)}, 0.0018, 9) for i in range(10, 100)]
    for tags in ([("group",)], []):  # kept up to date, and computed from the records
        c = Collector("127.0.0.1:0", timer_tags=tags, percentiles=(50, 95, 99))
        c.handle([encode(PinbaRequest("h", "s", "/w", timers=timers))])
        (row,) = c.timer_report(("group",))
        assert row["hit_count"] == 820
        assert row["timer_median"] == pytest.approx(0.0002, rel=1e-5)
        assert row["timer_p50"] == pytest.approx(0.0002, rel=1e-5)
        assert row["timer_p95"] == pytest.approx(0.0002, rel=1e-5)
        assert row["timer_p99"] == pytest.approx(0.010, rel=1e-5)


def test_percentile_columns_are_the_ones_asked_for_in_text_and_sql(tmp_path: Path) -> None:
    db = tmp_path / "pinba.db"
    c = CollectProcess("--interval", "3600", "--db", str(db), "--percentiles", "90,99.9",
                       "--request-tags", "t")  # fmt: skip
    try:
        c.send([encode(PinbaRequest("h", "s", "/p", request_time=i / 1000, tags={"t": "x"},
                                    timers=[PinbaTimer({"group": "db"}, i / 2000)]))
                for i in range(1, 101)])  # fmt: skip
        out, err = c.stop()
    finally:
        c.kill()
    assert c.proc.returncode == 0, err
    header = next(line for line in out.splitlines() if line.startswith("script_name "))
    assert "req_time_p90" in header and "req_time_p99.9" in header
    assert "p95" not in out
    timer_header = next(line for line in out.splitlines() if line.startswith("group "))
    assert "timer_p90" in timer_header and "timer_p99.9" in timer_header
    sql = sqlite3.connect(db)
    cols = [r[1] for r in sql.execute("pragma table_info(report_by_script_name)")]
    assert "req_time_p90" in cols and "req_time_p99.9" in cols and "req_time_p95" not in cols
    (p90,) = sql.execute('select "req_time_p90" from report_by_script_name').fetchone()
    cols = [r[1] for r in sql.execute("pragma table_info(tag_info_group)")]
    assert "timer_p90" in cols and "timer_p95" not in cols
    sql.close()
    assert p90 == pytest.approx(0.090, rel=1e-5)
    text = cli_run("report", "--db", str(db))
    assert "req_time_p90" in text.stdout and "p95" not in text.stdout


def test_report_by_request_tag(tmp_path: Path) -> None:
    db = tmp_path / "pinba.db"
    c = Collector("127.0.0.1:0", request_tags=[("user",)])
    c.store = SqliteStore(str(db), c.aggregator, request_tags=[("user",)])
    c.handle([encode(PinbaRequest("h", "s", "/u", request_time=0.1,
                                  tags={"user": "guest" if i % 4 else "member"}))
              for i in range(40)])  # fmt: skip
    c.stop()
    out = cli_run("report", "--db", str(db), "--by", "tag:user", "--json")
    assert out.returncode == 0, out.stderr
    assert {r["user"]: r["req_count"] for r in json.loads(out.stdout)} == {
        "guest": 30, "member": 10,
    }  # fmt: skip
    text = cli_run("report", "--db", str(db), "--by", "tag:user")
    assert "report_by_request_tag_user" in text.stdout and "guest" in text.stdout


@pytest.mark.parametrize("content", [b"this is not a database\n" * 100, b"", bytes(range(256))])
def test_report_on_a_file_that_is_not_sqlite_says_so(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    out = cli_run("report", "--db", str(path))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "pynba report:" in out.stderr
    if content:
        assert "not a database pynba collect wrote" in out.stderr


@given(st.lists(st.tuples(st.floats(0, 1e6), st.integers(1, 5)), max_size=80),
       st.sampled_from([3, 7, 1000]))  # fmt: skip
@settings(max_examples=200, deadline=None)
def test_percentiles_in_sorted_runs_equal_a_brute_force_rank(
    items: list[tuple[float, int]], run: int
) -> None:
    from pynba_exporter.collector import _percentile as _aggregate  # noqa: PLC0415

    old = _aggregate.SORT_RUN
    setattr(_aggregate, "SORT_RUN", run)  # noqa: B010 - a Final constant, changed for the test
    try:
        values, weights = [v for v, _ in items], [w for _, w in items]
        ps = (1.0, 50.0, 95.0, 99.9, 100.0)
        expanded = sorted(v for v, w in items for _ in range(w))
        assert _aggregate.percentiles(values, weights, ps) == [percentile(expanded, p) for p in ps]
        plain = sorted(values)
        assert _aggregate.percentiles(values, None, ps) == [percentile(plain, p) for p in ps]
    finally:
        setattr(_aggregate, "SORT_RUN", old)  # noqa: B010


@given(st.lists(st.tuples(st.integers(0, 12), st.integers(1, 50), st.integers(0, 3)),
                min_size=1, max_size=150))  # fmt: skip
@settings(max_examples=60, deadline=None)
def test_keys_past_the_cap_come_and_go_through_other(steps: list[tuple[int, int, int]]) -> None:
    now = [1000.0]
    c = Collector("127.0.0.1:0", window=10, max_bytes=60_000, max_keys=1,
                  request_tags=[("t",)], clock=lambda: now[0])  # fmt: skip
    for script, ms, advance in steps:
        timer = PinbaTimer({"group": f"g{script}"}, 0.001)
        c.handle([encode(PinbaRequest("h", "s", f"/s{script}", request_time=ms / 1000,
                                      tags={"t": str(script % 5)}, timers=[timer]))])  # fmt: skip
        now[0] += advance
        n = len(c.aggregator.records())
        assert sum(r["req_count"] for r in c.request_report(("hostname",))) == n
        assert sum(r["req_count"] for r in c.tag_report(("t",))) == n
        assert sum(r["hit_count"] for r in c.timer_report(("group",))) == n
    c.aggregator.clock = lambda: now[0] + 100
    assert c.status()["window_bytes"] == 0  # every group dropped as its last request left
    assert c.request_report(("script_name",)) == []
    assert c.timer_report(("group",)) == []


def test_overflow_keys_do_not_grow_when_reports_are_read() -> None:
    c = Collector("127.0.0.1:0", max_keys=5, timer_tags=[("group",)])
    c.handle([raw_packet(f"/s{i}", [(1, 0.001, [("group", f"g{i}")])]) for i in range(40)])
    c.request_report(("script_name",))
    c.timer_report(("group",))
    first = c.status()["overflow_keys"]
    assert first > 0  # 40 keys shown in 5 rows: 36 merged into <other>, per report
    for _ in range(5):
        c.request_report(("script_name",))
        c.timer_report(("group",))
        c.request_report(("server_name",))
    assert c.status()["overflow_keys"] == first
