"""The embedded Pinba collector: UDP in, Pinba's reports out, raw data in SQLite.

For development, small deployments, users' tests, and checking what a client sends; production
setups point the client at real Pinba servers (pinba2, pinba_engine). See ``Collector``, its live
web page ``WebServer``, the ``pynba`` command (``pynba collect [--http HOST:PORT]``,
``pynba report``, ``pynba decode``, ``pynba demo``), docs/collector.md and docs/web.md.
"""

from pynba_exporter.collector._aggregate import Aggregator
from pynba_exporter.collector._history import History
from pynba_exporter.collector._http import WebServer
from pynba_exporter.collector._percentile import column
from pynba_exporter.collector._record import Record, TimerRecord
from pynba_exporter.collector._render import (
    ReportError,
    reports_text,
    stored_history,
    stored_report,
    write_reports,
)
from pynba_exporter.collector._reports import REPORTS, REQUEST_REPORTS, ReportSpec
from pynba_exporter.collector._server import (
    Collector,
    CollectorError,
    RecordStore,
    invalid_reason,
)
from pynba_exporter.collector._store import SqliteStore, StoreError, report_table
from pynba_exporter.collector._text import printable

__all__ = [
    "REPORTS",
    "REQUEST_REPORTS",
    "Aggregator",
    "Collector",
    "CollectorError",
    "History",
    "Record",
    "RecordStore",
    "ReportError",
    "ReportSpec",
    "SqliteStore",
    "StoreError",
    "TimerRecord",
    "WebServer",
    "column",
    "invalid_reason",
    "printable",
    "report_table",
    "reports_text",
    "stored_history",
    "stored_report",
    "write_reports",
]
