"""A small WSGI shop monitored with the classic pynba API, served by wsgiref.

    python examples/wsgi_app.py                 # serve on 127.0.0.1:8000, report to $PINBA_SERVER
    python examples/wsgi_app.py --demo          # drive a few requests, print what Pinba receives

It shows the middleware (``monitor``), timers as ``with`` blocks and decorators, request tags, a
script name set by the app (a route, not the raw URL), and errors reported with status 500.
"""

from __future__ import annotations

import argparse
import http.client
import io
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from pynba import PynbaMiddleware, pynba
from pynba_exporter import decode


@pynba.timer(group="db::select", server="db1")
def load_product(product_id: int) -> dict[str, Any]:
    time.sleep(0.001)  # a query
    return {"id": product_id, "name": f"product {product_id}"}


def render(product: dict[str, Any]) -> Iterator[bytes]:
    with pynba.timer(group="template::render"):
        yield f"<h1>{product['name']}</h1>".encode()
    yield b"<p>in stock</p>"


def shop(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    pynba.tags["user_type"] = "member" if "session" in environ.get("HTTP_COOKIE", "") else "guest"
    if path.startswith("/product/"):
        pynba.scriptname = "/product/<id>"  # low-cardinality: the route, not the URL
        product = load_product(int(path.rsplit("/", 1)[1]))
        start_response("200 OK", [("Content-Type", "text/html")])
        return render(product)  # streamed: timed and counted until the server closes it
    if path == "/checkout":
        with pynba.timer(group="http::POST", server="payments"):
            time.sleep(0.002)
        raise RuntimeError("payment service down")  # reported with status 500
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def get_stderr(self) -> io.StringIO:
        return io.StringIO()  # the demo's 500 is on purpose: no traceback on the terminal


def demo() -> int:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5)
    app = PynbaMiddleware(shop, listener.getsockname(), tags={"app": "shop"})
    server = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    paths = ["/product/1", "/product/2", "/checkout", "/nowhere"]
    for path in paths:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        conn.request("GET", path)
        conn.getresponse().read()
        conn.close()
    for _ in paths:
        r = decode(listener.recv(65535))
        timers = ", ".join(
            f"{t.tags.get('group')!s} {t.value * 1000:.2f} ms x{t.hit_count}" for t in r.timers
        )
        print(f"{r.status} {r.script_name:<15} {r.request_time * 1000:6.2f} ms "
              f"{r.document_size:4d} B  tags {dict(r.tags)}  timers [{timers}]")  # fmt: skip
    server.shutdown()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="drive requests and print packets")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.demo:
        return demo()
    app = PynbaMiddleware(shop, tags={"app": "shop"})
    print(f"serving on http://127.0.0.1:{args.port}/product/{random.randint(1, 99)}")
    make_server("127.0.0.1", args.port, app).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
