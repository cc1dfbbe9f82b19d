"""``parse`` and ``decode``: the protobuf runtime as a faster parser when it is installed, the
pure decoder otherwise and whenever the two might judge differently.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Final

from pynba_exporter._model import PinbaRequest
from pynba_exporter.wire._errors import (
    MALFORMED,
    MAX_NESTING,
    NESTED,
    TRUNCATED,
    PinbaDecodeError,
)
from pynba_exporter.wire._pure import Packet, _build, _multi, _timer, decode_packet

__all__ = ["decode", "parse"]

# -- the protobuf runtime as a faster parser, when it is installed
#
# The official runtime (upb, in C) reads a packet in a few microseconds where the pure-Python
# loop above takes tens. It is only a parser here: what it reads goes through the same _build
# (the servers' rules) as the pure decoder's output. Whenever it reads something the pure decoder
# might judge differently (anything it keeps as unknown fields: unknown fields, known fields
# with an unexpected wire type, groups), or refuses the bytes, the pure decoder decides, so
# results and error messages are the same with or without it.

_RUNTIME: Any = None  # the message class; False once known to be unavailable


def _runtime() -> Any:
    global _RUNTIME
    if _RUNTIME is None:
        try:
            _RUNTIME = _message_class()
        except Exception:  # not installed, or an incompatible version
            _RUNTIME = False
    return _RUNTIME


def _message_class() -> Any:
    from google.protobuf import (  # noqa: PLC0415 - optional, and only when first used
        descriptor_pb2,
        descriptor_pool,
        message_factory,
        unknown_fields,
    )

    f = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="pynba_wire_pinba.proto", package="PynbaWire", syntax="proto2"
    )
    msg = fdp.message_type.add(name="Request")
    required, repeated, optional = f.LABEL_REQUIRED, f.LABEL_REPEATED, f.LABEL_OPTIONAL
    # Strings as bytes: the runtime must not judge UTF-8; _build decodes them.
    fields = [
        (1, f.TYPE_BYTES, required), (2, f.TYPE_BYTES, required), (3, f.TYPE_BYTES, required),
        (4, f.TYPE_UINT32, required), (5, f.TYPE_UINT32, required), (6, f.TYPE_UINT32, required),
        (7, f.TYPE_FLOAT, required), (8, f.TYPE_FLOAT, required), (9, f.TYPE_FLOAT, required),
        (10, f.TYPE_UINT32, repeated), (11, f.TYPE_FLOAT, repeated),
        (12, f.TYPE_UINT32, repeated), (13, f.TYPE_UINT32, repeated),
        (14, f.TYPE_UINT32, repeated), (15, f.TYPE_BYTES, repeated),
        (16, f.TYPE_UINT32, optional), (17, f.TYPE_UINT32, optional),
        (18, f.TYPE_MESSAGE, repeated), (19, f.TYPE_BYTES, optional),
        (20, f.TYPE_UINT32, repeated), (21, f.TYPE_UINT32, repeated),
        (22, f.TYPE_FLOAT, repeated), (23, f.TYPE_FLOAT, repeated),
    ]  # fmt: skip
    for number, ftype, label in fields:
        fd = msg.field.add(name=f"f{number}", number=number, type=ftype, label=label)
        if ftype == f.TYPE_MESSAGE:
            fd.type_name = ".PynbaWire.Request"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("PynbaWire.Request"))
    cls._pynba_unknown = unknown_fields.UnknownFieldSet
    return cls


_REPEATED_FIELDS: Final = (10, 11, 12, 13, 14, 20, 21, 22, 23)
_REPEATED_GETTER: Final = attrgetter(*(f"f{n}" for n in _REPEATED_FIELDS))


def _from_runtime(m: Any, depth: int) -> Packet | None:
    """The packet the runtime read, or None if the pure decoder must decide."""
    if not m.IsInitialized() or len(type(m)._pynba_unknown(m)):
        return None  # a required field missing, or something only the pure decoder judges
    nested = []
    if len(m.f18):
        if depth >= MAX_NESTING:
            return None
        for i, sub in enumerate(m.f18):
            try:
                packet = _from_runtime(sub, depth + 1)
            except PinbaDecodeError as exc:
                # As the pure decoder says it (and counts it: invalid nested request), not as
                # the nested request's own rule: the same reason with or without the runtime.
                raise PinbaDecodeError(f"nested request {i}: {exc.reason}", NESTED) from None
            if packet is None:
                return None
            nested.append(packet)
    # The optional fields as read, absent or not: _build takes an absent one as its default
    # (0, b""), which is what the runtime reads for it, so no HasField call is needed.
    scalars: dict[int, Any] = {
        1: m.f1, 2: m.f2, 3: m.f3, 4: m.f4, 5: m.f5, 6: m.f6, 7: m.f7, 8: m.f8, 9: m.f9,
        16: m.f16, 17: m.f17, 19: m.f19,
    }  # fmt: skip
    # Slices: a list from the runtime's container in one call, quicker than list().
    reps = {
        number: values[:]
        for number, values in zip(_REPEATED_FIELDS, _REPEATED_GETTER(m))
        if len(values)
    }
    return _build(scalars, reps, m.f15[:], nested)


def parse(data: bytes | bytearray | memoryview) -> Packet:
    """The packet as plain values, checked as ``decode`` checks it (the collector's path).
    Raises only :class:`PinbaDecodeError`."""
    buf = bytes(data)
    cls = _RUNTIME if _RUNTIME is not None else _runtime()
    try:
        if cls:
            try:
                m = cls.FromString(buf)
            except Exception:
                m = None  # refused: the pure decoder says why
            if m is not None:
                packet = _from_runtime(m, 0)
                if packet is not None:
                    return packet
        return decode_packet(buf, 0)
    except PinbaDecodeError:
        raise
    except IndexError:
        raise PinbaDecodeError("truncated packet: a varint runs past the end", TRUNCATED) from None
    except Exception as exc:  # a bug of ours must still surface as a decode error, not a crash
        raise PinbaDecodeError(
            f"malformed packet ({type(exc).__name__}: {exc})", MALFORMED
        ) from None


def _record(p: Packet) -> PinbaRequest:
    timers = []
    for pairs, value, hits, ru_u, ru_s in p.timers:
        tags = dict(pairs)
        if len(tags) < len(pairs):  # a name given several values
            tags = _multi(pairs)
        timers.append(_timer(tags, value, hits, ru_u, ru_s))
    return PinbaRequest(
        p.hostname, p.server_name, p.script_name,
        request_count=p.request_count, document_size=p.document_size,
        memory_peak=p.memory_peak, request_time=p.request_time, ru_utime=p.ru_utime,
        ru_stime=p.ru_stime, status=p.status, memory_footprint=p.memory_footprint,
        schema=p.schema, tags=dict(p.tags), timers=tuple(timers),
        requests=tuple(_record(sub) for sub in p.requests),
    )  # fmt: skip


def decode(data: bytes | bytearray | memoryview) -> PinbaRequest:
    """The request in one Pinba packet. Raises only :class:`PinbaDecodeError`, never hangs."""
    packet = parse(data)
    try:
        return _record(packet)
    except Exception as exc:
        raise PinbaDecodeError(
            f"malformed packet ({type(exc).__name__}: {exc})", MALFORMED
        ) from None
