"""Packets as a hostile or unusual client writes them (not as our encoder would), and a running
``pynba collect`` process to send them to. Shared by the collector's tests."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CollectProcess", "raw_packet", "status_of"]


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _f32(x: float) -> bytes:
    import struct  # noqa: PLC0415

    return struct.pack("<f", x)


def raw_packet(
    script: str | bytes,
    timers: Sequence[tuple[int, float, Sequence[tuple[str, str]]]] = (),
    *,
    request_time: float = 0.1,
    tags: Sequence[tuple[str, str]] = (),
    nested: Sequence[bytes] = (),
) -> bytes:
    """A packet with ``timers`` as (hit_count, value, tag pairs) written as given: repeated tag
    names stay repeated (our encoder would merge them), indexes packed."""
    words: dict[str, int] = {}

    def index(w: str) -> int:
        return words.setdefault(w, len(words))

    tag_names = [index(n) for n, _ in tags]
    tag_values = [index(v) for _, v in tags]
    names = [index(n) for _, _, pairs in timers for n, _ in pairs]
    values = [index(v) for _, _, pairs in timers for _, v in pairs]
    script_bytes = (
        script if isinstance(script, bytes) else script.encode("utf-8", "surrogateescape")
    )
    parts = [
        _field(1, b"web1"), _field(2, b"shop.example"), _field(3, script_bytes),
        b"\x20\x00\x28\x00\x30\x00", b"\x3d" + _f32(request_time), b"\x45" + bytes(4),
        b"\x4d" + bytes(4),
    ]  # fmt: skip
    if timers:
        parts += [
            _field(10, b"".join(_varint(h) for h, _, _ in timers)),
            _field(11, b"".join(_f32(v) for _, v, _ in timers)),
            _field(12, b"".join(_varint(len(p)) for _, _, p in timers)),
            _field(13, b"".join(map(_varint, names))),
            _field(14, b"".join(map(_varint, values))),
        ]
    parts += [_field(15, w.encode("utf-8", "surrogateescape")) for w in words]
    parts += [_field(18, n) for n in nested]
    if tags:
        parts += [_field(20, b"".join(map(_varint, tag_names))),
                  _field(21, b"".join(map(_varint, tag_values)))]  # fmt: skip
    return b"".join(parts)


def _proc_status(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` field in bytes (VmRSS, VmHWM)."""
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert m is not None, text
    return int(m.group(1)) * 1024


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


class CollectProcess:
    """``pynba collect`` in a process of its own, listening on a free port."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", "-m", "pynba._cli", "collect", "--listen",
             "127.0.0.1:0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert "listening on " in line, line + self.proc.stderr.read()
        host, port = line.split("listening on ")[1].split(",")[0].strip().rsplit(":", 1)
        self.address = (host, int(port))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sent = 0

    @property
    def rss(self) -> int:
        return _proc_status(self.proc.pid, "VmRSS")

    @property
    def peak_rss(self) -> int:
        return _proc_status(self.proc.pid, "VmHWM")

    def send(self, packets: Sequence[bytes]) -> None:
        for p in packets:
            self.sock.sendto(p, self.address)
            self.sent += 1

    def settle(self, limit: float = 120.0) -> None:
        """Wait until the process stops using CPU (it has taken in what was sent): used only
        to pace senders, so the kernel's buffer never overflows; no assertion depends on it."""
        deadline = time.monotonic() + limit
        last, still = -1, 0
        while still < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            now = _cpu_ticks(self.proc.pid)
            still = still + 1 if now == last else 0
            last = now

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> tuple[str, str]:
        """Signal it; its output (the final report) once it exited. Raises if it does not
        exit within ``timeout`` (bounded, not timed: a stop takes a second or two)."""
        self.sock.close()
        self.proc.send_signal(sig)
        try:
            return self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler: every thread's stack
            _, err = self.proc.communicate()
            raise AssertionError(f"pynba collect did not stop:\n{err[-5000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def status_of(text: str) -> dict[str, int]:
    """The numbers of the last ``status:`` line of a text report."""
    line = [x for x in text.splitlines() if x.startswith("status: ")][-1]
    return {k: int(float(v)) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}
