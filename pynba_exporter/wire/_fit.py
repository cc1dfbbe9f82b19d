"""``fit``: one request as packets no larger than a size limit, losing as little as possible."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from pynba_exporter._model import PinbaRequest, PinbaTimer, RequestLike
from pynba_exporter.wire._encode import (
    _assemble,
    _f32s,
    _make_layout,
    _merge,
    _Merged,
    _names,
    _tag_pairs,
    encode,
)
from pynba_exporter.wire._errors import UINT32_MAX
from pynba_exporter.wire._text import php_text, utf8

__all__ = ["FOLDED_TIMER_TAGS", "MIN_PACKET_SIZE", "TRUNCATED_TAG", "Fitted", "fit"]

#: The request tag that marks a request shrunk to fit, and the timer its timers were folded into.
TRUNCATED_TAG: Final = "pynba_truncated"
FOLDED_TIMER_TAGS: Final = {"group": "pynba::truncated"}
#: The smallest max_packet_size accepted: room for the names cut short and a few numbers.
MIN_PACKET_SIZE: Final = 256


@dataclass(frozen=True, slots=True)
class Fitted:
    """The packets of one request (several only when nested requests had to travel apart) and
    what had to go to keep each one within the size limit."""

    packets: list[bytes]
    folded_timers: int = 0  # timers (after merging) folded into one "pynba::truncated" timer
    cut_strings: int = 0  # strings cut short
    dropped_tags: int = 0  # request tags left out

    @property
    def shrunk(self) -> bool:
        return bool(self.folded_timers or self.cut_strings or self.dropped_tags)


def _as_record(r: RequestLike) -> PinbaRequest:
    """A PinbaRequest with the fields of a request of the span model (only when it must shrink:
    the rare path, where a copy costs nothing that matters)."""
    if isinstance(r, PinbaRequest):
        return r
    return PinbaRequest(
        r.hostname, r.server_name, r.script_name,
        request_count=r.request_count, document_size=r.document_size,
        memory_peak=r.memory_peak, request_time=r.request_time, ru_utime=r.ru_utime,
        ru_stime=r.ru_stime, status=r.status, memory_footprint=r.memory_footprint,
        schema=r.schema, tags=r.tags, requests=r.requests,
        timers=[PinbaTimer(t.tags, t.value, t.hit_count, t.ru_utime, t.ru_stime) for t in r.timers],
    )  # fmt: skip


def _cut(raw: str, limit: int) -> str:
    b = utf8(raw)
    if len(b) <= limit:
        return raw
    return b[:limit].decode("utf-8", "ignore")  # never half a character


def fit(
    request: RequestLike, max_size: int, *, packed: bool = False, encoded: bytes | None = None
) -> Fitted:
    """``request`` as packets of at most ``max_size`` bytes, never splitting one request.

    When the timers do not fit, the request still goes out: the timers with the largest total
    time are kept (in their order), the others are folded into one timer tagged
    ``group=pynba::truncated``, and the request tag ``pynba_truncated`` says what was done
    (``timers``, ``strings`` when names or tags over 255 bytes had to be cut, ``tags`` when
    request tags had to be left out). Nested requests that do not fit with their parent leave
    as packets of their own (they are requests of their own to the servers).

    ``encoded``: the packet ``encode(request, packed=packed)`` already gave, when the caller
    has it (a transport that found it too large), so that it is not built twice.
    """
    if max_size < MIN_PACKET_SIZE:
        raise ValueError(f"max_size must be at least {MIN_PACKET_SIZE}, got {max_size}")
    data = encode(request, packed=packed) if encoded is None else encoded
    if len(data) <= max_size:
        return Fitted([data])
    request = _as_record(request)
    if request.requests:
        parts = [fit(replace(request, requests=()), max_size, packed=packed)]
        parts.extend(fit(sub, max_size, packed=packed) for sub in request.requests)
        return Fitted(
            [p for f in parts for p in f.packets],
            sum(f.folded_timers for f in parts),
            sum(f.cut_strings for f in parts),
            sum(f.dropped_tags for f in parts),
        )
    return _shrink(request, max_size, packed)


def _shrink(r: PinbaRequest, max_size: int, packed: bool) -> Fitted:
    return _Shrinker(r, max_size, packed).fit()


class _Shrinker:
    """One request made to fit: the most timers kept (the longest first), then names and tags
    cut, then request tags left out; every try checked by its real size."""

    def __init__(self, r: PinbaRequest, max_size: int, packed: bool) -> None:
        self.r = r
        self.max_size = max_size
        self.packed = packed
        self.tags = _tag_pairs(r.tags, "tags") if r.tags else []
        self.m = m = _merge(r.timers) if r.timers else _Merged()
        self.n = len(m.keys)
        # Largest total time first; ties keep creation order.
        self.by_time = sorted(range(self.n), key=lambda i: -m.values[i])
        self.timer_keys = m.keys

    def build(self, head: PinbaRequest, tags: list[tuple[str, str]], keep: int, mark: str) -> bytes:
        """The packet of ``head`` with ``tags``, the ``keep`` longest timers and the rest folded
        into one, marked ``mark``."""
        m = self.m
        kept = sorted(self.by_time[:keep])
        rest = self.by_time[keep:]
        keys = [self.timer_keys[i] for i in kept]
        cols = [[col[i] for i in kept] for col in (m.hits, m.values, m.ru_utime, m.ru_stime)]
        if rest:
            folded = tuple(FOLDED_TIMER_TAGS.items())
            sums = [
                min(sum(m.hits[i] for i in rest), UINT32_MAX),
                *(sum(col[i] for i in rest) for col in (m.values, m.ru_utime, m.ru_stime)),
            ]
            if folded in keys:  # merge, as the reference client would
                j = keys.index(folded)
                for col, v in zip(cols, sums):
                    col[j] += v
                cols[0][j] = min(cols[0][j], UINT32_MAX)
            else:
                keys.append(folded)
                for col, v in zip(cols, sums):
                    col.append(v)
        marked = sorted([*(t for t in tags if t[0] != TRUNCATED_TAG), (TRUNCATED_TAG, mark)])
        layout = _make_layout(marked, keys, None, self.packed)
        return _assemble(
            head, _names(head), layout, cols[0], _f32s(cols[1]) if keys else [],
            _f32s(cols[2]) if keys else [], _f32s(cols[3]) if keys else [], self.packed,
        )  # fmt: skip

    def most_timers(
        self, head: PinbaRequest, tags: list[tuple[str, str]], mark: str
    ) -> tuple[bytes, int] | None:
        """The packet keeping the most timers that fits, and how many were folded."""
        best = None
        lo, hi = 0, self.n
        while lo <= hi:  # binary search; every answer is checked by its real size
            mid = (lo + hi) // 2
            data = self.build(head, tags, mid, mark)
            if len(data) <= self.max_size:
                best, lo = (data, self.n - mid), mid + 1
            else:
                hi = mid - 1
        return best

    def fit(self) -> Fitted:
        r, n = self.r, self.n
        found = self.most_timers(r, self.tags, "timers")
        if found is not None:
            return Fitted([found[0]], folded_timers=found[1])
        for limit in (255, 32):
            head, cut_tags, cut = self.cut(limit)
            found = self.most_timers(head, cut_tags, "strings")
            if found is not None:
                return Fitted([found[0]], found[1], cut)
            for keep in range(len(cut_tags) - 1, -1, -1):
                data = self.build(head, cut_tags[:keep], 0, "tags")
                if len(data) <= self.max_size:
                    return Fitted([data], n, cut, len(cut_tags) - keep)
        raise AssertionError("unreachable: a request without tags or timers always fits")

    def cut(self, limit: int) -> tuple[PinbaRequest, list[tuple[str, str]], int]:
        """The request's names, its tags and its timers' tags cut to ``limit`` bytes; how
        many strings were cut."""
        r, tags = self.r, self.tags
        head = replace(
            r,
            hostname=_cut(php_text(r.hostname, "hostname"), limit),
            server_name=_cut(php_text(r.server_name, "server_name"), limit),
            script_name=_cut(php_text(r.script_name, "script_name"), limit),
            schema=_cut(php_text(r.schema, "schema"), min(limit, 16)),
            requests=(),
        )
        cut = sum(
            len(utf8(php_text(x, "name"))) > limit
            for x in (r.hostname, r.server_name, r.script_name, *(y for t in tags for y in t))
        )
        cut_tags = sorted(dict((_cut(a, limit), _cut(b, limit)) for a, b in tags).items())
        # Cut timer tags may coincide; servers take repeated tag sets and add them up.
        keys = self.m.keys
        self.timer_keys = [tuple((_cut(a, limit), _cut(b, limit)) for a, b in k) for k in keys]
        cut += sum(len(utf8(x)) > limit for k in keys for pair in k for x in pair)
        return head, cut_tags, cut
