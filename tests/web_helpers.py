"""A collector with its web server on loopback, a clock the test moves, and real UDP traffic."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from pynba_exporter import PinbaRequest, UdpTransport
from pynba_exporter.collector import Collector, History, WebServer

#: A start time on an interval boundary (5 s), so that the test knows which interval is which.
T0 = 1_800_000_000.0


class Site:
    """A started collector and web server; ``now`` is the collector's clock."""

    def __init__(self, *, max_keys: int = 10_000, **web: Any) -> None:
        self.now = T0
        self.collector = Collector("127.0.0.1:0", clock=lambda: self.now, max_keys=max_keys)
        history = History(interval=5.0, clock=lambda: self.now)
        self.web = WebServer(self.collector, "127.0.0.1:0", history=history, **web)
        self.collector.start()
        self.web.start()
        self.url = self.web.url
        self.transport = UdpTransport(self.collector.address_text)

    def send(self, *requests: PinbaRequest) -> None:
        """Send over UDP and wait until the collector has them (stamped with ``now``)."""
        before = self.collector.aggregator.requests_total
        for r in requests:
            self.transport.send(r)
        deadline = time.monotonic() + 10
        while self.collector.aggregator.requests_total < before + len(requests):
            assert time.monotonic() < deadline, self.collector.status()
            time.sleep(0.005)

    def get(self, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.url.rstrip("/") + path)
        if host is not None:
            request.add_unredirected_header("Host", host)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers), exc.read()

    def json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def close(self) -> None:
        self.transport.close()
        self.web.stop()
        self.collector.stop()


def req(script: str, seconds: float, status: int = 200, **kw: Any) -> PinbaRequest:
    kw.setdefault("hostname", "web1")
    kw.setdefault("server_name", "shop.example")
    return PinbaRequest(
        kw.pop("hostname"), kw.pop("server_name"), script, request_time=seconds, status=status,
        **kw,
    )  # fmt: skip
