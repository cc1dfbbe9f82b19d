"""What the processor and the exporter share: configuration, the sender, the clock of span ages."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.context import (
    _SUPPRESS_INSTRUMENTATION_KEY,
    Context,
    attach,
    detach,
    set_value,
)

from pynba_exporter import config
from pynba_exporter._transport import MemoryTransport, Transport
from pynba_exporter._udp import UdpTransport
from pynba_exporter.address import Address
from pynba_exporter.log import errors
from pynba_exporter.otel._mapping import TimerTags, default_timer_tags
from pynba_exporter.otel._metrics import instrument_metrics
from pynba_exporter.spans import (
    RequestSpan,
    finish_and_send,
)
from pynba_exporter.wire import DEFAULT_MAX_PACKET_SIZE


def _address(address: Address | None) -> Address:
    """Argument, then OTEL_EXPORTER_PINBA_ENDPOINT, then PINBA_SERVER (see ``config``); the
    address rules (``udp://`` accepted, ``http(s)://`` refused) are in ``address``."""
    if address is not None:
        return address
    endpoint: str = config.value("server")
    return endpoint


#: The context our own sending runs in: instrumentation suppressed, and nothing else (what the
#: app's context holds means nothing to a send of ours), made once rather than per request.
_SUPPRESSED: Context = set_value(_SUPPRESS_INSTRUMENTATION_KEY, True, Context())


def _sdk_disabled() -> bool:
    # The SDK's own variable, read exactly as the SDK reads it ("true", any case, and nothing
    # else): Pinba must be off exactly when the SDK is, not by a rule of ours.
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


class _Sender:
    """What the processor and the exporter share: a transport, the on/off switch, counters.

    A bad option (argument or environment) never raises: it is logged once and Pinba is off."""

    def __init__(
        self,
        address: Address | None,
        *,
        transport: Transport | None,
        enabled: bool | None,
        timer_tags: TimerTags | None,
        asgi_events: bool | None,
        transport_options: dict[str, Any],
    ) -> None:
        self.timer_tags: TimerTags = timer_tags or default_timer_tags
        self.shut_down = False
        self.lock = threading.Lock()
        #: Counters: requests sent, roots that were not requests, spans not reported by reason.
        self.counts: dict[str, int] = {}
        self.enabled = False
        self.asgi_events = False
        self.transport: Transport
        try:
            self.enabled = (
                (config.value("enabled") and not _sdk_disabled()) if enabled is None else enabled
            )
            self.asgi_events = config.value("asgi_events", asgi_events)
            self.transport = (
                transport
                if transport is not None
                else UdpTransport(_address(address), **transport_options)
            )
        except (ValueError, TypeError) as exc:
            # Pinba is off; a transport that is never used keeps the attribute typed.
            self.transport = (
                transport
                if transport is not None
                else MemoryTransport(max_packet_size=DEFAULT_MAX_PACKET_SIZE, packed=False)
            )
            self.disable(exc)
        if self.enabled:
            # An operator sees on the app's own dashboards when Pinba hears nothing: the
            # client's counts as metrics, through the global meter provider (a no-op until the
            # app sets one; the instruments follow it then).
            try:
                instrument_metrics()
            except Exception as exc:  # never into the app
                errors.log(("otel", "metrics"), f"pynba: client metrics not exported: {exc!r}")

    def disable(self, exc: Exception) -> None:
        """A bad option: said once (the processor and the exporter share the line), and
        Pinba is off; the app runs as usual."""
        errors.log(
            ("config", str(exc)),
            f"pynba: {exc}; Pinba reporting is disabled (the app runs as usual)",
        )
        self.enabled = False

    def setting(self, name: str, given: Any, kind: Callable[[Any], Any]) -> Any:
        """Option ``name`` (argument, then environment), as ``kind``; a bad value turns Pinba
        off (said once) and the default is used, so the processor and the exporter read their
        options one way and the app always starts."""
        try:
            return kind(config.value(name, given))
        except ValueError as exc:
            self.disable(exc)
            return config.OPTIONS[name].default

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def drop(self, reason: str, count: int = 1) -> None:
        self.count(reason, count)
        errors.log(("otel", reason), f"pynba: {count} span(s) not reported ({reason})")

    def stats(self) -> dict[str, int]:
        with self.lock:
            counts = dict(self.counts)
        for name in ("requests", "not_requests", "evicted", "overflow", "late", "abandoned"):
            counts.setdefault(name, 0)
        return counts

    def send(self, request: RequestSpan, duration: float, *, cpu: bool) -> bool:
        """Finish and send the request of a root span by the one path every request takes.
        Our own sending must not be traced (an instrumented socket library would otherwise
        make a span per packet, and a packet per span...)."""
        token = attach(_SUPPRESSED)
        try:
            sent = finish_and_send(request, self.transport, "otel", duration=duration, cpu=cpu)
        finally:
            detach(token)
        if sent:
            self.count("requests")
        return sent

    def close(self) -> None:
        self.transport.close()


#: The clock of span ages (a module name so that tests can move time).
_now = time.monotonic
