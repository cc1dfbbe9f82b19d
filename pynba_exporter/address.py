"""Pinba addresses, as the reference client reads them: for senders and for the collector.

``host``, ``host:port``, ``[v6addr]:port``, a bare IPv6 address, several separated by commas or
spaces; or a ``(host, port)`` tuple, or a list of any of those. The port defaults to 30002.
Parsing only: no name is looked up here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from pynba_exporter import config

__all__ = ["DEFAULT_PORT", "Address", "Endpoint", "parse_addresses", "parse_listen"]

DEFAULT_PORT: Final = config.DEFAULT_PORT

#: What an address may be given as.
Address: TypeAlias = "str | tuple[str, int] | Sequence[str | tuple[str, int]]"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server (or listening) address: a host name or IP address, and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _port(text: str, address: str, lowest: int = 1) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"invalid port {text!r} in Pinba address {address!r}") from None
    if not lowest <= port < 65536:
        raise ValueError(f"port {port} out of range in Pinba address {address!r}")
    return port


_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
_V6_CHARS: Final = frozenset("0123456789abcdefABCDEF:.%") | _NAME_CHARS


def _host(host: str, item: str, allowed: frozenset[str]) -> str:
    if not host:
        raise ValueError(f"invalid Pinba address {item!r}: no host")
    if not set(host) <= allowed:
        raise ValueError(f"invalid Pinba address {item!r}: {host!r} is not a host name or IP")
    return host


def _parse_one(item: str, lowest_port: int = 1) -> Endpoint:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address; ``udp://``
    before it is accepted (OpenTelemetry endpoints are URLs), other schemes are refused."""
    scheme, sep, rest = item.partition("://")
    if sep:
        if scheme.lower() != "udp":
            raise ValueError(
                f"Pinba address {item!r}: Pinba is UDP (host:port), not {scheme}://; an "
                "OpenTelemetry collector's URL is not a Pinba server"
            )
        item = rest.rstrip("/")
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or not host or (rest and not rest.startswith(":")):
            raise ValueError(f"invalid Pinba address {item!r}")
        port = _port(rest[1:], item, lowest_port) if rest[1:] else DEFAULT_PORT
        return Endpoint(_host(host, item, _V6_CHARS), port)
    if item.count(":") > 1:  # a bare IPv6 address, as the reference client reads it
        return Endpoint(_host(item, item, _V6_CHARS), DEFAULT_PORT)
    host, colon, port_text = item.partition(":")
    _host(host, item, _NAME_CHARS)
    return Endpoint(host, _port(port_text, item, lowest_port) if colon else DEFAULT_PORT)


def parse_listen(address: str) -> Endpoint:
    """One address to listen on: as a server address, and port 0 means any free port."""
    parts = address.replace(",", " ").split()
    if len(parts) != 1:
        raise ValueError(f"listen on one address, not {address!r}")
    return _parse_one(parts[0], lowest_port=0)


def parse_addresses(address: Address | None) -> list[Endpoint]:
    """The servers an address names, in order, without duplicates.

    ``None`` means the configured servers (``OTEL_EXPORTER_PINBA_ENDPOINT`` or
    ``PINBA_SERVER``), else ``127.0.0.1:30002``.
    """
    if address is None:
        address = config.value("server")
    found: list[Endpoint] = []

    def add(item: object) -> None:
        if (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and (isinstance(item[1], int) or (isinstance(item[1], str) and item[1].isdigit()))
        ):
            host, port = item
            if isinstance(port, bool):
                raise ValueError(f"invalid port {port!r} in Pinba address {item!r}")
            ep = Endpoint(host.strip("[]"), _port(str(port), str(item)))
            if not ep.host:
                raise ValueError(f"invalid Pinba address {item!r}: no host")
            found.append(ep)
        elif isinstance(item, str):
            found.extend(_parse_one(part) for part in item.replace(",", " ").split())
        elif isinstance(item, Iterable) and not isinstance(item, (bytes, bytearray)):
            for sub in item:
                add(sub)
        else:
            raise ValueError(
                f"invalid Pinba address {item!r}: expected 'host:port', (host, port) or a list"
            )

    add(address)
    if not found:
        raise ValueError(f"no Pinba server in address {address!r}")
    return list(dict.fromkeys(found))
