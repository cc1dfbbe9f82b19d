"""pynba: Pinba for Python apps, with the API of the original pynba.

    from pynba import monitor, pynba, PynbaMiddleware
    from pynba.util import ScriptMonitor

- :func:`monitor` / :class:`PynbaMiddleware`: report every request of a WSGI app;
- :data:`pynba`: the current request (timers, tags, names, sizes, the ``enabled`` switch);
- :class:`pynba.util.ScriptMonitor`: report the units of work of a script or worker.

Moving from the original: change ``from iscool_e.pynba import ...`` to ``from pynba import ...``.
"""

from pynba._proxy import pynba
from pynba._wsgi import PynbaMiddleware, monitor
from pynba_exporter.spans import Timer

__all__ = ["PynbaMiddleware", "Timer", "monitor", "pynba"]
