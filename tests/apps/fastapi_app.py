"""A small FastAPI app: a parameterised route, an error and a query.

``python fastapi_app.py`` serves it with uvicorn on 127.0.0.1 (see ``_serve``); tests import
:func:`make_app` and :func:`serve_in_thread` to instrument it by hand.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import uvicorn
from fastapi import FastAPI


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/product/{pid}")
    def product(pid: int) -> dict[str, int]:
        with closing(sqlite3.connect(":memory:")) as db:
            cursor = db.cursor()
            for statement in ("select 1", "SELECT 2", "Select 3"):
                cursor.execute(statement)
        return {"pid": pid}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("the app's own error")

    return app


def serve_in_thread(app: FastAPI) -> tuple[int, Callable[[], None]]:
    """Uvicorn on a free port in a thread: the port, and a function that stops it."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port: int = server.servers[0].sockets[0].getsockname()[1]

    def stop() -> None:
        server.should_exit = True
        thread.join(30)

    return port, stop


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from apps._serve import outside_any_request, serve_until_stdin_closes  # noqa: PLC0415

    outside_any_request()
    port, stop = serve_in_thread(make_app())
    serve_until_stdin_closes(port, stop)


if __name__ == "__main__":
    main()
