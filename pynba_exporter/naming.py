"""Script names with bounded cardinality: what keeps Pinba's reports useful.

Pinba groups requests by script name, so a name must say *what ran*, not which URL was asked
for: route templates (``/product/<id>``), never raw paths. Two fixed names and one cap keep a
process from flooding its servers with names, whatever its traffic:

- :data:`UNMATCHED`: the name of a request that matched no route (integrations give it to
  scanners' ``/wp-admin/setup.php`` and to 404s);
- a per-process cap on distinct script names (option ``max_script_names``, 1000 by default):
  a name it refuses is reported as :data:`OVERFLOW`, and counted; names unused for a while
  give their place up, and names asked for again are admitted first (see
  :class:`ScriptNames`), so that a flood cannot hold the cap for the life of the process;
- the same for server names (option ``max_server_names``, 100 by default), which come from the
  Host header any client chooses;
- the guard is applied where every request is sent, for the classic API and the OpenTelemetry
  bridge alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from pynba_exporter import config
from pynba_exporter.log import errors, note_loss

__all__ = ["OVERFLOW", "UNMATCHED", "ScriptNames", "script_names", "server_names"]

#: The script name of a request that matched no route of its app.
UNMATCHED: Final = "<unmatched>"
#: The script name of requests whose own name came after the cap was reached.
OVERFLOW: Final = "<other>"


class ScriptNames:
    """The distinct names (of scripts, or of servers) a process reports, up to ``limit``
    (None: the ``option``, read when first needed) at any time.

    The cap cannot be poisoned for good: names age out and admission favours names asked for
    again. Time is cut into generations of at least ``period`` seconds (300 by default):

    - :attr:`admitted` holds the names seen in the current generation. A name in it passes by
      one set lookup (the send path tests it without a call), so the hot path pays nothing for
      the aging.
    - When a generation ends (checked only on the slow path, when a name not in
      :attr:`admitted` comes), the names of the previous generation that were not seen again
      are forgotten, and :attr:`admitted` becomes the previous generation. A name in use comes
      back through the slow path once per generation and is kept; a name unseen for a whole
      generation (at least ``period`` seconds) gives its place up.
    - A new name takes a free place at once, first come, until the cap first refuses one.
      From then on, and until two generations have passed without a refusal, a place is given
      only to a name asked for at least twice since it was refused: a flood of one-off URLs
      (a scanner) never gets the places that its own names free, a real route asked again
      does.

    Memory: at most ``limit`` names in the two generations together, plus the hashes of at
    most ``limit`` refused names with their counts (the hashes only: a refused URL of 8 KB
    costs what a short one does). Past that the counts asked for once are dropped, then all.
    """

    def __init__(
        self,
        limit: int | None = None,
        *,
        option: str = "max_script_names",
        what: str = "script",
        period: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._option = option
        self._what = what
        #: Seconds a generation lasts at least: a name unseen that long may lose its place.
        self.period = period
        self._clock = clock
        #: The names seen in this generation (with the two fixed ones). Changed in place, never
        #: replaced: the send path tests a name with one set lookup, without a call.
        self.admitted: set[str] = {UNMATCHED, OVERFLOW}
        #: The names of the previous generation not seen in this one yet.
        self._previous: set[str] = set()
        self._generation_start = clock()
        #: Until when a new name must have been asked for twice (a refusal happened lately).
        self._strict_until = float("-inf")
        #: hash(name) -> times asked for, of names refused lately.
        self._asked: dict[int, int] = {}
        self._lock = threading.Lock()
        #: Requests reported under OVERFLOW instead of their own name.
        self.overflowed = 0

    @property
    def limit(self) -> int:
        if self._limit is None:
            try:
                self._limit = int(config.value(self._option))
            except config.ConfigError as exc:
                # A bad value must not cost the requests: the default cap, said once.
                self._limit = int(config.OPTIONS[self._option].default)
                errors.log(
                    ("config", self._option),
                    f"pynba: {exc}; using the default, {self._limit}",
                    level=logging.ERROR,
                )
        return self._limit

    def guard(self, name: str) -> str:
        """``name`` if it has a place (names seen lately always have), else OVERFLOW."""
        admitted = self.admitted
        if name in admitted:  # the common case: no lock
            return name
        limit = self.limit
        with self._lock:
            now = self._clock()
            if now - self._generation_start >= self.period:
                self._next_generation(now)
            previous = self._previous
            if name in previous:  # in use in the last generation: kept
                previous.discard(name)
                admitted.add(name)
                return name
            if len(admitted) - 2 + len(previous) < limit and self._may_enter(name, now):
                admitted.add(name)
                return name
            self._refused(name, now, limit)
        note_loss()
        errors.log(
            (f"{self._what}-names", "overflow"),  # one line for scripts, one for servers
            f"pynba: more than {limit} distinct {self._what} names in this process: new "
            f"ones are reported as {OVERFLOW!r} (option {self._option}; a name unused for "
            f"{self.period:g} s gives its place to a name asked for again"
            + ("; name routes by template)" if self._what == "script" else ")"),
        )
        return OVERFLOW

    def _next_generation(self, now: float) -> None:
        # Names of the previous generation not seen since are forgotten; this generation's
        # become the previous one, and come back into `admitted` when next seen.
        self._previous = self.admitted - _FIXED
        self.admitted.clear()
        self.admitted.update(_FIXED)
        self._generation_start = now

    def _may_enter(self, name: str, now: float) -> bool:
        if now >= self._strict_until:
            self._asked.clear()
            return True  # no refusal lately: first come, first served
        return self._asked.get(hash(name), 0) >= 1  # refused once already, asked again

    def _refused(self, name: str, now: float, limit: int) -> None:
        self.overflowed += 1
        self._strict_until = now + 2 * self.period
        asked = self._asked
        key = hash(name)
        if key not in asked and len(asked) >= limit:
            # Bounded: the one-off names (a scanner's) go first, then everything.
            for other in [k for k, n in asked.items() if n < 2]:
                del asked[other]
            if len(asked) >= limit:
                asked.clear()
        asked[key] = asked.get(key, 0) + 1

    def stats(self) -> dict[str, int]:
        """``distinct``: names holding a place; ``overflowed``: requests renamed to OVERFLOW."""
        with self._lock:
            distinct = len(self.admitted) - 2 + len(self._previous)
            return {"distinct": distinct, "overflowed": self.overflowed}

    def reset(self) -> None:
        """Forget the names seen (tests; a long-running process after a deploy)."""
        with self._lock:
            self.admitted.clear()
            self.admitted.update(_FIXED)
            self._previous = set()
            self._generation_start = self._clock()
            self._strict_until = float("-inf")
            self._asked.clear()
            self.overflowed = 0
            self._limit = None


_FIXED: Final = frozenset((UNMATCHED, OVERFLOW))

#: The process's guards, used on the one path every request leaves by.
script_names = ScriptNames()
server_names = ScriptNames(option="max_server_names", what="server")
