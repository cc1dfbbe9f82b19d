"""``pynba demo``: the whole loop on one machine, in seconds.

A collector listens on a free local port; a small shop app runs on a real local HTTP server
(wsgiref, threaded), monitored by the classic middleware, with OpenTelemetry spans inside when
the SDK is installed (``pynba[otel]``); a client drives a few hundred requests with a realistic
mix (fast pages, slow ones, errors, database and cache timers); then the reports are printed.
While it runs, the collector's live page is served (``http``; ``serve`` keeps the app busy and
the page up until Ctrl-C).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from pynba._proxy import pynba
from pynba._wsgi import PynbaMiddleware
from pynba_exporter.collector import Collector, History, WebServer
from pynba_exporter.spans import current_request

__all__ = ["Traffic", "explain", "run_demo"]

Environ = dict[str, Any]

# The shop's routes, as the app below answers them and the client picks them. The summary's
# explanation reads these, so it says what the app does, not what it did once.
_PRODUCT = "/product/"  # a page per id: the app names them all PRODUCT_SCRIPT
_PRODUCT_SCRIPT = "/product/<id>"
_UNREPORTED = "/health"  # the app turns reporting off for it (pynba.enabled = False)
_UNKNOWN = "/nowhere"  # no such route: answered 404
_JOB_SCRIPT = "nightly-export"
_JOBS = 20  # background jobs run when OpenTelemetry is installed


@dataclass
class Traffic:
    """What the demo did, from the client's side: each HTTP request's path and the status it
    got, and the background jobs run. Appends come from the client's threads (list.append is
    atomic)."""

    answers: list[tuple[str, int]] = field(default_factory=list)
    jobs: int = 0

    @property
    def expected(self) -> int:
        """The requests the reports should count: every HTTP request but those the app does
        not report, and each background job."""
        return sum(1 for path, _ in self.answers if path != _UNREPORTED) + self.jobs


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def get_stderr(self) -> io.StringIO:
        return io.StringIO()  # the demo's errors are on purpose


def _otel_tracer(collector: Collector) -> tuple[Any, Any]:
    """A tracer feeding the collector through the span processor, or None without the SDK."""
    try:
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - optional
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415

        from pynba_exporter.otel import PinbaSpanProcessor  # noqa: PLC0415
    except ImportError:
        return None, None
    provider = TracerProvider(resource=Resource.create({"service.name": "shop-jobs"}))
    provider.add_span_processor(PinbaSpanProcessor(collector.address_text))
    return provider, provider.get_tracer("pynba.demo")


def shop_app(
    tracer: Any, rng: random.Random
) -> Callable[[Environ, Callable[..., Any]], Iterable[bytes]]:
    lock = threading.Lock()

    def pause(low: float, high: float) -> None:
        with lock:
            seconds = rng.uniform(low, high)
        time.sleep(seconds)

    def payment() -> None:
        if tracer is None:
            with pynba.timer(group="http::POST", server="payments"):
                pause(0.002, 0.006)
            return
        # An OpenTelemetry client span inside a classic request: one of its timers.
        attributes = {"http.request.method": "POST", "server.address": "payments"}
        with tracer.start_as_current_span("POST", kind=_client_kind(), attributes=attributes):
            pause(0.002, 0.006)

    @pynba.timer(group="db::select", server="db1")
    def select() -> None:
        pause(0.0003, 0.0015)

    def app(env: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        path = env.get("PATH_INFO", "/")
        pynba.tags["user_type"] = "member" if "session" in env.get("HTTP_COOKIE", "") else "guest"
        if path.startswith(_PRODUCT):
            pynba.scriptname = _PRODUCT_SCRIPT
            select()
            with pynba.timer(group="cache::get", server="mc1"):
                pause(0.0001, 0.0003)
            start_response("200 OK", [("Content-Type", "text/html")])
            yield b"<h1>product</h1>" * 20
        elif path == "/search":
            for _ in range(3):
                select()
            start_response("200 OK", [("Content-Type", "text/html")])
            yield b"<ul>results</ul>" * 50
        elif path == "/checkout":
            payment()
            with lock:
                failed = rng.random() < 0.2
            if failed:
                raise RuntimeError("payment declined")  # reported with status 500
            start_response("303 See Other", [("Location", "/thanks")])
            yield b""
        elif path == _UNREPORTED:
            pynba.enabled = False  # not worth reporting
            start_response("200 OK", [])
            yield b"ok"
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            yield b"not found"

    return app


def _client_kind() -> Any:
    from opentelemetry.trace import SpanKind  # noqa: PLC0415 - only with the SDK

    return SpanKind.CLIENT


def _drive(port: int, paths: list[str], traffic: Traffic) -> None:
    def get(path: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path, headers={"Cookie": "session=1"} if "7" in path else {})
            response = conn.getresponse()
            response.read()
            traffic.answers.append((path, response.status))
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(get, paths))


def _keep_busy(port: int, rng: random.Random, sent: int, traffic: Traffic) -> None:
    # Until Ctrl-C: a few requests a second, so that the live page's charts move.
    while True:
        _drive(port, _paths(rng, 10, sent), traffic)
        sent += 10
        time.sleep(1.0)


def _paths(rng: random.Random, count: int, first: int = 0) -> list[str]:
    choices = [_PRODUCT] * 10 + ["/search"] * 4 + ["/checkout"] * 2 + [_UNREPORTED, _UNKNOWN]
    paths = []
    for i in range(first, first + count):
        path = rng.choice(choices)
        paths.append(f"{path}{i}" if path == _PRODUCT else path)
    return paths


def _start(
    collector: Collector, http: str | None, on_serving: Callable[[str], None] | None
) -> WebServer | None:
    """Start the collector, and the live page if ``http`` says where."""
    web = None
    if http:
        # Charts per second: the demo's traffic lasts seconds, not minutes.
        history = History(interval=1.0, size=300, clock=collector.clock)
        web = WebServer(collector, http, request_tags=[("user_type",)], history=history)
    collector.start()
    if web is not None:
        try:
            web.start()
        except BaseException:
            collector.stop()
            raise
        if on_serving is not None:
            on_serving(web.url)
    return web


def _background_jobs(tracer: Any, traffic: Traffic) -> None:
    """A background job traced with OpenTelemetry only: requests of their own. Its root span
    is an INTERNAL one, which the bridge reports only when it is marked as a request (by
    ``pinba.script_name``): unmarked, such roots are dropped and counted, and the demo would
    wait for requests that never come."""
    current_request.set(None)
    job = {"pinba.script_name": _JOB_SCRIPT}
    for _ in range(_JOBS):
        query = {"db.system": "sqlite", "db.operation": "SELECT"}
        with (
            tracer.start_as_current_span(_JOB_SCRIPT, attributes=job),
            tracer.start_as_current_span("export", attributes=query),
        ):
            time.sleep(0.0005)
        traffic.jobs += 1


def run_demo(
    requests: int = 300,
    seed: int = 1,
    *,
    http: str | None = None,
    on_serving: Callable[[str], None] | None = None,
    after_traffic: Callable[[WebServer], None] | None = None,
    serve: bool = False,
    traffic: Traffic | None = None,
) -> Collector:
    """Run the demo; the collector (stopped) holds the reports, ``traffic`` (when given) what
    the demo sent, for :func:`explain`.

    ``http``: where to serve the live page meanwhile (``127.0.0.1:0``: a free port); its URL is
    given to ``on_serving`` before the traffic starts, and ``after_traffic`` is called with the
    web server once the requests are in. ``serve``: then keep sending a few requests a second,
    the page up, until Ctrl-C.
    """
    traffic = Traffic() if traffic is None else traffic
    collector = Collector("127.0.0.1:0")
    web = _start(collector, http, on_serving)
    provider, tracer = _otel_tracer(collector)
    rng = random.Random(seed)
    app = PynbaMiddleware(shop_app(tracer, rng), collector.address_text, tags={"app": "shop"})
    server = make_server("127.0.0.1", 0, app, _Server, _Quiet)
    # shutdown() waits for serve_forever's next poll: 0.5 s by default, the demo's longest
    # pause once its traffic is in.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    paths = _paths(rng, requests)
    try:
        _drive(server.server_port, paths, traffic)
        if tracer is not None:
            _background_jobs(tracer, traffic)
        # Done as soon as every request it made is in: UDP gives no other signal. The
        # deadline only bounds a lost packet's wait (explain() then says how many).
        deadline = time.monotonic() + 10
        while (
            collector.aggregator.requests_total < traffic.expected and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        if web is not None and after_traffic is not None:
            after_traffic(web)
        if serve:
            with contextlib.suppress(KeyboardInterrupt):
                _keep_busy(server.server_port, rng, requests, traffic)
    finally:
        if web is not None:
            web.stop()
        server.shutdown()
        server.server_close()
        if provider is not None:
            provider.shutdown()
        collector.stop()
    return collector


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def explain(traffic: Traffic, collector: Collector) -> list[str]:
    """Why the reports' counts and names are not the HTTP requests the demo made, a line per
    reason, each computed from the traffic and the collector: a reader of the report would
    otherwise take the difference for lost requests."""
    sent = len(traffic.answers)
    aggregator = collector.aggregator
    in_reports = sum(row["req_count"] for row in aggregator.request_report(["script_name"]))
    received = aggregator.requests_total
    unreported = sum(1 for path, _ in traffic.answers if path == _UNREPORTED)
    if in_reports == sent:
        lines = [f"The reports count {_plural(in_reports, 'request')}, one per HTTP request."]
    else:
        lines = [f"The reports count {_plural(in_reports, 'request')}, not {sent}:"]
    if unreported:
        lines.append(
            f"- {_plural(unreported, 'request')} to {_UNREPORTED} are not reported: the app turns"
            " reporting off for them (pynba.enabled = False)"
        )
    if traffic.jobs:
        lines.append(
            f"- {_plural(traffic.jobs, 'background job')} traced with OpenTelemetry are requests"
            f" of their own ({_JOB_SCRIPT}, status 0: not HTTP)"
        )
    if received < traffic.expected:
        lines.append(
            f"- {traffic.expected - received} never arrived: UDP drops packets when the"
            " receiver falls behind, or they were in flight when the demo stopped"
        )
    elif received > traffic.expected:
        lines.append(
            f"- {received - traffic.expected} arrived whose answer the client never saw:"
            " in flight when the demo stopped"
        )
    if in_reports < received:
        lines.append(
            f"- {received - in_reports} left the collector's window ({aggregator.window:g} s,"
            " or its memory budget) before the reports were made"
        )
    names = _naming_lines(traffic)
    if names:
        lines.append("Names and statuses:")
        lines.extend(names)
    return lines


def _naming_lines(traffic: Traffic) -> list[str]:
    """Why the reports' script names and statuses are not the paths the demo asked for."""
    names = []
    products = sum(1 for path, _ in traffic.answers if path.startswith(_PRODUCT))
    if products:
        names.append(
            f"- {_plural(products, 'product page')} ({_PRODUCT}<n>) are one script,"
            f" {_PRODUCT_SCRIPT}: the app names them so (pynba.scriptname)"
        )
    unmatched = sum(1 for _, status in traffic.answers if status in (404, 405))
    if unmatched:
        names.append(
            f"- {_plural(unmatched, 'request')} for unknown paths, answered 404, are one script,"
            " <unmatched>: raw paths would let any scanner fill Pinba's script names"
        )
    failed = Counter(path for path, status in traffic.answers if status >= 500)
    if failed:
        where = ", ".join(sorted(failed))
        names.append(
            f"- {_plural(sum(failed.values()), 'request')} raised in the app ({where}):"
            " reported with status 500"
        )
    return names
