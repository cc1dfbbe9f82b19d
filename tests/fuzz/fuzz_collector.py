"""Coverage-guided fuzzing of the collector's packet handling (atheris, libFuzzer).

    python tests/fuzz/fuzz_collector.py -runs=200000        # or -max_total_time=600

Every input must be counted, as a valid packet or an invalid one, and nothing may raise. The
test suite runs a bounded session of it (tests/test_fuzz.py) where atheris installs.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from pynba_exporter import PinbaRequest, PinbaTimer, encode
    from pynba_exporter.collector import Collector

COLLECTOR = Collector("127.0.0.1:0", max_records=1000, max_keys=100)
SEED = encode(
    PinbaRequest(
        "h", "s", "/p", request_time=0.5, status=200, tags={"a": "b"},
        timers=[PinbaTimer({"group": "db", "server": "x"}, 0.25, 2, 0.1, 0.0)],
        requests=[PinbaRequest("n", "s", "/nested")],
    )
)  # fmt: skip


def one_input(data: bytes) -> None:
    before_valid = COLLECTOR.aggregator.requests_total
    before_invalid = sum(COLLECTOR.aggregator.invalid.values())
    COLLECTOR.handle([data])
    valid = COLLECTOR.aggregator.requests_total - before_valid
    invalid = sum(COLLECTOR.aggregator.invalid.values()) - before_invalid
    if (valid == 0) == (invalid == 0) or invalid > 1:  # exactly one verdict per packet
        raise AssertionError(f"packet counted {valid} valid, {invalid} invalid: {data!r}")


def main(argv: list[str]) -> None:
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
