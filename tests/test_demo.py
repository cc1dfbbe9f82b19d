"""``pynba demo``: it ends as soon as its traffic is reported, and its summary's explanation of
the reports' counts and names agrees with the reports themselves."""

from __future__ import annotations

import re
import sys

import pytest

from pynba._demo import Traffic, explain, run_demo
from pynba_exporter import PinbaRequest, encode
from pynba_exporter.collector import Collector


def _number(lines: list[str], pattern: str) -> int | None:
    """The number the explanation line matching ``pattern`` starts with (None: no such line)."""
    found = [m for m in (re.match(pattern, line) for line in lines) if m]
    assert len(found) <= 1, lines
    return int(found[0].group(1)) if found else None


@pytest.mark.slow
@pytest.mark.parametrize("otel", [True, False], ids=["with-otel", "without-otel"])
def test_the_summary_explains_the_reports(otel: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not otel:
        # As without the [otel] extra: the demo's import of the SDK fails.
        monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    traffic = Traffic()
    collector = run_demo(120, traffic=traffic)
    # (It waits for the reports of the requests it made, each of which arrives here: the
    # explanation below adds up with nothing "never arrived", so it waited for nothing else.)

    rows = {
        r["script_name"]: r["req_count"]
        for r in collector.aggregator.request_report(["script_name"])
    }
    statuses = {
        r["status"]: r["req_count"] for r in collector.aggregator.request_report(["status"])
    }
    in_reports = sum(rows.values())
    lines = explain(traffic, collector)
    assert len(traffic.answers) == 120
    assert lines[0] == f"The reports count {in_reports} requests, not 120:"

    unreported = _number(lines, r"- (\d+) requests? to /health are not reported")
    jobs = _number(lines, r"- (\d+) background jobs? traced with OpenTelemetry")
    # The explanation adds up to what the reports count, and names what they show.
    assert unreported is not None and unreported > 0
    assert 120 - unreported + (jobs or 0) == in_reports
    assert jobs == (20 if otel else None)
    assert rows.get("nightly-export") == jobs
    assert (
        _number(lines, r"- (\d+) product pages? \(/product/<n>\) are one script")
        == rows["/product/<id>"]
    )
    assert (
        _number(lines, r"- (\d+) requests? for unknown paths, answered 404") == rows["<unmatched>"]
    )
    assert _number(lines, r"- (\d+) requests? raised in the app") == statuses.get(500)
    # Nothing was lost or left the window here, so no line says so.
    assert not any("never arrived" in line or "window" in line for line in lines)


def _collector_holding(count: int) -> Collector:
    collector = Collector("127.0.0.1:0")  # fed directly: no socket is opened
    request = PinbaRequest("web1", "shop", "/search", request_time=0.01, status=200)
    collector.handle([encode(request)] * count)
    return collector


def test_counts_that_agree_need_no_reason() -> None:
    traffic = Traffic(answers=[("/search", 200)] * 3)
    assert explain(traffic, _collector_holding(3)) == [
        "The reports count 3 requests, one per HTTP request."
    ]


def test_requests_that_never_arrived_are_said_to_be_missing() -> None:
    traffic = Traffic(answers=[("/search", 200)] * 3)
    assert explain(traffic, _collector_holding(2)) == [
        "The reports count 2 requests, not 3:",
        "- 1 never arrived: UDP drops packets when the receiver falls behind, or they were in"
        " flight when the demo stopped",
    ]
