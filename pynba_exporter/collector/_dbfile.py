"""Whose database a file is, and what a failed write means: the store's checks on its file.

A file is the collector's only if it is new or empty, or carries :data:`APPLICATION_ID`; any
other is refused before anything is written into it (read through a read-only connection), so
it is left byte-identical.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from typing import Final

from pynba_exporter.collector._text import printable

__all__ = [
    "APPLICATION_ID",
    "StoreError",
    "check_directory",
    "check_ours",
    "file_identity",
    "write_failure",
]

#: ``PRAGMA application_id`` of the databases the collector writes ("PYNB").
APPLICATION_ID: Final = 0x50594E42


class StoreError(PermissionError):
    """A database the store cannot or must not write."""


def check_directory(path: str) -> None:
    """The directory of ``path`` exists and takes new files (the database's WAL and shared
    memory files are created next to it): else a :class:`StoreError` saying which it is."""
    directory = os.path.dirname(os.path.abspath(path))
    what = f"cannot write the database {printable(path)!r}"
    if not os.path.exists(directory):
        raise StoreError(f"{what}: the directory {printable(directory)} does not exist")
    if not os.path.isdir(directory):
        raise StoreError(f"{what}: {printable(directory)} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreError(
            f"{what}: the directory {printable(directory)} is read-only (the database needs"
            " its WAL file next to it)"
        )
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise StoreError(f"{what}: the file is read-only")


def check_ours(path: str) -> None:
    """Refuse a file that is not the collector's: it is ours only if it does not exist, is
    empty, or carries :data:`APPLICATION_ID`. Only read, through a read-only connection, so a
    refused file is left byte-identical (tables named like ours prove nothing: a foreign
    ``status`` or ``info`` table would be dropped and rewritten)."""
    try:
        if os.path.getsize(path) == 0:
            return  # new, or an empty file: SQLite makes it a database
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read the database {printable(path)!r}: {exc}") from None
    refused = f"{printable(path)!r} is not a pynba collector database"
    advice = ": refusing to write into it; give --db a new file"
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the database {printable(path)!r}: {exc}") from None
    try:
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        if app_id == APPLICATION_ID:
            return
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        )]  # fmt: skip
    except sqlite3.DatabaseError as exc:  # not a database at all (or a damaged one)
        raise StoreError(f"{refused} ({exc}){advice}") from None
    finally:
        db.close()
    if app_id:
        raise StoreError(f"{refused} (application id {app_id:#x}){advice}")
    if tables:
        shown = ", ".join(map(printable, tables[:5])) + (", ..." if len(tables) > 5 else "")
        raise StoreError(f"{refused} (it holds {shown}){advice}")
    # A SQLite file without a table and without an id: nothing in it to lose.


def file_identity(path: str) -> tuple[int, int] | None:
    """The file's (device, inode): when it changes or goes, writes would go nowhere."""
    if path == ":memory:":
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def write_failure(exc: sqlite3.Error) -> str:
    """Why a write failed, as the store counts it."""
    code = getattr(exc, "sqlite_errorcode", None)
    text = str(exc).lower()
    if code in (5, 6) or "locked" in text or "busy" in text:  # SQLITE_BUSY, SQLITE_LOCKED
        return "database locked"
    if code == 13 or "full" in text:  # SQLITE_FULL (disk full, max_page_count)
        return "database full"
    return "write failed"
