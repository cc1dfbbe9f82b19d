"""The one bounding rule of the process's caches.

A cache here holds what repeats between requests (interned timer tag sets, packet layouts,
status lines): an app has a handful of each. Traffic may bring an unbounded number of new
ones (a flood of distinct tags), so each cache has a size limit, and when it is full it is
emptied and fills again with what is in use now: no recency to track on the request path,
and memory bounded by the limit.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["BoundedCache"]

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(dict[K, V], Generic[K, V]):
    """A dict of at most ``limit`` entries; ``put`` empties it when full."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> V:
        """Store and return ``value`` (a burst of new keys starts the cache over)."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
