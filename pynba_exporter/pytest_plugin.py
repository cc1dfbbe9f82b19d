"""The pytest plugin of pynba: the ``pinba`` fixture (see :mod:`pynba_exporter.testing`).

Registered as a ``pytest11`` entry point, so it is active wherever pynba is installed. It adds
one fixture and nothing else: no hook, no option, no autouse fixture, so a test suite that does
not ask for ``pinba`` runs exactly as without it. Disable it with ``-p no:pynba``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pynba_exporter.testing import PinbaCapture

__all__ = ["pinba"]


@pytest.fixture
def pinba() -> Iterator[PinbaCapture]:
    """Every Pinba packet the code under test sends, decoded: ``pinba.request(name)``,
    ``pinba.timer(tags)``, ``pinba.find(...)``, ``pinba.requests``."""
    with PinbaCapture() as capture:
        yield capture
