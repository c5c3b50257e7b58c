"""What the poller remembers, in ``state.db`` of the data directory: each feed's state (validators,
schedule, health) and the canonical URLs already discovered, so a restart neither refetches
unchanged feeds nor re-emits old entries."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from newsmon import sqlite
from newsmon.record import Article

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feeds (
    url           TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    etag          TEXT,
    last_modified TEXT,
    last_polled   REAL,
    last_success  REAL,
    last_status   INTEGER,
    last_error    TEXT,
    failures      INTEGER NOT NULL DEFAULT 0,
    entries_new   INTEGER NOT NULL DEFAULT 0,
    next_poll     REAL,
    interval      REAL,
    disabled      TEXT,
    moved_to      TEXT,
    body_hash     TEXT
);
CREATE TABLE IF NOT EXISTS seen (
    canonical_url TEXT PRIMARY KEY,
    article_id    TEXT NOT NULL,
    feed_url      TEXT NOT NULL,
    first_seen    TEXT NOT NULL
);
"""


@dataclass
class FeedState:
    url: str
    name: str = ""
    etag: str | None = None
    last_modified: str | None = None
    last_polled: float | None = None
    last_success: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    failures: int = 0
    entries_new: int = 0
    next_poll: float | None = None  # when the feed is due again (interval, max-age, backoff, Retry-After)
    interval: float | None = None  # the adapted interval: shorter while the feed publishes, longer while quiet
    disabled: str | None = None  # why it is no longer polled (HTTP 410), until `newsmon feeds enable`
    moved_to: str | None = None  # where a permanent redirect (301/308) sent it: polled there from then on
    body_hash: str | None = None  # of the last parsed body: the same bytes are not parsed again


class FeedStore:
    """Per-feed state and the discovered-URL set, in ``state.db`` of the data directory."""

    def __init__(self, path: Path):
        self._conn = sqlite.connect(path)
        self._conn.executescript(_SCHEMA)
        have = {row[1] for row in self._conn.execute("PRAGMA table_info(feeds)")}
        for name, kind in (("next_poll", "REAL"), ("interval", "REAL"), ("disabled", "TEXT"), ("moved_to", "TEXT"),
                           ("body_hash", "TEXT")):
            if name not in have:  # a state.db from an earlier version
                self._conn.execute(f"ALTER TABLE feeds ADD COLUMN {name} {kind}")

    def get(self, url: str) -> FeedState:
        cur = self._conn.execute("SELECT * FROM feeds WHERE url = ?", (url,))
        row = cur.fetchone()
        if row is None:
            return FeedState(url)
        return FeedState(**dict(zip([c[0] for c in cur.description], row)))

    def states(self) -> dict[str, FeedState]:
        """Every feed's state by URL, in one query (the scheduler reads this each second)."""
        cur = self._conn.execute("SELECT * FROM feeds")
        names = [c[0] for c in cur.description]
        return {row[0]: FeedState(**dict(zip(names, row))) for row in cur.fetchall()}

    def save(self, state: FeedState) -> None:
        self.save_many([state])

    def save_many(self, states: Iterable[FeedState]) -> None:
        rows = [tuple(vars(state).values()) for state in states]
        if not rows:
            return
        names = list(vars(FeedState("")))
        with self._conn:  # one transaction for a batch of polls
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                f"INSERT OR REPLACE INTO feeds ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", rows
            )

    def enable(self, url: str) -> bool:
        """Poll a disabled feed again, from now on; False if there is no such feed."""
        with self._conn:
            return self._conn.execute("UPDATE feeds SET disabled = NULL, failures = 0, next_poll = 0 WHERE url = ?",
                                      (url,)).rowcount > 0

    def broken(self, failures: int) -> int:
        """Feeds disabled, or failing ``failures`` times or more in a row."""
        return self._conn.execute("SELECT COUNT(*) FROM feeds WHERE disabled IS NOT NULL OR failures >= ?",
                                  (failures,)).fetchone()[0]

    def all(self) -> list[FeedState]:
        cur = self._conn.execute("SELECT * FROM feeds ORDER BY name")
        names = [c[0] for c in cur.description]
        return [FeedState(**dict(zip(names, row))) for row in cur.fetchall()]

    def unseen(self, canonical_urls: Iterable[str]) -> set[str]:
        urls = list(canonical_urls)
        seen = set()
        for i in range(0, len(urls), 500):
            chunk = urls[i : i + 500]
            seen.update(
                r[0]
                for r in self._conn.execute(
                    f"SELECT canonical_url FROM seen WHERE canonical_url IN ({','.join('?' * len(chunk))})", chunk
                )
            )
        return set(urls) - seen

    def mark_seen(self, articles: Iterable[Article]) -> None:
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT OR IGNORE INTO seen (canonical_url, article_id, feed_url, first_seen) VALUES (?, ?, ?, ?)",
                [(a.canonical_url, a.id, a.feed_url, a.discovered) for a in articles],
            )

    def close(self) -> None:
        self._conn.close()
