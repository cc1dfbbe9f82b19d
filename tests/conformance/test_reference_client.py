"""Byte-for-byte conformance with the reference client, the PHP ``pinba`` extension.

Each scenario runs real PHP code that sends a packet to a UDP socket on 127.0.0.1, then builds
the same request with our API, sends it through our transport to another socket, and compares
the datagrams: identical bytes in the reference (unpacked) mode, identical content packed.

Scenarios that use PHP's request-level measurements (its own request time, CPU and memory) copy
those numbers from PHP's packet into ours: what is compared is everything we build, the names,
the dictionary, the tags, the timers and their merging, and the field layout.

The tests skip, saying why, when PHP with the extension is not installed; ``.ci/run`` installs
it (``apt-get install php-cli php-pinba``).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from conftest import UdpReceiver

from pynba_exporter import PinbaRequest, PinbaTimer, UdpTransport, decode

PHP = shutil.which("php")


def _php_has_pinba() -> bool:
    if PHP is None:
        return False
    out = subprocess.run([PHP, "-m"], capture_output=True, text=True, timeout=30, check=False)
    return "pinba" in out.stdout.split()


pytestmark = pytest.mark.skipif(
    not _php_has_pinba(),
    reason="the reference client is missing: install php-cli and php-pinba "
    "(apt-get install -y php-cli php-pinba)",
)


def php_packet(code: str, receiver: UdpReceiver, *, warns: bool = False) -> bytes:
    """Run PHP ``code`` with the extension sending to ``receiver``; the one packet it sent.

    ``{server}`` in the code is replaced by the receiver's address (for PinbaClient). PHP must
    not warn, unless ``warns`` (where the reference client refuses part of what it is given).
    """
    assert PHP is not None
    proc = subprocess.run(
        [
            PHP,
            "-d", "pinba.enabled=1",
            "-d", f"pinba.server={receiver.address}",
            "-d", "pinba.auto_flush=0",
            "-d", "display_errors=stderr",
            "-r", code.replace("{server}", receiver.address),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert warns == ("Warning" in proc.stderr), proc.stderr
    data = receiver.packet(timeout=10)
    assert receiver.nothing(0.1), "the reference client sent more than one packet"
    return data


def ours(request: PinbaRequest, receiver: UdpReceiver, *, packed: bool = False) -> bytes:
    transport = UdpTransport(receiver.address, packed=packed, raise_on_fail=True)
    try:
        assert transport.send(request)
    finally:
        transport.close()
    return receiver.packet()


def measured(php: PinbaRequest, **ours: object) -> PinbaRequest:
    """Our request: PHP's request-level measurements, our names, tags and timers."""
    return PinbaRequest(
        php.hostname,
        php.server_name,
        php.script_name,
        request_count=php.request_count,
        document_size=php.document_size,
        memory_peak=php.memory_peak,
        request_time=php.request_time,
        ru_utime=php.ru_utime,
        ru_stime=php.ru_stime,
        status=php.status,
        memory_footprint=php.memory_footprint,
        schema=php.schema,
        **ours,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class Scenario:
    name: str
    php: str
    # Builds our request; gets PHP's decoded packet for the numbers PHP measured itself.
    build: Callable[[PinbaRequest], PinbaRequest]


def client(body: str) -> str:
    """PHP code using the PinbaClient class (every field explicit), sent to the receiver."""
    return f'$c = new PinbaClient(["{{server}}"]);\n{body}\n$c->send();'


NATIVE_NAMES = (
    'pinba_hostname_set("web1"); pinba_server_name_set("example.com"); '
    'pinba_script_name_set("/index.php");'
)

SCENARIOS = [
    Scenario(
        "no timers",
        NATIVE_NAMES + " pinba_flush();",
        measured,
    ),
    Scenario(
        "two timers with two tags each",
        NATIVE_NAMES
        + """
        pinba_timer_add(["group" => "db::select", "server" => "db1"], 0.25);
        pinba_timer_add(["server" => "mc1", "group" => "cache::get"], 0.125);
        pinba_flush();""",
        lambda php: measured(
            php,
            timers=[
                PinbaTimer({"group": "db::select", "server": "db1"}, 0.25),
                PinbaTimer({"server": "mc1", "group": "cache::get"}, 0.125),
            ],
        ),
    ),
    Scenario(
        "timers sharing tag names and values",
        NATIVE_NAMES
        + """
        pinba_timer_add(["group" => "db", "op" => "select"], 0.5);
        pinba_timer_add(["group" => "select", "op" => "db"], 0.25);
        pinba_timer_add(["server" => "db", "group" => "group"], 0.125);
        pinba_flush();""",
        lambda php: measured(
            php,
            timers=[
                PinbaTimer({"group": "db", "op": "select"}, 0.5),
                PinbaTimer({"group": "select", "op": "db"}, 0.25),
                PinbaTimer({"server": "db", "group": "group"}, 0.125),
            ],
        ),
    ),
    Scenario(
        "identical tag sets merged, native timers",
        NATIVE_NAMES
        + """
        pinba_timer_add(["group" => "db", "server" => "a"], 0.5);
        pinba_timer_add(["group" => "cache"], 0.001);
        pinba_timer_add(["server" => "a", "group" => "db"], 0.25);
        pinba_timer_add(["group" => "db", "server" => "a"], 1.5);
        pinba_flush();""",
        lambda php: measured(
            php,
            timers=[
                PinbaTimer({"group": "db", "server": "a"}, 0.5),
                PinbaTimer({"group": "cache"}, 0.001),
                PinbaTimer({"server": "a", "group": "db"}, 0.25),
                PinbaTimer({"group": "db", "server": "a"}, 1.5),
            ],
        ),
    ),
    Scenario(
        "identical tag sets merged, hit counts and CPU summed",
        client("""
        $c->setHostname("h"); $c->setServername("s"); $c->setScriptname("/merge");
        $c->addTimer(["group" => "db", "op" => "x"], 0.5, [0.1, 0.2], 3);
        $c->addTimer(["group" => "other"], 0.75);
        $c->addTimer(["op" => "x", "group" => "db"], 0.25, [0.3, 0.7], 5);
        $c->addTimer(["group" => "db", "op" => "x"], 0.125, [0.001, 0.002], 1);"""),
        lambda php: PinbaRequest(
            "h",
            "s",
            "/merge",
            timers=[
                PinbaTimer({"group": "db", "op": "x"}, 0.5, 3, 0.1, 0.2),
                PinbaTimer({"group": "other"}, 0.75),
                PinbaTimer({"op": "x", "group": "db"}, 0.25, 5, 0.3, 0.7),
                PinbaTimer({"group": "db", "op": "x"}, 0.125, 1, 0.001, 0.002),
            ],
        ),
    ),
    Scenario(
        "request tags unsorted, a value equal to a timer tag",
        NATIVE_NAMES
        + """
        pinba_tag_set("zeta", "db"); pinba_tag_set("alpha", "1"); pinba_tag_set("mid", "group");
        pinba_timer_add(["group" => "db", "alpha" => "2"], 0.5);
        pinba_flush();""",
        lambda php: measured(
            php,
            tags={"zeta": "db", "alpha": "1", "mid": "group"},
            timers=[PinbaTimer({"group": "db", "alpha": "2"}, 0.5)],
        ),
    ),
    Scenario(
        "request tags without timers",
        NATIVE_NAMES + ' pinba_tag_set("b", "2"); pinba_tag_set("a", "1"); pinba_flush();',
        lambda php: measured(php, tags={"b": "2", "a": "1"}),
    ),
    Scenario(
        "status, schema and request time set",
        NATIVE_NAMES
        + """
        http_response_code(404); pinba_schema_set("https"); pinba_request_time_set(0.75);
        pinba_flush();""",
        measured,
    ),
    Scenario(
        "numeric and empty tag values",
        NATIVE_NAMES
        + """
        pinba_tag_set("empty", ""); pinba_tag_set("num", "42");
        pinba_timer_add(["int" => 42, "float" => 1.5, "empty" => "", "yes" => true,
                         "big" => 1e20, "third" => 1/3, "small" => 0.00001, "neg" => -7], 0.5);
        pinba_timer_add(["no" => false, "zero" => 0, "one" => 1.0], 0.25);
        pinba_flush();""",
        lambda php: measured(
            php,
            tags={"empty": "", "num": 42},
            timers=[
                PinbaTimer(
                    {
                        "int": 42,
                        "float": 1.5,
                        "empty": "",
                        "yes": True,
                        "big": 1e20,
                        "third": 1 / 3,
                        "small": 0.00001,
                        "neg": -7,
                    },
                    0.5,
                ),
                PinbaTimer({"no": False, "zero": 0, "one": 1.0}, 0.25),
            ],
        ),
    ),
    Scenario(
        "non-ASCII strings",
        """pinba_hostname_set("hôte"); pinba_server_name_set("пример.рф");
        pinba_script_name_set("/产品/ü"); pinba_tag_set("город", "Москва");
        pinba_timer_add(["группа" => "база", "emoji" => "🙂"], 0.5);
        pinba_flush();""",
        lambda php: measured(
            php,
            tags={"город": "Москва"},
            timers=[PinbaTimer({"группа": "база", "emoji": "🙂"}, 0.5)],
        ),
    ),
    Scenario(
        "timer values the reference truncates to whole microseconds",
        NATIVE_NAMES
        + """
        pinba_timer_add(["t" => "a"], 3.57);
        pinba_timer_add(["t" => "b"], 0.0000019);
        pinba_timer_add(["t" => "c"], 0.0000004);
        pinba_timer_add(["t" => "d"], 1.23456789);
        pinba_timer_add(["t" => "e"], 86400.999999);
        pinba_timer_add(["t" => "f"], 0.000003);
        pinba_timer_add(["t" => "g"], 3.24);
        pinba_timer_add(["t" => "g"], 3.9);
        pinba_flush();""",
        lambda php: measured(
            php,
            timers=[
                PinbaTimer({"t": "a"}, 3.57),
                PinbaTimer({"t": "b"}, 0.0000019),
                PinbaTimer({"t": "c"}, 0.0000004),
                PinbaTimer({"t": "d"}, 1.23456789),
                PinbaTimer({"t": "e"}, 86400.999999),
                PinbaTimer({"t": "f"}, 0.000003),  # 2.9999999999999996 us: 2
                PinbaTimer({"t": "g"}, 3.24),
                PinbaTimer({"t": "g"}, 3.9),
            ],
        ),
    ),
    Scenario(
        "timer CPU times, PinbaClient",
        client("""
        $c->setHostname("h"); $c->setServername("s"); $c->setScriptname("/us");
        $c->addTimer(["t" => "a"], 0.57, [0.23456789, 0.0000019]);
        $c->addTimer(["t" => "b"], 0.0000019, [0.5, 0.25], 2);"""),
        lambda php: PinbaRequest(
            "h",
            "s",
            "/us",
            timers=[
                PinbaTimer({"t": "a"}, 0.57, 1, 0.23456789, 0.0000019),
                PinbaTimer({"t": "b"}, 0.0000019, 2, 0.5, 0.25),
            ],
        ),
    ),
    Scenario(
        "many timers: a dictionary past 128 entries",
        NATIVE_NAMES
        + """
        for ($i = 0; $i < 150; $i++) {
            pinba_timer_add(["group" => "g" . $i, "server" => "s" . ($i % 7)], $i / 1000);
        }
        pinba_flush();""",
        lambda php: measured(
            php,
            timers=[
                PinbaTimer({"group": f"g{i}", "server": f"s{i % 7}"}, i / 1000) for i in range(150)
            ],
        ),
    ),
    Scenario(
        "the PinbaClient class, explicit values for every field",
        client("""
        $c->setHostname("web7"); $c->setServername("shop.example"); $c->setScriptname("/cart");
        $c->setRequestCount(3); $c->setDocumentSize(20480); $c->setMemoryPeak(8388608);
        $c->setMemoryFootprint(4194304); $c->setRusage([0.015, 0.003]);
        $c->setRequestTime(0.1234567); $c->setStatus(201); $c->setSchema("https");
        $c->setTag("user", "guest"); $c->setTag("ab", "B"); $c->setTag("n", 7);
        $c->addTimer(["group" => "db::select", "server" => "db1"], 0.0125, [0.001, 0.0005], 4);
        $c->addTimer(["group" => "http::GET", "server" => "api"], 0.05);"""),
        lambda php: PinbaRequest(
            "web7",
            "shop.example",
            "/cart",
            request_count=3,
            document_size=20480,
            memory_peak=8388608,
            memory_footprint=4194304,
            ru_utime=0.015,
            ru_stime=0.003,
            request_time=0.1234567,
            status=201,
            schema="https",
            tags={"user": "guest", "ab": "B", "n": 7},
            timers=[
                PinbaTimer({"group": "db::select", "server": "db1"}, 0.0125, 4, 0.001, 0.0005),
                PinbaTimer({"group": "http::GET", "server": "api"}, 0.05),
            ],
        ),
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_same_bytes_as_the_reference_client(scenario: Scenario, receiver: UdpReceiver) -> None:
    reference = php_packet(scenario.php, receiver)
    request = scenario.build(decode(reference))
    assert ours(request, receiver).hex() == reference.hex()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_same_content_packed(scenario: Scenario, receiver: UdpReceiver) -> None:
    reference = php_packet(scenario.php, receiver)
    request = scenario.build(decode(reference))
    packed = ours(request, receiver, packed=True)
    assert len(packed) <= len(reference)
    assert decode(packed) == decode(reference)


def test_pinba_client_add_timer_is_a_microsecond_low_where_pinba_timer_add_is_not(
    receiver: UdpReceiver,
) -> None:
    """The reference client has two conversions of seconds: pinba_timer_add() takes
    (long)(v * 1e6), PinbaClient::addTimer() float_to_timeval(), seconds and fraction apart,
    which is 1 us low for some values of a second or more. pynba follows the first (the one
    every PHP app's timers use): a documented difference (docs/wire.md)."""
    values = [3.9, 3.57, 86400.999999, 1.1, 2.3]
    timers = "".join(f'$c->addTimer(["t" => "v{i}"], {v!r});' for i, v in enumerate(values))
    code = client('$c->setHostname("h"); $c->setScriptname("/c");' + timers)
    php = decode(php_packet(code, receiver))
    mine = replace(php, timers=[PinbaTimer({"t": f"v{i}"}, v) for i, v in enumerate(values)])
    sent = decode(ours(mine, receiver))
    for v, theirs, ours_ in zip(values, php.timers, sent.timers):
        sec = int(v)
        assert theirs.value == timeval_float(sec * 1_000_000 + int((v - sec) * 1e6))
        assert ours_.value == timeval_float(int(v * 1e6))
    assert [t.value for t in php.timers] != [t.value for t in sent.timers]


def timeval_float(us: int) -> float:
    """The float32 the reference client writes for a time of ``us`` microseconds."""
    sec, rest = divmod(us, 1_000_000)
    return float(struct.unpack("<f", struct.pack("<f", sec + rest / 1e6))[0])


def test_tag_values_text_matches_php_for_many_numbers(receiver: UdpReceiver) -> None:
    values = [
        0.1, 0.7, 1.1, 2.5e-7, 1e15, 123456.789, 1e100, -1e-300, 3.14159265358979,
        2.0**53, 1 / 7, 99.99, 1e14 - 1, 5e-5, 0.00012345,
        # integers of 15 digits: PHP keeps the 14th digit's zeros on a tie rounded down
        969142230832005.0, -648058042133495.0, 100000000000001.0, 123450000000000.0,
        999999999999999.0, 100000000000010.0, 100000000000005.0, 100000000000015.0,
        100000000000004.0, 123456789012305.0, 123456789012306.0, 123456789012303.0,
        120000000000005.0, 1000000000000.5, 10000000000000.5, 10000000000001.5,
    ]  # fmt: skip
    php_values = ", ".join(f'"v{i}" => {v!r}' for i, v in enumerate(values))
    reference = php_packet(
        NATIVE_NAMES + f" pinba_timer_add([{php_values}], 0.5); pinba_flush();", receiver
    )
    php = decode(reference)
    request = measured(php, timers=[PinbaTimer({f"v{i}": v for i, v in enumerate(values)}, 0.5)])
    assert ours(request, receiver) == reference


def test_several_servers_get_the_same_bytes(receiver: UdpReceiver) -> None:
    second = UdpReceiver()
    try:
        code = client(
            '$c->setHostname("h"); $c->setServername("s"); $c->setScriptname("/two");'
        ).replace('["{server}"]', f'["{receiver.address}", "{second.address}"]')
        reference = php_packet(code, receiver)
        assert second.packet() == reference
        transport = UdpTransport([receiver.address, ("127.0.0.1", second.port)])
        assert transport.send(PinbaRequest("h", "s", "/two"))
        transport.close()
        assert receiver.packet() == second.packet() == reference
    finally:
        second.close()


def test_reference_client_packets_decode_to_what_it_was_told(receiver: UdpReceiver) -> None:
    scenario = SCENARIOS[-1]
    php = decode(php_packet(scenario.php, receiver))
    expected = scenario.build(php)
    assert replace(php, timers=()) == replace(decode(ours(expected, receiver)), timers=())
    assert php.timers[0].tags == {"group": "db::select", "server": "db1"}
    assert php.timers[0].hit_count == 4
    assert php.tags == {"ab": "B", "n": "7", "user": "guest"}
