"""The README's examples work when copied: each is run for real and must send a packet.

The README is the first code a user copies, so its Python blocks are taken from the file itself
(not from a copy kept here) and run: the WSGI example served by a real WSGI server on 127.0.0.1,
the OpenTelemetry example in a fresh interpreter (it sets the global tracer provider, which can
be set once per process). Their address, ``127.0.0.1:30002``, is replaced by a receiving socket's;
the packet that arrives is decoded and checked, so an example that sends nothing, or sends
something else than it says, fails here.
"""

from __future__ import annotations

import http.client
import importlib.util
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from conftest import UdpReceiver

from pynba_exporter import Transport
from pynba_exporter.config import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ADDRESS = "127.0.0.1:30002"  # what the README's examples send to

_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[str]:
    return [code for lang, code in _BLOCK.findall(README.read_text("utf-8")) if lang == language]


def example(marker: str) -> str:
    """The README's one Python block containing ``marker``."""
    found = [code for code in blocks("python") if marker in code]
    assert len(found) == 1, f"expected one README Python block with {marker!r}, got {len(found)}"
    return found[0]


WSGI_MARKER = "from pynba import monitor"
OTEL_MARKER = "from opentelemetry"
PYTEST_MARKER = "def test_"  # a test using the `pinba` fixture


def aimed_at(code: str, receiver: UdpReceiver) -> str:
    """The example sending to ``receiver`` instead of the default Pinba port."""
    assert code.count(ADDRESS) == 1, f"the example should name {ADDRESS} once"
    return code.replace(ADDRESS, receiver.address)


def test_every_python_block_is_run_here() -> None:
    # A new example in the README must get a test here, not go unchecked.
    for code in blocks("python"):
        assert sum(m in code for m in (WSGI_MARKER, OTEL_MARKER, PYTEST_MARKER)) == 1, code


def test_readme_test_command_is_what_ci_runs() -> None:
    # CI runs the README's test command literally: the two must not drift apart.
    ci = (ROOT / ".ci" / "run").read_text("utf-8").splitlines()
    marker = next(i for i, line in enumerate(ci) if line.startswith("# The README's test command"))
    command = ci[marker + 2]
    assert command.startswith("python3 -m venv .venv"), command
    assert f"{command}\n" in blocks("sh"), command  # a block of its own, as written


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[list[WSGIServer]]:
    servers: list[WSGIServer] = []
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def test_wsgi_example(receiver: UdpReceiver, serve: list[WSGIServer]) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_wsgi_example"}
    exec(compile(aimed_at(example(WSGI_MARKER), receiver), "README.md", "exec"), namespace)
    app = namespace["app"]
    reporter: Transport = app.reporter
    try:
        server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
        serve.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        conn.request("GET", "/products?page=2", headers={"Host": "shop.example:8080"})
        response = conn.getresponse()
        body = response.read()
        conn.close()
        assert (response.status, body) == (200, b"apple, pear")
        request = receiver.request()
    finally:
        reporter.close()
    assert request.script_name == "/products"
    assert request.server_name == "shop.example"
    assert request.status == 200
    assert request.document_size == len(body)
    assert request.request_time > 0
    assert dict(request.tags) == {"app": "shop"}
    assert [dict(t.tags) for t in request.timers] == [{"group": "db::select", "server": "db1"}]
    assert request.timers[0].hit_count == 1
    assert receiver.nothing()  # one request, one packet


def _has_otel_sdk() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.sdk") is not None
    except ModuleNotFoundError:  # no opentelemetry package at all
        return False


@pytest.mark.skipif(not _has_otel_sdk(), reason="opentelemetry-sdk is not installed")
def test_opentelemetry_example(receiver: UdpReceiver) -> None:
    code = aimed_at(example(OTEL_MARKER), receiver)
    assert "set_tracer_provider(" in code  # else the spans would go to the no-op provider
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # no warning from the SDK or the library
    request = receiver.request()
    assert request.script_name == "/products"
    assert request.status == 200
    assert request.request_time > 0
    assert [dict(t.tags) for t in request.timers] == [
        {"group": "db::SELECT", "category": "db", "server": "db1"}
    ]
    assert request.timers[0].hit_count == 1
    assert receiver.nothing()


@pytest.mark.slow
def test_pytest_fixture_example(tmp_path: Path) -> None:
    # Run as a user runs it: a file of their own, pytest finding the fixture through the
    # installed entry point; the test passes only if the packets it expects arrived.
    (tmp_path / "test_readme.py").write_text(example(PYTEST_MARKER), "utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n", "utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_readme.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout, proc.stdout


def test_configuration_page_lists_every_option() -> None:
    # The table of options is written by hand for readers; it must not drift from the code's.
    rows = {
        line.split("|")[1].strip(): line
        for line in (ROOT / "docs" / "configuration.md").read_text("utf-8").splitlines()
        if line.startswith("| ") and not line.startswith("| option")
    }
    assert set(rows) == set(OPTIONS)
    for name, option in OPTIONS.items():
        cells = [cell.strip() for cell in rows[name].split("|")]
        assert cells[3] == ", ".join(f"`{env}`" for env in option.env), name
        assert cells[4] in (f"`{option.default}`", f"`{option.default!r}`"), name


# Pages written in other branches: linked from the README before they land here.
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_between_pages_resolve() -> None:
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in _LINK.findall(page.read_text("utf-8")):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.name}: {target}"
            if anchor:
                headings = [
                    _anchor(line.lstrip("#"))
                    for line in file.read_text("utf-8").splitlines()
                    if line.startswith("#")
                ]
                assert anchor in headings, f"{page.name}: {target}"


def test_architecture_names_the_real_modules() -> None:
    # docs/architecture.md walks the data flows module by module: it must name every module
    # of both packages, and no module that does not exist.
    text = (ROOT / "docs" / "architecture.md").read_text("utf-8")
    named = set(re.findall(r"[\w/]*\w\.py\b", text))
    modules = {
        path.relative_to(ROOT).as_posix()
        for package in ("pynba", "pynba_exporter")
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py"
    }

    def means(name: str, module: str) -> bool:
        return module == name or module.endswith(f"/{name}")

    assert [m for m in sorted(modules) if not any(means(n, m) for n in named)] == []
    assert [n for n in sorted(named) if not any(means(n, m) for m in modules)] == []
