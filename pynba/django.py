"""Django: every request reported to Pinba, named after its URL pattern.

In ``settings.py``, first in the list::

    MIDDLEWARE = [
        "pynba.django.PynbaMiddleware",
        ...
    ]
    PYNBA = {"address": "127.0.0.1:30002", "tags": {"app": "shop"}}   # optional

``GET /product/42`` is reported as ``/product/<int:pid>`` (the resolved route, included
URLconfs' prefixes included; a ``re_path`` gives its regular expression), whatever the id; a
URL that resolves to nothing as ``<unmatched>``. ``pynba.scriptname = ...`` in a view still
wins. Works under WSGI and ASGI (sync and async views). ``PYNBA`` takes ``address``,
``transport``, ``prefix``, ``tags``, ``hostname``, ``server_name``, ``timer_rusage``,
``enabled``, ``unmatched_name`` and the transport's options.

When the WSGI or ASGI app is already wrapped in a pynba middleware (for streamed bodies timed
until the server closes them), this one only names the request that one reports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pynba._serving import Serving, host_without_port, mark_routed
from pynba_exporter import Transport
from pynba_exporter.naming import UNMATCHED
from pynba_exporter.spans import RequestSpan

__all__ = ["PynbaMiddleware", "route_name"]


def route_name(request: Any) -> str | None:
    """The URL pattern the request resolved to, as ``/product/<int:pid>``; None if none."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return None
    route = getattr(match, "route", None)
    if not route:  # an old-style resolver without routes: the view's dotted name
        return str(getattr(match, "view_name", "") or getattr(match, "_func_path", "")) or None
    return "/" + str(route).lstrip("^")


class PynbaMiddleware:
    """Django middleware reporting each request to Pinba (see the module's documentation)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction  # noqa: PLC0415
        from django.conf import settings  # noqa: PLC0415 - Django only when used

        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        options: dict[str, Any] = dict(getattr(settings, "PYNBA", None) or {})
        self.unmatched_name: str = options.pop("unmatched_name", UNMATCHED)
        self.hostname: str | None = options.pop("hostname", None)
        self.server_name: str | None = options.pop("server_name", None)
        self.serving = Serving("Django middleware", **options)
        self.prefix = self.serving.prefix
        self.tags = self.serving.tags
        self.timer_rusage = self.serving.timer_rusage
        self.enabled = self.serving.enabled
        self.reporter: Transport = self.serving.transport

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self._acall(request)
        if not self.enabled:
            return self.get_response(request)
        outer = self._outer()
        if outer is not None:
            opened = outer.script_name
            response = self.get_response(request)
            self._name(outer, opened, request)
            return response
        span, token = self._open(request)
        try:
            response = self.get_response(request)
        except BaseException:
            self._close(span, token, request, None)
            raise
        self._close(span, token, request, response)
        return response

    async def _acall(self, request: Any) -> Any:
        get_response: Callable[[Any], Awaitable[Any]] = self.get_response
        if not self.enabled:
            return await get_response(request)
        outer = self._outer()
        if outer is not None:
            opened = outer.script_name
            response = await get_response(request)
            self._name(outer, opened, request)
            return response
        span, token = self._open(request)
        try:
            response = await get_response(request)
        except BaseException:
            self._close(span, token, request, None)
            raise
        self._close(span, token, request, response)
        return response

    def _outer(self) -> RequestSpan | None:
        return self.serving.outer(add_tags=False)

    def _open(self, request: Any) -> tuple[RequestSpan, Any]:
        try:
            host = str(request.get_host())
        except Exception:  # DisallowedHost and the like: Django answers 400 itself
            host = str(request.META.get("SERVER_NAME") or "unknown")
        return self.serving.open(
            self.server_name or host_without_port(host),
            str(request.path_info or ""),
            str(request.scheme or ""),
            self.hostname,
        )

    def _name(self, span: RequestSpan, opened: str, request: Any) -> None:
        if span.script_name != opened:
            return  # the view named the request itself
        try:
            route = route_name(request)
        except Exception as exc:
            self.serving.failed("route", exc)
            return
        span.script_name = self.unmatched_name if route is None else route
        # Behind pynba's WSGI or ASGI middleware: a 404 of a resolved route is that route's.
        scope = getattr(request, "scope", None)
        mark_routed(scope if isinstance(scope, dict) else getattr(request, "META", None))

    def _close(self, span: RequestSpan, token: Any, request: Any, response: Any) -> None:
        try:
            self._name(span, str(request.path_info or ""), request)
            if response is None:
                span.status = 500
            else:
                span.status = int(getattr(response, "status_code", 0) or 0)
                if span.document_size < 0 and not getattr(response, "streaming", False):
                    span.document_size = len(getattr(response, "content", b""))
        except Exception as exc:
            self.serving.failed("close", exc)
        self.serving.close(span, token)
