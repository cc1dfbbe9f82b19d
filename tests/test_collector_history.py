"""The collector's history in SQLite: minutes, hours, restarts, size; on a clock the tests move."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pynba_exporter import PinbaRequest, PinbaTimer
from pynba_exporter.collector import Collector, SqliteStore
from pynba_exporter.collector._archive import (
    Archive,
    Figures,
    decode_cells,
    encode_cells,
    history_percentile,
)
from pynba_exporter.collector._history import cell_of
from pynba_exporter.collector._percentile import percentile
from pynba_exporter.collector._record import Record
from pynba_exporter.wire import decode, encode

T0 = 1_800_000_000.0  # on the hour (and the minute)


def req(script: str, time_: float, status: int = 200, timer: float = 0.01) -> bytes:
    return encode(PinbaRequest(
        hostname="web1", server_name="shop", script_name=script, request_time=time_,
        status=status, timers=[PinbaTimer({"group": "db::select", "server": "db1"}, timer, 2)],
    ))  # fmt: skip


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run(path: str, clock: Clock, feed: Callable[[Collector], None], **kw: Any) -> SqliteStore:
    """A collector on ``path`` fed by ``feed``, its store closed (everything written)."""
    c = Collector("127.0.0.1:0", clock=clock, window=900)
    store = c.store = SqliteStore(path, c.aggregator, **kw)
    try:
        feed(c)
    finally:
        store.close()
    return store


def rows(
    path: str, table: str = "history_minute", dim: str = "script"
) -> dict[Any, tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
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
        assert history_percentile(cells, p) == pytest.approx(percentile(times, p), rel=0.011)
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
        assert store.kept["minutes"] == {"count": 60, "first": T0, "last": T0 + 3540}
        assert store.kept["raw_requests"] == 15 * 60  # the last 900 s of raw rows
        clock.t = T0 + 3540 + 30  # a late packet of the previous run's last minute
        c.handle([req("/a", 0.1)])
    finally:
        store.close()
    by_script = rows(path)
    assert len(by_script) == 60
    assert sum(r[0] for r in by_script.values()) == 3601
    assert by_script[(T0 + 3540, "/a")][0] == 61  # merged with what the file held
    with sqlite3.connect(path) as db:
        # the first rebuild kept the raw rows of the previous run that are still in the window
        (raw,) = db.execute("SELECT count(*) FROM request").fetchone()
    assert raw == 15 * 60 + 1

    clock.t = T0 + 3600 + 1000  # they age out of the window: gone at the next rebuild
    run(path, clock, lambda c: None)
    with sqlite3.connect(path) as db:
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
    exact = {p: history_percentile(decode_cells(b""), p) for p in (50,)}
    assert exact == {50: None}

    # A week and an hour later: the first hour is past the minute retention, the second not.
    clock.t = T0 + 7 * 86400 + 3600 + 1
    run(path, clock, lambda c: None)
    assert set(rows(path)) == {(T0 + 3600 + 60 * i, "/a") for i in range(3)}
    hours = rows(path, "history_hour")
    assert list(hours) == [(T0, "/a")]
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
        assert history_percentile(merged, p) == pytest.approx(exact_value, rel=0.011)

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
