"""pynba: Pinba for Python apps, with the API of the original pynba.

    from pynba import monitor, pynba, PynbaMiddleware
    from pynba.util import ScriptMonitor

- :func:`monitor` / :class:`PynbaMiddleware`: report every request of a WSGI app;
- :data:`pynba`: the current request (timers, tags, names, sizes, the ``enabled`` switch);
- :class:`pynba.util.ScriptMonitor`: report the units of work of a script or worker.

Code written for the predecessors runs unchanged: pynba 0.4.3's modules (``pynba.middleware``,
``pynba.globals``, ``pynba.util``, ``pynba.reporter``, ``pynba.collector``, ``pynba.ctx``,
``pynba.local``, ``pynba.log``, ``pynba.message``) and 0.5.5's (``pynba.wsgi``, ``pynba.core``,
``pynba.stacked``) are here; ``docs/migration.md`` lists what differs on purpose. ASGI apps:
:mod:`pynba.asgi`; Django, Flask, Starlette/FastAPI: :mod:`pynba.django`, :mod:`pynba.flask`,
:mod:`pynba.starlette` (requests named by route). Task queues: :mod:`pynba.celery`,
:mod:`pynba.rq` (one request per task run).
"""

from pynba._proxy import pynba
from pynba._wsgi import PynbaMiddleware, monitor
from pynba_exporter.timers import Timer

#: The version of the distribution (the successor of pynba 0.5.5 on the package index).
__version__ = "1.0.0.dev0"

__all__ = ["PynbaMiddleware", "Timer", "__version__", "monitor", "pynba"]
