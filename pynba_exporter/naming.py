"""Script names with bounded cardinality: what keeps Pinba's reports useful.

Pinba groups requests by script name, so a name must say *what ran*, not which URL was asked
for: route templates (``/product/<id>``), never raw paths. Two fixed names and one cap keep a
process from flooding its servers with names, whatever its traffic:

- :data:`UNMATCHED`: the name of a request that matched no route (integrations give it to
  scanners' ``/wp-admin/setup.php`` and to 404s);
- a per-process cap on distinct script names (option ``max_script_names``, 1000 by default):
  beyond it every new name is reported as :data:`OVERFLOW`, and counted;
- the same for server names (option ``max_server_names``, 100 by default), which come from the
  Host header any client chooses;
- the guard is applied where every request is sent, for the classic API and the OpenTelemetry
  bridge alike.
"""

from __future__ import annotations

import logging
import threading
from typing import Final

from pynba_exporter import config
from pynba_exporter.health import note_loss
from pynba_exporter.log import errors

__all__ = ["OVERFLOW", "UNMATCHED", "ScriptNames", "script_names", "server_names"]

#: The script name of a request that matched no route of its app.
UNMATCHED: Final = "<unmatched>"
#: The script name of requests whose own name came after the cap was reached.
OVERFLOW: Final = "<other>"


class ScriptNames:
    """The distinct names (of scripts, or of servers) a process has reported, up to ``limit``
    (None: the ``option``, read when first needed)."""

    def __init__(
        self, limit: int | None = None, *, option: str = "max_script_names", what: str = "script"
    ) -> None:
        self._limit = limit
        self._option = option
        self._what = what
        #: The names admitted so far (with the two fixed ones). Changed in place, never replaced:
        #: the send path binds it once and tests a name with one set lookup, without a call.
        self.admitted: set[str] = {UNMATCHED, OVERFLOW}
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
        """``name`` while the cap allows it (names seen before always pass), else OVERFLOW."""
        seen = self.admitted
        if name in seen:  # the common case: no lock
            return name
        with self._lock:
            if len(seen) - 2 < self.limit:
                seen.add(name)
                return name
            self.overflowed += 1
        note_loss()
        errors.log(
            ("script-names", "overflow"),
            f"pynba: more than {self.limit} distinct {self._what} names in this process: new "
            f"ones are reported as {OVERFLOW!r} (option {self._option}"
            + ("; name routes by template)" if self._what == "script" else ")"),
        )
        return OVERFLOW

    def stats(self) -> dict[str, int]:
        """``distinct``: names admitted; ``overflowed``: requests renamed to OVERFLOW."""
        with self._lock:
            return {"distinct": len(self.admitted) - 2, "overflowed": self.overflowed}

    def reset(self) -> None:
        """Forget the names seen (tests; a long-running process after a deploy)."""
        with self._lock:
            self.admitted.clear()
            self.admitted.update((UNMATCHED, OVERFLOW))
            self.overflowed = 0
            self._limit = None


#: The process's guards, used on the one path every request leaves by.
script_names = ScriptNames()
server_names = ScriptNames(option="max_server_names", what="server")
