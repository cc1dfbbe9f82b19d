"""A seeded differential fuzz: random requests sent through the reference client and through
pynba, compared field by field as a Pinba server reads them.

Two pairs of APIs are compared, each with its PHP counterpart:

- ``native``: PHP's functions (``pinba_hostname_set``, ``pinba_tag_set``, ``pinba_timer_add``,
  ``pinba_flush``), which every PHP app's timers go through, against pynba's span model (a
  :class:`RequestSpan`, its request tags and ``add_timer``), which every pynba entry point
  fills. PHP measures the request's time, CPU and memory itself: those are copied into ours.
- ``client``: PHP's ``PinbaClient`` class (every field given) against a :class:`PinbaRequest`
  of :class:`PinbaTimer` sent by :class:`UdpTransport`.

Inputs are drawn from a seeded generator: names and tag values of ASCII, UTF-8, empty strings,
NUL bytes, integers, floats (-0.0, NaN, infinities), booleans and None; 0 to 30 timers, with
tag sets repeated across timers and across requests (the interning of tag sets lives for the
whole process, so one request's ``{"a": False}`` must not change another's ``{"a": 0}``).
Inputs where pynba deliberately differs (docs/wire.md, "Where pynba differs from the reference
client") are not drawn here; tests pin each of those apart.

Each packet is read by :func:`server_view`, a decoder of its own (not the project's), and the
two views must be equal; a differing case is shrunk to a minimal one, printed as Python and PHP.

Run longer on demand::

    python tests/conformance/differential.py --cases 20000 --seed 1
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: the checkout's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pynba_exporter import PinbaRequest, PinbaTimer, UdpTransport
from pynba_exporter.spans import RequestSpan

PHP = shutil.which("php")

# --------------------------------------------------------------------------------------------
# Cases

Scalar = Any  # str | int | float | bool | None
Pairs = list[tuple[Scalar, Scalar]]


@dataclass
class Timer:
    tags: Pairs
    value: float
    hits: int = 1
    ru_utime: float = 0.0
    ru_stime: float = 0.0


@dataclass
class Case:
    api: str  # "native" or "client"
    hostname: str
    server_name: str
    script_name: str
    schema: str
    status: int
    tags: Pairs
    timers: list[Timer]
    # PinbaClient only: the numbers PHP's functions measure themselves.
    numbers: dict[str, Any] = field(default_factory=dict)


ASCII = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789_-./:=?&% "
UNICODE = "éüñßøåçπλжщ中文字日本語🙂🚀"
POOL = ["group", "server", "db", "select", "a", "b", "op", "0", "", "x", "1.5", "-0", "NAN"]


def _text(rng: random.Random, *, nul: bool = True) -> str:
    roll = rng.random()
    if roll < 0.25:
        return rng.choice(POOL)
    if roll < 0.3:
        return ""
    n = rng.randint(1, 24)
    alphabet = ASCII if rng.random() < 0.7 else ASCII + UNICODE
    s = "".join(rng.choice(alphabet) for _ in range(n))
    if nul and rng.random() < 0.05:  # a NUL: PHP writes up to it
        i = rng.randint(0, len(s))
        s = s[:i] + "\0" + s[i:]
    return s


def _short(text: str, size: int) -> str:
    """``text`` cut to at most ``size`` bytes of UTF-8, whole characters."""
    return text.encode()[:size].decode("utf-8", "ignore")


def _number(rng: random.Random) -> float | int:
    roll = rng.random()
    if roll < 0.3:
        return rng.choice([0, 1, -1, 42, 7, 2**31, -(2**40), 10**15])
    if roll < 0.5:
        return rng.choice([0.0, -0.0, 1.0, 0.5, math.nan, math.inf, -math.inf, 1e20, 1e-5, 0.1])
    if roll < 0.7:
        return round(rng.uniform(-1000, 1000), rng.randint(0, 6))
    return rng.uniform(-1, 1) * 10.0 ** rng.randint(-12, 20)


def _value(rng: random.Random) -> Scalar:
    roll = rng.random()
    if roll < 0.6:
        return _text(rng)
    if roll < 0.85:
        return _number(rng)
    if roll < 0.95:
        return rng.choice([True, False])
    return None


def _timer_name(rng: random.Random) -> str:
    # Names PHP's arrays keep as strings: a canonical decimal integer ("5", "-3") becomes an
    # integer key, and PHP drops the timer (a documented difference, tested apart).
    while True:
        name = _text(rng)
        if not _php_int_key(name):
            return name


def _php_int_key(name: str) -> bool:
    if name in ("0", "-0"):
        return name == "0"
    body = name[1:] if name.startswith("-") else name
    return body.isascii() and body.isdigit() and body[0] != "0" and -(2**63) <= int(name) < 2**63


def _seconds(rng: random.Random, *, below: float, negative: bool = False) -> float:
    roll = rng.random()
    if roll < 0.1:
        return rng.choice([0.0, 0.000001, 0.0000019, 0.0000004, 0.000003, 0.5, 0.25])
    if roll < 0.4:  # decimal-looking values, where truncation bites
        return min(round(rng.uniform(0, min(below, 10.0)), rng.randint(1, 6)), below * 0.999)
    if roll < 0.45 and negative:
        return -rng.random()  # 0 on both sides
    return rng.random() * min(below, 10.0 ** rng.randint(-6, 4))


def make_case(seed: int, index: int, api: str) -> Case:
    """Case ``index`` of ``seed``: the same every time, alone or in a batch."""
    rng = random.Random(f"{seed}:{index}:{api}")
    native = api == "native"
    tag_sets: list[Pairs] = []
    timers = []
    for _ in range(rng.choice([0, 0, 1, 2, 3, 5, 8, rng.randint(0, 30)])):
        if tag_sets and rng.random() < 0.3:
            tags = list(rng.choice(tag_sets))  # the same tag set again: merged
            rng.shuffle(tags)  # in another order: still the same set
        else:
            names = {_timer_name(rng) for _ in range(rng.randint(1, 4))}
            tags = [(n, _value(rng)) for n in names]
            tag_sets.append(tags)
        below = 2000.0 if native else 1.0  # PinbaClient: see test_pinba_client_add_timer...
        if native:
            timers.append(Timer(tags, _seconds(rng, below=below, negative=True)))
        else:
            timers.append(
                Timer(
                    tags,
                    _seconds(rng, below=below),
                    rng.choice([1, 1, 1, 2, 3, rng.randint(1, 1000)]),
                    _seconds(rng, below=1.0),
                    _seconds(rng, below=1.0),
                )
            )
    names = {_text(rng) for _ in range(rng.choice([0, 0, 1, 2, 5]))}
    request_tags: Pairs = [(n, _value(rng)) for n in names if n or native or rng.random() < 0.5]
    if native and rng.random() < 0.3:
        request_tags.append((rng.randint(0, 99), _text(rng)))  # a number as a name: its text
    case = Case(
        api,
        hostname=rng.choice(["web1", "", _text(rng)]),
        server_name=rng.choice(["example.com", "", _text(rng)]),
        script_name=rng.choice(["/index", "", _text(rng)]),
        # (pinba_schema_set() keeps 16 bytes: a documented difference)
        schema=rng.choice(["", "", "https", _short(_text(rng), 16 if native else 64)]),
        # (http_response_code(0) leaves the status as it was: the native API never sets 0)
        status=rng.choice([200, 201, 404, 500, 503]) if native else rng.randint(0, 2**32 - 1),
        tags=request_tags,
        timers=timers,
    )
    if not native:
        case.numbers = {
            "request_count": rng.choice([0, 1, rng.randint(0, 2**32 - 1)]),
            "document_size": rng.choice([0, 1234, rng.randint(0, 2**32 - 1)]),
            "memory_peak": rng.choice([0, 2**21, rng.randint(0, 2**32 - 1)]),
            "memory_footprint": rng.choice([0, 2**22, rng.randint(0, 2**32 - 1)]),
            "request_time": _seconds(rng, below=100.0),
            "ru_utime": _seconds(rng, below=10.0),
            "ru_stime": _seconds(rng, below=10.0),
        }
    return case


# --------------------------------------------------------------------------------------------
# The PHP side


def php_literal(v: Scalar) -> str:
    if v is None:
        return "null"
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) if v > -(2**63) else f"({v + 1} - 1)"
    if isinstance(v, float):
        if math.isnan(v):
            return "NAN"
        if math.isinf(v):
            return "INF" if v > 0 else "-INF"
        if v == 0.0:
            return "-0.0" if math.copysign(1.0, v) < 0 else "0.0"
        text = repr(v)
        return text if any(c in text for c in ".en") else text + ".0"
    raw = str(v).encode("utf-8", "surrogateescape")
    return (
        '"'
        + "".join(
            chr(b) if 0x20 <= b < 0x7F and chr(b) not in '"\\$' else f"\\x{b:02x}" for b in raw
        )
        + '"'
    )


def php_array(pairs: Pairs) -> str:
    return "[" + ", ".join(f"{php_literal(n)} => {php_literal(v)}" for n, v in pairs) + "]"


def php_code(case: Case) -> str:
    lit = php_literal
    if case.api == "native":
        lines = [
            f"pinba_hostname_set({lit(case.hostname)});",
            f"pinba_server_name_set({lit(case.server_name)});",
            f"pinba_script_name_set({lit(case.script_name)});",
            f"pinba_schema_set({lit(case.schema)});",
            f"http_response_code({case.status});",
        ]
        lines += [f"pinba_tag_set({lit(str(n))}, {lit(v)});" for n, v in case.tags]
        lines += [f"pinba_timer_add({php_array(t.tags)}, {lit(t.value)});" for t in case.timers]
        lines.append("pinba_flush(null, PINBA_FLUSH_RESET_DATA);")
        return "\n".join(lines)
    n = case.numbers
    lines = [
        "$c = new PinbaClient([$server]);",
        f"$c->setHostname({lit(case.hostname)});",
        f"$c->setServername({lit(case.server_name)});",
        f"$c->setScriptname({lit(case.script_name)});",
        f"$c->setSchema({lit(case.schema)});",
        f"$c->setStatus({case.status});",
        f"$c->setRequestCount({n['request_count']});",
        f"$c->setDocumentSize({n['document_size']});",
        f"$c->setMemoryPeak({n['memory_peak']});",
        f"$c->setMemoryFootprint({n['memory_footprint']});",
        f"$c->setRequestTime({lit(n['request_time'])});",
        f"$c->setRusage([{lit(n['ru_utime'])}, {lit(n['ru_stime'])}]);",
    ]
    lines += [f"$c->setTag({lit(str(k))}, {lit(v)});" for k, v in case.tags]
    lines += [
        f"$c->addTimer({php_array(t.tags)}, {lit(t.value)}, "
        f"[{lit(t.ru_utime)}, {lit(t.ru_stime)}], {t.hits});"
        for t in case.timers
    ]
    lines.append("$c->send();")
    return "\n".join(lines)


class Sink:
    """A UDP socket on 127.0.0.1 whose packets a thread collects, so that a burst of them is
    not lost to the socket's buffer."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.packets: list[bytes] = []
        self._arrived = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._arrived:
                self.packets.append(data)
                self._arrived.notify()

    def take(self, count: int, timeout: float = 20.0) -> list[bytes]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.packets) >= count, timeout)
            got, self.packets = self.packets[:count], self.packets[count:]
        if len(got) < count:
            raise AssertionError(f"{len(got)} of {count} packets arrived")
        return got

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def run_php(cases: list[Case], sink: Sink) -> list[bytes]:
    """One PHP process sends the packets of ``cases``, in order."""
    assert PHP is not None
    code = "<?php\n$server = " + php_literal(sink.address) + ";\n"
    code += "\n".join(php_code(c) for c in cases)
    proc = subprocess.run(
        [PHP, "-d", "pinba.enabled=1", "-d", f"pinba.server={sink.address}",
         "-d", "pinba.auto_flush=0", "-d", "display_errors=stderr", "-d", "error_reporting=0"],
        input=code.encode(), capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"PHP failed: {proc.stderr.decode(errors='replace')[:2000]}")
    return sink.take(len(cases))


# --------------------------------------------------------------------------------------------
# The pynba side


def ours(case: Case, php_view: dict[str, Any]) -> PinbaRequest | RequestSpan:
    """Our request for ``case`` (PHP's own measurements copied in, for the native API)."""
    if case.api == "native":
        span = RequestSpan(
            case.hostname, case.server_name, case.script_name, case.schema,
            tags=dict(case.tags), timer_rusage=False,
        )  # fmt: skip
        for t in case.timers:
            span.add_timer(dict(t.tags), t.value)
        span.status = case.status
        span.seal()
        for name in ("request_time", "ru_utime", "ru_stime", "memory_peak", "memory_footprint",
                     "document_size"):  # fmt: skip
            setattr(span, name, php_view[name])
        return span
    return PinbaRequest(
        case.hostname, case.server_name, case.script_name, schema=case.schema,
        status=case.status, tags=dict(case.tags),
        timers=[PinbaTimer(dict(t.tags), t.value, t.hits, t.ru_utime, t.ru_stime)
                for t in case.timers],
        **case.numbers,
    )  # fmt: skip


def run_ours(cases: list[Case], php_views: list[dict[str, Any]], sink: Sink) -> list[bytes]:
    transport = UdpTransport(sink.address, raise_on_fail=True, max_packet_size=65000)
    packets = []
    try:
        for case, view in zip(cases, php_views):
            assert transport.send(ours(case, view))
            packets += sink.take(1)  # one at a time: a burst from this process could overflow
    finally:
        transport.close()
    return packets


# --------------------------------------------------------------------------------------------
# What a server reads: a decoder of its own


def _fields(data: bytes) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            b = data[i]
            i += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return result

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            out.setdefault(number, []).append(varint())
        elif wire == 5:
            out.setdefault(number, []).append(struct.unpack_from("<I", data, i)[0])  # float bits
            i += 4
        elif wire == 2:
            size = varint()
            out.setdefault(number, []).append(data[i : i + size])
            i += size
        else:
            raise ValueError(f"wire type {wire} in field {number}")
    return out


def _f32(bits: int) -> float:
    return float(struct.unpack("<f", struct.pack("<I", bits))[0])


def server_view(data: bytes) -> dict[str, Any]:
    """The packet as a Pinba server reads it: names as bytes, numbers as sent (float32 bits),
    request tags and timer tags resolved through the dictionary."""
    f = _fields(data)

    def one(n: int, default: Any = 0) -> Any:
        return f.get(n, [default])[0]

    words = f.get(15, [])
    counts = f.get(12, [])
    names, values = f.get(13, []), f.get(14, [])
    timers = []
    at = 0
    for k, count in enumerate(counts):
        tags = tuple((words[names[j]], words[values[j]]) for j in range(at, at + count))
        at += count
        timers.append(
            (tags, f[10][k], f[11][k], f.get(22, [0] * len(counts))[k],
             f.get(23, [0] * len(counts))[k])
        )  # fmt: skip
    return {
        "hostname": one(1, b""),
        "server_name": one(2, b""),
        "script_name": one(3, b""),
        "request_count": one(4),
        "document_size": one(5),
        "memory_peak": one(6),
        "request_time": _f32(one(7)),
        "ru_utime": _f32(one(8)),
        "ru_stime": _f32(one(9)),
        "status": one(16),
        "memory_footprint": one(17),
        "schema": one(19, b""),
        "tags": tuple((words[a], words[b]) for a, b in zip(f.get(20, []), f.get(21, []))),
        "timers": tuple(timers),
    }


def differences(theirs: dict[str, Any], mine: dict[str, Any]) -> list[str]:
    return [
        f"{name}: reference {theirs[name]!r}, pynba {mine[name]!r}"
        for name in theirs
        if theirs[name] != mine[name]
    ]


# --------------------------------------------------------------------------------------------
# Running, comparing, shrinking


@dataclass
class Failure:
    case: Case
    diffs: list[str]

    def report(self) -> str:
        return (
            f"pynba differs from the reference client ({self.case.api} API):\n  "
            + "\n  ".join(self.diffs)
            + f"\nthe case, shrunk:\n{self.case!r}\nas PHP:\n{php_code(self.case)}"
        )


def compare(cases: list[Case], sink: Sink) -> list[Failure]:
    theirs = [server_view(p) for p in run_php(cases, sink)]
    mine = [server_view(p) for p in run_ours(cases, theirs, sink)]
    return [Failure(case, d) for case, t, m in zip(cases, theirs, mine) if (d := differences(t, m))]


def _simpler(case: Case) -> Iterator[Case]:
    """Cases one step simpler than ``case``, the biggest steps first."""
    for i in range(len(case.timers)):
        yield replace(case, timers=case.timers[:i] + case.timers[i + 1 :])
    for i in range(len(case.tags)):
        yield replace(case, tags=case.tags[:i] + case.tags[i + 1 :])
    for i, t in enumerate(case.timers):
        for j in range(len(t.tags)) if len(t.tags) > 1 else ():
            timer = replace(t, tags=t.tags[:j] + t.tags[j + 1 :])
            yield replace(case, timers=[*case.timers[:i], timer, *case.timers[i + 1 :]])
    for name, text in (("hostname", "h"), ("server_name", "s"), ("script_name", "/p"),
                       ("schema", "")):  # fmt: skip
        if getattr(case, name) != text:
            yield replace(case, **{name: text})  # type: ignore[arg-type]
    for i, t in enumerate(case.timers):
        for plain in (replace(t, value=0.5), replace(t, hits=1, ru_utime=0.0, ru_stime=0.0)):
            if plain != t:
                yield replace(case, timers=[*case.timers[:i], plain, *case.timers[i + 1 :]])


def shrink(failure: Failure, sink: Sink, budget: int = 400) -> Failure:
    """The smallest case found, step by step, that still differs (at most ``budget`` runs)."""
    alone = compare([failure.case], sink)
    if not alone:
        note = "(it differs only after the cases before it: state carried over)"
        return Failure(failure.case, [*failure.diffs, note])
    best = alone[0]
    progress = True
    while progress and budget > 0:
        progress = False
        for candidate in _simpler(best.case):
            budget -= 1
            found = compare([candidate], sink)
            if found:
                best, progress = found[0], True
                break
            if budget <= 0:
                break
    return best


def fuzz(
    cases: int, seed: int, *, batch: int = 250, apis: tuple[str, ...] = ("native", "client"),
    progress: Callable[[str], None] | None = None,
) -> list[Failure]:  # fmt: skip
    """``cases`` random cases of each API; the failures found, each shrunk (the first five)."""
    sink = Sink()
    failures: list[Failure] = []
    try:
        for api in apis:
            for start in range(0, cases, batch):
                chunk = [make_case(seed, i, api) for i in range(start, min(cases, start + batch))]
                failures.extend(compare(chunk, sink))
                if progress:
                    progress(f"{api}: {min(cases, start + batch)} cases, {len(failures)} differ")
        return [shrink(f, sink) for f in failures[:5]] + failures[5:]
    finally:
        sink.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20000, help="cases per API (20000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--api", choices=["native", "client"], action="append")
    args = parser.parse_args(argv)
    if PHP is None:
        print("php is not installed (apt-get install -y php-cli php-pinba)", file=sys.stderr)
        return 2
    started = time.monotonic()
    failures = fuzz(
        args.cases, args.seed, apis=tuple(args.api or ("native", "client")),
        progress=lambda line: print(line, file=sys.stderr),
    )  # fmt: skip
    for failure in failures[:5]:
        print(failure.report(), end="\n\n")
    print(f"{len(failures)} of the cases differ ({time.monotonic() - started:.1f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
