"""Opening a SQLite file of the data directory: the one place that sets how newsmon uses SQLite.

The queue, the feed state, the embedded index, the alert log, the story sketches and the
saved searches are each one file, written by one process (several threads) and read by
others (``newsmon stats``, ``newsmon serve``) at the same time.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal


def connect(path: Path | None, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit: ``BEGIN IMMEDIATE``), usable from
    several threads under the caller's lock, with WAL so readers never block the writer.

    ``synchronous``: NORMAL keeps committed data through a process crash (WAL); FULL also through a
    power loss, for stores whose commit lets the bus forget the input (the alert log).
    ``path`` None: a private in-memory database.
    """
    if path is None:
        return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn
