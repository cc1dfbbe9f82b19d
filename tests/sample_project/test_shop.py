"""The sample project's tests: the ``pinba`` fixture used as a user would, with no conftest."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

import pytest
import shop

from pynba.testing import PinbaCapture


def get(path: str, method: str = "GET") -> str:
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "SERVER_NAME": "shop.example",
        "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": BytesIO(),
    }  # fmt: skip
    status: list[str] = []

    def start_response(code: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
        status.append(code)
        return lambda data: None

    body = shop.app(environ, start_response)
    b"".join(body)
    getattr(body, "close", lambda: None)()
    return status[0]


def test_checkout_is_reported_with_its_timers(pinba: PinbaCapture) -> None:
    assert get("/checkout", "POST") == "201 Created"
    request = pinba.request("/checkout", tags={"app": "shop", "user_type": "guest"})
    assert request.status == 201
    assert request.document_size == len(b"ordered")
    timer = pinba.timer({"group": "db::insert"}, script_name="/checkout")
    assert timer.hit_count == 2
    assert timer.tags["server"] == "db1"


def test_each_test_starts_empty(pinba: PinbaCapture) -> None:
    assert pinba.requests == []
    get("/nowhere")
    assert [r.status for r in pinba.requests] == [404]


def test_a_nightly_job(pinba: PinbaCapture) -> None:
    shop.nightly_report(1000)
    request = pinba.request("nightly-report", tags={"job": "report"})
    assert [t.tags for t in request.timers] == [{"step": "render"}]


def test_a_traced_function(pinba: PinbaCapture) -> None:
    shop.reindex()
    request = pinba.request("reindex")
    assert [t.tags.get("category") for t in request.timers] == ["db"]


def test_a_failed_expectation_says_what_was_sent(pinba: PinbaCapture) -> None:
    get("/checkout", "POST")
    with pytest.raises(AssertionError) as failed:
        pinba.request("/checkout", tags={"user_type": "member"}, timeout=0)
    message = str(failed.value)
    assert "no Pinba request matched script_name='/checkout'" in message
    assert "'/checkout' status=201" in message and "user_type=guest" in message
