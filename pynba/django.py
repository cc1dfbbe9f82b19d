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

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pynba_exporter import Transport, UdpTransport, config
from pynba_exporter.log import errors
from pynba_exporter.naming import UNMATCHED
from pynba_exporter.spans import RequestSpan, current_request, finish_and_send
from pynba_exporter.spans import hostname as _hostname

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
        transport = options.pop("transport", None)
        address = options.pop("address", None)
        self.prefix: str = options.pop("prefix", "")
        self.tags: dict[str, Any] = dict(options.pop("tags", None) or {})
        self.unmatched_name: str = options.pop("unmatched_name", UNMATCHED)
        self.hostname: str | None = options.pop("hostname", None)
        self.server_name: str | None = options.pop("server_name", None)
        timer_rusage = options.pop("timer_rusage", None)
        self.timer_rusage = config.value("timer_rusage", timer_rusage)
        enabled = options.pop("enabled", None)
        self.enabled = bool(config.value("enabled", enabled))
        self.reporter: Transport = (
            transport if transport is not None else UdpTransport(address, **options)
        )

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

    @staticmethod
    def _outer() -> RequestSpan | None:
        outer = current_request.get()
        if outer is not None and outer.serving and not outer.finished:
            return outer
        return None

    def _open(self, request: Any) -> tuple[RequestSpan, Any]:
        try:
            host = str(request.get_host())
        except Exception:  # DisallowedHost and the like: Django answers 400 itself
            host = str(request.META.get("SERVER_NAME") or "unknown")
        # Without the port; "[v6addr]:port" keeps its brackets.
        host = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0]
        span = RequestSpan(
            self.hostname or _hostname(),
            self.server_name or host,
            self.prefix + str(request.path_info or ""),
            schema=str(request.scheme or ""),
            tags=dict(self.tags) if self.tags else None,
            timer_rusage=self.timer_rusage,
        )
        span.serving = True
        return span, current_request.set(span)

    def _name(self, span: RequestSpan, opened: str, request: Any) -> None:
        if span.script_name != opened:
            return  # the view named the request itself
        try:
            route = route_name(request)
        except Exception as exc:
            errors.log(
                ("django", "route", type(exc).__name__),
                f"pynba: cannot read the request's route: {exc!r}",
                level=logging.ERROR,
            )
            return
        span.script_name = self.unmatched_name if route is None else self.prefix + route

    def _close(self, span: RequestSpan, token: Any, request: Any, response: Any) -> None:
        span.serving = False
        try:
            current_request.reset(token)
        except ValueError:  # reset in another context than set in (sync_to_async threads)
            current_request.set(None)
        self._name(span, self.prefix + str(request.path_info or ""), request)
        if response is None:
            span.status = 500
        else:
            span.status = int(getattr(response, "status_code", 0) or 0)
            if span.document_size < 0 and not getattr(response, "streaming", False):
                span.document_size = len(getattr(response, "content", b""))
        finish_and_send(span, self.reporter, "django")
