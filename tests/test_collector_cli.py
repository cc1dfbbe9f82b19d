"""The ``pynba`` command as a new user meets it: ``--version``, help for every option, bad
numbers refused with the subcommand's usage, quiet when nothing changed, units in every table
header, a closed pipe ends quietly, messages that say what is wrong with a path."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from collector_packets import CollectProcess, raw_packet

from pynba import __version__
from pynba._cli import _parser
from pynba._cli import main as cli
from pynba_exporter.collector import Collector, SqliteStore, reports_text


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pynba._cli", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"pynba {__version__}"


def test_every_option_of_every_subcommand_has_help() -> None:
    parser = _parser()
    subparsers = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )  # fmt: skip
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.option_strings or action.dest)


@pytest.mark.parametrize(
    ("args", "wrong"),
    [
        (["collect", "--duration", "-5"], "--duration: must be 0 or more"),
        (["collect", "--window", "0"], "--window: must be more than 0"),
        (["collect", "--interval", "-1"], "--interval: must be more than 0"),
        (["collect", "--interval", "nan"], "--interval: not a finite number"),
        (["collect", "--window", "soon"], "--window: not a number"),
        (["report", "--db", "x.db", "--top", "0"], "--top: must be 1 or more"),
        (["report", "--db", "x.db", "--top", "-3"], "--top: must be 1 or more"),
        (["demo", "--requests", "-5"], "--requests: must be 1 or more"),
        (["demo", "--requests", "0"], "--requests: must be 1 or more"),
    ],
)
def test_bad_numbers_are_refused_with_the_subcommands_usage(
    args: list[str], wrong: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: pynba {args[0]} "), err
    assert wrong in err, err


def test_an_idle_collector_prints_only_when_something_changed() -> None:
    c = CollectProcess("--interval", "0.2")
    try:
        time.sleep(1.5)  # 7 intervals without a packet: nothing printed
        c.send([raw_packet("/one")])
        time.sleep(1.5)  # one report for the packet, then nothing again
        out, err = c.stop()
    finally:
        c.kill()
    assert c.proc.returncode == 0, err
    reports = out.count("requests by script")
    assert reports == 2, out  # the packet's, and the final report
    assert out.index("/one") < out.index("final report")


def test_every_table_header_carries_units(tmp_path: Path) -> None:
    c = Collector("127.0.0.1:0")
    c.handle([raw_packet("/u", [(2, 0.01, [("group", "db")])])])
    text = reports_text(c, [("group",)])
    for header in ("req_time_total (s)", "req_per_sec (/s)", "req_time_percent (%)",
                   "req_time_median (s)", "req_time_p95 (s)", "traffic_total (KB)",
                   "timer_value (s)", "hit_per_sec (/s)", "timer_p99 (s)"):  # fmt: skip
        assert header in text, header
    assert "time_total=" in text and " s," in text.split("info: ")[1]
    db = tmp_path / "p.db"
    c.store = SqliteStore(str(db), c.aggregator)
    c.handle([raw_packet("/u")])
    c.stop()
    done = run("report", "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert "req_time_total (s)" in done.stdout and "traffic_per_sec (KB/s)" in done.stdout


def test_a_closed_pipe_ends_quietly_with_exit_0(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    c = Collector("127.0.0.1:0")
    c.store = SqliteStore(str(db), c.aggregator)
    c.handle([raw_packet(f"/script/{i:05d}" + "x" * 100) for i in range(2000)])
    c.stop()
    # More than a pipe holds (64 KB): the writer meets the closed pipe.
    for args in (["--top", "2000"], ["--json"]):
        done = subprocess.run(
            f"{sys.executable} -m pynba._cli report --db {db} {' '.join(args)} | head -1;"
            " exit ${PIPESTATUS[0]}",
            shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stderr == "", done.stderr
        assert len(done.stdout.splitlines()) == 1


def test_missing_and_unwritable_paths_get_their_own_message(tmp_path: Path) -> None:
    done = run("collect", "--db", str(tmp_path / "nowhere" / "p.db"), "--duration", "0.1",
               "--listen", "127.0.0.1:0")  # fmt: skip
    assert done.returncode == 2
    assert "directory" in done.stderr and "does not exist" in done.stderr, done.stderr
    assert "read-only" not in done.stderr
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        done = run("collect", "--db", str(ro / "p.db"), "--duration", "0.1",
                   "--listen", "127.0.0.1:0")  # fmt: skip
        assert done.returncode == 2 and "read-only" in done.stderr, done.stderr
    done = run("report", "--db", str(tmp_path / "nowhere" / "p.db"))
    assert done.returncode == 2 and "no database" in done.stderr
