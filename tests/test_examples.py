"""Every example runs as it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import UdpReceiver

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


def test_wsgi_app_demo() -> None:
    proc = run("wsgi_app.py", "--demo")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4
    product = [line for line in lines if "/product/<id>" in line]
    assert len(product) == 2
    assert all(line.startswith("200 ") and "db::select" in line for line in product)
    assert any(line.startswith("500 /checkout") and "http::POST" in line for line in lines)
    # A bare app's 404 still named by its raw path matched nothing: one name for all of them.
    assert any(line.startswith("404 <unmatched>") for line in lines)


def test_worker(receiver: UdpReceiver) -> None:
    proc = run("worker.py", "--jobs", "30", "--pinba", receiver.address)
    assert proc.returncode == 0, proc.stderr
    assert "30 jobs, 30 packets sent, 0 dropped" in proc.stdout
    got = [receiver.request() for _ in range(30)]
    assert [r.status for r in got].count(500) == 3
    assert all(r.script_name == "mailer" for r in got)
    assert all({t.tags["step"] for t in r.timers} == {"fetch", "render"} for r in got)
