"""``RequestContext`` as pynba 0.4.3 had it (``pynba.wsgi.RequestContext`` in 0.5.5).

    from pynba.ctx import RequestContext

    with RequestContext(reporter, environ, prefix="[api]", tags={"app": "shop"}) as ctx:
        ...                     # pynba.timer(), pynba.scriptname... act on this request
    # sent on exit, named prefix + (pynba.scriptname or PATH_INFO)

The context is one request made current in this context (thread, task, greenlet) between
``push()`` and ``pop()``; ``flush()`` sends it (unless ``pynba.enabled`` was set false) and
starts the next one. ``reporter`` is a transport, a :class:`pynba.reporter.Reporter` or a
callable taking the original reporter's arguments. :class:`pynba.PynbaMiddleware` does all of
this itself; this class is for code that drove contexts by hand.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Mapping
from contextvars import Token
from types import TracebackType
from typing import Any

from pynba._compat.options import ReporterOption, as_transport
from pynba_exporter.spans import RequestSpan, current_request, finish_and_send
from pynba_exporter.spans import hostname as _hostname

__all__ = ["RequestContext"]


class RequestContext:
    """One request of a WSGI ``environ``, reported through ``reporter`` (see the module).

    ``config`` keys read: ``prefix`` (put before the script name when sent) and ``tags``
    (request tags); others are kept in ``config`` and ignored, as in the original.
    """

    def __init__(self, reporter: ReporterOption, environ: Mapping[str, Any], **config: Any) -> None:
        self.reporter = reporter
        self.config = config
        #: The current request while pushed (the original's DataCollector), else None.
        self.pynba: RequestSpan | None = None
        #: getrusage() when pushed, as in the original.
        self.resources: Any = None
        self._transport = as_transport(reporter, "context")
        self._scriptname = str(environ.get("PATH_INFO", "") or "")
        self._servername = str(environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or "")
        self._schema = str(environ.get("wsgi.url_scheme") or "")
        self._token: Token[RequestSpan | None] | None = None

    @property
    def scriptname(self) -> str:
        prefix = str(self.config.get("prefix", "") or "")
        if self.pynba is not None and self.pynba.script_name:
            return prefix + self.pynba.script_name
        return prefix + self._scriptname

    @property
    def hostname(self) -> str:
        return self.pynba.hostname if self.pynba is not None else _hostname()

    @property
    def servername(self) -> str:
        return self.pynba.server_name if self.pynba is not None else self._servername

    @property
    def tags(self) -> dict[str, Any]:
        if self.pynba is not None:
            return self.pynba.tags
        return dict(self.config.get("tags") or {})

    def _new(self) -> RequestSpan:
        return RequestSpan(
            _hostname(),
            self._servername.partition(":")[0] or "unknown",
            self._scriptname,
            schema=self._schema,
            tags=dict(self.config.get("tags") or {}),
        )

    def push(self) -> None:
        """Make a new request current."""
        self.pynba = self._new()
        self._token = current_request.set(self.pynba)
        self.resources = resource.getrusage(resource.RUSAGE_SELF)

    def pop(self) -> None:
        """Leave no request current (the one before, if any, again)."""
        token, self._token = self._token, None
        if token is not None:
            with contextlib.suppress(ValueError):  # popped in another context than pushed in
                current_request.reset(token)
        self.pynba = None
        self.resources = None

    def flush(self) -> None:
        """Send the request (the PHP ``pinba_flush()``) and start the next one."""
        request = self.pynba
        if request is None or not request.enabled:
            return
        request.script_name = self.scriptname
        if self._transport is not None:
            finish_and_send(request, self._transport, "context")
        self.pynba = self._new()
        if current_request.get() is request:
            current_request.set(self.pynba)

    def __enter__(self) -> RequestContext:
        self.push()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.flush()
        finally:
            self.pop()
