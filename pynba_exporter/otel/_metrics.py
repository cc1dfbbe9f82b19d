"""The client's own counts (:func:`pynba_exporter.health.client_stats`) as OpenTelemetry
metrics: observable counters, read when the app's meter provider collects, so nothing is
counted twice and nothing runs on the send path.

=========================================  ==============  ==========================
instrument                                 unit            attributes
=========================================  ==============  ==========================
``pinba.client.requests``                  ``{request}``   (handed to a transport)
``pinba.client.datagrams.sent``            ``{datagram}``
``pinba.client.datagrams.dropped``         ``{datagram}``  ``reason``: ``unresolved``,
                                                           ``ECONNREFUSED``, ``EMSGSIZE``...
``pinba.client.resolve_failures``          ``{lookup}``
``pinba.client.requests.not_encodable``    ``{request}``
``pinba.client.requests.shrunk``           ``{request}``
``pinba.client.names.refused``             ``{request}``   ``kind``: ``script``, ``server``
=========================================  ==============  ==========================
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from pynba_exporter.health import ClientStats, client_stats

__all__ = ["instrument_metrics"]

_LOCK = threading.Lock()
_DONE: weakref.WeakSet[MeterProvider] = weakref.WeakSet()


def _observe(
    read: Callable[[ClientStats], Iterable[tuple[int, dict[str, str] | None]]],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, attributes) for value, attributes in read(client_stats())]

    return callback


_INSTRUMENTS: tuple[
    tuple[str, str, str, Callable[[ClientStats], Iterable[tuple[int, dict[str, str] | None]]]],
    ...,
] = (
    ("pinba.client.requests", "{request}", "requests handed to a Pinba transport",
     lambda s: [(s.requests, None)]),
    ("pinba.client.datagrams.sent", "{datagram}", "datagrams handed to the kernel, per server",
     lambda s: [(s.sent, None)]),
    ("pinba.client.datagrams.dropped", "{datagram}", "datagrams that did not leave, by reason",
     lambda s: [(n, {"reason": r}) for r, n in sorted(s.dropped.items())]),
    ("pinba.client.resolve_failures", "{lookup}", "failed lookups of a Pinba server name",
     lambda s: [(s.resolve_failures, None)]),
    ("pinba.client.requests.not_encodable", "{request}", "requests that could not be encoded",
     lambda s: [(s.encode_errors, None)]),
    ("pinba.client.requests.shrunk", "{request}", "requests cut down to fit max_packet_size",
     lambda s: [(s.shrunk, None)]),
    ("pinba.client.names.refused", "{request}",
     "requests sent as <other> past the per-process name caps",
     lambda s: [(s.script_names_refused, {"kind": "script"}),
                (s.server_names_refused, {"kind": "server"})]),
)  # fmt: skip


def instrument_metrics(meter_provider: MeterProvider | None = None) -> bool:
    """Report the client's counts through ``meter_provider`` (default: the global one, also
    when it is set later). Once per provider; True if this call registered them."""
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    with _LOCK:
        if provider in _DONE:
            return False
        _DONE.add(provider)
    meter = provider.get_meter("pynba_exporter")
    for name, unit, description, read in _INSTRUMENTS:
        meter.create_observable_counter(
            name, callbacks=[_observe(read)], unit=unit, description=description
        )
    return True
