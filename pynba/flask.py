"""Flask: every request reported to Pinba, named after its URL rule.

    from flask import Flask
    from pynba.flask import instrument

    app = Flask(__name__)
    instrument(app, "127.0.0.1:30002")

``GET /product/42`` is reported as ``/product/<int:pid>`` (the rule, blueprint prefixes
included), whatever the id; a URL that matches no rule (404, 405, redirects to the slashed URL)
as ``<unmatched>``. ``pynba.scriptname = ...`` in a view still wins. It wraps ``app.wsgi_app``
in :class:`pynba.PynbaMiddleware`, so streamed bodies are timed until the server closes them;
other options are those of that middleware.
"""

from __future__ import annotations

from typing import Any

from pynba._serving import mark_routed
from pynba._wsgi import PynbaMiddleware
from pynba_exporter import Address
from pynba_exporter.naming import UNMATCHED
from pynba_exporter.spans import current_request

__all__ = ["instrument"]

_OPENED = "pynba.opened_name"


def instrument(
    app: Any, address: Address | None = None, *, unmatched_name: str = UNMATCHED, **options: Any
) -> Any:
    """Report every request of the Flask ``app`` to Pinba, named by URL rule. Returns ``app``;
    its ``wsgi_app`` is now a :class:`pynba.PynbaMiddleware` (``app.wsgi_app.reporter``...)."""
    from flask import request  # noqa: PLC0415 - Flask only when used

    middleware = PynbaMiddleware(app.wsgi_app, address, **options)
    app.wsgi_app = middleware

    def remember_name() -> None:
        span = current_request.get()
        if span is not None:
            request.environ[_OPENED] = span.script_name

    def name_by_rule(exc: BaseException | None = None) -> None:
        span = current_request.get()
        if span is None or span.finished:
            return
        if span.script_name != request.environ.get(_OPENED, span.script_name):
            return  # the app named the request itself
        rule = request.url_rule
        # The middleware puts its prefix before the name when it sends the request.
        span.script_name = unmatched_name if rule is None else rule.rule
        mark_routed(request.environ)  # a 404 of a matched rule is that rule's

    # First of the before-request hooks, so that names set by the app's own hooks win.
    app.before_request_funcs.setdefault(None, []).insert(0, remember_name)
    app.teardown_request(name_by_rule)
    return app
