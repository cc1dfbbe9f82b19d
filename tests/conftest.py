"""Shared fixtures: real UDP sockets on 127.0.0.1, and loud failures for swallowed errors.

The library never lets its own failures reach the app: it logs them to the ``pynba`` logger.
In tests that would hide bugs, so every test fails if the library logged a warning or an error,
unless the test is marked ``@pytest.mark.expect_pynba_errors`` (and then asserts on them).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from pynba_exporter import PinbaRequest, decode
from pynba_exporter.health import reset_summary
from pynba_exporter.log import errors
from pynba_exporter.naming import script_names, server_names

# A project of its own, run by test_pytest_plugin.py with its own configuration, as a user runs it.
collect_ignore = ["sample_project"]


class UdpReceiver:
    """A UDP socket bound to 127.0.0.1 on a free port that hands back what arrives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"

    def packet(self, timeout: float = 5.0) -> bytes:
        self.sock.settimeout(timeout)
        data, _ = self.sock.recvfrom(65535)
        return data

    def packets(self, count: int, timeout: float = 5.0) -> list[bytes]:
        return [self.packet(timeout) for _ in range(count)]

    def request(self, timeout: float = 5.0) -> PinbaRequest:
        return decode(self.packet(timeout))

    def nothing(self, wait: float = 0.2) -> bool:
        """True if no packet arrives within ``wait`` seconds."""
        self.sock.settimeout(wait)
        try:
            self.sock.recvfrom(65535)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def receiver() -> Iterator[UdpReceiver]:
    r = UdpReceiver()
    yield r
    r.close()


class PynbaLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def problems(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


@pytest.fixture(autouse=True)
def pynba_log(request: pytest.FixtureRequest) -> Iterator[PynbaLog]:
    handler = PynbaLog()
    logger = logging.getLogger("pynba")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    errors.reset()  # every test sees first occurrences logged
    reset_summary()  # and its own periodic summary of losses
    script_names.reset()  # and a process that has reported no script name yet
    server_names.reset()
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    if request.node.get_closest_marker("expect_pynba_errors") is None and handler.problems:
        pytest.fail(f"the library logged unexpected problems: {handler.problems}")


# -- slow tests. A bare `pytest` (the README's test command) is the quick run, under a minute:
# the slow proofs are left out, and say so. `pytest -m slow` runs them (CI does, right after),
# and naming what to run (`pytest tests`, `pytest tests/test_run.py`) or giving any `-m` runs
# what was asked, slow or not. Whole modules that start servers, subprocesses or fuzzers, and
# every property-based test, are slow by rule here, so that a new test of that kind needs no
# marker to be in the right run.
_SLOW_MODULES = (
    "test_under_load",
    "test_fuzz",
    "test_reference_client",
    "test_differential",
    "test_examples",
    "test_web_browser",
    "test_web_trends",
    "test_collector_trends",
    "test_otel_field",
    "test_web",
    "test_collector_hostile",
    "test_frameworks",
    "test_run",
    "test_names_in_the_field",
    "test_zero_code_warnings",
    "test_document_size",
    "test_distribution",
    "test_task_queues",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "obj", None)
        if item.path.stem in _SLOW_MODULES or getattr(function, "is_hypothesis_test", False):
            item.add_marker(pytest.mark.slow)
    if config.args_source is pytest.Config.ArgsSource.TESTPATHS and not config.option.markexpr:
        slow = [item for item in items if item.get_closest_marker("slow") is not None]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if item.get_closest_marker("slow") is None]
            config.stash[_QUICK_RUN] = len(slow)


_QUICK_RUN = pytest.StashKey[int]()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    left_out = config.stash.get(_QUICK_RUN, 0)
    if left_out:
        terminalreporter.write_line(
            f"the quick run: {left_out} slow tests left out (servers, browsers, the reference "
            "client, fuzzing); `pytest -m slow` runs them, `pytest tests` runs everything"
        )
