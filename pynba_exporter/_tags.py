"""Tags as the classic API takes them: nested mappings, iterables, callables, any scalar."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pynba_exporter.log import errors, from_signal_handler
from pynba_exporter.wire import PinbaEncodeError, php_text

__all__ = ["expand_tags", "safe_text"]


def safe_text(value: object, where: str) -> str:
    """A name or tag value as text; what has no text form is logged and becomes ``"?"``."""
    if value is None:
        return ""  # as PHP turns null into a string
    try:
        return php_text(value, where)
    except PinbaEncodeError as exc:
        errors.log(("tag", where), f"pynba: tag value replaced by '?': {exc}")
        return "?"


def expand_tags(tags: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    """Tags of the classic API as the encoder takes them.

    A mapping gives dotted names (``{"qux": {"map1": "v"}}`` -> ``qux.map1``, at any depth); a
    sequence or other iterable gives the tag once per element; a callable is called (now, so
    call this when the request is sent); ``None`` is the empty string; anything else becomes text
    as the reference client writes it. Never raises: what cannot be read is logged and left out.
    """
    out: dict[str, Any] = {}
    try:
        items = list(tags.items())
    except Exception as exc:
        errors.log(("tags", type(tags).__name__), f"pynba: tags ignored, not a mapping: {exc!r}")
        return out
    for key, given in items:
        name = prefix + safe_text(key, "tag name")
        value = given
        if callable(value):
            try:
                value = value()
            except Exception as exc:
                if from_signal_handler(exc):
                    raise
                errors.log(("tag-callable", name), f"pynba: tag {name!r}: callable raised {exc!r}")
                continue
        if type(value) is str:
            out[name] = value
        elif isinstance(value, Mapping):
            out.update(expand_tags(value, name + "."))
        elif isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Iterable):
            out[name] = safe_text(value, name)
        else:
            try:
                values = tuple(safe_text(v, name) for v in value)
            except Exception as exc:
                if from_signal_handler(exc):
                    raise
                errors.log(("tag-iter", name), f"pynba: tag {name!r}: iteration raised {exc!r}")
                continue
            if len(values) == 1:
                out[name] = values[0]
            elif values:
                out[name] = values
    return out
