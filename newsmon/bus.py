"""The bus interface that links stages, and its embedded implementation on SQLite.

Semantics follow Kafka's consumer model so the same runner works on both:
topics hold ordered messages with a key; a consumer group reads a topic and
commits the offset *after* it has processed a message (at-least-once); a new
group starts from the earliest message. The embedded bus has one partition
per topic and one consumer per group (one process owns a data directory).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from newsmon import sqlite

DEAD_LETTERS = "dead-letters"


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: str
    value: bytes
    headers: dict[str, str] = field(default_factory=dict)
    timestamp: float = 0.0  # seconds since the epoch, when it was published


class Consumer(Protocol):
    def poll(self, max_records: int, timeout: float) -> list[Message]: ...

    def commit(self, messages: list[Message]) -> None:
        """Mark these messages (and all before them on their partitions) as processed."""

    def rewind(self) -> None:
        """Go back to the last committed offsets, so uncommitted messages are delivered again."""

    def close(self) -> None: ...


class Bus(Protocol):
    def publish(self, topic: str, key: str, value: bytes, headers: dict[str, str] | None = None) -> None: ...

    def flush(self) -> None:
        """Return only when everything published so far is durable."""

    def consumer(self, group: str, topics: list[str]) -> Consumer: ...

    def backlog(self, group: str, topic: str) -> int:
        """Messages in ``topic`` that ``group`` has not committed yet."""

    def lag(self, group: str, topic: str) -> dict[int, int]:
        """The backlog per partition."""

    def size(self, topic: str) -> int:
        """Messages the topic holds now."""

    def recent(self, topic: str, limit: int) -> list[Message]:
        """The last ``limit`` messages of a topic, newest first, without consuming them."""

    def sharding(self, group: str, topic: str) -> Sharding:
        """How instances of one group split keys between them (the pollers split the feeds)."""

    def close(self) -> None: ...


class Sharding(Protocol):
    def owner(self) -> Callable[[str], bool]:
        """A test for the keys this instance owns now; call it again from time to time."""

    def close(self) -> None: ...


class OwnEverything:
    """Embedded: one process owns every key."""

    def owner(self) -> Callable[[str], bool]:
        return lambda key: True

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    offset  INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   BLOB NOT NULL,
    headers TEXT NOT NULL,
    ts      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_topic ON messages(topic, offset);
CREATE TABLE IF NOT EXISTS group_offsets (
    grp         TEXT NOT NULL,
    topic       TEXT NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic)
);
"""


class SqliteBus:
    """Durable on local disk: a message is stored once ``flush`` returns, an offset once ``commit`` does.

    Offsets are global row ids, so they increase within each topic as Kafka's do.
    Messages every group has consumed are deleted after ``retention_s``.
    """

    def __init__(self, path: Path, retention_s: float = 7 * 86400):
        self.path = path
        self.retention_s = retention_s
        self._conn = sqlite.connect(path)
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()  # one connection shared by the runner's threads
        self._pending: list[tuple[str, str, bytes, str, float]] = []

    def publish(self, topic: str, key: str, value: bytes, headers: dict[str, str] | None = None) -> None:
        with self._lock:
            self._pending.append((topic, key, value, json.dumps(headers or {}), time.time()))

    def flush(self) -> None:
        with self._lock:
            if not self._pending:
                return
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    "INSERT INTO messages (topic, key, value, headers, ts) VALUES (?, ?, ?, ?, ?)", self._pending
                )
            self._pending.clear()

    def consumer(self, group: str, topics: list[str]) -> SqliteConsumer:
        return SqliteConsumer(self, group, topics)

    def backlog(self, group: str, topic: str) -> int:
        with self._lock:
            (count,) = self._conn.execute(
                "SELECT COUNT(*) FROM messages WHERE topic = ? AND offset >= ?",
                (topic, self._committed(group, topic)),
            ).fetchone()
        return count

    def recent(self, topic: str, limit: int) -> list[Message]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT offset, key, value, headers, ts FROM messages WHERE topic = ? ORDER BY offset DESC LIMIT ?",
                (topic, limit),
            ).fetchall()
        return [Message(topic, 0, off, key, value, json.loads(h), ts) for off, key, value, h, ts in rows]

    def sharding(self, group: str, topic: str) -> OwnEverything:
        return OwnEverything()

    def lag(self, group: str, topic: str) -> dict[int, int]:
        return {0: self.backlog(group, topic)}

    def size(self, topic: str) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM messages WHERE topic = ?", (topic,)).fetchone()[0]

    def close(self) -> None:
        self.flush()
        self._conn.close()

    # -- used by SqliteConsumer -------------------------------------------------

    def _committed(self, group: str, topic: str) -> int:
        row = self._conn.execute(
            "SELECT next_offset FROM group_offsets WHERE grp = ? AND topic = ?", (group, topic)
        ).fetchone()
        return row[0] if row else 0

    def _read(self, topic: str, start: int, limit: int) -> list[Message]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT offset, key, value, headers, ts FROM messages WHERE topic = ? AND offset >= ? "
                "ORDER BY offset LIMIT ?",
                (topic, start, limit),
            ).fetchall()
        return [Message(topic, 0, off, key, value, json.loads(h), ts) for off, key, value, h, ts in rows]

    def _commit(self, group: str, positions: dict[str, int]) -> None:
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for topic, next_offset in positions.items():
                self._conn.execute(
                    "INSERT INTO group_offsets (grp, topic, next_offset) VALUES (?, ?, ?) "
                    "ON CONFLICT (grp, topic) DO UPDATE SET next_offset = max(next_offset, excluded.next_offset)",
                    (group, topic, next_offset),
                )
                # Retention: drop what every group reading this topic is past, once it is old enough.
                self._conn.execute(
                    "DELETE FROM messages WHERE topic = ? AND ts < ? AND offset < "
                    "(SELECT MIN(next_offset) FROM group_offsets WHERE topic = ?)",
                    (topic, time.time() - self.retention_s, topic),
                )


class SqliteConsumer:
    def __init__(self, bus: SqliteBus, group: str, topics: list[str]):
        self._bus = bus
        self.group = group
        self.topics = topics
        with bus._lock:
            self._position = {t: bus._committed(group, t) for t in topics}

    def poll(self, max_records: int, timeout: float = 0.0) -> list[Message]:
        deadline = time.monotonic() + timeout
        while True:
            batch: list[Message] = []
            for topic in self.topics:
                batch += self._bus._read(topic, self._position[topic], max_records - len(batch))
                if len(batch) >= max_records:
                    break
            if batch or time.monotonic() >= deadline:
                for msg in batch:
                    self._position[msg.topic] = max(self._position[msg.topic], msg.offset + 1)
                return batch
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def commit(self, messages: list[Message]) -> None:
        positions: dict[str, int] = {}
        for msg in messages:
            positions[msg.topic] = max(positions.get(msg.topic, 0), msg.offset + 1)
        if positions:
            self._bus._commit(self.group, positions)

    def rewind(self) -> None:
        with self._bus._lock:
            self._position = {t: self._bus._committed(self.group, t) for t in self.topics}

    def close(self) -> None:
        pass
