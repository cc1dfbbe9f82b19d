"""The embedded Pinba collector: UDP in, Pinba's reports out, raw data in SQLite.

For development, small deployments, users' tests, and checking what a client sends; production
setups point the client at real Pinba servers (pinba2, pinba_engine). See ``Collector`` and the
``pynba`` command (``pynba collect``, ``pynba report``, ``pynba decode``, ``pynba demo``), and
docs/collector.md.
"""

from pynba_exporter.collector._aggregate import (
    REPORTS,
    REQUEST_REPORTS,
    Aggregator,
    Record,
    ReportSpec,
    TimerRecord,
    column,
)
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
    "Record",
    "RecordStore",
    "ReportSpec",
    "SqliteStore",
    "StoreError",
    "TimerRecord",
    "column",
    "invalid_reason",
    "printable",
    "report_table",
]
