"""Send a few Pinba requests over UDP on 127.0.0.1 and print what arrived, decoded.

Run it as is: ``python examples/send_and_decode.py``. It listens on a free local port, sends
requests the way an app would (request tags, timers with tags, identical timers merged), then
prints each packet as a Pinba server sees it, with its size in both encodings.
"""

from __future__ import annotations

import socket
import sys

from pynba_exporter import PinbaRequest, PinbaTimer, UdpTransport, decode, encode


def sample_requests() -> list[PinbaRequest]:
    return [
        PinbaRequest(
            "web1", "shop.example", "/product/<id>",
            document_size=18_432, memory_peak=24_117_248, memory_footprint=20_971_520,
            request_time=0.0432, ru_utime=0.021, ru_stime=0.004, status=200, schema="https",
            tags={"country": "fr", "user_type": "guest"},
            timers=[
                PinbaTimer({"group": "db::select", "server": "db1"}, 0.0061, 1, 0.001, 0.0002),
                PinbaTimer({"group": "cache::get", "server": "mc1"}, 0.0004),
                PinbaTimer({"server": "db1", "group": "db::select"}, 0.0049, 2),  # merged
                PinbaTimer({"group": "http::GET", "server": "api.payments"}, 0.0183),
            ],
        ),
        PinbaRequest(
            "web1", "shop.example", "/checkout",
            request_time=0.2117, status=500, schema="https", tags={"user_type": "member"},
            timers=[PinbaTimer({"group": "db::insert", "server": "db1"}, 0.0901)],
        ),
        PinbaRequest("worker3", "mailer", "send_newsletter", request_time=3.25, status=0),
    ]  # fmt: skip


def describe(r: PinbaRequest) -> str:
    lines = [
        f"{r.script_name}  on {r.server_name} from {r.hostname}",
        f"  status {r.status}  time {r.request_time * 1000:.1f} ms  "
        f"cpu {r.ru_utime * 1000:.1f}+{r.ru_stime * 1000:.1f} ms  "
        f"doc {r.document_size} B  mem peak {r.memory_peak} B  schema {r.schema or '-'}",
    ]
    if r.tags:
        lines.append("  tags   " + ", ".join(f"{k}={v!s}" for k, v in r.tags.items()))
    for t in r.timers:
        tags = ",".join(f"{k}={v!s}" for k, v in t.tags.items())
        lines.append(f"  timer  {tags:<40} {t.value * 1000:8.3f} ms  hits {t.hit_count}")
    return "\n".join(lines)


def main() -> int:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    transport = UdpTransport(address)
    requests = sample_requests()
    for r in requests:
        transport.send(r)
    print(f"sent {len(requests)} requests to {address}; received:\n")
    for r in requests:
        data, _ = listener.recvfrom(65535)
        print(describe(decode(data)))
        print(f"  {len(data)} bytes as the PHP extension writes it, "
              f"{len(encode(r, packed=True))} packed\n")  # fmt: skip
    stats = transport.stats()
    print(f"transport: {stats.sent} sent, {stats.dropped} dropped")
    transport.close()
    listener.close()
    return 0 if stats.sent == len(requests) else 1


if __name__ == "__main__":
    sys.exit(main())
