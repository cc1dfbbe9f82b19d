"""Zero-code: OTEL_PYTHON_CONFIGURATOR=pinba."""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any, Final

from opentelemetry.sdk._configuration import (
    _import_sampler,
    _initialize_components,
    _OTelSDKConfigurator,
)
from opentelemetry.sdk.trace import sampling as _sampling
from opentelemetry.sdk.trace.sampling import Sampler

from pynba_exporter import config
from pynba_exporter._transport import Transport
from pynba_exporter._udp import UdpTransport
from pynba_exporter.address import Endpoint
from pynba_exporter.log import errors
from pynba_exporter.otel import _sampling as _ours
from pynba_exporter.otel._processor import PinbaSpanProcessor
from pynba_exporter.otel._sampling import PinbaSampler

# --------------------------------------------------------------------------------------------
# Zero-code: OTEL_PYTHON_CONFIGURATOR=pinba


#: The name of pynba in OTEL_TRACES_EXPORTER (and of its entry points).
PINBA: Final = "pinba"
_TRACES_EXPORTER: Final = "OTEL_TRACES_EXPORTER"
_CAPTURE_RESPONSE_HEADERS: Final = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE"


class PinbaConfigurator(_OTelSDKConfigurator):
    """The SDK's own configuration (``opentelemetry-instrument``, the ``OTEL_*`` variables),
    and, when ``pinba`` is among ``OTEL_TRACES_EXPORTER``:

    - :class:`PinbaSpanProcessor` instead of the exporter (it sees every span, with CPU);
    - the sampler that ``OTEL_TRACES_SAMPLER`` configures wrapped in :class:`PinbaSampler`, so
      Pinba gets every request while the other exporters get only the sampled traces;
    - ``content-length`` added to the response headers the HTTP server instrumentations record
      (``document_size``).

    Selected by ``OTEL_PYTHON_CONFIGURATOR=pinba`` (entry point ``pinba`` in
    ``opentelemetry_configurator``).
    """

    def _configure(self, **kwargs: Any) -> None:
        names = [n.strip() for n in os.environ.get(_TRACES_EXPORTER, "").split(",") if n.strip()]
        given = list(kwargs.get("trace_exporter_names") or ())
        if PINBA not in names and PINBA not in given:
            super()._configure(**kwargs)  # type: ignore[no-untyped-call]
            return
        kwargs["trace_exporter_names"] = [n for n in given if n != PINBA]
        kwargs["sampler"] = PinbaSampler(kwargs.get("sampler") or _configured_sampler())
        processor = PinbaSpanProcessor()  # a bad option is logged and leaves it disabled
        if processor.enabled:
            _capture_content_length()
            _check_servers(processor.transport)
            _warn_if_idle(processor)
        others = ",".join(n for n in names if n != PINBA) or "none"
        with _environment(_TRACES_EXPORTER, others):  # the SDK must not make the exporter too
            if "span_processors" in inspect.signature(_initialize_components).parameters:
                kwargs["span_processors"] = [processor, *(kwargs.get("span_processors") or ())]
                super()._configure(**kwargs)  # type: ignore[no-untyped-call]
            else:  # older SDKs: added once the provider exists
                super()._configure(**kwargs)  # type: ignore[no-untyped-call]
                add = getattr(_ours._global_provider(), "add_span_processor", None)
                if add is not None:
                    add(processor)


def _configured_sampler() -> Sampler:
    """What the SDK would use: ``OTEL_TRACES_SAMPLER`` (with its entry points), else the
    SDK's default (``parentbased_always_on``)."""
    sampler = _import_sampler(os.environ.get("OTEL_TRACES_SAMPLER"))
    return sampler if sampler is not None else _sampling._get_from_env_or_default()


def _capture_content_length() -> None:
    """Have the HTTP server instrumentations record the response's Content-Length."""
    headers = [h.strip() for h in os.environ.get(_CAPTURE_RESPONSE_HEADERS, "").split(",")]
    headers = [h for h in headers if h]
    if not any(h.lower() in ("content-length", ".*") for h in headers):
        os.environ[_CAPTURE_RESPONSE_HEADERS] = ",".join([*headers, "content-length"])


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


#: How long configuration waits for the first lookup of the servers' names (the app starts
#: meanwhile if the resolver is slow; a failure found later is said all the same).
_RESOLVE_WAIT: Final = 0.5


def _check_servers(transport: Transport) -> None:
    """Look the Pinba servers' names up now, so that a mistyped endpoint is said when the app
    starts, not at its first request (or never, if no request comes)."""
    if not isinstance(transport, UdpTransport):
        return
    names = [ep for ep in transport.servers if not _numeric(ep.host)]
    if not names:
        return

    def resolve() -> None:
        for ep in names:
            _resolve(ep)

    thread = threading.Thread(target=resolve, name="pynba-check-servers", daemon=True)
    thread.start()
    thread.join(_RESOLVE_WAIT)


def _resolve(ep: Endpoint) -> None:
    try:
        socket.getaddrinfo(ep.host, ep.port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        errors.log(
            ("config", "resolve", str(ep)),
            f"pynba: cannot resolve the Pinba server {ep} ({exc}): no request is reported "
            "until it resolves (OTEL_EXPORTER_PINBA_ENDPOINT)",
        )


def _numeric(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return False
    return True


def _warn_if_idle(processor: PinbaSpanProcessor) -> None:
    """Once, ``idle_warning`` seconds after configuration: if no request span has come, say
    so and how to fix it. ``opentelemetry-instrument`` instruments frameworks and libraries,
    never a bare WSGI or ASGI app, which then reports nothing, silently."""
    try:
        delay = float(config.value("idle_warning"))
    except config.ConfigError as exc:
        errors.log(("config", "idle_warning"), f"pynba: {exc}; no idle warning")
        return
    if delay <= 0:
        return

    def check() -> None:
        if processor.requests_seen() or processor._sender.shut_down:
            return
        errors.log(
            ("otel", "idle"),
            f"pynba: Pinba is configured (zero-code) but no request span came in {delay:g} s: "
            "opentelemetry-instrument instruments frameworks (Flask, Django, FastAPI...), not a "
            "bare WSGI or ASGI app; wrap one in opentelemetry.instrumentation.wsgi (or .asgi) "
            "OpenTelemetryMiddleware, or in pynba.monitor; mark a job's root span with "
            "pinba.script_name (OTEL_EXPORTER_PINBA_IDLE_WARNING=0 silences this)",
        )

    timer = threading.Timer(delay, check)
    timer.name = "pynba-idle-warning"
    timer.daemon = True  # never keeps the app from exiting
    timer.start()
