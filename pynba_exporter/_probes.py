"""What the operating system says about the process and the thread: CPU, memory, host name.

Probes only: no model, no configuration. Each costs a system call or two, so callers take them
where a request starts and ends, not per operation unless asked.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time
from typing import Final

__all__ = [
    "RUSAGE_THREAD",
    "CpuSample",
    "cpu_delta",
    "hostname",
    "process_cpu",
    "process_memory",
    "thread_cpu",
]

_perf_counter = time.perf_counter
_getrusage = resource.getrusage
# CPU of the calling thread where the OS can tell (Linux); of the process elsewhere.
RUSAGE_THREAD: Final = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


# A CPU sample: (precise CPU seconds, user seconds, system seconds). The kernel keeps a thread's
# total CPU time precisely (clock_gettime) but splits it into user and system by sampling ticks,
# which for a few milliseconds often reads 0 (seen here: a 2 ms computation measured as 0.00005 s
# of user time). So a duration's CPU is the precise total, split in the proportion getrusage saw.
CpuSample = tuple[float, float, float]
_thread_time = time.thread_time
_process_time = time.process_time


def thread_cpu() -> CpuSample:
    """A CPU sample of the calling thread."""
    ru = _getrusage(RUSAGE_THREAD)
    return _thread_time(), ru.ru_utime, ru.ru_stime


def process_cpu() -> CpuSample:
    """A CPU sample of the whole process."""
    ru = _getrusage(resource.RUSAGE_SELF)
    return _process_time(), ru.ru_utime, ru.ru_stime


def cpu_delta(a: CpuSample, b: CpuSample) -> tuple[float, float]:
    """(user, system) CPU seconds between two samples."""
    total = b[0] - a[0]
    if total <= 0.0:
        return 0.0, 0.0
    user = b[1] - a[1]
    system = b[2] - a[2]
    if system <= 0.0:
        return total, 0.0  # (no tick seen at all: Python's own CPU is user time)
    if user <= 0.0:
        return 0.0, total
    u = total * user / (user + system)
    return u, total - u


# -- memory: peak RSS from getrusage, current RSS from /proc/self/statm (Linux)

_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# ru_maxrss is in kilobytes on Linux, bytes on macOS.
_MAXRSS_UNIT: Final = 1 if sys.platform == "darwin" else 1024
_statm_fd: int | None = None
_statm_open = False
# Memory is a property of the process, not of a request, and changes slowly: under load it is
# read at most every _MEMORY_TTL seconds (two system calls and a parse saved per request).
_MEMORY_TTL: Final = 0.01
_memory_at = -1.0
_memory: tuple[int, int] = (0, 0)


def _forget_memory() -> None:
    # /proc/self is resolved when opened: a forked child must open its own, and measure anew.
    global _statm_fd, _statm_open, _memory_at
    if _statm_fd is not None:
        os.close(_statm_fd)
    _statm_fd, _statm_open, _memory_at = None, False, -1.0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_memory)


def _current_rss() -> int:
    global _statm_fd, _statm_open
    if not _statm_open:
        _statm_open = True
        try:
            _statm_fd = os.open("/proc/self/statm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            _statm_fd = None
    if _statm_fd is None:
        return 0
    try:
        return int(os.pread(_statm_fd, 64, 0).split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def process_memory(now: float | None = None) -> tuple[int, int]:
    """(peak RSS, current RSS) of the process, in bytes; 0 where the OS does not say.
    ``now``: ``time.perf_counter()`` if the caller has just read it."""
    global _memory_at, _memory
    if now is None:
        now = _perf_counter()
    if now - _memory_at > _MEMORY_TTL:
        peak = _getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT
        rss = _current_rss()
        # The kernel updates the high-water mark lazily: it may read below the current
        # footprint, which is impossible and must not be sent.
        _memory = (max(peak, rss), rss)
        _memory_at = now
    return _memory


_HOSTNAME: str | None = None


def hostname() -> str:
    """This machine's host name (looked up once)."""
    global _HOSTNAME
    if _HOSTNAME is None:
        _HOSTNAME = socket.gethostname() or "unknown"
    return _HOSTNAME
