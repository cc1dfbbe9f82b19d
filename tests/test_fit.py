"""Packet size: no packet over the limit, request data always kept, nothing counted twice."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pynba_exporter import PinbaRequest, PinbaTimer, decode, encode
from pynba_exporter.wire import FOLDED_TIMER_TAGS, TRUNCATED_TAG, fit

words = st.text(min_size=1, max_size=40) | st.sampled_from(["db", "cache", "x" * 300])
big_requests = st.builds(
    PinbaRequest,
    hostname=words,
    server_name=words,
    script_name=words | st.just("/" + "p" * 5000),
    status=st.integers(0, 600),
    request_time=st.floats(0, 100),
    tags=st.dictionaries(words, words, max_size=30),
    timers=st.lists(
        st.builds(
            PinbaTimer,
            tags=st.dictionaries(st.sampled_from(["group", "server", "op"]), words, min_size=1),
            value=st.floats(0, 10),
            hit_count=st.integers(1, 100),
        ),
        max_size=300,
    ),
)


@given(big_requests, st.integers(256, 65507), st.booleans())
@settings(max_examples=150, deadline=None)
def test_every_packet_fits_and_keeps_the_request(r: PinbaRequest, limit: int, packed: bool) -> None:
    fitted = fit(r, limit, packed=packed)
    assert len(fitted.packets) == 1  # one request, one packet: never split
    data = fitted.packets[0]
    assert len(data) <= limit
    d = decode(data)
    full = decode(encode(r))
    assert (d.status, d.request_time) == (full.status, full.request_time)
    if not fitted.shrunk:
        assert data == encode(r, packed=packed)
        return
    assert TRUNCATED_TAG in d.tags
    # Folding keeps every hit: the folded timer holds what the others lost.
    assert sum(t.hit_count for t in d.timers) == sum(t.hit_count for t in full.timers)
    if fitted.cut_strings == 0:
        assert (d.hostname, d.server_name, d.script_name) == (
            full.hostname,
            full.server_name,
            full.script_name,
        )
        kept = [t for t in d.timers if t.tags != FOLDED_TIMER_TAGS]
        assert all(t in full.timers for t in kept)
        assert len(kept) == len(full.timers) - fitted.folded_timers


def test_biggest_timers_are_kept() -> None:
    timers = [PinbaTimer({"group": f"t{i}"}, (i % 10) / 10) for i in range(400)]
    fitted = fit(PinbaRequest("h", "s", "/p", timers=timers), 1432)
    kept = [t for t in decode(fitted.packets[0]).timers if t.tags != FOLDED_TIMER_TAGS]
    assert kept
    assert (
        min(t.value for t in kept)
        >= max(t.value for t in timers if {"group": t.tags["group"]} not in [k.tags for k in kept])
        - 1e-6
    )


def test_nested_requests_that_do_not_fit_travel_apart() -> None:
    inner = [PinbaRequest("h", "s", f"/n{i}", tags={"pad": "x" * 400}) for i in range(5)]
    r = PinbaRequest("h", "s", "/outer", requests=inner)
    fitted = fit(r, 1000)
    assert all(len(p) <= 1000 for p in fitted.packets)
    assert [decode(p).script_name for p in fitted.packets] == ["/outer"] + [
        f"/n{i}" for i in range(5)
    ]
    assert not fitted.shrunk


def test_huge_strings_are_cut_at_character_boundaries() -> None:
    r = PinbaRequest("ü" * 100000, "s", "/" + "я" * 100000, tags={"k": "€" * 100000})
    fitted = fit(r, 512)
    d = decode(fitted.packets[0])
    assert len(fitted.packets[0]) <= 512
    assert set(d.hostname) == {"ü"}
    assert d.script_name.startswith("/я")
    assert fitted.cut_strings >= 2
