"""The serving lifecycle every classic entry point shares: settings, open, close.

WSGI, ASGI, Django, Flask, Starlette and ``ScriptMonitor`` each adapt only their own protocol
(what the status and the body are, what the request is named) and leave the rest here:

- the settings are resolved once, with one policy for bad values: a value given in code that
  cannot work raises at once (a programmer sees it on the first run); a value from the
  environment that cannot work (a typo in ``PINBA_SERVER``, ``PINBA_ENABLED=maybe``) is logged
  once, as an error naming the variable, and Pinba is off for that entry point: the app starts
  and serves, unmeasured, as the OpenTelemetry bridge does with the same variables;
- :meth:`Serving.open` makes the request current, unless it runs inside another monitored
  request (a mounted app: the outer one reports);
- :meth:`Serving.close` leaves the context, applies the prefix, finishes and sends, entirely
  inside the never-raise guard.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping
from contextvars import Token
from typing import Any, TypeAlias, TypeVar, overload

from pynba_exporter import Address, MemoryTransport, Transport, UdpTransport, config
from pynba_exporter.log import errors, from_signal_handler
from pynba_exporter.naming import UNMATCHED
from pynba_exporter.spans import RequestSpan, current_request, finish_and_send, hostname

__all__ = [
    "NO_ROUTE_STATUSES",
    "ROUTED",
    "Serving",
    "host_without_port",
    "mark_routed",
    "unmatched",
]

_Token: TypeAlias = "Token[RequestSpan | None]"
_R = TypeVar("_R", bound=RequestSpan)


def host_without_port(host: str) -> str:
    """``example.com:8080`` -> ``example.com``; ``[::1]:8080`` -> ``[::1]``."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.partition(":")[0]


class Serving:
    """What an entry point (``who``, as its log lines name it) resolved once, and the opening
    and closing of its requests."""

    __slots__ = ("enabled", "host", "prefix", "tags", "timer_rusage", "transport", "who")

    def __init__(
        self,
        who: str,
        address: Address | None = None,
        *,
        transport: Transport | None = None,
        timer_rusage: bool | None = None,
        enabled: bool | None = None,
        prefix: str = "",
        tags: Mapping[str, Any] | None = None,
        **transport_options: Any,
    ) -> None:
        self.who = who
        #: This machine's name, the requests' hostname unless given per request.
        self.host = hostname()
        #: Put before the script name when the request is sent (the originals' ``prefix``).
        self.prefix = prefix
        #: Request tags of every request (a callable value is called per request).
        self.tags: dict[str, Any] = dict(tags or {})
        try:
            self.transport: Transport = (
                transport if transport is not None else UdpTransport(address, **transport_options)
            )
            self.timer_rusage: bool = config.value("timer_rusage", timer_rusage)
            self.enabled: bool = config.value("enabled", enabled)
        except config.ConfigError as exc:
            errors.log(
                ("config", who, str(exc)),
                f"pynba: {exc}; Pinba is off for this {who} (it runs unmeasured)",
                level=logging.ERROR,
            )
            # Nothing is sent; a transport all the same, for the reporter's stats() and
            # raise_on_fail that user code may read.
            self.transport = MemoryTransport(
                max_packet_size=config.OPTIONS["max_packet_size"].default, packed=False
            )
            self.timer_rusage = bool(timer_rusage)
            self.enabled = False

    def outer(self, *, add_tags: bool = True) -> RequestSpan | None:
        """The request of a monitored app this one is mounted in, if any: that one reports
        this request, with our request tags added (never replacing its own) unless
        ``add_tags`` is False (a framework integration behind the WSGI middleware only names
        the request)."""
        outer = current_request.get()
        if outer is None or not outer.serving or outer.finished:
            return None
        if add_tags:
            for name, value in self.tags.items():
                outer.tags.setdefault(name, value)
        return outer

    @overload
    def open(
        self, server_name: str, script_name: str, schema: str = "", host: str | None = None
    ) -> tuple[RequestSpan, _Token]: ...
    @overload
    def open(
        self, server_name: str, script_name: str, schema: str, host: str | None, kind: type[_R]
    ) -> tuple[_R, _Token]: ...
    def open(
        self,
        server_name: str,
        script_name: str,
        schema: str = "",
        host: str | None = None,
        kind: type[RequestSpan] = RequestSpan,
    ) -> tuple[RequestSpan, _Token]:
        """A new request (a ``kind``: the span, or an entry point's subclass of it), current in
        this context until :meth:`close`."""
        request = kind(
            host or self.host,
            server_name,
            script_name,
            schema,
            dict(self.tags) if self.tags else None,
            self.timer_rusage,
        )
        request.serving = True
        return request, current_request.set(request)

    def close(self, request: RequestSpan, token: _Token | None, size: int = 0) -> bool:
        """The request is over: leave the context as it was, take ``size`` as the body's bytes
        unless the app gave its own, put the prefix before the name, finish and send. Never
        raises (unless ``raise_on_fail``). True if the request left."""
        try:
            request.serving = False
            if token is not None:
                try:
                    current_request.reset(token)
                except ValueError:  # closed in another context than opened in
                    if current_request.opened() is request:
                        current_request.set(None)
            if request.document_size < 0:
                request.document_size = size
            if self.prefix:
                request.script_name = self.prefix + str(request.script_name)
        except Exception as exc:
            self.failed("close", exc)
        return finish_and_send(request, self.transport, self.who)

    def failed(self, stage: str, exc: Exception) -> None:
        """Our own failure at ``stage``: logged and counted, the app goes on (raised only with
        ``raise_on_fail``; a signal handler's exception, a request timeout, is the app's)."""
        if from_signal_handler(exc) or self.transport.raise_on_fail:
            raise exc
        errors.log(
            (self.who, stage, type(exc).__name__),
            f"pynba: internal error ({stage}) in the {self.who}: {exc!r}",
            level=logging.ERROR,
            exc_info=exc,
        )


#: A name option of an entry point: a string, or a callable taking what describes the request.
NameOption: TypeAlias = "str | Callable[[Any], str] | None"


def option_value(option: NameOption, source: Any) -> str | None:
    """A name option's value for one request (None: not given)."""
    if option is None:
        return None
    return str(option(source)) if callable(option) else option


#: The answers of a server to a URL that matched none of its routes.
NO_ROUTE_STATUSES: frozenset[int] = frozenset((404, 405))
#: Set in the WSGI environ or ASGI scope by a framework integration that named the request by
#: its router (a route, or ``<unmatched>``): a 404 from a matched route is then a route's.
ROUTED = "pynba.routed"


def mark_routed(carrier: MutableMapping[str, Any] | None) -> None:
    """Say in ``carrier`` (a WSGI environ, an ASGI scope) that a router named the request."""
    if carrier is not None:
        carrier[ROUTED] = True


def unmatched(request: RequestSpan, carrier: Mapping[str, Any], raw: str) -> None:
    """The policy for a request that a bare app (no router known to pynba) answered 404 or
    405: when it is still named by its raw path ``raw`` (neither the app, through
    ``pynba.scriptname``, nor a framework integration named it), it matched no route, and is
    named ``<unmatched>``: a scanner's thousand URLs make one name, not a thousand."""
    if request.script_name == raw and not carrier.get(ROUTED):
        request.script_name = UNMATCHED
