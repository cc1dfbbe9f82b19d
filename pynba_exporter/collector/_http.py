"""The collector's live web page, its JSON API and ``/metrics``: ``pynba collect --http``.

    from pynba_exporter.collector import Collector, WebServer

    with Collector("127.0.0.1:30002") as collector, WebServer(collector, "127.0.0.1:8080") as web:
        print(web.url)                 # http://127.0.0.1:8080/

Paths: ``/`` the page (with ``/static/``: plain JS, CSS and SVG shipped with the package, nothing
from elsewhere, so it works offline); ``/api/config``, ``/api/overview``, ``/api/scripts``,
``/api/script?name=NAME``, ``/api/timers``, ``/api/tags``, ``/api/health``,
``/api/series?by=script&key=NAME&range=day&compare=week`` and ``/api/changes?by=script`` (the
graphs and lists, from the history or the live window: see ``_trends``), and with a store
``/api/history?by=script&since=7200`` (JSON, see ``_api``);
``/metrics`` (Prometheus text format, see ``_metrics``).

The standard library's threading HTTP server, bound to loopback unless a public address is given
explicitly. Names from packets never reach markup on the server: the page is static and sets them
as text; every response forbids inline scripts and foreign resources (Content-Security-Policy),
and a server on loopback answers only requests addressed to a loopback name (no DNS rebinding).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

from pynba_exporter.collector import _api, _trends
from pynba_exporter.collector._history import History
from pynba_exporter.collector._server import Collector, CollectorError, passive_address
from pynba_exporter.collector._store import SqliteStore
from pynba_exporter.log import errors

if TYPE_CHECKING:
    from pynba_exporter.collector._metrics import PrometheusMetrics

__all__ = ["WebServer", "parse_http_address"]

DEFAULT_HTTP: Final = "127.0.0.1:8080"

_STATIC: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/trends.js": ("trends.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_JSON: Final = "application/json"
_NO_METRICS: Final = (
    b"/metrics needs the prometheus_client package: pip install prometheus_client\n"
    b"(in a checkout of this project: pip install -e '.[web]')\n"
)
#: An answer is reused for this many times as long as it took to make (whoever asks): with a
#: big window, polling tabs cost at most about a sixth of a core, and the receiving thread keeps
#: the rest. Answers made in milliseconds are hardly reused at all.
_REUSE: Final = 5.0
_CACHED: Final = 64  # answers kept at most (script pages are keyed by name)
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def parse_http_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or a bare ``PORT`` (on 127.0.0.1) -> (host, port)."""
    text = text.strip()
    if text.isdigit():
        host, port = "127.0.0.1", text
    elif text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"HTTP address {text!r}: write [ADDRESS]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"HTTP address {text!r}: write HOST:PORT, [V6]:PORT or PORT")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"HTTP address {text!r}: write HOST:PORT, [V6]:PORT or PORT")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _metrics(collector: Collector) -> PrometheusMetrics | None:
    # prometheus_client is optional (the "web" extra): the page works without it.
    try:
        from pynba_exporter.collector._metrics import PrometheusMetrics  # noqa: PLC0415
    except ImportError:
        return None
    return PrometheusMetrics(collector)


def _static(name: str) -> bytes:
    return (resources.files("pynba_exporter.collector") / "static" / name).read_bytes()


def _script(web: WebServer, names: list[str] | None) -> tuple[int, bytes, str]:
    # One script answer is made at a time, whatever the number of clients asking for distinct
    # names (each is quick, but several at once would take turns with the receiving thread).
    with web.script_lock:
        data = _api.script(web.collector, names[0]) if names else None
    if data is None:
        return 404, _api.dumps({"error": "no such script in the window"}), _JSON
    return 200, _api.dumps(data), _JSON


def _history(web: WebServer, query: dict[str, list[str]]) -> tuple[int, bytes, str]:
    store = web.store
    if store is None:
        return 404, _api.dumps({"error": "no history: the collector runs without --db"}), _JSON
    # One history answer at a time: a week of minutes is summed by SQLite in a second or
    # two, in a connection of its own (WAL: the writer is never blocked); several at once
    # would only take turns with the receiving thread for the interpreter.
    with web.history_lock:
        try:
            data = _api.history(store.path, query, web.collector.clock(), store.archive)
        except _api.HistoryQueryError as exc:
            return 400, _api.dumps({"error": str(exc)}), _JSON
        except sqlite3.Error as exc:
            return 503, _api.dumps({"error": f"history not readable: {exc}"}), _JSON
    return 200, _api.dumps(data), _JSON


def _trend(web: WebServer, query: dict[str, list[str]], kind: str) -> tuple[int, bytes, str]:
    # /api/series and /api/changes: from the database's history when there is one, else from
    # the live window. One at a time, with /api/history: each reads a range in SQLite (or
    # walks the window's records), outside the aggregator's lock.
    collector = web.collector
    now = collector.clock()
    series = kind == "series"
    try:
        q = _trends.parse(query, now)
        if series and q.key is None and q.dim != "total":
            raise _trends.QueryError("key: the name (or timer key) whose series to draw")
        store = web.store
        with web.history_lock:
            if store is not None:
                read = _trends.series_from_history if series else _trends.changes_from_history
                data = read(store.path, q, now)
            else:
                from_window = _trends.series_from_window if series else _trends.changes_from_window
                aggregator = collector.aggregator
                data = from_window(aggregator.snapshot(), q, now, aggregator.window)
    except _trends.QueryError as exc:
        return 400, _api.dumps({"error": str(exc)}), _JSON
    except sqlite3.Error as exc:
        return 503, _api.dumps({"error": f"history not readable: {exc}"}), _JSON
    return 200, _api.dumps(data), _JSON


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    web: WebServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr for any exception out of a handler; a
        # client that resets its connection (before or while its request is read) is not a
        # bug: one line, to the pynba logger like every other problem of the collector.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            errors.log(
                ("web", "connection", type(exc).__name__),
                f"pynba web page: a connection from {client_address[0]} ended: {exc}",
                level=logging.INFO if isinstance(exc, ConnectionError) else logging.WARNING,
            )
        else:
            errors.log(("web", type(exc).__name__), f"pynba web page: {exc!r}", exc_info=exc)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 30  # a client that stalls does not hold a thread for ever

    def version_string(self) -> str:
        return "pynba"  # not the Python version: nobody needs it

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a page polled every few seconds would flood the terminal

    def end_headers(self) -> None:
        # Here, not in _send: the answers the standard library writes itself (501 for an
        # unsupported method, 400 for a malformed request line) carry them too.
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        super().end_headers()

    def _send(self, status: int, body: bytes, content_type: str, *, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=60" if cache else "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, _api.dumps(data), _JSON)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        web = self.server.web
        try:
            if not web.host_allowed(self.headers.get("Host", "")):
                self._send(HTTPStatus.MISDIRECTED_REQUEST, b"unknown host\n", "text/plain")
                return
            url = urlsplit(self.path)
            path = url.path
            if path in _STATIC:
                name, content_type = _STATIC[path]
                self._send(200, web.static[name], content_type, cache=path != "/")
            elif path == "/metrics":
                metrics = web.metrics
                if metrics is None:
                    # Not "pynba[web]": the pynba on the package index is the old predecessor.
                    text = _NO_METRICS
                    self._send(HTTPStatus.NOT_IMPLEMENTED, text, "text/plain; charset=utf-8")
                else:
                    self._send(*web.cached(path, lambda: (200, *metrics.exposition())))
            elif path == "/api/script":
                # surrogatepass: the page writes a name's undecodable bytes (lone surrogates,
                # U+DC80..U+DCFF) as the UTF-8 form of their code unit, read back exactly here.
                query = parse_qs(url.query, keep_blank_values=True, errors="surrogatepass")
                names = query.get("name")
                self._send(*web.cached(f"script {names!r}", lambda: _script(web, names)))
            elif path == "/api/history":
                query = parse_qs(url.query, keep_blank_values=True)
                key = "history " + repr(sorted(query.items()))
                self._send(*web.cached(key, lambda: _history(web, query)))
            elif path in ("/api/series", "/api/changes"):
                # surrogatepass: a key may be a window's name with undecodable bytes (above).
                query = parse_qs(url.query, keep_blank_values=True, errors="surrogatepass")
                kind = path[5:]
                key = f"{kind} {sorted(query.items())!r}"
                self._send(*web.cached(key, lambda: _trend(web, query, kind)))
            elif path in web.views:
                view = web.views[path]
                self._send(*web.cached(path, lambda: (200, _api.dumps(view()), _JSON)))
            else:
                self._json({"error": "not found"}, 404)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away
        except Exception as exc:  # the page must not take the collector down
            errors.log(("web", type(exc).__name__), f"pynba web page: {exc!r}", exc_info=exc)
            with contextlib.suppress(OSError):  # the answer may be half sent already
                self._json({"error": "internal error"}, 500)


class WebServer:
    """Serves the live page, the JSON API and ``/metrics`` for ``collector``.

    ``listen``: ``HOST:PORT`` (port 0 for a free one), loopback by default; ``timer_tags`` and
    ``request_tags``: the tag sets of the timer and request-tag reports; ``refresh``: seconds
    between the page's updates; ``history``: the per-interval history (5 s x 180 by default).
    Subscribes its history and counters to the collector: create it before traffic arrives.
    """

    def __init__(
        self,
        collector: Collector,
        listen: str = DEFAULT_HTTP,
        *,
        timer_tags: Sequence[Sequence[str]] = (("group",), ("group", "server")),
        request_tags: Sequence[Sequence[str]] = (),
        refresh: float = 3.0,
        history: History | None = None,
    ) -> None:
        self.collector = collector
        self.host, self.port = parse_http_address(listen)
        self.timer_tags = [tuple(t) for t in timer_tags]
        self.request_tags = [tuple(t) for t in request_tags]
        self.refresh = refresh
        self.history = history or History(clock=collector.clock)
        collector.listeners.append(self.history.add)
        self.metrics = _metrics(collector)
        self.static = {name: _static(name) for name, _ in _STATIC.values()}
        self.views: dict[str, Callable[[], Any]] = {
            "/api/config": lambda: _api.config(
                collector, self.history, self.timer_tags, self.request_tags, self.refresh
            ),
            "/api/overview": lambda: _api.overview(collector, self.history),
            "/api/scripts": lambda: _api.scripts(collector),
            "/api/timers": lambda: _api.timers(collector, self.timer_tags),
            "/api/tags": lambda: _api.tags(collector, self.request_tags),
            "/api/health": lambda: _api.health(collector, self.history),
        }
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._cache: dict[str, tuple[float, tuple[int, bytes, str]]] = {}
        self._cache_lock = threading.Lock()
        self._making: dict[str, threading.Lock] = {}
        self._allowed_hosts: frozenset[str] = frozenset()
        self.script_lock = threading.Lock()
        self.history_lock = threading.Lock()

    @property
    def store(self) -> SqliteStore | None:
        """The collector's SQLite store, whose history ``/api/history`` reads (None without
        one, or with one in memory, which no other connection can read)."""
        store = self.collector.store
        if isinstance(store, SqliteStore) and store.path != ":memory:":
            return store
        return None

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the web server is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def cached(
        self, key: str, make: Callable[[], tuple[int, bytes, str]]
    ) -> tuple[int, bytes, str]:
        """The answer for ``key``, made by ``make`` unless a fresh one is at hand; one thread
        makes it while the others asking for it wait."""
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and time.monotonic() < hit[0]:
                return hit[1]
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self._cache_lock:
                hit = self._cache.get(key)
                if hit is not None and time.monotonic() < hit[0]:
                    return hit[1]
            start = time.monotonic()
            answer = make()
            end = time.monotonic()
            with self._cache_lock:
                if len(self._cache) >= _CACHED:
                    self._cache.clear()
                    self._making = {key: making}
                self._cache[key] = (end + _REUSE * (end - start), answer)
        return answer

    def host_allowed(self, header: str) -> bool:
        """On loopback, only requests for a loopback name: a web page elsewhere cannot point a
        name of its own at 127.0.0.1 and read the reports (DNS rebinding)."""
        if not self._allowed_hosts:
            return True  # a public address, given explicitly
        host = header.strip().lower()
        if host.startswith("["):
            host = host[1:].partition("]")[0]
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        return host in self._allowed_hosts or _is_loopback(host)

    def start(self) -> WebServer:
        if self._server is not None:
            return self
        family, sockaddr = passive_address(
            self.host, self.port, socket.SOCK_STREAM, f"serve HTTP on {self.host}:{self.port}"
        )
        server_class = type("_Server", (_Server,), {"address_family": family})
        try:
            server = server_class(sockaddr[:2], _Handler)
        except OSError as exc:
            raise CollectorError(
                exc.errno, f"cannot serve HTTP on {self.host}:{self.port}: {exc.strerror}"
            ) from None
        server.web = self
        bound = str(server.server_address[0])
        if _is_loopback(bound):
            self._allowed_hosts = frozenset({*_LOOPBACK_NAMES, bound, self.host.lower()})
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="pynba-web",
            daemon=True,
        )  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
