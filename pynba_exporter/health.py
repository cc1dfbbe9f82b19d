"""Is Pinba hearing from this process? The client's own counts, in one call, in the log and as
OpenTelemetry metrics.

    from pynba_exporter.health import client_stats

    stats = client_stats()
    stats.sent, stats.dropped        # {"unresolved": 12, "EMSGSIZE": 1, ...}
    stats.lost                       # requests or packets that never reached a server

A Pinba client that loses data says little by nature: UDP does not answer, so a mistyped
server name or a full socket buffer would leave dashboards silently empty. So:

- :func:`client_stats` sums the counts of every transport of the process (``stats()`` of each
  ``UdpTransport``, those already garbage-collected included) with the name guards' refusals;
- while anything is being lost, the ``pynba`` logger gets one summary line at most every
  :data:`SUMMARY_INTERVAL` seconds (packets lost out of those sent, by reason), on top of the
  first line of each kind of failure; the summary is made on the failure paths only, so a
  process that loses nothing pays nothing, and the send path is unchanged;
- ``pynba_exporter.otel.instrument_metrics()`` exports the same counts as OpenTelemetry
  observable counters (done by the OpenTelemetry bridge itself when it is set up).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from types import MappingProxyType

from pynba_exporter import _udp
from pynba_exporter.log import logger, note_loss, on_loss
from pynba_exporter.naming import script_names, server_names

__all__ = ["SUMMARY_INTERVAL", "ClientStats", "client_stats", "note_loss", "reset_summary"]

#: Seconds between two summary lines while data is being lost.
SUMMARY_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class ClientStats:
    """The client's counts since the process started (a snapshot).

    ``requests``: requests handed to transports; ``sent``: datagrams handed to the kernel (once
    per server); ``dropped``: datagrams that did not leave, by reason (``"unresolved"``,
    ``"ECONNREFUSED"``, ``"EMSGSIZE"``, ...); ``resolve_failures``: failed lookups of a server
    name; ``encode_errors``: requests that could not be encoded (never sent); ``shrunk``:
    requests cut down to fit ``max_packet_size``; ``script_names_refused`` and
    ``server_names_refused``: requests sent as ``<other>`` past the per-process name caps.
    """

    requests: int = 0
    sent: int = 0
    dropped: MappingProxyType[str, int] = field(default_factory=lambda: MappingProxyType({}))
    resolve_failures: int = 0
    encode_errors: int = 0
    shrunk: int = 0
    script_names_refused: int = 0
    server_names_refused: int = 0

    @property
    def lost(self) -> int:
        """Datagrams dropped plus requests that could not be encoded: what never arrived."""
        return sum(self.dropped.values()) + self.encode_errors


def client_stats() -> ClientStats:
    """The counts of every transport of the process, and of the name guards, summed."""
    requests = sent = encode_errors = shrunk = resolve = 0
    dropped: dict[str, int] = {}
    for stats in _udp.all_stats():
        requests += stats.requests
        sent += stats.sent
        encode_errors += stats.encode_errors
        shrunk += stats.shrunk
        for reason, count in stats.errors.items():
            if reason == "resolve":  # a failed lookup, not a datagram: counted apart
                resolve += count
            else:
                dropped[reason] = dropped.get(reason, 0) + count
    return ClientStats(
        requests, sent, MappingProxyType(dropped), resolve, encode_errors, shrunk,
        script_names.stats()["overflowed"], server_names.stats()["overflowed"],
    )  # fmt: skip


class _Summary:
    """The periodic summary line: made at most once per interval, only on failure paths."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next_at = 0.0  # monotonic; 0: no loss seen yet
        self.since = ClientStats()

    def note(self) -> None:
        now = time.monotonic()
        if now < self.next_at:  # the common case while losing: one comparison
            return
        if not self.lock.acquire(blocking=False):
            return  # another thread is at it
        try:
            first = self.next_at == 0.0
            self.next_at = now + SUMMARY_INTERVAL
            stats = client_stats()
            before, self.since = self.since, stats
            if not first:  # the first loss has its own line already
                self._log(before, stats)
        finally:
            self.lock.release()

    @staticmethod
    def _log(before: ClientStats, now: ClientStats) -> None:
        lost = now.lost - before.lost
        refused = (
            now.script_names_refused - before.script_names_refused
            + now.server_names_refused - before.server_names_refused
        )  # fmt: skip
        if lost <= 0 and refused <= 0:
            return
        reasons = {
            reason: count - before.dropped.get(reason, 0)
            for reason, count in now.dropped.items()
            if count > before.dropped.get(reason, 0)
        }
        encode = now.encode_errors - before.encode_errors
        if encode:
            reasons["not encodable"] = encode
        detail = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
        logger.log(
            logging.WARNING,
            "pynba: Pinba is missing data: %d lost, %d datagrams sent (%s); %d resolve "
            "failures, %d requests shrunk, %d sent as <other> past the name caps, "
            "since the last summary (pynba_exporter.health.client_stats() has the totals)",
            lost, now.sent - before.sent, detail or "none dropped",
            now.resolve_failures - before.resolve_failures, now.shrunk - before.shrunk, refused,
        )  # fmt: skip

    def reset(self) -> None:
        with self.lock:
            self.next_at = 0.0
            self.since = ClientStats()


_summary = _Summary()
# Told where data is lost (pynba_exporter.log.note_loss: the transport and the name guards call
# it); imported with the package (pynba_exporter/__init__.py), so the summary always listens.
on_loss(_summary.note)

#: Forget the summary's schedule and baseline (tests).
reset_summary = _summary.reset
