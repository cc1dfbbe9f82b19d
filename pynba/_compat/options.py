"""The predecessors' arguments, turned into what the core takes: a reporter into a transport.

A reporter of the original kind (``reporter=`` of ``PynbaMiddleware``, ``ScriptMonitor`` and
``RequestContext``) is a transport, this project's :class:`pynba.reporter.Reporter`, or any
callable taking the original reporter's arguments. Each becomes a :class:`Transport` here, so
that every request leaves by the one way out (finish, seal, the name guards, send).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from pynba._compat.reporter import Reporter
from pynba_exporter import RequestLike, Transport, UdpTransport
from pynba_exporter.log import errors, from_signal_handler, logger
from pynba_exporter.wire import DEFAULT_MAX_PACKET_SIZE

__all__ = ["Legacy", "ReporterOption", "as_transport", "legacy_options"]

#: What ``reporter=`` may be: a transport, the original's ``Reporter``, or any callable taking
#: the original reporter's arguments.
ReporterOption: TypeAlias = "Transport | Reporter | Callable[..., Any]"

# The keyword arguments that configure the transport; any other unknown keyword is kept and
# ignored, as the original middlewares did with their ``**config``.
_TRANSPORT_OPTIONS: Final = frozenset(
    name
    for name, p in inspect.signature(UdpTransport.__init__).parameters.items()
    if p.kind is p.KEYWORD_ONLY
)


class _SentTimer:
    """A timer as handed to a reporter callable: ``tags`` and ``elapsed``, as the original's."""

    __slots__ = ("elapsed", "runs", "tags")

    def __init__(self, tags: Mapping[str, Any], elapsed: float, runs: int) -> None:
        self.tags = tags
        self.elapsed = elapsed
        self.runs = runs

    def __repr__(self) -> str:
        return f"<Timer({dict(self.tags)!r}) elapsed:{self.elapsed}>"


class _CallingTransport(Transport):
    """A reporter callable of the original kind, behind the transport interface."""

    def __init__(self, call: Callable[..., Any], where: str) -> None:
        super().__init__(max_packet_size=DEFAULT_MAX_PACKET_SIZE, packed=False,
                         raise_on_fail=bool(getattr(call, "raise_on_fail", False)))  # fmt: skip
        self._call = call
        self._where = where
        #: The keywords the callable takes (None: any): reporters written to an older
        #: signature (0.5.5's middleware passed no ``status``) get only theirs.
        self._keywords = _keywords(call)

    def send(self, request: RequestLike) -> bool:
        timers = [_SentTimer(t.tags, t.value, t.hit_count) for t in request.timers]
        keywords = {
            "ru_utime": request.ru_utime,
            "ru_stime": request.ru_stime,
            "document_size": request.document_size,
            "memory_peak": request.memory_peak,
            "status": request.status or None,
            "memory_footprint": request.memory_footprint,
            "schema": request.schema or None,
            "tags": request.tags,
        }
        if self._keywords is not None:
            keywords = {k: v for k, v in keywords.items() if k in self._keywords}
        try:
            self._call(
                request.server_name,
                request.hostname,
                request.script_name,
                request.request_time,
                timers,
                **keywords,
            )
        except Exception as exc:
            if self.raise_on_fail or from_signal_handler(exc):
                raise
            errors.log(
                (self._where, "reporter", type(exc).__name__),
                f"pynba: the reporter raised {exc!r}; the request is not reported",
                level=logging.ERROR,
                exc_info=exc,
            )
            return False
        return True


def _keywords(call: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword arguments ``call`` accepts; None when it takes any (or cannot tell)."""
    try:
        parameters = inspect.signature(call).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters if p.kind is not p.POSITIONAL_ONLY)


def as_transport(reporter: ReporterOption | None, where: str) -> Transport | None:
    """The transport a ``reporter=`` stands for (None: none given)."""
    if reporter is None or isinstance(reporter, Transport):
        return reporter
    if (
        isinstance(reporter, Reporter)
        and type(reporter).__call__ is Reporter.__call__
        and type(reporter).send is Reporter.send
    ):
        # Our own Reporter: the whole packet (CPU, memory, status...) through its transport,
        # rather than through the original's narrower call.
        return reporter.transport
    if not callable(reporter):
        raise TypeError(f"reporter must be a transport or a callable, got {reporter!r}")
    return _CallingTransport(reporter, where)


@dataclass(frozen=True)
class Legacy:
    """What an entry point's predecessor arguments come to."""

    transport: Transport | None = None
    transport_options: dict[str, Any] = field(default_factory=dict)


def legacy_options(
    who: str, reporter: ReporterOption | None, ctx_factory: object, config: Mapping[str, Any]
) -> Legacy:
    """0.5.5's ``reporter`` and ``ctx_factory``, and the originals' ``**config``: the transport
    the reporter stands for, and the keywords that configure a transport (others are ignored,
    as the originals ignored them, and said once)."""
    if ctx_factory is not None:
        errors.log(
            (who, "ctx_factory"),
            f"pynba: {who}(ctx_factory=...) is not supported and is ignored; see docs/migration.md",
        )
    ignored = sorted(set(config) - _TRANSPORT_OPTIONS)
    if ignored:
        logger.info("pynba: %s keyword arguments ignored: %s", who, ignored)
    options = {k: v for k, v in config.items() if k in _TRANSPORT_OPTIONS}
    return Legacy(as_transport(reporter, who), options)
