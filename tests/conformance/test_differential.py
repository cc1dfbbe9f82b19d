"""The seeded differential fuzz against the reference client (see differential.py), and each
deliberate difference pinned: what PHP does, what pynba does instead (docs/wire.md).

``PYNBA_DIFFERENTIAL_CASES`` sets the cases per API (1,500 by default, a few seconds);
``python tests/conformance/differential.py --cases 20000`` is the long run.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import differential
import pytest
from conftest import UdpReceiver
from differential import Case, Sink, Timer, compare, fuzz, make_case, server_view
from test_reference_client import NATIVE_NAMES, _php_has_pinba, client, php_packet

from pynba_exporter import PinbaRequest, PinbaTimer, UdpTransport, decode
from pynba_exporter.spans import RequestSpan

pytestmark = pytest.mark.skipif(
    not _php_has_pinba(),
    reason="the reference client is missing: install php-cli and php-pinba "
    "(apt-get install -y php-cli php-pinba)",
)

CASES = int(os.environ.get("PYNBA_DIFFERENTIAL_CASES", "1500"))


@pytest.mark.expect_pynba_errors  # (what PHP refuses with a warning, pynba logs)
def test_random_requests_read_the_same_as_the_reference_clients() -> None:
    failures = fuzz(CASES, seed=20261203)
    assert not failures, "\n\n".join(f.report() for f in failures[:3])


def test_cases_are_reproducible_alone() -> None:
    assert make_case(7, 123, "native") == make_case(7, 123, "native")
    assert make_case(7, 123, "client") != make_case(7, 124, "client")


def test_a_difference_is_found_and_shrunk_to_a_minimal_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fuzz can fail: a fault put into pynba's timers (a microsecond lost on one tag set)
    is found, and shrunk to the one timer that shows it."""
    original = differential.ours

    def faulty(case: Case, view: dict[str, object]) -> object:
        request = original(case, view)
        if isinstance(request, PinbaRequest) and any(
            ("db", "x") in t.tags.items() for t in request.timers
        ):
            timers = [PinbaTimer(t.tags, t.value * 0.999, t.hit_count) for t in request.timers]
            request = PinbaRequest(request.hostname, request.server_name, request.script_name,
                                   timers=timers)  # fmt: skip
        return request

    monkeypatch.setattr(differential, "ours", faulty)
    case = Case(
        "client", "web", "s", "/p", "", 200, [("a", "1"), ("b", 2)],
        [Timer([("g", "y")], 0.25), Timer([("db", "x"), ("n", 1)], 0.5), Timer([("z", "")], 0.1)],
        {"request_count": 0, "document_size": 0, "memory_peak": 0, "memory_footprint": 0,
         "request_time": 0.0, "ru_utime": 0.0, "ru_stime": 0.0},
    )  # fmt: skip
    sink = Sink()
    try:
        (failure,) = compare([case], sink)
        small = differential.shrink(failure, sink)
    finally:
        sink.close()
    assert small.case.tags == []
    assert [t.tags for t in small.case.timers] == [[("db", "x")]]
    assert small.case.script_name == "/p"
    assert "timers: reference" in small.report()
    assert 'addTimer(["db" => "x"]' in small.report()


# --------------------------------------------------------------------------------------------
# The deliberate differences (docs/wire.md, "Where pynba differs from the reference client")


def _ours(request: object, receiver: UdpReceiver) -> PinbaRequest:
    transport = UdpTransport(receiver.address, raise_on_fail=True)
    try:
        assert transport.send(request)  # type: ignore[arg-type]
    finally:
        transport.close()
    return decode(receiver.packet())


def _span(tags: dict[object, object], value: float = 0.5) -> RequestSpan:
    span = RequestSpan("h", "s", "/p", timer_rusage=False)
    span.add_timer(tags, value)  # type: ignore[arg-type]
    return span.seal()


@pytest.mark.parametrize("name", ["5", 7, True, 1.5])
def test_integer_like_timer_tag_names_keep_the_timer(name: object, receiver: UdpReceiver) -> None:
    """PHP drops a timer whose tag name is an integer in its arrays ("5", 7, true, 1.5 all
    become integer keys): "tags can only have string names". A Python dict has no such
    conversion, and the name is a fine string to a server: pynba sends the timer, the name as
    its text."""
    code = NATIVE_NAMES + f' pinba_timer_add([{name!r} => "v"], 0.5); pinba_flush();'
    php = decode(php_packet(code.replace("True", "true"), receiver, warns=True))
    assert php.timers == ()
    ours = _ours(_span({name: "v"}), receiver)
    text = {"5": "5", 7: "7", True: "1", 1.5: "1.5"}[name]
    assert [t.tags for t in ours.timers] == [{text: "v"}]


def test_timer_times_past_32_bits_are_capped_not_wrapped(receiver: UdpReceiver) -> None:
    """PHP keeps timer seconds in a 32-bit int: 2**31 s and more wrap to negative times (which
    pinba2 refuses, dropping the whole packet), NaN becomes about 2.07e9 s and infinity 0. pynba
    sends NaN as 0 and caps the rest at 4294967295 s."""
    raw = php_packet(
        NATIVE_NAMES + ' pinba_timer_add(["t" => "big"], 2147483648.5); '
        'pinba_timer_add(["t" => "nan"], NAN); pinba_timer_add(["t" => "inf"], INF); '
        "pinba_flush();",
        receiver,
    )
    php = {dict(t[0])[b"t"]: t[2] for t in server_view(raw)["timers"]}
    assert php[b"big"] == 0xCF000000  # -2147483648.0 as float32 bits: refused by pinba2
    assert php[b"inf"] == 0
    span = RequestSpan("h", "s", "/p", timer_rusage=False)
    for tag, value in (("big", 2147483648.5), ("nan", float("nan")), ("inf", float("inf"))):
        span.add_timer({"t": tag}, value)
    ours = {t.tags["t"]: t.value for t in _ours(span.seal(), receiver).timers}
    assert ours == {"big": 2147483648.0, "nan": 0.0, "inf": 4294967296.0}  # (as float32)


def test_pinba_client_hit_counts_below_one_are_one(receiver: UdpReceiver) -> None:
    """PinbaClient::addTimer() sends a hit count of 0 as it is (pinba2 then drops the whole
    packet) and refuses a negative one; pynba counts such a timer once."""
    code = client('$c->setHostname("h"); $c->setScriptname("/p"); '
                  '$c->addTimer(["t" => "zero"], 0.5, [0.0, 0.0], 0);')  # fmt: skip
    php = decode_raw_hits(php_packet(code, receiver))
    assert php == [0]
    ours = _ours(PinbaRequest("h", "s", "/p", timers=[PinbaTimer({"t": "z"}, 0.5, 0)]), receiver)
    assert [t.hit_count for t in ours.timers] == [1]


def decode_raw_hits(raw: bytes) -> list[int]:
    return [t[1] for t in server_view(raw)["timers"]]


def test_negative_pinba_client_timer_is_kept_at_zero(receiver: UdpReceiver) -> None:
    """PinbaClient::addTimer() refuses a negative time (the timer is not sent);
    pinba_timer_add() sends it as 0, and so does pynba whatever the API."""
    code = client(
        '$c->setHostname("h"); $c->setScriptname("/p"); $c->addTimer(["t" => "n"], -1.0);'
    )
    assert server_view(php_packet(code, receiver, warns=True))["timers"] == ()
    code = NATIVE_NAMES + ' pinba_timer_add(["t" => "n"], -1.0); pinba_flush();'
    native = decode(php_packet(code, receiver, warns=True))
    assert [(t.tags, t.value) for t in native.timers] == [({"t": "n"}, 0.0)]
    ours = _ours(PinbaRequest("h", "s", "/p", timers=[PinbaTimer({"t": "n"}, -1.0)]), receiver)
    assert [(t.tags, t.value) for t in ours.timers] == [({"t": "n"}, 0.0)]


def test_native_schema_is_cut_to_16_bytes_ours_is_whole(receiver: UdpReceiver) -> None:
    """pinba_schema_set() keeps 16 bytes (PinbaClient keeps the whole schema); pynba sends it
    whole, as PinbaClient does (a schema is "http" or "https"; pinba_engine keeps 16 bytes)."""
    long = "x-very-long-schema-name"
    php = decode(php_packet(f'pinba_schema_set("{long}"); pinba_flush();', receiver))
    assert php.schema == long[:16]
    span = RequestSpan("h", "s", "/p", long)
    assert _ours(span.seal(), receiver).schema == long


def test_numbers_past_uint32_are_clamped_not_wrapped(receiver: UdpReceiver) -> None:
    """PinbaClient::setStatus(2**32 + 7) sends 7 (the number modulo 2**32); pynba clamps to
    2**32 - 1, so a huge number never reads as a small one."""
    code = client('$c->setHostname("h"); $c->setScriptname("/p"); $c->setStatus(4294967303);')
    assert decode(php_packet(code, receiver)).status == 7
    assert _ours(PinbaRequest("h", "s", "/p", status=2**32 + 7), receiver).status == 2**32 - 1


# --------------------------------------------------------------------------------------------
# What the fuzz found, fixed: each as a test of its own


def test_identical_timers_merge_after_each_is_truncated(receiver: UdpReceiver) -> None:
    code = NATIVE_NAMES + (
        ' pinba_timer_add(["t" => "a"], 0.0000015); pinba_timer_add(["t" => "a"], 0.0000015);'
        ' pinba_timer_add(["t" => "b"], 3.24); pinba_timer_add(["t" => "b"], 3.9); pinba_flush();'
    )
    php = decode(php_packet(code, receiver))
    span = RequestSpan("h", "s", "/p", timer_rusage=False)
    for tag, value in (("a", 0.0000015), ("a", 0.0000015), ("b", 3.24), ("b", 3.9)):
        span.add_timer({"t": tag}, value)
    ours = _ours(span.seal(), receiver)
    assert [t.value for t in ours.timers] == [t.value for t in php.timers]
    assert ours.timers[0].value == pytest.approx(2e-6)  # 1 + 1, not int(3.0)


def test_values_equal_in_python_keep_their_own_text_across_requests(
    receiver: UdpReceiver,
) -> None:
    """0, 0.0, -0.0 and False are equal in Python; PHP sends "0", "0", "-0" and "": one
    request's tag set must not decide another's text (tag sets are interned process-wide)."""
    code = NATIVE_NAMES + (
        ' pinba_timer_add(["a" => false], 0.5); pinba_timer_add(["a" => 0], 0.5);'
        ' pinba_timer_add(["a" => 0.0], 0.5); pinba_timer_add(["a" => -0.0], 0.5); pinba_flush();'
    )
    php = [t.tags["a"] for t in decode(php_packet(code, receiver)).timers]
    assert php == ["", "0", "-0"]  # 0 and 0.0 are the same text: merged
    for value, text in ((False, ""), (0, "0"), (0.0, "0"), (-0.0, "-0")):  # a request each
        assert _ours(_span({"a": value}), receiver).timers[0].tags == {"a": text}


def test_nul_bytes_cut_names_and_tags_as_php_does(receiver: UdpReceiver) -> None:
    code = (
        'pinba_hostname_set("web\\0x"); pinba_server_name_set("s\\0y"); '
        'pinba_script_name_set("/p\\0z"); pinba_tag_set("k\\0a", "v\\0b"); '
        'pinba_timer_add(["g" => "a\\0b"], 1.0); pinba_timer_add(["g" => "a\\0c"], 2.0); '
        "pinba_flush();"
    )
    raw = php_packet(code, receiver)
    span = RequestSpan("web\0x", "s\0y", "/p\0z", tags={"k\0a": "v\0b"}, timer_rusage=False)
    span.add_timer({"g": "a\0b"}, 1.0)
    span.add_timer({"g": "a\0c"}, 2.0)
    span.seal()
    theirs = server_view(raw)
    transport = UdpTransport(receiver.address, raise_on_fail=True)
    try:
        for name in ("request_time", "ru_utime", "ru_stime", "memory_peak", "memory_footprint"):
            setattr(span, name, getattr(decode(raw), name))
        assert transport.send(span)
    finally:
        transport.close()
    mine = receiver.packet()
    assert server_view(mine) == theirs
    assert mine == raw  # and the same bytes: the dictionary holds the whole strings
    assert theirs["hostname"] == b"web"
    assert [t[0] for t in theirs["timers"]] == [((b"g", b"a"),), ((b"g", b"a"),)]


@pytest.mark.expect_pynba_errors
def test_empty_names_as_the_native_functions_treat_them(
    receiver: UdpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """pinba_hostname_set("") sends the machine's name; pinba_tag_set("", v) is refused."""
    code = 'pinba_hostname_set(""); pinba_tag_set("", "v"); pinba_tag_set("k", "w"); pinba_flush();'
    php = decode(php_packet(code, receiver, warns=True))
    with caplog.at_level(logging.WARNING, logger="pynba"):
        ours = _ours(RequestSpan("", "s", "/p", tags={"": "v", "k": "w"}).seal(), receiver)
    assert ours.hostname == php.hostname != ""
    assert ours.tags == php.tags == {"k": "w"}
    assert "no name" in caplog.text


def test_the_long_run_is_available_from_the_command_line() -> None:
    """``differential.py`` runs as a script (the on-demand 20,000-case run), here with 20."""
    script = Path(__file__).with_name("differential.py")
    out = subprocess.run(
        [sys.executable, str(script), "--cases", "20", "--seed", "3"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "\n0 of the cases differ" in "\n" + out.stdout
