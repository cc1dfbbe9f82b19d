"""``pynba run``: a command as one Pinba request, its input, output, exit code and signals
untouched; each request decoded from the real packet that reached a socket on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Sequence

import pytest
from conftest import UdpReceiver

from pynba.testing import PinbaCapture

PYNBA = [sys.executable, "-m", "pynba._cli"]


def pynba_run(
    *args: str, input: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PYNBA, "run", *args], input=input, capture_output=True, text=True, timeout=60,
        check=False, env=env,
    )  # fmt: skip


def started(args: Sequence[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*PYNBA, "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


# A child that says when its handler is in place, then waits to be signalled.
HANDLER = textwrap.dedent("""
    import signal, sys, time
    def handler(signo, frame):
        print("got", signal.Signals(signo).name, flush=True)
        sys.exit(7)
    signal.signal(signal.SIG{name}, handler)
    print("ready", flush=True)
    time.sleep(30)
""")


def test_a_failing_shell_command(receiver: UdpReceiver) -> None:
    done = pynba_run(
        "--server", receiver.address, "--script", "backup", "--tag", "env=test",
        "--tag", "shard=2", "--", "sh", "-c", "echo out; echo err >&2; exit 3",
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    r = receiver.request()
    assert (r.script_name, r.status, dict(r.tags)) == ("backup", 3, {"env": "test", "shard": "2"})
    assert r.hostname == r.server_name == socket.gethostname()
    assert 0 < r.request_time < 30
    assert receiver.nothing(0.05)


def test_a_busy_command_its_cpu_memory_and_input(receiver: UdpReceiver) -> None:
    busy = textwrap.dedent("""
        import sys, time
        block = bytearray(96 << 20)  # zeroed: resident
        start = time.process_time()
        while time.process_time() - start < 0.3:
            sum(range(100_000))  # user time; the clock itself is a system call
        sys.stdout.write(sys.stdin.read().upper())
    """)
    done = pynba_run(
        "--server", receiver.address, "--hostname", "cron1", "--server-name", "batch",
        sys.executable, "-c", busy, input="hello\n",
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "HELLO\n", "")
    r = receiver.request()
    assert (r.script_name, r.status) == (os.path.basename(sys.executable), 0)
    assert (r.hostname, r.server_name) == ("cron1", "batch")
    assert r.ru_utime > 0.2  # the child's CPU: pynba itself only waits
    assert r.request_time >= r.ru_utime
    assert r.memory_peak > 96 << 20
    assert r.memory_footprint == r.memory_peak


def test_a_command_killed_by_a_signal(receiver: UdpReceiver) -> None:
    done = pynba_run("--server", receiver.address, "--", "sh", "-c", "kill -KILL $$")
    assert done.returncode == -signal.SIGKILL  # pynba died of it too
    assert done.stderr == ""
    r = receiver.request()
    assert (r.script_name, r.status) == ("sh", 256 + signal.SIGKILL)


@pytest.mark.parametrize("name", ["TERM", "INT", "HUP", "USR1"])
def test_signals_sent_to_pynba_reach_the_command(receiver: UdpReceiver, name: str) -> None:
    proc = started(["--server", receiver.address, sys.executable, "-c", HANDLER.format(name=name)])
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(getattr(signal, f"SIG{name}"))
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert (proc.returncode, out, err) == (7, f"got SIG{name}\n", "")
    assert receiver.request().status == 7


def test_a_command_ended_by_a_forwarded_signal_ends_pynba_alike(receiver: UdpReceiver) -> None:
    proc = started(["--server", receiver.address, "--script", "sleeper", "sh", "-c",
                    "echo ready; exec sleep 30"])  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert (proc.returncode, err) == (-signal.SIGTERM, "")
    r = receiver.request()
    assert (r.script_name, r.status) == ("sleeper", 256 + signal.SIGTERM)


def test_ctrl_c_at_a_terminal_reaches_the_command_once(receiver: UdpReceiver) -> None:
    # The terminal sends SIGINT to its whole foreground process group, the command included:
    # passing it on again would interrupt the command's own cleanup.
    counting = textwrap.dedent("""
        import signal, sys, time
        got = []
        signal.signal(signal.SIGINT, lambda *a: got.append(1))
        print("ready", flush=True)
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # a second SIGINT, if any, would come meanwhile
        print("interrupts", len(got), flush=True)
        sys.exit(5)
    """)
    controller, terminal = os.openpty()
    # In a session of its own, the terminal becomes its controlling terminal, and pynba (then
    # the command, in its process group) the terminal's foreground, as in an interactive shell.
    owner = (
        "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    command = [*PYNBA, "run", "--server", receiver.address, sys.executable, "-c", counting]
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", owner, *command[1:]],
            stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True,
        )  # fmt: skip
        os.close(terminal)
        with os.fdopen(controller, "rb", buffering=0) as tty:
            output = b""
            while b"ready" not in output:
                output += tty.read(100)
            os.write(controller, b"\x03")  # Ctrl-C
            assert proc.wait(timeout=30) == 5
            while b"interrupts" not in output:
                output += tty.read(100)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"interrupts 1" in output, output
    assert receiver.request().status == 5


def test_pinba_never_fails_the_command(receiver: UdpReceiver) -> None:
    # A name that does not resolve: said on stderr, the command's output and code unchanged.
    done = pynba_run("--server", "pinba.invalid", "--", "sh", "-c", "echo out; exit 4")
    assert (done.returncode, done.stdout) == (4, "out\n")
    assert "pinba.invalid" in done.stderr
    # A bad address in the environment: the same.
    env = {**os.environ, "PINBA_SERVER": "host:notaport"}
    env.pop("OTEL_EXPORTER_PINBA_ENDPOINT", None)
    done = pynba_run("--", "sh", "-c", "echo out", env=env)
    assert (done.returncode, done.stdout) == (0, "out\n")
    assert "PINBA_SERVER" in done.stderr
    # A command that cannot start: exit code and status as a shell says, and it is reported.
    done = pynba_run("--server", receiver.address, "--", "/no/such/command")
    assert done.returncode == 127
    assert "/no/such/command" in done.stderr
    assert (receiver.request().script_name, 127) == ("command", 127)


def test_the_address_comes_from_the_environment_like_everywhere(pinba: PinbaCapture) -> None:
    assert pynba_run("--script", "from-env", "true").returncode == 0
    assert pinba.request("from-env").status == 0
    pinba.clear()
    off = {**os.environ, "PINBA_ENABLED": "0"}
    assert pynba_run("--script", "off", "true", env=off).returncode == 0
    pinba.assert_nothing(0.3)


def test_usage_errors_run_nothing() -> None:
    done = pynba_run("--tag", "novalue", "--", "sh", "-c", "echo ran")
    assert done.returncode == 2 and done.stdout == ""
    assert "NAME=VALUE" in done.stderr
    done = pynba_run("--")
    assert done.returncode == 2 and "no command" in done.stderr
