"""``dumps`` and ``cast`` as pynba 0.4.3 had them (``pynba.core`` in 0.5.5).

``dumps(**fields)`` takes the fields of the Pinba message by their schema names, timers and
tags as the dictionary-indexed columns of the wire format, and returns the packet. It goes
through this project's encoder, so the bytes follow the reference client's layout (the
dictionary in its order, fields checked) rather than the original's, and it is always a whole
request: fields not given are zero (the original gave only the given fields' bytes, which no
Pinba server takes without its required fields). Columns that make no timer (hit counts or
values without ``timer_tag_count``) and dictionary words no tag uses are not sent. ``cast``
encodes text as UTF-8 (the originals used ``six.b``: Latin-1 on Python 3, so a non-ASCII name
was not the UTF-8 Pinba's reports read, and one outside Latin-1 raised).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pynba_exporter import PinbaRequest, PinbaTimer, encode

__all__ = ["cast", "dumps"]


def cast(value: Any) -> bytes:
    """Any value as bytes (text as UTF-8)."""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def _pairs(
    dictionary: Sequence[Any], names: Sequence[int], values: Sequence[int]
) -> dict[str, Any]:
    tags: dict[str, Any] = {}
    for name, value in zip(names, values):
        key, text = str(dictionary[name]), str(dictionary[value])
        old = tags.get(key)
        if old is None:
            tags[key] = text
        else:
            tags[key] = (*old, text) if isinstance(old, tuple) else (old, text)
    return tags


def dumps(**attrs: Any) -> bytes:
    """The packet for these fields (see the module's documentation)."""
    dictionary = [
        v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        for v in attrs.get("dictionary", ())
    ]
    timers = []
    names = list(attrs.get("timer_tag_name", ()))
    values = list(attrs.get("timer_tag_value", ()))
    offset = 0
    hits = list(attrs.get("timer_hit_count", ()))
    columns = zip(attrs.get("timer_value", ()), attrs.get("timer_tag_count", ()))
    for i, (value, count) in enumerate(columns):
        tags = _pairs(dictionary, names[offset : offset + count], values[offset : offset + count])
        offset += count
        timers.append(PinbaTimer(tags, float(value), int(hits[i]) if i < len(hits) else 1))
    request = PinbaRequest(
        str(attrs.get("hostname") or ""),
        str(attrs.get("server_name") or ""),
        str(attrs.get("script_name") or ""),
        request_count=int(attrs.get("request_count") or 0),
        document_size=int(attrs.get("document_size") or 0),
        memory_peak=int(attrs.get("memory_peak") or 0),
        request_time=float(attrs.get("request_time") or 0.0),
        ru_utime=float(attrs.get("ru_utime") or 0.0),
        ru_stime=float(attrs.get("ru_stime") or 0.0),
        status=int(attrs.get("status") or 0),
        memory_footprint=int(attrs.get("memory_footprint") or 0),
        schema=str(attrs.get("schema") or ""),
        tags=_pairs(dictionary, attrs.get("tag_name", ()), attrs.get("tag_value", ())),
        timers=timers,
    )
    return encode(request)
