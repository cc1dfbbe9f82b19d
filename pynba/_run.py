"""``pynba run``: any command (a cron job, a shell script, a CI step) as one Pinba request.

    pynba run --script nightly-backup --tag env=prod -- /usr/local/bin/backup.sh --full

The request: the command's wall time; the CPU (user, system) and peak memory of the command,
read from ``wait4`` (so the command's own process and every descendant it waited for, not
pynba's); a script name (``--script``, else the command's file name); request tags
(``--tag k=v``); the host and server names (``--hostname``, ``--server-name``, both this
machine's name by default); its exit status as the status:

=====================  ===============================================================
the command            status
=====================  ===============================================================
exits with N           N (0 to 255: 0 is success)
dies of signal S       256 + S (SIGKILL: 265, SIGTERM: 271), never an exit code
cannot be started      127 (not found) or 126 (not executable), as a shell says
=====================  ===============================================================

Sent to ``--server``, else ``$OTEL_EXPORTER_PINBA_ENDPOINT`` / ``$PINBA_SERVER``, else
127.0.0.1:30002, as everywhere in pynba.

The command runs as if pynba were not there: it inherits standard input, output and error (and
every other inherited descriptor), the environment, the signal mask and the ignored signals
(``nohup pynba run ...`` still ignores SIGHUP), and pynba exits with its exit code, or dies of
the signal it died of (without a second core dump), like ``timeout`` or ``env``. SIGINT,
SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to pynba are passed on to the command,
except those the kernel itself sent to the whole foreground process group (Ctrl-C, Ctrl-\\, a
terminal hang-up): the command, in that group too, already got them, and a second SIGINT would
interrupt its own cleanup. Pinba never fails the command: an unreachable or mistyped server,
a bad environment variable, are said on standard error and the command runs all the same.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from pynba._serving import Serving
from pynba_exporter import PinbaRequest, Transport
from pynba_exporter.spans import hostname as this_host

__all__ = ["FORWARDED", "SIGNAL_STATUS", "run", "status_of"]

#: Signals passed on to the command.
FORWARDED: Final = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
#: Status of a command killed by signal S: SIGNAL_STATUS + S (above every exit code).
SIGNAL_STATUS: Final = 256
_NOT_FOUND: Final = 127
_NOT_EXECUTABLE: Final = 126
# siginfo's si_code of a signal the kernel sent itself (Linux): a terminal's ^C, ^\ or hang-up,
# sent to the whole foreground process group.
_SI_KERNEL: Final = 0x80
# ru_maxrss is in kilobytes on Linux, bytes on macOS.
_MAXRSS_UNIT: Final = 1 if sys.platform == "darwin" else 1024
_UINT32: Final = 0xFFFFFFFF
# Python ignores these at start-up; a command must not inherit that (subprocess resets them too).
_RESET: Final = tuple(
    s for s in (getattr(signal, "SIGPIPE", None), getattr(signal, "SIGXFSZ", None)) if s
)


def status_of(wait_status: int) -> int:
    """The Pinba status of a command's wait status (see the module's table)."""
    if os.WIFSIGNALED(wait_status):
        return SIGNAL_STATUS + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def _say(message: str) -> None:
    print(f"pynba run: {message}", file=sys.stderr, flush=True)


def _transport(address: str | None) -> Transport | None:
    """Where the request goes, or None when Pinba is off or the address cannot be used: said
    on standard error, and the command runs unmeasured (never a reason not to run it)."""
    try:
        serving = Serving("command runner", address)
    except (ValueError, OSError) as exc:
        _say(f"not reporting to Pinba, bad --server {address!r}: {exc}")
        return None
    return serving.transport if serving.enabled else None


def _next_signal(watched: Iterable[int]) -> tuple[int, bool]:
    """The next of ``watched`` to arrive (0 after a second without any), and whether the
    kernel sent it to the whole foreground process group, the command included."""
    if hasattr(signal, "sigtimedwait"):
        info = signal.sigtimedwait(watched, 1.0)
        if info is None:
            return 0, False
        return info.si_signo, info.si_code == _SI_KERNEL
    # No siginfo (macOS): a terminal's signals are those of a foreground process group.
    signo = signal.sigwait(watched)
    try:
        foreground = os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        foreground = False
    return signo, foreground and signo in (signal.SIGINT, signal.SIGQUIT)


def _die_of(signo: int) -> None:
    """End this process with the signal the command died of, as ``timeout`` does."""
    # The command already dumped its core if it was to: not a second one of ours.
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if signo not in (signal.SIGKILL, signal.SIGSTOP):  # those cannot be handled anyway
        signal.signal(signo, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signo})
    os.kill(os.getpid(), signo)


def run(
    command: Sequence[str],
    *,
    script_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    address: str | None = None,
    hostname: str | None = None,
    server_name: str | None = None,
) -> int:
    """Run ``command``, report it as one Pinba request, and return the exit code to exit with
    (a command killed by a signal: this process dies of the same signal first)."""
    if not command:
        raise ValueError("no command to run")
    transport = _transport(address)
    watched = {*FORWARDED, signal.SIGCHLD}
    # Blocked before the command starts: a signal arriving at any moment waits for the loop
    # below instead of killing pynba and orphaning the command. The command gets the mask
    # pynba was given.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    started = time.monotonic()
    wait_status: int | None = None
    usage: resource.struct_rusage | None = None
    try:
        pid = os.posix_spawnp(
            command[0], list(command), os.environ, setsigmask=mask, setsigdef=_RESET
        )
    except OSError as exc:
        code = _NOT_FOUND if isinstance(exc, FileNotFoundError) else _NOT_EXECUTABLE
        _say(f"{command[0]}: {exc.strerror or exc}")
    else:
        while True:
            signo, from_terminal = _next_signal(watched)
            if signo and signo != signal.SIGCHLD and not from_terminal:
                with contextlib.suppress(ProcessLookupError):  # just ended: reaped below
                    os.kill(pid, signo)
            done, wait_status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
        code = os.waitstatus_to_exitcode(wait_status)
    elapsed = time.monotonic() - started
    if transport is not None:
        _report(
            transport,
            PinbaRequest(
                hostname or this_host(),
                server_name or this_host(),
                script_name or os.path.basename(command[0]) or command[0],
                request_time=elapsed,
                ru_utime=usage.ru_utime if usage else 0.0,
                ru_stime=usage.ru_stime if usage else 0.0,
                memory_peak=min(usage.ru_maxrss * _MAXRSS_UNIT, _UINT32) if usage else 0,
                memory_footprint=min(usage.ru_maxrss * _MAXRSS_UNIT, _UINT32) if usage else 0,
                status=status_of(wait_status) if wait_status is not None else code,
                tags=dict(tags or {}),
            ),
        )
    if code < 0:
        _die_of(-code)
        return 128 - code  # the signal did not end us (it cannot be delivered to ourselves)
    return code


def _report(transport: Transport, request: PinbaRequest) -> None:
    # The command has run: nothing of Pinba's may change how pynba ends. The transport logs
    # its own failures (to stderr here: the logging module's last resort).
    try:
        transport.send(request)
        transport.close()
    except Exception as exc:
        _say(f"not reported to Pinba: {exc!r}")
