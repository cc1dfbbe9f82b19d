"""A bounded coverage-guided fuzzing session of the collector (atheris, where it installs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).parent / "fuzz" / "fuzz_collector.py"


def test_collector_survives_coverage_guided_fuzzing(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris does not install here (it is optional)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    proc = subprocess.run(
        [sys.executable, str(HARNESS), str(corpus), "-runs=30000", "-max_len=512", "-seed=1"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done 30000 runs" in proc.stderr
