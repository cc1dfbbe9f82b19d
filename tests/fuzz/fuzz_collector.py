"""Coverage-guided fuzzing of the collector's packet handling (atheris, libFuzzer).

    python tests/fuzz/fuzz_collector.py WORKDIR tests/fuzz/corpus -max_total_time=600 \
        -max_len=65507

Starts from the seed corpus (tests/fuzz/corpus: real packets, ours and the PHP extension's,
written by make_corpus.py) and mutates them up to the largest datagram. For every input:
exactly one verdict (valid, with its requests counted, or invalid by reason), nothing raises.
Every 500 inputs the reports, the status and their text rendering are computed too, and the
text must hold no character a terminal acts upon; then a line of statistics is printed
(``pynba-fuzz: ...``), the last of which the suite's bounded session (tests/test_fuzz.py)
checks: valid packets were reached, large inputs were tried.
"""

from __future__ import annotations

import sys
import unicodedata

import atheris

with atheris.instrument_imports():
    from pynba_exporter.collector import Collector, reports_text

COLLECTOR = Collector("127.0.0.1:0", max_bytes=8 * 1024 * 1024, max_keys=100,
                      request_tags=[("a",)])  # fmt: skip
STATS = {"inputs": 0, "valid": 0, "invalid": 0, "largest": 0, "largest_valid": 0, "reports": 0}


def _unsafe(text: str) -> list[str]:
    return [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs")]


def one_input(data: bytes) -> None:
    a = COLLECTOR.aggregator
    before_valid = a.requests_total
    before_invalid = sum(a.invalid.values())
    COLLECTOR.handle([data])
    valid = a.requests_total - before_valid
    invalid = sum(a.invalid.values()) - before_invalid
    if (valid == 0) == (invalid == 0) or invalid > 1:  # exactly one verdict per packet
        raise AssertionError(f"packet counted {valid} valid, {invalid} invalid: {data[:200]!r}")
    STATS["inputs"] += 1
    STATS["largest"] = max(STATS["largest"], len(data))
    if valid:
        STATS["valid"] += 1
        STATS["largest_valid"] = max(STATS["largest_valid"], len(data))
    else:
        STATS["invalid"] += 1
    if STATS["inputs"] % 500 == 0:
        text = reports_text(COLLECTOR, [("group",), ("group", "server")], 5, [("a",)])
        bad = _unsafe(text)
        if bad:
            raise AssertionError(f"raw control characters in the text reports: {bad[:5]!r}")
        STATS["reports"] += 1
        if a.status()["window_bytes"] > a.max_bytes:
            raise AssertionError("the window outgrew its budget")
        _report()  # libFuzzer ends the process without running atexit: the last line counts


def _report() -> None:
    print("pynba-fuzz: " + " ".join(f"{k}={v}" for k, v in STATS.items()), file=sys.stderr)


def main(argv: list[str]) -> None:
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
