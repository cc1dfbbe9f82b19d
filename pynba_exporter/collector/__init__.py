"""The embedded Pinba collector: UDP in, Pinba's reports out, raw data in SQLite.

For development, small deployments, users' tests, and checking what a client sends; production
setups point the client at real Pinba servers (pinba2, pinba_engine). See ``Collector``, its live
web page ``WebServer`` and the ``pynba`` command (``pynba collect [--http HOST:PORT]``,
``pynba report``, ``pynba decode``, ``pynba demo``).
"""

from pynba_exporter.collector._aggregate import REQUEST_REPORTS, Aggregator, Record, TimerRecord
from pynba_exporter.collector._history import History
from pynba_exporter.collector._http import WebServer
from pynba_exporter.collector._server import Collector, CollectorError, invalid_reason
from pynba_exporter.collector._store import SqliteStore, report_table

__all__ = [
    "REQUEST_REPORTS",
    "Aggregator",
    "Collector",
    "CollectorError",
    "History",
    "Record",
    "SqliteStore",
    "TimerRecord",
    "WebServer",
    "invalid_reason",
    "report_table",
]
