"""Task queues without OpenTelemetry: a real Celery worker and a real RQ worker, each in a
subprocess, take real tasks from a real Redis (Debian's ``redis-server``, started here on a
free port of 127.0.0.1); each request is decoded from the packet that reached the ``pinba``
fixture's socket.

Skipped where ``redis-server`` is missing, except in CI (``CI=true``), where that is a failure:
``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from conftest import PynbaLog
from rq import Queue, Retry, SimpleWorker

import pynba.rq
from pynba.testing import PinbaCapture
from pynba_exporter import MemoryTransport, PinbaRequest
from pynba_exporter.spans import current_request

TESTS = Path(__file__).parent
# The workers import the task modules (tests/apps) the way the test process does.
WORKER_ENV = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
QUEUE = "pynba-tests"
#: Bounds: a worker that does not start or finish in this long fails the test.
TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of its own on 127.0.0.1, nothing written to disk; stopped at the end."""
    server = shutil.which("redis-server")
    if server is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the task queue tests must run in CI: {reason}")
        pytest.skip(reason)
    port = free_port()
    proc = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on 127.0.0.1:{port}")
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def flushed(redis_url: str) -> str:
    """The Redis, emptied: each test starts with no queued task."""
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    return redis_url


def stopped(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    """Stop a worker (if it still runs) and give its stderr."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def worker(args: list[str], broker: str) -> subprocess.Popen[str]:
    env = {**os.environ, **WORKER_ENV, "PYNBA_TEST_BROKER": broker}
    return subprocess.Popen(
        args, cwd=TESTS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def timers(request: PinbaRequest) -> list[tuple[dict[str, object], int]]:
    return [(dict(t.tags), t.hit_count) for t in request.timers]


def no_pynba_errors(stderr: str) -> None:
    # The library logs its own failures as "pynba: ..."; a worker must have none.
    assert not [line for line in stderr.splitlines() if "pynba:" in line], stderr


# -- Celery


def test_a_celery_worker_reports_each_task_once(pinba: PinbaCapture, flushed: str) -> None:
    # The producer knows the tasks by name only, as another service would.
    with Celery(broker=flushed) as producer:
        for name in ("tests.add", "tests.fail", "tests.flaky"):
            producer.send_task(name, args=(2, 3) if name == "tests.add" else (), queue=QUEUE)
    proc = worker(
        [sys.executable, "-m", "celery", "-A", "apps.celery_tasks", "worker",
         "--pool=prefork", "--concurrency=1", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "--loglevel=WARNING"],
        flushed,
    )  # fmt: skip
    try:
        # add, fail, flaky twice (a retry, then ok); a worker that dies says why at once.
        deadline = time.monotonic() + TIMEOUT
        while len(pinba.requests) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stderr = stopped(proc)
    assert len(pinba.requests) >= 4, f"{[r.script_name for r in pinba.requests]}\n{stderr}"
    got = pinba.requests
    no_pynba_errors(stderr)
    # The worker is gone: every packet it sent over the loopback is in the socket by now.
    assert len(pinba.requests) == 4, [r.script_name for r in pinba.requests]  # each run once
    assert all(r.tags.items() >= {"app": "tests", "queue": QUEUE}.items() for r in got)

    add = pinba.request("tests.add")
    assert (add.status, timers(add)) == (0, [({"group": "math::add"}, 1)])
    fail = pinba.request("tests.fail")
    assert fail.status == 500
    assert timers(fail) == [({"group": "parse"}, 1)]
    flaky = pinba.find("tests.flaky")
    assert [r.status for r in flaky] == [503, 0]  # the run that asked for a retry, then the retry
    assert [timers(r) for r in flaky] == [[({"group": "flaky::attempt"}, 1)]] * 2
    # Measured in the pool's child process: its own time and host.
    assert all(r.request_time < TIMEOUT and r.hostname == socket.gethostname() for r in got)


# -- RQ


def test_an_rq_worker_reports_each_job_once(pinba: PinbaCapture, flushed: str) -> None:
    with redis.Redis.from_url(flushed) as connection:
        queue = Queue(QUEUE, connection=connection)
        queue.enqueue("apps.rq_jobs.add", 2, 3)
        queue.enqueue("apps.rq_jobs.fail")
        queue.enqueue("apps.rq_jobs.fail", retry=Retry(max=1))  # retried, then a final failure
        queue.enqueue("apps.rq_jobs.ask_again")  # returns Retry: a second run, refused, fails
    # A burst worker works until the queue is empty, then exits: every run is done by then.
    proc = worker(
        [sys.executable, "-m", "rq.cli", "worker", "--burst", "--url", flushed,
         "--job-class", "pynba.rq.Job", QUEUE],
        flushed,
    )  # fmt: skip
    try:
        proc.wait(timeout=TIMEOUT)
    finally:
        stderr = stopped(proc)
    assert proc.returncode == 0, stderr
    no_pynba_errors(stderr)
    got = pinba.wait(6, timeout=5)
    assert len(pinba.requests) == 6, [r.script_name for r in pinba.requests]  # each run once
    assert all(r.tags.get("queue") == QUEUE for r in got)

    add = pinba.request("apps.rq_jobs.add")
    assert (add.status, timers(add)) == (0, [({"group": "math::add"}, 1)])
    fails = pinba.find("apps.rq_jobs.fail")
    # The job without retries: 500; the one with a retry left: 503, then its last run: 500.
    assert sorted(r.status for r in fails) == [500, 500, 503]
    assert all(r.tags["stage"] == "parse" for r in fails)
    assert all(timers(r) == [({"group": "parse"}, 1)] for r in fails)
    again = pinba.find("apps.rq_jobs.ask_again")
    assert [r.status for r in again] == [503, 500]
    assert all(timers(r) == [({"group": "poll"}, 1)] for r in again)


class Broken(MemoryTransport):
    def send(self, request: Any) -> bool:
        raise OSError("the sender broke")


@pytest.mark.expect_pynba_errors
def test_rq_jobs_in_process_options_context_and_our_failures(
    pinba: PinbaCapture, flushed: str, monkeypatch: pytest.MonkeyPatch, pynba_log: PynbaLog
) -> None:
    monkeypatch.setattr(pynba.rq, "_monitor", None)  # this process's monitor, made afresh
    monkeypatch.syspath_prepend(str(TESTS))
    with redis.Redis.from_url(flushed) as connection:
        queue = Queue(QUEUE, connection=connection)
        worker = SimpleWorker([queue], connection=connection, job_class=pynba.rq.Job)
        pynba.rq.monitor(tags={"app": "shop"}, server_name="jobs")
        done = queue.enqueue("apps.rq_jobs.add", 1, 2)
        assert worker.work(burst=True)
        assert current_request.get() is None  # nothing of the job stays current after it
        request = pinba.request("apps.rq_jobs.add")
        assert (request.server_name, request.tags) == ("jobs", {"app": "shop", "queue": QUEUE})
        assert pynba.rq.Job.fetch(done.id, connection=connection).return_value() == 3

        pynba.rq.monitor(transport=Broken())  # our sender fails: the job goes on
        broken = queue.enqueue("apps.rq_jobs.add", 2, 2)
        assert worker.work(burst=True)
        assert pynba.rq.Job.fetch(broken.id, connection=connection).return_value() == 4
    assert any("the sender broke" in line for line in pynba_log.problems), pynba_log.problems
