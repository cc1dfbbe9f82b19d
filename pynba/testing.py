"""``PinbaCapture``, the object behind the ``pinba`` pytest fixture (for type annotations and
for tests outside pytest): see :mod:`pynba_exporter.testing`."""

from pynba_exporter.testing import PinbaCapture

__all__ = ["PinbaCapture"]
