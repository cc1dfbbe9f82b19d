"""A small Flask shop: a parameterised route, an error, a sized body, queries, a thread pool.

``python flask_app.py`` serves it with werkzeug on 127.0.0.1 (see ``_serve``); tests import
:func:`make_app` to instrument it by hand.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

from flask import Flask, Response

BODY_SIZE = 1234


def query(*statements: str) -> None:
    with closing(sqlite3.connect(":memory:")) as db:
        cursor = db.cursor()
        for statement in statements:
            cursor.execute(statement)


def make_app() -> Flask:
    app = Flask("shop")

    @app.route("/product/<int:pid>")
    def product(pid: int) -> str:
        # One operation written three ways: one timer group in Pinba.
        query("select 1", "SELECT 2", "Select 3")
        return f"product {pid}"

    @app.route("/boom")
    def boom() -> str:
        raise RuntimeError("the app's own error")

    @app.route("/sized")
    def sized() -> Response:
        return Response(b"x" * BODY_SIZE, mimetype="application/octet-stream")

    @app.route("/pool")
    def pool() -> str:
        with ThreadPoolExecutor(2) as executor:
            executor.submit(query, "select 4").result()
        return "pooled"

    return app


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from werkzeug.serving import make_server  # noqa: PLC0415

    from apps._serve import outside_any_request, serve_until_stdin_closes  # noqa: PLC0415

    outside_any_request()
    server = make_server("127.0.0.1", 0, make_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    serve_until_stdin_closes(server.server_port, server.shutdown)
    thread.join()


if __name__ == "__main__":
    main()
