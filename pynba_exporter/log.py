"""The library's own failures: logged to the ``pynba`` logger, a repeated one not again for a while.

A monitoring library that logs one line per failed packet would flood the app's logs the moment a
Pinba server goes away; one that logs nothing leaves users guessing. So each kind of failure (a
key such as ``("send", "ECONNREFUSED", "10.0.0.1:30002")``) is logged the first time, then at
most once per ``interval`` seconds with the number of repeats that were not logged.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Hashable

__all__ = [
    "ErrorLog",
    "errors",
    "from_signal_handler",
    "internal_errors",
    "logger",
    "note_loss",
    "on_loss",
]

logger = logging.getLogger("pynba")


class ErrorLog:
    """Rate-limited logging by key; thread-safe."""

    def __init__(self, interval: float = 60.0, max_keys: int = 1024) -> None:
        self.interval = interval
        self._max_keys = max_keys
        self._lock = threading.Lock()
        # key -> [monotonic time of the last line logged, repeats since]
        self._seen: dict[Hashable, list[float]] = {}
        #: How many failures of each kind (the key's first element) happened, logged or not.
        self.counts: dict[str, int] = {}

    def log(
        self,
        key: Hashable,
        message: str,
        *,
        level: int = logging.WARNING,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Log ``message`` unless ``key`` was logged less than ``interval`` ago. True if logged."""
        now = time.monotonic()
        kind = str(key[0]) if isinstance(key, tuple) and key else str(key)
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.interval:
                seen[1] += 1
                return False
            repeats = int(seen[1]) if seen is not None else 0
            if seen is None and len(self._seen) >= self._max_keys:
                self._seen.clear()  # many distinct keys: forget rather than grow
            self._seen[key] = [now, 0]
        if repeats:
            message = f"{message} (and {repeats} more like it in the last {self.interval:g}s)"
        if level >= logging.WARNING:
            _reach_the_operator()
        logger.log(level, message, exc_info=exc_info)
        return True

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()
            self.counts.clear()


#: The stderr handler given to the ``pynba`` logger while nothing else would show its lines.
_stderr: logging.Handler | None = None
_stderr_lock = threading.Lock()


def _is_otel(handler: logging.Handler) -> bool:
    return type(handler).__module__.startswith("opentelemetry")


def _reach_the_operator() -> None:
    """Give the ``pynba`` logger a stderr handler of its own while the only handlers its lines
    reach are OpenTelemetry's: zero-code with ``opentelemetry-instrumentation-logging``
    (installed by ``opentelemetry-bootstrap``) puts the OTel log handler on the root logger,
    which turns off Python's last-resort stderr output, and a mistyped Pinba endpoint would
    then be said to a log pipeline only. Taken back as soon as the app configures a handler
    of its own. Asked only when a warning is logged (rare, rate-limited)."""
    global _stderr
    with _stderr_lock:
        handlers: list[logging.Handler] = []
        node: logging.Logger | None = logger
        while node is not None:
            handlers += [h for h in node.handlers if h is not _stderr]
            if not node.propagate:
                break
            node = node.parent
        only_otel = bool(handlers) and all(_is_otel(h) for h in handlers)
        if only_otel and _stderr is None:
            _stderr = logging.StreamHandler()
            _stderr.setLevel(logging.WARNING)
            logger.addHandler(_stderr)
        elif not only_otel and _stderr is not None:
            logger.removeHandler(_stderr)
            _stderr = None


def internal_errors() -> dict[str, int]:
    """How many of the library's own failures happened in this process, by kind ("send",
    "encode", "tag", "timer", "middleware", ...): each is logged to ``pynba`` the first time,
    then at most once a minute, and counted here every time."""
    with errors._lock:
        return dict(errors.counts)


#: The process-wide instance used by the library's components.
errors = ErrorLog()


def _handler_codes() -> set[object]:
    codes: set[object] = set()
    for number in signal.valid_signals():
        try:
            handler = signal.getsignal(number)
        except (OSError, ValueError):
            continue
        # A function, a bound method, a functools.partial of either.
        func = getattr(handler, "func", handler)
        func = getattr(func, "__func__", func)
        code = getattr(func, "__code__", None)
        if code is not None:
            codes.add(code)
    return codes


def from_signal_handler(exc: BaseException) -> bool:
    """True if ``exc`` was raised by a Python signal handler (a request timeout, an alarm)
    while the library's code ran: it is the app's, not the library's, and must reach the app
    unchanged. The library catches its own failures with ``except Exception`` and asks this
    before swallowing one; only that path pays for it."""
    tb = exc.__traceback__
    if tb is None:
        return False
    codes = _handler_codes()
    if not codes:
        return False
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return True
        tb = tb.tb_next
    return False


# -- where data is lost: the transport and the name guards tell it here, and whoever reads their
# counts (pynba_exporter.health, its periodic summary) listens. The hook lives at the bottom of
# the house so that the senders need not import what reads them.

_loss_listener: Callable[[], None] | None = None


def on_loss(listener: Callable[[], None] | None) -> None:
    """Call ``listener`` (cheap, never raising) each time data is lost; None: nobody."""
    global _loss_listener
    _loss_listener = listener


def note_loss() -> None:
    """Data was lost here: a datagram dropped, a request not encodable, a name refused."""
    listener = _loss_listener
    if listener is not None:
        listener()
