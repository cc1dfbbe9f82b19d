"""Span attributes -> Pinba fields: timer tags, script and server names, what a request is."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from pynba_exporter.naming import UNMATCHED
from pynba_exporter.otel import _sdk
from pynba_exporter.spans import (
    MEASURE,
    RequestSpan,
    TimerSpec,
    hostname,
)

#: Timer tags of a span: the default follows Pinba's conventions (group, category, server).
TimerTags = Callable[[ReadableSpan], Mapping[str, Any]]

TAG_PREFIX: Final = "pinba.tag."
REQUEST_TAG_PREFIX: Final = "pinba.request_tag."
SCRIPT_NAME_ATTRIBUTE: Final = "pinba.script_name"
#: Attributes by which the app marks a root span as a request and names it.
SCRIPT_NAME_ATTRIBUTES: Final = (
    SCRIPT_NAME_ATTRIBUTE, "pinba.scriptname", "pynba.script_name", "pynba.scriptname",
)  # fmt: skip
#: Set on the ASGI instrumentation's internal ``http send``/``http receive`` spans.
ASGI_EVENT_ATTRIBUTE: Final = "asgi.event.type"

# An enum member read from its class costs a Python-level lookup; a module name does not.
_CLIENT: Final = SpanKind.CLIENT
_SERVER: Final = SpanKind.SERVER
_CONSUMER: Final = SpanKind.CONSUMER
_INTERNAL: Final = SpanKind.INTERNAL
_ERROR: Final = StatusCode.ERROR


# --------------------------------------------------------------------------------------------
# Mapping: span attributes -> Pinba fields


def _first(attributes: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    """The first of these attributes that is set and not empty."""
    get = attributes.get
    for name in names:
        value = get(name)
        if value is not None and value != "":
            return value
    return None


def _without_port(host: object) -> str:
    text = str(host)
    if text.startswith("["):
        end = text.find("]")
        return text[: end + 1] if end > 0 else text
    return text.partition(":")[0] if text.count(":") == 1 else text


def _path(value: object) -> str:
    text = str(value)
    if "://" in text:
        return urlsplit(text).path or "/"
    return text.split("?", 1)[0].split("#", 1)[0]


def default_timer_tags(span: ReadableSpan) -> dict[str, str]:
    """Low-cardinality timer tags in Pinba's conventions.

    ``group`` is ``<category>::<operation>``: ``db::SELECT`` (``db.system``/``db.system.name``
    and ``db.operation``/``db.operation.name``, old and new names), ``http::GET`` for HTTP
    clients, ``rpc::<method>``, ``messaging::<operation>``; else the span name. ``category``
    when known, ``server`` (the peer host, without port) when known, ``database`` for database
    spans, and every attribute ``pinba.tag.<name>`` as tag ``<name>``. Statements, full URLs
    and ids never become tags.
    """
    return _timer_tags(span, _sdk.attributes(span))


def _timer_tags(span: ReadableSpan, a: Mapping[str, Any]) -> dict[str, str]:
    # Runs for every child span: attribute lookups inline (``or`` skips None and "" as
    # _first does), no helper calls on the common paths.
    get = a.get
    tags: dict[str, str] = {}
    category = operation = None
    db = get("db.system.name") or get("db.system")
    if db:
        category = "db"
        # One group whatever the case of the statement (select/SELECT/Select), by its first
        # word: SQLAlchemy's operation is "<verb> <database>", and the span name ("SELECT
        # users" in newer conventions) stands in when the attribute is missing.
        operation = get("db.operation.name") or get("db.operation") or span.name
        words = str(operation).split(None, 1)
        operation = words[0].upper() if words else str(operation)
    else:
        method = get("http.request.method") or get("http.method")
        if method and span.kind is _CLIENT:
            category, operation = "http", method
        elif get("rpc.system"):
            category = "rpc"
            operation = get("rpc.method") or span.name
        elif get("messaging.system"):
            category = "messaging"
            operation = get("messaging.operation.name") or get("messaging.operation") or span.name
    if category is not None:
        tags["group"] = f"{category}::{operation}"
        tags["category"] = category
    else:
        tags["group"] = span.name
    server = get("server.address") or get("net.peer.name") or get("net.sock.peer.addr")
    if not server:
        url = get("url.full") or get("http.url")
        if url and span.kind is _CLIENT:
            server = urlsplit(str(url)).hostname
    if server:
        tags["server"] = _without_port(server)
    if db:
        database = get("db.namespace") or get("db.name")
        if database:
            tags["database"] = str(database)
    if TAG_PREFIX in "\0".join(a):  # one C-level scan of the names, not a loop over them
        for name in a:
            if name.startswith(TAG_PREFIX):
                tags[name[len(TAG_PREFIX) :]] = str(a[name])
    return tags


# --------------------------------------------------------------------------------------------
# Default timer tags, cached by what they are made of


#: The attributes the default timer tags read (besides ``pinba.tag.*`` and the URL).
_TAG_SOURCES: Final = frozenset((
    "db.system.name", "db.system", "db.operation.name", "db.operation", "http.request.method",
    "http.method", "rpc.system", "rpc.method", "messaging.system", "messaging.operation.name",
    "messaging.operation", "server.address", "net.peer.name", "net.sock.peer.addr",
    "db.namespace", "db.name",
))  # fmt: skip
#: Read by the default timer tags for the host of a CLIENT span only: a URL, reduced to what
#: decides its host (a full URL with its ids would make every span a new cache entry).
_URL_SOURCES: Final = ("url.full", "http.url")


class _Shape:
    """What spans with one set of attribute names share (CLIENT spans apart: the only kind the
    tags tell from the others): which of their attribute values decide the default timer tags,
    and the timer specs already made from them."""

    __slots__ = ("get", "specs", "urls")

    def __init__(self, client: bool, names: tuple[str, ...]) -> None:
        read = [n for n in names if n in _TAG_SOURCES or n.startswith(TAG_PREFIX)]
        #: The deciding values as one C call: a value for one name, a tuple for more.
        self.get: Callable[[Mapping[str, Any]], Any] | None = itemgetter(*read) if read else None
        self.urls = tuple(n for n in _URL_SOURCES if n in names) if client else ()
        #: Timer specs by (span name, deciding values), all of them text.
        self.specs: dict[Any, TimerSpec] = {}


#: Shapes by attribute names in order, CLIENT spans apart (not keyed by the kind: an enum
#: member's hash is Python code, and a (kind, names) key is one more tuple per span). Shapes
#: and the specs they hold count alike: past _MAX_CACHED the whole cache is emptied, so a flood
#: of distinct span names, attribute names or values cannot grow it.
_SHAPES: dict[tuple[str, ...], _Shape] = {}
_CLIENT_SHAPES: dict[tuple[str, ...], _Shape] = {}
_cached = 0
_MAX_CACHED: Final = 4096


def _url_key(url: str) -> str:
    # A URL's host is decided by what precedes its third "/" ("https://host:port" and any
    # scheme or oddity before it): equal prefixes, equal hosts.
    return "/".join(url.split("/", 3)[:3])


def timer_spec(span: ReadableSpan, a: Mapping[str, Any], name: str, kind: SpanKind) -> TimerSpec:
    """The timer spec of the default timer tags of a span whose attributes, name and kind are
    ``a``, ``name`` and ``kind`` (read by the caller, with the span's other fields).

    Spans of one shape (CLIENT or not, attribute names) with equal names and equal deciding
    values have equal tags: the tags are made once, and each span after that costs two dict
    lookups. Only text values are cached (``1``, ``1.0`` and ``True`` are equal keys with
    different tags); any other value makes the tags the long way.
    """
    global _cached
    client = kind is _CLIENT
    try:
        names = tuple(a)
        shape = (_CLIENT_SHAPES if client else _SHAPES).get(names)
        if shape is None:
            shape = _new_shape(client, names)
        get = shape.get
        key: Any = (name, get(a)) if get is not None else name
        if shape.urls:
            key = (key, *[_url_key(u) if type(u := a.get(n)) is str else u for n in shape.urls])
        spec = shape.specs.get(key)
    except TypeError:  # a value that cannot be a key: not cached
        return TimerSpec.of(_timer_tags(span, a))
    if spec is None:
        spec = TimerSpec.of(_timer_tags(span, a))
        if _textual(key):
            if _cached >= _MAX_CACHED:
                shape = _new_shape(client, names)  # in a cache emptied first
            shape.specs[key] = spec
            _cached += 1
    return spec


def _new_shape(client: bool, names: tuple[str, ...]) -> _Shape:
    global _cached
    if _cached >= _MAX_CACHED:
        _SHAPES.clear()
        _CLIENT_SHAPES.clear()
        _cached = 0
    shape = (_CLIENT_SHAPES if client else _SHAPES)[names] = _Shape(client, names)
    _cached += 1
    return shape


def _textual(key: Any) -> bool:
    if type(key) is str:
        return True
    return type(key) is tuple and all(_textual(k) for k in key)


def _fill(
    request: RequestSpan,
    span: ReadableSpan,
    *,
    own: bool,
    initial: tuple[str, str, str, str] | None = None,
) -> None:
    """The request's fields from its root span. ``own``: the request is the span's (not a
    classic one it belongs to, whose middleware knows better). ``initial``: the names the
    request was opened with; a name the app has set since (``pynba.scriptname = ...``) wins
    over the span's attributes."""
    a = _sdk.attributes(span)
    if REQUEST_TAG_PREFIX in "\0".join(a):  # one C-level scan of the names, as for timers
        for name, value in a.items():
            if name.startswith(REQUEST_TAG_PREFIX):
                request.tags[name[len(REQUEST_TAG_PREFIX) :]] = value
    host0, server0, script0, schema0 = initial or (
        request.hostname,
        request.server_name,
        request.script_name,
        request.schema,
    )
    override = _first(a, SCRIPT_NAME_ATTRIBUTES)
    if override:
        request.script_name = str(override)
    if not own:
        return
    if not override and request.script_name is script0:
        request.script_name = _script_name(span, a)
    service, host = _resource_names(span)
    if request.server_name is server0:
        server = _first(a, _SERVER_NAMES)
        request.server_name = _without_port(server) if server is not None else service
    if request.hostname is host0:
        request.hostname = host
    status = _first(a, _STATUS_NAMES)
    if status is not None:
        number = _int(status)
        if number is not None:
            request.status = number
    elif span.status.status_code is _ERROR:
        request.status = 500
    scheme = _first(a, _SCHEME_NAMES)
    if scheme is not None and request.schema is schema0:
        request.schema = str(scheme)
    size = _first(a, _SIZE_NAMES)
    if isinstance(size, (list, tuple)):
        size = size[0] if size else None
    if size is not None and request.document_size == MEASURE:
        number = _int(size)
        if number is not None:
            request.document_size = number


def _int(value: Any) -> int | None:
    # Not contextlib.suppress: a context manager object per call, on every request.
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


#: The response's Content-Length as the HTTP server instrumentations capture it
#: (``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE`` includes ``content-length``).
CONTENT_LENGTH_ATTRIBUTE: Final = "http.response.header.content_length"

# Where each field of a request is read from, in order of preference (new names, then old).
_SERVER_NAMES: Final = ("server.address", "http.host", "http.server_name")
_STATUS_NAMES: Final = ("http.response.status_code", "http.status_code")
_SCHEME_NAMES: Final = ("url.scheme", "http.scheme")
_SIZE_NAMES: Final = (
    "http.response.body.size",
    "http.response_content_length",
    "http.response_content_length_uncompressed",
    CONTENT_LENGTH_ATTRIBUTE,  # the header, when the instrumentation captures it
)
_METHOD_NAMES: Final = ("http.request.method", "http.method")
_PATH_NAMES: Final = ("url.path", "http.target", "http.url")

# The last resource seen and what it names: (resource, server name, host name). A provider has
# one resource, immutable: its names are read once, not per request.
_last_resource: tuple[object, str, str] = (object(), "", "")


def _resource_names(span: ReadableSpan) -> tuple[str, str]:
    """The server name the span's resource gives (its service without port, unless the SDK's
    default ``unknown_service...``; else ``unknown``) and the host name (``host.name``, else
    this machine's)."""
    global _last_resource
    resource = span.resource
    last = _last_resource
    if last[0] is resource:
        return last[1], last[2]
    attributes = resource.attributes if resource is not None else {}
    service = attributes.get("service.name")
    server = (
        _without_port(service)
        if service and not str(service).startswith("unknown_service")
        else "unknown"
    )
    host = str(attributes.get("host.name") or hostname())
    _last_resource = (resource, server, host)
    return server, host


#: What frameworks answer a request that matched none of their routes (Flask, Django,
#: FastAPI/Starlette alike); their instrumentations then record no ``http.route``.
_NO_ROUTE_STATUSES: Final = frozenset(("404", "405"))

#: Instrumentations that name their server span ``"{method} {route}"`` when a route matched
#: and ``"{method}"`` when none did (Tornado sets no ``http.route`` at all; Django's span keeps
#: its route in the name when a middleware answers before the view is resolved).
_ROUTE_IN_NAME: Final = frozenset((
    "opentelemetry.instrumentation.tornado", "opentelemetry.instrumentation.django",
    "opentelemetry.instrumentation.aiohttp_server", "opentelemetry.instrumentation.falcon",
))  # fmt: skip
#: Instrumentations that set ``http.route`` whenever a route matched, and name the span by
#: the raw path when none did (Flask without a URL rule, Pyramid without a matched route).
_ROUTE_ATTRIBUTE: Final = frozenset((
    "opentelemetry.instrumentation.flask", "opentelemetry.instrumentation.pyramid",
    "opentelemetry.instrumentation.pyramid.callbacks",
))  # fmt: skip


def _slashed(route: str) -> str:
    return route if route.startswith("/") else f"/{route}"


def _script_name(span: ReadableSpan, a: Mapping[str, Any]) -> str:
    """A request's name with bounded cardinality (see docs/opentelemetry.md, Names):

    1. the route template (``http.route``), with a leading ``/``;
    2. for an HTTP server span, the route in the span's name, when its instrumentation puts it
       there (Tornado, Django, aiohttp, Falcon, or any name ``"{method} {x}"`` whose ``x`` is
       not the request's own path); a routing framework's span without a route is a request
       that matched no route: :data:`UNMATCHED`, whatever the status (an auth gate's 401
       before the 404); so is a span named by the method alone while the path is known
       (FastAPI and Starlette through the ASGI instrumentation);
    3. :data:`UNMATCHED` for a request answered 404 or 405 (a bare app: a scanner, a typo);
    4. the path for apps without a router; else the span name (consumers...).
    """
    route = a.get("http.route")
    if route is not None and route != "":
        return _slashed(str(route))
    method = _first(a, _METHOD_NAMES)
    raw = _first(a, _PATH_NAMES)
    path = _path(raw) if raw is not None else None
    name = span.name
    if method is not None and span.kind is _SERVER:
        method = str(method)
        rest = name[len(method) + 1 :].strip() if name.startswith(f"{method} ") else ""
        scope = span.instrumentation_scope
        routing = scope.name if scope is not None else ""
        if routing in _ROUTE_IN_NAME:
            if path == "/":
                return path  # Django's root URL: its empty route is recorded nowhere
            return _slashed(rest) if rest else UNMATCHED
        if routing in _ROUTE_ATTRIBUTE:
            return UNMATCHED
        if rest:
            named = _slashed(_path(rest))
            if path is None:
                path = named  # the stable WSGI instrumentation records the path nowhere else
            elif path != named and not path.endswith(named):  # (a mounted app's PATH_INFO)
                return _slashed(rest)  # a template: "GET /item/{id}" for "/item/3"
        elif name in (method, "HTTP") and path is not None and path != "/":
            return UNMATCHED
        if str(_first(a, _STATUS_NAMES)) in _NO_ROUTE_STATUSES:
            return UNMATCHED
    if path is not None:
        return path
    if method is not None and name.startswith(f"{method} "):
        return _path(name[len(method) + 1 :])
    return name


def _is_request(span: ReadableSpan) -> bool:
    """A local root is a request if it serves (SERVER), consumes (CONSUMER) or is marked:
    ``pinba.script_name``, or an INTERNAL root naming the route it serves (``http.route``: a
    request span made by hand). Never a CLIENT or PRODUCER root: an outgoing call."""
    kind = span.kind
    if kind is _SERVER or kind is _CONSUMER:
        return True
    a = _sdk.attributes(span)
    get = a.get
    # SCRIPT_NAME_ATTRIBUTES, spelled out: no generator per root.
    if (
        get(SCRIPT_NAME_ATTRIBUTE)
        or get("pinba.scriptname")
        or get("pynba.script_name")
        or get("pynba.scriptname")
    ):
        return True
    return kind is _INTERNAL and bool(get("http.route"))


def _is_asgi_event(span: ReadableSpan) -> bool:
    return ASGI_EVENT_ATTRIBUTE in _sdk.attributes(span)


def _seconds(start: int | None, end: int | None) -> float:
    """A span's duration from its start and end times (0 if either is unknown, or if the
    clock went back)."""
    if start is None or end is None or end <= start:
        return 0.0
    return (end - start) / 1e9


def _duration(span: ReadableSpan) -> float:
    return _seconds(span.start_time, span.end_time)


def _is_local_root(span: ReadableSpan) -> bool:
    parent = span.parent
    return parent is None or parent.is_remote
