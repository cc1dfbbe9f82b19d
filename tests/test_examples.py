"""Every example runs as it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_send_and_decode() -> None:
    proc = run("send_and_decode.py")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "sent 3 requests" in out
    assert "timer  group=db::select,server=db1" in out
    assert "hits 3" in out  # two timers with the same tags merged: 1 + 2 hits
    assert "transport: 3 sent, 0 dropped" in out
