"""Saved searches: named analyst queries, kept in ``saved.db`` of the data directory.

A saved search is its parameters (the same as ``GET /api/search`` takes); its URL is the web
page's address for them, so it can be shared as a link.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from newsmon import sqlite
from newsmon.dates import utc_now

_SCHEMA = """
CREATE TABLE IF NOT EXISTS saved_searches (
    id      TEXT PRIMARY KEY,
    name    TEXT NOT NULL,
    params  TEXT NOT NULL,   -- JSON: q, lang, source, tag, since, until, sort
    created TEXT NOT NULL
);
"""


@dataclass
class SearchParams:
    q: str = ""
    lang: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    tag: list[str] = field(default_factory=list)
    since: str | None = None
    until: str | None = None
    sort: str | None = None

    def query_string(self) -> str:
        """As the web page's (and the API's) query string: empty values left out, lists repeated."""
        pairs = [(name, v) for name, value in asdict(self).items()
                 for v in (value if isinstance(value, list) else [value]) if v]
        return urlencode(pairs)


@dataclass
class SavedSearch:
    id: str
    name: str
    params: SearchParams
    created: str

    @property
    def url(self) -> str:
        query = self.params.query_string()
        return "/?" + query if query else "/"


class SavedSearches:
    def __init__(self, path: Path):
        self._db = sqlite.connect(path)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, name: str, params: SearchParams) -> SavedSearch:
        saved = SavedSearch(secrets.token_urlsafe(8), name, params, utc_now())
        self._db.execute("INSERT INTO saved_searches VALUES (?, ?, ?, ?)",
                         (saved.id, name, json.dumps(asdict(params), ensure_ascii=False), saved.created))
        return saved

    def all(self) -> list[SavedSearch]:
        rows = self._db.execute("SELECT id, name, params, created FROM saved_searches ORDER BY created, id")
        return [_saved(*row) for row in rows]

    def get(self, saved_id: str) -> SavedSearch | None:
        row = self._db.execute("SELECT id, name, params, created FROM saved_searches WHERE id = ?",
                               (saved_id,)).fetchone()
        return _saved(*row) if row else None

    def delete(self, saved_id: str) -> bool:
        return self._db.execute("DELETE FROM saved_searches WHERE id = ?", (saved_id,)).rowcount > 0


def _saved(saved_id: str, name: str, params: str, created: str) -> SavedSearch:
    return SavedSearch(saved_id, name, SearchParams(**json.loads(params)), created)
