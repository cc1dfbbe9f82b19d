"""A bounded coverage-guided fuzzing session of the collector (atheris, where it installs).

It starts from the seed corpus of real packets (tests/fuzz/corpus), mutates inputs up to the
largest datagram, and runs for ``PYNBA_FUZZ_SECONDS`` (20 by default; CI keeps the default,
longer sessions run the harness directly). The session must end clean, and must have reached
valid packets and large inputs: a session that only ever saw garbage proves little.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).parent / "fuzz"
HARNESS = FUZZ / "fuzz_collector.py"
SEEDS = FUZZ / "corpus"


def test_the_seed_corpus_holds_real_packets_ours_and_the_reference_clients() -> None:
    from pynba_exporter import decode  # noqa: PLC0415

    names = sorted(p.name for p in SEEDS.iterdir())
    assert any(n.startswith("ours-") for n in names)
    assert any(n.startswith("php-") for n in names)
    for p in SEEDS.iterdir():
        decode(p.read_bytes())  # every seed is a valid packet


def test_collector_survives_coverage_guided_fuzzing(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris does not install here (it is optional)")
    seconds = int(os.environ.get("PYNBA_FUZZ_SECONDS", "20"))
    work = tmp_path / "corpus"
    shutil.copytree(SEEDS, work)
    proc = subprocess.run(
        [sys.executable, str(HARNESS), str(work), f"-max_total_time={seconds}",
         "-max_len=65507", "-len_control=20", "-timeout=30", "-rss_limit_mb=2048", "-seed=1",
         "-print_final_stats=1"],
        capture_output=True, text=True, timeout=seconds + 300, check=False, errors="replace",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done" in proc.stderr, proc.stderr[-3000:]
    lines = re.findall(r"pynba-fuzz: (.*)", proc.stderr)
    assert lines, proc.stderr[-3000:]
    stats = {k: int(v) for k, v in (kv.split("=") for kv in lines[-1].split())}
    assert stats["valid"] > 100, stats  # mutations of real packets, still valid
    assert stats["invalid"] > 100, stats
    assert stats["largest"] > 7000, stats  # the seeds' sizes and beyond, not 58 bytes
    assert stats["largest_valid"] > 7000, stats
    assert stats["reports"] > 0, stats
