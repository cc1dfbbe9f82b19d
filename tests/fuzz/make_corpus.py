"""Writes the fuzzing seed corpus (tests/fuzz/corpus/): real packets, ours and the reference
client's, so that fuzzing starts from valid packets of every shape rather than from nothing.

    python tests/fuzz/make_corpus.py        # ours; PHP's too where php with pinba is installed

The files are committed: the suite's fuzzing session does not need PHP to start from them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

from pynba_exporter import PinbaRequest, PinbaTimer, encode

CORPUS = Path(__file__).parent / "corpus"

PHP_SCRIPTS = {
    "php-no-timers": 'pinba_script_name_set("/index.php"); pinba_flush();',
    "php-timers-tags": (
        'pinba_script_name_set("/shop"); pinba_tag_set("country", "fr");'
        'pinba_tag_set("user", "guest");'
        'pinba_timer_add(["group" => "db::select", "server" => "db1"], 0.25);'
        'pinba_timer_add(["group" => "db::select", "server" => "db1"], 0.5);'
        'pinba_timer_add(["server" => "mc1", "group" => "cache::get"], 0.125);'
        "pinba_flush();"
    ),
    "php-client-class": (
        '$c = new PinbaClient(["{server}"]); $c->setHostname("h"); $c->setServername("s");'
        '$c->setScriptname("/cls"); $c->setRequestTime(0.5); $c->setStatus(404);'
        '$c->setSchema("https"); $c->setTag("a", "b");'
        '$c->addTimer(["group" => "x", "n" => 1], 0.1, 3); $c->send();'
    ),
    "php-many-timers": (
        'pinba_script_name_set("/many");'
        'for ($i = 0; $i < 200; $i++) { pinba_timer_add(["group" => "g" . ($i % 7),'
        ' "n" => "v" . $i], 0.001 * $i); } pinba_flush();'
    ),
}


def ours() -> dict[str, bytes]:
    timers = [PinbaTimer({"group": "db::select", "server": "db1"}, 0.25, 2, 0.1, 0.01),
              PinbaTimer({"group": "cache::get"}, 0.5)]  # fmt: skip
    full = PinbaRequest(
        "web1", "shop.example", "/product/<id>", request_count=1, document_size=18432,
        memory_peak=24117248, request_time=0.043, ru_utime=0.021, ru_stime=0.004,
        status=200, memory_footprint=20971520, schema="https",
        tags={"country": "fr", "user": "guest"}, timers=timers,
    )  # fmt: skip
    big = PinbaRequest(
        "web1", "shop.example", "/big", request_time=0.1,
        timers=[PinbaTimer({"group": f"g{i % 30}", "n": str(i)}, 0.001 * i) for i in range(600)],
    )  # fmt: skip
    nested = PinbaRequest(
        "web1", "shop.example", "/batch", request_time=0.2,
        requests=[PinbaRequest("w", "s", f"/sub{i}", request_time=0.01, timers=timers)
                  for i in range(5)],
    )  # fmt: skip
    return {
        "ours-minimal": encode(PinbaRequest("h", "s", "/")),
        "ours-full": encode(full),
        "ours-full-packed": encode(full, packed=True),
        "ours-big-dictionary": encode(big, packed=True),
        "ours-nested": encode(nested),
        "ours-non-ascii": encode(
            PinbaRequest("h\u00e9", "\u4e2d", "/caf\u00e9", tags={"\u00e9": "\u2603"})
        ),
    }


def php() -> dict[str, bytes]:
    exe = shutil.which("php")
    if exe is None:
        return {}
    out = {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    for name, code in PHP_SCRIPTS.items():
        proc = subprocess.run(
            [exe, "-d", "pinba.enabled=1", "-d", f"pinba.server={address}",
             "-d", "pinba.auto_flush=0", "-r", code.replace("{server}", address)],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        if proc.returncode == 0:
            out[name] = sock.recv(65535)
    sock.close()
    return out


def main() -> None:
    CORPUS.mkdir(exist_ok=True)
    packets = {**ours(), **php()}
    for name, data in packets.items():
        (CORPUS / name).write_bytes(data)
    print(f"{len(packets)} packets in {CORPUS}", file=sys.stderr)


if __name__ == "__main__":
    main()
