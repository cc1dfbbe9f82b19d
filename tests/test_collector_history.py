"""The collector's history in SQLite: minutes, hours, restarts, size; on a clock the tests move."""

from __future__ import annotations

import contextlib
import json
import random
import re
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from collector_packets import CollectProcess
from web_helpers import Clock

from pynba._cli import main as cli
from pynba_exporter import PinbaRequest, PinbaTimer
from pynba_exporter.collector import Collector, SqliteStore, WebServer
from pynba_exporter.collector._archive import (
    SCHEMA,
    Archive,
    Figures,
    decode_cells,
    encode_cells,
)
from pynba_exporter.collector._archive_read import plan, series, totals
from pynba_exporter.collector._history import cell_of, cells_percentile
from pynba_exporter.collector._percentile import percentile
from pynba_exporter.collector._record import Record
from pynba_exporter.collector._store import APPLICATION_ID
from pynba_exporter.wire import decode, encode

T0 = 1_800_000_000.0  # on the hour (and the minute)


def req(script: str, time_: float, status: int = 200, timer: float = 0.01) -> bytes:
    return encode(PinbaRequest(
        hostname="web1", server_name="shop", script_name=script, request_time=time_,
        status=status, timers=[PinbaTimer({"group": "db::select", "server": "db1"}, timer, 2)],
    ))  # fmt: skip


def run(path: str, clock: Clock, feed: Callable[[Collector], None], **kw: Any) -> SqliteStore:
    """A collector on ``path`` fed by ``feed``, its store closed (everything written)."""
    c = Collector("127.0.0.1:0", clock=clock, window=900)
    store = c.store = SqliteStore(path, c.aggregator, **kw)
    try:
        feed(c)
    finally:
        store.close()
    return store


_OPEN: list[sqlite3.Connection] = []


def _connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
    """A connection the test may leave open: closed after it (Python 3.13 warns about one left
    to the garbage collector)."""
    db: sqlite3.Connection = sqlite3.connect(*args, **kwargs)
    _OPEN.append(db)
    return db


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def _db(path: str | Path) -> contextlib.closing[sqlite3.Connection]:
    """A connection closed at the end of the with block (sqlite3's own context manager only
    commits, and Python 3.13 warns about a connection left to the garbage collector)."""
    return contextlib.closing(sqlite3.connect(path))


def rows(
    path: str, table: str = "history_minute", dim: str = "script"
) -> dict[Any, tuple[Any, ...]]:
    with _db(path) as db:
        return {
            (r[0], r[1]): r[2:]
            for r in db.execute(
                f"SELECT start, key, req_count, errors, hit_count, req_time_us, hist FROM {table}"
                " WHERE dim = ?", (dim,),
            )
        }  # fmt: skip


def test_minute_rows_per_script_status_and_timer_group(tmp_path: Path) -> None:
    path = str(tmp_path / "p.db")
    clock = Clock(T0 + 5)
    times = [0.001 * (i + 1) for i in range(100)]

    def feed(c: Collector) -> None:
        c.handle([req("/a", t) for t in times])
        clock.t += 60
        c.handle([req("/b", 0.2, status=503) for _ in range(4)])

    run(path, clock, feed)
    by_script = rows(path)
    assert set(by_script) == {(T0, "/a"), (T0 + 60, "/b")}
    count, errors, hits, time_us, hist = by_script[(T0, "/a")]
    assert (count, errors, hits) == (100, 0, 0)
    assert time_us == pytest.approx(sum(times) * 1e6, abs=100)  # float32 on the wire
    cells = decode_cells(hist)
    assert sum(cells.values()) == 100
    for p in (50, 95, 99):  # within the documented 1 % of the exact nearest rank
        assert cells_percentile(cells, p) == pytest.approx(percentile(times, p), rel=0.011)
    assert by_script[(T0 + 60, "/b")][:3] == (4, 4, 0)
    assert rows(path, dim="status")[(T0 + 60, "503")][:2] == (4, 4)
    assert rows(path, dim="total")[(T0, "")][0] == 100
    timers = rows(path, dim="timer:group,server")
    assert timers[(T0, '["db::select", "db1"]')][:3] == (100, 0, 200)
    # per-hit values (0.01 s / 2 hits) weighted by hits
    assert decode_cells(timers[(T0, '["db::select", "db1"]')][4]) == {cell_of(0.005): 200}


def test_a_restart_keeps_the_history_and_the_window(tmp_path: Path) -> None:
    path = str(tmp_path / "p.db")
    clock = Clock(T0)

    def first(c: Collector) -> None:
        for minute in range(60):  # a whole hour, a request a second
            clock.t = T0 + 60 * minute
            c.handle([req("/a", 0.1) for _ in range(60)])

    run(path, clock, first)
    clock.t = T0 + 3600  # restarted a minute after the last batch, on the same file
    c = Collector("127.0.0.1:0", clock=clock, window=900)
    store = c.store = SqliteStore(path, c.aggregator)
    try:
        assert store.kept["minutes"] == {"first": T0, "last": T0 + 3540}
        assert store.kept["hours"] == {"first": T0, "last": T0}
        with _db(path) as db:  # the estimate saved at stop is the rows' bytes
            (size,) = db.execute(
                "SELECT sum(48 + length(dim) + length(key) + length(hist)) FROM"
                " (SELECT * FROM history_minute UNION ALL SELECT * FROM history_hour)"
            ).fetchone()
        assert store.kept["bytes"] == store.archive.bytes == size
        assert store.kept["raw_requests"] == 15 * 60  # the last 900 s of raw rows
        clock.t = T0 + 3540 + 30  # a late packet of the previous run's last minute
        c.handle([req("/a", 0.1)])
    finally:
        store.close()
    by_script = rows(path)
    assert len(by_script) == 60
    assert sum(r[0] for r in by_script.values()) == 3601
    assert by_script[(T0 + 3540, "/a")][0] == 61  # merged with what the file held
    with _db(path) as db:
        # the first rebuild kept the raw rows of the previous run that are still in the window
        (raw,) = db.execute("SELECT count(*) FROM request").fetchone()
    assert raw == 15 * 60 + 1

    clock.t = T0 + 3600 + 1000  # they age out of the window: gone at the next rebuild
    run(path, clock, lambda c: None)
    with _db(path) as db:
        assert db.execute("SELECT count(*) FROM request").fetchone() == (0,)
    assert sum(r[0] for r in rows(path).values()) == 3601  # the history stays


def test_minutes_roll_up_into_hours_after_retention(tmp_path: Path) -> None:
    path = str(tmp_path / "p.db")
    clock = Clock(T0)
    rng = random.Random(7)
    times = [rng.lognormvariate(-3, 1) for _ in range(600)]

    def feed(c: Collector) -> None:
        for i, t in enumerate(times):  # ten minutes of the first hour, three of the next
            clock.t = T0 + i
            c.handle([req("/a", t)])
        for i in range(3):
            clock.t = T0 + 3600 + 60 * i
            c.handle([req("/a", 0.05)])

    run(path, clock, feed)
    minutes = rows(path)
    assert len(minutes) == 13
    exact = {p: cells_percentile(decode_cells(b""), p) for p in (50,)}
    assert exact == {50: None}

    # A week and an hour later: the first hour is past the minute retention, the second not.
    clock.t = T0 + 7 * 86400 + 3600 + 1
    run(path, clock, lambda c: None)
    assert set(rows(path)) == {(T0 + 3600 + 60 * i, "/a") for i in range(3)}
    hours = rows(path, "history_hour")
    assert list(hours) == [(T0, "/a"), (T0 + 3600, "/a")]  # hours are written with minutes
    assert hours[(T0 + 3600, "/a")][0] == 3
    count, _, _, time_us, hist = hours[(T0, "/a")]
    assert count == 600
    assert time_us == sum(r[3] for k, r in minutes.items() if k[0] < T0 + 3600)
    merged: dict[int, int] = {}
    for k, r in minutes.items():
        if k[0] < T0 + 3600:
            decode_cells(r[4], merged)
    assert decode_cells(hist) == merged  # histograms add up: no precision lost in an hour
    for p in (50, 95, 99):
        exact_value = percentile(sorted(times), p)
        assert cells_percentile(merged, p) == pytest.approx(exact_value, rel=0.011)

    # Past the hour retention (92 days), hours leave too.
    clock.t = T0 + 93 * 86400
    run(path, clock, lambda c: None)
    assert rows(path, "history_hour") == {}
    assert rows(path) == {}


def test_cells_round_trip_and_damaged_blobs() -> None:
    cells = {0: 1, 1: 300, 5: 2**40, 1279: 7}
    assert decode_cells(encode_cells(cells)) == cells
    assert decode_cells(b"") == {}
    for blob in (b"\xff" * 20, b"\x80", b"\x01", bytes(range(256))):
        decode_cells(blob)  # never raises
    assert Figures.of_row(["x", None, 1.5, 3, 4, 5, "not a blob"]).req_count == 0


def test_keys_per_minute_are_capped(tmp_path: Path) -> None:
    archive = Archive(timer_tags=(), max_keys=10)
    c = Collector("127.0.0.1:0", clock=Clock(T0))
    kept = c.aggregator.add([r for i in range(50) for r in _records(f"/s{i}")], True)
    archive.fold(kept)
    scripts = {k[2] for k in archive._pending if k[1] == "script"}
    assert len(scripts) == 11 and "<other>" in scripts
    assert archive.overflow == 40


def _records(script: str) -> list[Record]:
    return [Record.of(decode(req(script, 0.1)), T0)]


#: The documented size of a week of minutes for 1,000 scripts (docs/collector.md), each with
#: 20 requests a minute of spread times, and 20 timer groups.
WEEK_OF_1000_SCRIPTS = 1200 * 1024 * 1024


def test_a_week_of_minutes_for_1000_scripts_stays_under_the_documented_size(
    tmp_path: Path,
) -> None:
    # Five minutes through the real fold and merge, on a file; the week is 2,016 times that
    # (every minute of a week has the same rows, and the rows' size does not depend on when).
    # The minute table's pages are measured by SQLite's dbstat (the hour rows are written in
    # the same transactions, into their own table).
    path = str(tmp_path / "p.db")
    db = _connect(path, isolation_level=None)
    db.executescript(SCHEMA)
    try:
        before = _table_bytes(db, "history_minute")
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat table to measure a table's pages")
    empty = _bytes(path)
    archive = Archive(timer_tags=(("group",),))
    rng = random.Random(1)
    minutes = 5
    for minute in range(minutes):
        start = T0 + 60 * minute
        # fmt: off
        records = [
            Record(
                start + i % 60, f"web{i % 4}", "shop", f"/app/route/{s:04d}",
                200 + 300 * (i == 0), "https", rng.lognormvariate(-3, 1), 0.01, 0.002, 1000,
                10**6, 10**6, (), (((("group", f"db::query{s % 20}"),), 0.002, 2, 0.0, 0.0),),
            )
            for s in range(1000)
            for i in range(20)
        ]
        # fmt: on
        archive.fold(records)
        db.execute("BEGIN")
        archive.flush(db)
        db.execute("COMMIT")
        archive.flushed(start)
    grown = _table_bytes(db, "history_minute") - before
    (rows,) = db.execute("SELECT count(*) FROM history_minute").fetchone()
    db.close()
    assert rows == minutes * (1000 + 4 + 1 + 2 + 1 + 20)  # scripts, hosts, server, statuses...
    week = grown * (7 * 1440 // minutes)
    print(f"{grown / rows:.0f} bytes a row, a week of 1,000 scripts: {week / 2**20:.0f} MiB")
    assert week < WEEK_OF_1000_SCRIPTS
    # The running estimate the byte budget is enforced on is the file's growth, within 20 %.
    assert 0.8 < archive.bytes / (_bytes(path) - empty) < 1.2, (archive.bytes, _bytes(path))


def _table_bytes(db: sqlite3.Connection, table: str) -> int:
    (size,) = db.execute("SELECT sum(pgsize) FROM dbstat WHERE name = ?", (table,)).fetchone()
    return int(size)


def _bytes(path: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(
            db.execute("PRAGMA page_count").fetchone()[0]
            * db.execute("PRAGMA page_size").fetchone()[0]
        )


def _history_file(path: str, clock: Clock) -> None:
    """An hour of /a (10 requests a minute at 0.1 s, one 503 a minute) and /b (2 at 0.5 s),
    its timers in group db::select, then the collector stopped."""

    def feed(c: Collector) -> None:
        for minute in range(60):
            clock.t = T0 + 60 * minute
            c.handle([req("/a", 0.1) for _ in range(9)] + [req("/a", 0.1, status=503)])
            c.handle([req("/b", 0.5) for _ in range(2)])

    run(path, clock, feed)


def test_pynba_report_since_and_between_read_the_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "p.db")
    clock = Clock()
    _history_file(path, clock)
    monkeypatch.setattr(time, "time", lambda: T0 + 3600)
    assert cli(["report", "--db", path, "--since", "2h", "--json"]) == 0
    rows = {r["script_name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["/a"]["req_count"] == 600 and rows["/a"]["errors"] == 60
    assert rows["/b"]["req_count"] == 120
    assert rows["/a"]["req_time_total"] == pytest.approx(60.0, rel=1e-6)
    assert rows["/b"]["req_time_median"] == pytest.approx(0.5, rel=0.01)
    assert rows["/a"]["req_time_percent"] == pytest.approx(50.0, rel=1e-6)

    assert cli(["report", "--db", path, "--since", "10m", "--by", "status", "--json"]) == 0
    status = {r["status"]: r["req_count"] for r in json.loads(capsys.readouterr().out)}
    assert status == {"200": 9 * 10 + 2 * 10, "503": 10}  # the last ten minutes only

    start = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(T0 + 600))
    end = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(T0 + 1200))
    assert cli(["report", "--db", path, "--between", start, end, "--by", "timer:group"]) == 0
    text = capsys.readouterr().out
    assert "history by timer:group" in text and "db::select" in text
    assert "timer_median (s)" in text
    assert re.search(r"db::select\s+120\s+240\s", text)  # ten minutes of 12 requests

    for argv, message in [
        (["--since=-2h"], "more than 0"),
        (["--since", "0"], "more than 0"),
        (["--since", "2x"], "not a duration"),
        (["--between", "tomorrow", "2026-01-01"], "not a time"),
        (["--since", "1h", "--between", "1", "2"], "not allowed with"),
        (["--between", "0", "1e300"], "between 1970 and 9999"),
        (["--between", "0001-01-01", "2026-01-01"], "between 1970 and 9999"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            cli(["report", "--db", path, *argv])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    assert cli(["report", "--db", path, "--since", "1e300", "--json"]) == 0  # all of it
    assert sum(r["req_count"] for r in json.loads(capsys.readouterr().out)) == 720
    assert cli(["report", "--db", path, "--between", "2000", "1000"]) == 2
    assert "START must come before END" in capsys.readouterr().err
    assert cli(["report", "--db", path, "--since", "1h", "--by", "schema"]) == 2
    assert "not kept in the history" in capsys.readouterr().err
    old = tmp_path / "old.db"  # a file of the collector from before the history
    with _db(old) as db:
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.execute("CREATE TABLE info (req_count)")
    assert cli(["report", "--db", str(old), "--since", "1h"]) == 2
    assert "no history in" in capsys.readouterr().err


@pytest.mark.slow  # a web server
def test_api_history_after_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "p.db")
    clock = Clock()
    _history_file(path, clock)
    clock.t = T0 + 3600 + 5  # restarted: the page's API serves the previous hour
    c = Collector("127.0.0.1:0", clock=clock)
    c.store = SqliteStore(path, c.aggregator)
    web = WebServer(c, "127.0.0.1:0").start()
    try:

        def get(query: str) -> tuple[int, Any]:
            url = web.url + "api/history" + query
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                with exc:
                    return exc.code, json.loads(exc.read())

        status, answer = get("?by=script&since=3600")
        assert status == 200
        assert [(r["script_name"], r["req_count"]) for r in answer["rows"]] == [
            ("/a", 600), ("/b", 120),
        ]  # fmt: skip
        assert len(answer["series"]) == 60  # the total, minute by minute
        assert answer["series"][0] == {
            "start": T0, "seconds": 60, "requests": 12, "req_per_sec": 0.2, "errors": 1,
            "error_rate": 1 / 12, "time_total": pytest.approx(2.0), "ru_utime": 0.0,
            "ru_stime": 0.0, "p50": pytest.approx(0.1, rel=0.01),
            "p95": pytest.approx(0.5, rel=0.01), "p99": pytest.approx(0.5, rel=0.01),
        }  # fmt: skip
        status, answer = get(f"?by=script&key=/b&from={T0:.0f}&to={T0 + 120:.0f}")
        assert [(p["start"], p["requests"]) for p in answer["series"]] == [
            (T0, 2), (T0 + 60, 2),
        ]  # fmt: skip
        status, answer = get('?by=timer:group&key=["db::select"]&since=600')
        assert status == 200 and sum(p["hit_count"] for p in answer["series"]) == 240
        for query in ("?by=nothing", "?since=x", "?from=10&to=5", "?since=nan"):
            status, answer = get(query)
            assert status == 400 and answer["error"], query
    finally:
        web.stop()
        c.store.close()
    bare = WebServer(Collector("127.0.0.1:0"), "127.0.0.1:0").start()
    try:
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(bare.url + "api/history", timeout=10)
        assert error.value.code == 404
        error.value.close()
    finally:
        bare.stop()


def test_the_history_stays_within_its_byte_budget(tmp_path: Path) -> None:
    db = _connect(str(tmp_path / "p.db"), isolation_level=None)
    db.executescript(SCHEMA)
    archive = Archive(timer_tags=(), max_bytes=10**9)
    archive.open(db)
    for hour in range(6):  # six hours of 50 scripts, a request a minute each
        for minute in range(0, 60, 1):
            t = T0 + 3600 * hour + 60 * minute
            records = [_records(f"/s{s}")[0] for s in range(50)]
            for r in records:
                r.timestamp = t
            archive.fold(records)
        db.execute("BEGIN")
        archive.flush(db)
        db.execute("COMMIT")
        archive.flushed(T0 + 3600 * hour + 3599)
    row_bytes = "sum(48 + length(dim) + length(key) + length(hist))"
    (minutes_bytes,) = db.execute(f"SELECT {row_bytes} FROM history_minute").fetchone()
    (hours_bytes,) = db.execute(f"SELECT {row_bytes} FROM history_hour").fetchone()
    assert archive.bytes == minutes_bytes + hours_bytes  # the running estimate is the rows'

    # A budget for the current hour's minutes (a sixth) and half of the six hours' rows: the
    # other minutes must go (they are in their hours already), then the three oldest hours.
    archive.max_bytes = minutes_bytes // 6 + hours_bytes // 2 + 10
    now = T0 + 6 * 3600 - 1  # still in the sixth hour: the retention is far away
    passes = 0
    while passes == 0 or archive.behind:  # an hour of minutes per pass at most
        db.execute("BEGIN")
        archive.flush(db)
        archive.expire(db, now)
        db.execute("COMMIT")
        archive.flushed(now)
        passes += 1
    assert passes == 6  # five hours of minutes, then the hours
    assert archive.bytes <= archive.max_bytes
    # 50 scripts, a host, a server, a status and the total: 54 keys
    assert archive.shed["minutes deleted early"] == 5 * 60 * 54  # all but the current hour
    assert archive.shed["hours deleted early"] == 3 * 54
    minutes = {r[0] // 3600 for r in db.execute("SELECT start FROM history_minute")}
    assert minutes == {(T0 + 5 * 3600) // 3600}
    hours = [r[0] for r in db.execute("SELECT DISTINCT start FROM history_hour ORDER BY start")]
    assert hours == [T0 + 3 * 3600, T0 + 4 * 3600, T0 + 5 * 3600]  # the oldest left
    assert archive.open(db)["bytes"] == archive.bytes  # no saved estimate: read from the rows
    db.execute("BEGIN")
    archive.save(db)
    db.execute("COMMIT")
    db.execute("UPDATE history_state SET value = 12345")
    assert Archive().open(db)["bytes"] == 12345  # saved: the rows are not read again
    db.execute("UPDATE history_state SET value = 'damaged'")
    assert Archive().open(db)["bytes"] == archive.bytes


def _poll(path: str, query: str, want: int) -> None:
    """Wait (bounded) until ``query`` on the file a collector writes gives ``want``."""
    deadline = time.monotonic() + 30
    got = None
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.Error):
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                got = db.execute(query).fetchone()[0]
            finally:
                db.close()
            if got == want:
                return
        time.sleep(0.05)
    raise AssertionError(f"{query}: {got}, not {want}")


_HISTORY_TOTAL = "SELECT sum(req_count) FROM history_minute WHERE dim = 'total'"


@pytest.mark.slow
def test_after_kill_9_the_restart_keeps_rows_and_history_and_says_so(tmp_path: Path) -> None:
    path = str(tmp_path / "p.db")
    first = CollectProcess("--db", path, "--interval", "60")
    first.send([req("/a", 0.1) for _ in range(50)])
    _poll(path, _HISTORY_TOTAL, 50)
    _poll(path, "SELECT count(*) FROM request", 50)
    first.stop(signal.SIGKILL)

    second = CollectProcess("--db", path, "--interval", "60")
    assert second.proc.stderr is not None
    said = second.proc.stderr.readline()
    # (the hours are merged once a minute: killed before, the next start makes them again)
    assert "history kept in the database: minutes from " in said, said
    assert "Pinba's window, the last 900 s: 50 raw requests of it kept" in said, said
    second.send([req("/b", 0.2) for _ in range(10)])
    _poll(path, _HISTORY_TOTAL, 60)
    _poll(path, "SELECT count(*) FROM request", 60)  # the first rebuilds kept the 50
    second.stop()
    with _db(path) as db:
        scripts = dict(db.execute(
            "SELECT key, sum(req_count) FROM history_minute WHERE dim = 'script' GROUP BY key"
        ).fetchall())  # fmt: skip
    assert scripts == {"/a": 50, "/b": 10}
    with _db(path) as db:
        hours = db.execute(
            "SELECT key, sum(req_count) FROM history_hour WHERE dim = 'script' GROUP BY key"
        ).fetchall()
        dirty = db.execute("SELECT * FROM history_state WHERE name = 'hours_dirty'").fetchall()
    assert dict(hours) == {"/a": 50, "/b": 10}  # the killed run's hours made from its minutes
    assert dirty == []  # a clean stop merged the hours


def test_hostile_names_make_bounded_rows_sqlite_can_hold(tmp_path: Path) -> None:
    path = str(tmp_path / "p.db")
    long = "/" + "x" * 60_000
    packets = [
        encode(PinbaRequest(
            hostname="h\udcff", server_name="s", script_name=name, request_time=0.1,
            timers=[PinbaTimer({"group": name}, 0.01)],
        ))
        for name in (long + "1", long + "2", "/caf\u00e9\udcff")
    ]  # fmt: skip
    run(path, Clock(), lambda c: c.handle(packets))
    scripts = rows(path)
    assert {k[1] for k in scripts} == {"/" + "x" * 252 + "...", "/caf\u00e9\ufffd"}
    assert scripts[(T0, "/" + "x" * 252 + "...")][0] == 2  # long names, cut, count together
    assert set(rows(path, dim="host")) == {(T0, "h\ufffd")}
    timers = rows(path, dim="timer:group")
    assert (T0, '["/caf\u00e9\ufffd"]') in timers
    assert max(len(k[1]) for k in timers) < 300


def test_what_the_file_refuses_for_long_is_dropped_and_counted() -> None:
    db = _connect(":memory:", isolation_level=None)  # no history tables: every flush fails
    archive = Archive(timer_tags=())
    archive.fold(_records("/a") * 3)
    with pytest.raises(sqlite3.OperationalError):
        archive.flush(db)
    archive.rolled_back()
    assert archive.pending == 5  # kept for the next try
    assert archive.drop_pending() == 3
    assert archive.pending == 0 and archive.shed["requests lost"] == 3


def test_a_range_reads_whole_hours_from_hours_and_its_edges_from_minutes(tmp_path: Path) -> None:
    path = str(tmp_path / "p.db")
    clock = Clock()

    def feed(c: Collector) -> None:  # three hours, a request at each minute
        for minute in range(180):
            clock.t = T0 + 60 * minute
            c.handle([req("/a", 0.1)])

    run(path, clock, feed)
    db = sqlite3.connect(path)
    h = 3600
    # 00:30 to 02:15: the minutes of 00:30-01:00, the hour of 01:00, the minutes of 02:00-02:15
    assert plan(db, T0 + 1800 + 5, T0 + 2 * h + 900) == [
        ("history_minute", T0 + 1800, T0 + h, 60),
        ("history_hour", T0 + h, T0 + 2 * h, 3600),
        ("history_minute", T0 + 2 * h, T0 + 2 * h + 900, 60),
    ]
    assert totals(db, "script", T0 + 1800 + 5, T0 + 2 * h + 900)["/a"].req_count == 30 + 60 + 15
    assert plan(db, T0 + 600, T0 + 1200) == [("history_minute", T0 + 600, T0 + 1200, 60)]
    db.close()

    clock.t = T0 + 7 * 86400 + h + 1  # the first hour's minutes are past their retention
    run(path, clock, lambda c: None)
    db = _connect(path)
    # 00:30 to 01:30: the first edge's minutes are gone, so its whole hour is read
    assert plan(db, T0 + 1800, T0 + h + 1800) == [
        ("history_hour", T0, T0 + 1, 3600),
        ("history_minute", T0 + h, T0 + h + 1800, 60),
    ]
    assert totals(db, "script", T0 + 1800, T0 + h + 1800)["/a"].req_count == 60 + 30
    points = series(db, "script", "/a", T0, T0 + 3 * h)
    assert [(s, seconds) for s, seconds, _ in points[:2]] == [(T0, 3600), (T0 + h, 60)]
    assert sum(f.req_count for _, _, f in points) == 180
    assert [f.req_count for _, _, f in series(db, "script", "/a", T0, T0 + 3 * h, hours=True)] == [
        60, 60, 60,
    ]  # fmt: skip
    db.close()


def test_hours_lag_the_minutes_until_merged_and_a_start_makes_them_again(tmp_path: Path) -> None:
    db = _connect(str(tmp_path / "p.db"), isolation_level=None)
    db.executescript(SCHEMA)
    archive = Archive(timer_tags=())

    def flush(hours: bool) -> None:
        db.execute("BEGIN")
        archive.flush(db, hours=hours)
        db.execute("COMMIT")
        archive.flushed(T0)

    def hour_count() -> Any:
        return db.execute("SELECT sum(req_count) FROM history_hour WHERE dim = 'total'").fetchone()[
            0
        ]

    archive.fold(_records("/a") * 4)
    flush(hours=False)
    assert hour_count() is None  # in the minutes only, and named as missing from the hours
    assert db.execute("SELECT value FROM history_state WHERE name = 'hours_dirty'").fetchone() == (
        T0,
    )  # fmt: skip
    archive.fold(_records("/a") * 2)
    flush(hours=True)  # what the hours lacked, and the new figures
    assert hour_count() == 6
    archive.fold(_records("/a") * 3)
    flush(hours=False)
    assert hour_count() == 6  # a kill -9 now: the minutes have 9, the hours 6

    restarted = Archive(timer_tags=())
    restarted.open(db)
    db.execute("BEGIN")
    assert restarted.recover(db) == 1
    db.execute("COMMIT")
    assert hour_count() == 9
    assert db.execute("SELECT * FROM history_state WHERE name = 'hours_dirty'").fetchall() == []
    (size,) = db.execute(
        "SELECT sum(48 + length(dim) + length(key) + length(hist)) FROM"
        " (SELECT * FROM history_minute UNION ALL SELECT * FROM history_hour)"
    ).fetchone()
    restarted.flushed(T0)
    assert restarted.bytes == size  # the estimate follows the hours made again
