"""The collector's reports as Prometheus metrics (``/metrics`` of ``pynba collect --http``).

Counters, totals since the collector started (Prometheus computes rates from them):

- ``pinba_requests_total``, ``pinba_request_time_seconds_total``,
  ``pinba_request_ru_utime_seconds_total``, ``pinba_request_ru_stime_seconds_total``,
  ``pinba_request_document_bytes_total``: labels ``script_name``, ``status``, ``server_name``;
- ``pinba_timer_hits_total``, ``pinba_timer_seconds_total``: labels ``group``, ``server`` (timers
  without a ``group`` tag are left out, as in the timer reports; no ``server`` tag reads "");
- the collector's health: ``pinba_collector_packets_total``,
  ``pinba_collector_invalid_packets_total`` (label ``reason``),
  ``pinba_collector_evicted_records_total``, ``pinba_collector_store_dropped_total``.

Gauges over the reports' window: ``pinba_window_request_time_seconds`` (labels ``script_name``,
``quantile``: 0.5 and the collector's percentiles), ``pinba_window_requests`` (``script_name``),
``pinba_collector_records``, ``pinba_collector_memory_bytes`` and its bound,
``pinba_collector_window_seconds``.

Label cardinality is bounded by the collector's own limit (``max_keys``) and in bytes (a
sixty-fourth of its ``max_bytes``, label values cut to 256 characters): label sets past either are
summed under ``<other>`` values. Names that are not UTF-8 show U+FFFD where bytes were invalid.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector as _PromCollector
from prometheus_client.registry import CollectorRegistry

from pynba_exporter.collector._live import OTHER
from pynba_exporter.collector._record import Record
from pynba_exporter.collector._server import Collector
from pynba_exporter.collector._text import cut, label

__all__ = ["PrometheusMetrics"]

_REQUEST_LABELS: Final = ("script_name", "status", "server_name")
#: The counters of a request label set, in the order of its row.
_REQUEST_FAMILIES: Final = (
    ("pinba_requests", "Requests received"),
    ("pinba_request_time_seconds", "Request time"),
    ("pinba_request_ru_utime_seconds", "User CPU time"),
    ("pinba_request_ru_stime_seconds", "System CPU time"),
    ("pinba_request_document_bytes", "Response body bytes"),
)
_TIMER_FAMILIES: Final = (
    ("pinba_timer_hits", "Timer hits"),
    ("pinba_timer_seconds", "Time measured by timers"),
)
_TIMER_LABELS: Final = ("group", "server")


#: Bytes a label set costs besides its strings (the key tuple, its row list, the dict slot).
_ROW_BYTES: Final = 300
#: Characters of a timer tag set whose (group, server) is remembered: larger ones (a tag bomb,
#: 60 KB tag values) are looked at, never kept alive by the cache.
_SMALL_TAG_SET: Final = 256
_UNSET: Final[Any] = object()


def _timer_key(tags: tuple[tuple[str, str], ...]) -> tuple[str, str] | None:
    """A timer's (group, server) labels, cut; None without a group tag. The first value of a
    repeated tag name wins, as in pinba2."""
    group = server = None
    for name, value in tags:
        if name == "group" and group is None:
            group = value
        elif name == "server" and server is None:
            server = value
    if group is None:
        return None
    return cut(group), cut(server or "")


def _cost(key: tuple[str, ...]) -> int:
    return _ROW_BYTES + sum(len(s) for s in key)


class PrometheusMetrics(_PromCollector):
    """A collector listener keeping the counters, and a ``prometheus_client`` collector that
    exposes them with the health and window gauges. ``registry`` is a fresh
    :class:`CollectorRegistry` holding only these metrics (``generate_latest(m.registry)``)."""

    def __init__(
        self, collector: Collector, max_keys: int | None = None, max_bytes: int | None = None
    ) -> None:
        self.collector = collector
        self.max_keys = collector.aggregator.max_keys if max_keys is None else max_keys
        #: Estimated bytes the label sets and the tag-set cache may hold: a sixty-fourth of the
        #: collector's budget. They live as long as the collector, past every window, and one
        #: scrape writes each label set 5 times, making it at about 7 times its size (a 3.3 MB
        #: exposition peaked at 22 MB more): 4 MB of label sets by default, 10,000 short ones.
        self.max_bytes = collector.aggregator.max_bytes // 64 if max_bytes is None else max_bytes
        self.bytes = 0  # estimated bytes of the label sets
        self._lock = threading.Lock()
        # (script, status, server) -> [count, time, utime, stime, bytes]
        self._requests: dict[tuple[str, str, str], list[float]] = {}
        self._timers: dict[tuple[str, str], list[float]] = {}  # (group, server) -> [hits, s]
        self._tag_keys: dict[tuple[tuple[str, str], ...], tuple[str, str] | None] = {}
        self._tag_bytes = 0
        self.overflow = 0  # label sets counted under <other> for want of room
        collector.listeners.append(self.add)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def _room(self, size: int, count: int) -> bool:
        """Whether a new label set of ``size`` bytes fits (one set stays for <other>)."""
        return count < self.max_keys - 1 and self.bytes + size <= self.max_bytes

    def add(self, records: Sequence[Record]) -> None:
        """Count a batch of records (the collector's receiving thread calls it)."""
        with self._lock:
            requests, timers, keys = self._requests, self._timers, self._tag_keys
            for r in records:
                key = (cut(r.script_name), str(r.status), cut(r.server_name))
                row = requests.get(key)
                if row is None:
                    size = _cost(key)
                    if self._room(size, len(requests)):
                        self.bytes += size
                    else:
                        self.overflow += 1
                        key = (OTHER, OTHER, OTHER)
                        row = requests.get(key)
                    if row is None:
                        row = requests[key] = [0, 0.0, 0.0, 0.0, 0]
                row[0] += 1
                row[1] += r.req_time
                row[2] += r.ru_utime
                row[3] += r.ru_stime
                row[4] += r.doc_size
                for tags, value, hits, _, _ in r.timer_rows:
                    # The same few tag sets repeat: their (group, server) is looked up once.
                    tkey = keys.get(tags, _UNSET)
                    if tkey is _UNSET:
                        tkey = _timer_key(tags)
                        self._remember(tags, tkey)
                    if tkey is None:
                        continue
                    trow = timers.get(tkey)
                    if trow is None:
                        size = _cost(tkey)
                        if self._room(size, len(timers)):
                            self.bytes += size
                        else:
                            self.overflow += 1
                            tkey = (OTHER, OTHER)
                            trow = timers.get(tkey)
                        if trow is None:
                            trow = timers[tkey] = [0, 0.0]
                    trow[0] += hits
                    trow[1] += value

    def _remember(self, tags: tuple[tuple[str, str], ...], tkey: tuple[str, str] | None) -> None:
        """Cache a small tag set's labels, within a quarter of the byte budget."""
        chars = sum(len(n) + len(v) for n, v in tags)
        if chars > _SMALL_TAG_SET:
            return
        size = _ROW_BYTES + chars
        if self._tag_bytes + size > self.max_bytes // 4:
            self._tag_keys.clear()
            self._tag_bytes = 0
        self._tag_keys[tags] = tkey
        self._tag_bytes += size

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in the Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the metrics are only known when collected

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            requests = {k: list(v) for k, v in self._requests.items()}
            timers = {k: list(v) for k, v in self._timers.items()}
        # One family at a time, each made when the exposition asks for it: a family holds an
        # object per sample, and five of them at once cost several times the text they make.
        request_labels = [([label(v) for v in key], row) for key, row in sorted(requests.items())]
        for i, (name, doc) in enumerate(_REQUEST_FAMILIES):
            family = CounterMetricFamily(name, doc, labels=_REQUEST_LABELS)
            for labels, row in request_labels:
                family.add_metric(labels, row[i])
            yield family
        del request_labels
        timer_labels = [([label(v) for v in key], row) for key, row in sorted(timers.items())]
        for i, (name, doc) in enumerate(_TIMER_FAMILIES):
            family = CounterMetricFamily(name, doc, labels=_TIMER_LABELS)
            for labels, row in timer_labels:
                family.add_metric(labels, row[i])
            yield family
        del timer_labels
        yield from self._window()
        yield from self._health()

    def _window(self) -> Iterator[Metric]:
        aggregator = self.collector.aggregator
        rows = aggregator.request_report(("script_name",))
        count = GaugeMetricFamily(
            "pinba_window_requests", "Requests in the reports' window", labels=["script_name"]
        )
        quantiles = GaugeMetricFamily(
            "pinba_window_request_time_seconds",
            "Request time percentiles over the reports' window",
            labels=["script_name", "quantile"],
        )
        for row in rows:
            name = label(str(row["script_name"]))
            count.add_metric([name], row["req_count"])
            quantiles.add_metric([name, "0.5"], row["req_time_median"])
            for p in aggregator.percentiles:
                quantiles.add_metric([name, f"{p / 100:g}"], row[f"req_time_p{p:g}"])
        yield count
        yield quantiles

    def _health(self) -> Iterator[Metric]:
        status = self.collector.status()
        yield CounterMetricFamily(
            "pinba_collector_packets", "Packets received", value=status["packets_received"]
        )
        invalid = CounterMetricFamily(
            "pinba_collector_invalid_packets", "Packets refused, by reason", labels=["reason"]
        )
        for reason, n in sorted(status["invalid_by_reason"].items()):
            invalid.add_metric([reason], n)
        yield invalid
        yield CounterMetricFamily(
            "pinba_collector_evicted_records",
            "Requests dropped from memory before the end of the window",
            value=status["evicted_records"],
        )
        yield CounterMetricFamily(
            "pinba_collector_store_dropped",
            "Requests the database writer could not keep",
            value=status.get("store_dropped", 0),
        )
        yield GaugeMetricFamily(
            "pinba_collector_records", "Requests held in memory", value=status["requests_in_window"]
        )
        yield GaugeMetricFamily(
            "pinba_collector_memory_bytes",
            "Bytes the window's requests and names hold (as the collector counts them)",
            value=status["window_bytes"] + status["dictionary_bytes"],
        )
        yield GaugeMetricFamily(
            "pinba_collector_memory_bytes_bound",
            "Bytes the window may hold at most (--max-memory)",
            value=status["max_bytes"],
        )
        yield GaugeMetricFamily(
            "pinba_collector_window_seconds", "Seconds the reports cover", value=status["window"]
        )
