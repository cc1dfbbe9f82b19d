"""A small Django 4.2+/5 project in one module: settings, views and URLs.

Run as ``DJANGO_SETTINGS_MODULE=django_app python django_app.py`` (with this folder on
``PYTHONPATH``, as ``opentelemetry-instrument`` needs the settings before the app starts): it
serves with wsgiref on 127.0.0.1 (see ``_serve``).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import path

DEBUG = False
ROOT_URLCONF = "django_app"
ALLOWED_HOSTS = ["*"]
SECRET_KEY = "only-for-tests"
# AUTH_GATE=1: a middleware answers 401 to requests without credentials, before any URL is
# resolved (an auth gate in front of routing).
MIDDLEWARE: list[str] = ["django_app.auth_gate"] if os.environ.get("AUTH_GATE") else []
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, Any] = {}
USE_TZ = True
LOGGING_CONFIG = None  # Django's own logging setup would print every 404 and 500


def auth_gate(get_response: Any) -> Any:
    def gate(request: HttpRequest) -> HttpResponse:
        if request.headers.get("Authorization") != "Bearer ok":
            return HttpResponse("who are you?", status=401)
        response: HttpResponse = get_response(request)
        return response

    return gate


def product(request: HttpRequest, pid: int) -> HttpResponse:
    with closing(sqlite3.connect(":memory:")) as db:
        cursor = db.cursor()
        for statement in ("select 1", "SELECT 2", "Select 3"):
            cursor.execute(statement)
    return HttpResponse(f"product {pid}")


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("home")


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the app's own error")


urlpatterns = [path("", home), path("product/<int:pid>", product), path("boom", boom)]


def main() -> None:
    from wsgiref.simple_server import WSGIRequestHandler, make_server  # noqa: PLC0415

    import django  # noqa: PLC0415

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from django.core.wsgi import get_wsgi_application  # noqa: PLC0415

    from apps._serve import outside_any_request, serve_until_stdin_closes  # noqa: PLC0415

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    django.setup()
    outside_any_request()
    server = make_server("127.0.0.1", 0, get_wsgi_application(), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    serve_until_stdin_closes(server.server_port, server.shutdown)
    thread.join()


if __name__ == "__main__":
    main()
