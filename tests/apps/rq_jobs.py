"""Jobs for an RQ worker run in a subprocess (``rq worker --job-class pynba.rq.Job``) by
tests/test_task_queues.py."""

from __future__ import annotations

from rq import Retry

from pynba import pynba


def add(x: int, y: int) -> int:
    with pynba.timer(group="math::add"):
        return x + y


def fail() -> None:
    pynba.tags["stage"] = "parse"
    with pynba.timer(group="parse"):
        raise ValueError("a job that fails")


def ask_again() -> Retry:
    """Asks RQ for one more run, every run: the second is refused (``max=1``) and fails."""
    with pynba.timer(group="poll"):
        pass
    return Retry(max=1)
