"""The wire codec and the transport against one connected UDP send, in interleaved rounds.

    python benchmarks/bench_wire.py

Cases: ``encode`` at 0, 10 and 50 timers (2 tags each, CPU per timer, 2 request tags) in the
reference (unpacked) and packed modes; the official protobuf runtime (upb) setting the same
message's fields from ready-made lists and serializing it, which is less work than ``encode``
does (no merging, no dictionary); ``UdpTransport.send`` (encode and send); ``decode``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from _common import connected_send, draining_listener, rounds, table

from pynba_exporter import PinbaRequest, PinbaTimer, UdpTransport, decode, encode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
try:
    from pinba_proto import Request as PbRequest
except ImportError:  # protobuf is a test extra
    PbRequest = None


def sample(n_timers: int) -> PinbaRequest:
    return PinbaRequest(
        "web1", "shop.example", "/product/<id>",
        document_size=18_432, memory_peak=24_117_248, memory_footprint=20_971_520,
        request_time=0.0432, ru_utime=0.021, ru_stime=0.004, status=200,
        tags={"country": "fr", "user_type": "guest"},
        timers=[
            PinbaTimer({"group": f"db::query{i}", "server": f"db{i % 3}"}, 0.0011 * (i + 1),
                       1, 0.0001, 0.00002)
            for i in range(n_timers)
        ],
    )  # fmt: skip


def protobuf_case(r: PinbaRequest) -> Any:
    """The runtime's share of the work: fields from ready lists, then serialization."""
    words: dict[str, int] = {}
    for k, v in r.tags.items():
        words.setdefault(str(v), len(words))
        words.setdefault(k, len(words))
    for t in r.timers:
        for k, v in t.tags.items():
            words.setdefault(k, len(words))
            words.setdefault(str(v), len(words))
    dictionary = [w.encode() for w in words]
    hits = [t.hit_count for t in r.timers]
    values = [t.value for t in r.timers]
    counts = [len(t.tags) for t in r.timers]
    names = [words[k] for t in r.timers for k in t.tags]
    tvalues = [words[str(v)] for t in r.timers for v in t.tags.values()]
    ru_u = [t.ru_utime for t in r.timers]
    ru_s = [t.ru_stime for t in r.timers]
    tag_names = [words[k] for k in r.tags]
    tag_values = [words[str(v)] for v in r.tags.values()]

    def build() -> bytes:
        m = PbRequest(
            hostname=r.hostname, server_name=r.server_name, script_name=r.script_name,
            request_count=r.request_count, document_size=r.document_size,
            memory_peak=r.memory_peak, request_time=r.request_time, ru_utime=r.ru_utime,
            ru_stime=r.ru_stime, status=r.status, memory_footprint=r.memory_footprint,
        )  # fmt: skip
        m.timer_hit_count.extend(hits)
        m.timer_value.extend(values)
        m.timer_tag_count.extend(counts)
        m.timer_tag_name.extend(names)
        m.timer_tag_value.extend(tvalues)
        m.dictionary.extend(dictionary)
        m.tag_name.extend(tag_names)
        m.tag_value.extend(tag_values)
        m.timer_ru_utime.extend(ru_u)
        m.timer_ru_stime.extend(ru_s)
        return bytes(m.SerializeToString())

    return build


def main() -> None:
    with draining_listener() as address:
        cases: dict[str, Any] = {}
        for n in (0, 10, 50):
            r = sample(n)
            cases[f"encode, {n} timers, reference mode"] = lambda r=r: encode(r)
            cases[f"encode, {n} timers, packed"] = lambda r=r: encode(r, packed=True)
            if PbRequest is not None:
                cases[f"protobuf runtime, {n} timers (fields + serialize)"] = protobuf_case(r)
        transport = UdpTransport(f"{address[0]}:{address[1]}")
        r10 = sample(10)
        sample0 = sample(0)
        cases["UdpTransport.send, 0 timers"] = lambda: transport.send(sample0)
        cases["UdpTransport.send, 10 timers"] = lambda: transport.send(r10)
        data10 = encode(r10)
        cases["decode, 10 timers"] = lambda: decode(data10)
        units, times = rounds(cases, connected_send(address))
        transport.close()
    print(f"Python {sys.version.split()[0]}, {len(times)} cases, ratios to one connected send\n")
    print(table(units, times))


if __name__ == "__main__":
    main()
