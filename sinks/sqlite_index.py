"""The embedded search index: SQLite FTS5 over the enriched article records.

The ``unicode61`` tokenizer with ``remove_diacritics 2`` makes search case- and
accent-insensitive (``securite`` finds "sécurité"); ranking is FTS5's bm25 with
the title weighted above the body. Upserts are keyed by article id, so a
redelivered or re-fetched article updates its row instead of adding one.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from newsmon.bus import connect_sqlite
from newsmon.record import Article, utc_now
from sinks.query import parse, to_fts5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS articles (
    rowid     INTEGER PRIMARY KEY,
    id        TEXT NOT NULL UNIQUE,
    url       TEXT NOT NULL,
    source    TEXT NOT NULL,
    title     TEXT NOT NULL,
    text      TEXT NOT NULL,
    language  TEXT,
    published TEXT,
    indexed   TEXT NOT NULL,
    record    TEXT NOT NULL  -- the full record as JSON, without the text (stored once, above)
);
CREATE INDEX IF NOT EXISTS articles_by_date ON articles(published);
CREATE INDEX IF NOT EXISTS articles_by_language ON articles(language);
CREATE INDEX IF NOT EXISTS articles_by_source ON articles(source);
CREATE TABLE IF NOT EXISTS article_tags (
    tag     TEXT NOT NULL,
    article INTEGER NOT NULL REFERENCES articles(rowid) ON DELETE CASCADE,
    PRIMARY KEY (tag, article)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS article_tags_by_article ON article_tags(article);
CREATE VIRTUAL TABLE IF NOT EXISTS articles_fts USING fts5(
    title, text, content='articles', content_rowid='rowid', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS articles_ai AFTER INSERT ON articles BEGIN
    INSERT INTO articles_fts(rowid, title, text) VALUES (new.rowid, new.title, new.text);
END;
CREATE TRIGGER IF NOT EXISTS articles_ad AFTER DELETE ON articles BEGIN
    INSERT INTO articles_fts(articles_fts, rowid, title, text) VALUES ('delete', old.rowid, old.title, old.text);
END;
CREATE TRIGGER IF NOT EXISTS articles_au AFTER UPDATE ON articles BEGIN
    INSERT INTO articles_fts(articles_fts, rowid, title, text) VALUES ('delete', old.rowid, old.title, old.text);
    INSERT INTO articles_fts(rowid, title, text) VALUES (new.rowid, new.title, new.text);
END;
"""

# Private-use characters mark highlights inside snippets; they cannot occur in extracted text
# that matters, and are turned into <mark> (HTML) or terminal markers when rendered.
MARK_OPEN, MARK_CLOSE = "\ue000", "\ue001"
_TITLE_WEIGHT, _TEXT_WEIGHT = 5.0, 1.0


@dataclass
class Hit:
    article: Article
    snippet: str  # with MARK_OPEN/MARK_CLOSE around matches
    score: float | None

    def snippet_html(self) -> str:
        return html.escape(self.snippet).replace(MARK_OPEN, "<mark>").replace(MARK_CLOSE, "</mark>")

    def snippet_marked(self, open_: str, close: str) -> str:
        return self.snippet.replace(MARK_OPEN, open_).replace(MARK_CLOSE, close)

    def summary(self) -> dict:
        a = self.article
        return {
            "id": a.id,
            "url": a.url,
            "title": a.title,
            "source": a.source,
            "authors": a.authors,
            "language": a.language,
            "tags": a.tag_names,
            "matched_terms": {hit.topic: hit.terms for hit in a.tags},
            "published": a.published,
            "score": self.score,
            "snippet": self.snippet_html(),
        }


@dataclass
class SearchResult:
    total: int
    hits: list[Hit] = field(default_factory=list)
    facets: dict[str, dict[str, int]] = field(default_factory=dict)  # counts per language/source/tag of all matches


@dataclass
class Filters:
    languages: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    since: str | None = None  # inclusive, ISO 8601 (a date alone means its start)
    until: str | None = None  # exclusive


class SqliteIndex:
    def __init__(self, path: Path):
        self._conn = connect_sqlite(path)
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def upsert_many(self, articles: list[Article]) -> list[tuple[Article, str]]:
        """Index (or re-index) articles in one transaction; returns the rejected ones (none, here)."""
        now = utc_now()
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for article in articles:
                record = article.to_dict()
                record.pop("text")
                (rowid,) = self._conn.execute(
                    "INSERT INTO articles (id, url, source, title, text, language, published, indexed, record) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET url = excluded.url, "
                    "source = excluded.source, title = excluded.title, text = excluded.text, "
                    "language = excluded.language, published = excluded.published, indexed = excluded.indexed, "
                    "record = excluded.record RETURNING rowid",
                    (
                        article.id, article.url, article.source, article.title, article.text, article.language,
                        article.published or article.fetched, now, json.dumps(record, ensure_ascii=False),
                    ),
                ).fetchone()
                self._conn.execute("DELETE FROM article_tags WHERE article = ?", (rowid,))
                self._conn.executemany(
                    "INSERT INTO article_tags (tag, article) VALUES (?, ?)", [(t, rowid) for t in article.tag_names]
                )
        return []

    def get(self, article_id: str) -> Article | None:
        row = self._conn.execute("SELECT record, text FROM articles WHERE id = ?", (article_id,)).fetchone()
        return _article(*row) if row else None

    def count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM articles").fetchone()[0]

    def search(
        self, query: str, filters: Filters | None = None, *, sort: str = "relevance", limit: int = 10, offset: int = 0
    ) -> SearchResult:
        filters = filters or Filters()
        must, must_not = to_fts5(parse(query))
        where, params = [], []
        if must:
            where.append("articles_fts MATCH ?")
            params.append(must)
        if must_not:
            where.append("a.rowid NOT IN (SELECT rowid FROM articles_fts WHERE articles_fts MATCH ?)")
            params.append(must_not)
        for column, values in (("a.language", filters.languages), ("a.source", filters.sources)):
            if values:
                where.append(f"{column} IN ({','.join('?' * len(values))})")
                params += values
        if filters.tags:
            where.append(
                f"EXISTS (SELECT 1 FROM article_tags t WHERE t.article = a.rowid AND t.tag IN ({','.join('?' * len(filters.tags))}))"
            )
            params += filters.tags
        if filters.since:
            where.append("a.published >= ?")
            params.append(filters.since)
        if filters.until:
            where.append("a.published < ?")
            params.append(filters.until)
        source = "articles a JOIN articles_fts ON articles_fts.rowid = a.rowid" if must else "articles a"
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = self._conn.execute(f"SELECT COUNT(*) FROM {source} {clause}", params).fetchone()[0]
        facets = self._facets(source, clause, params)
        if must:
            columns = (
                f"a.record, a.text, snippet(articles_fts, -1, '{MARK_OPEN}', '{MARK_CLOSE}', '…', 24), "
                f"bm25(articles_fts, {_TITLE_WEIGHT}, {_TEXT_WEIGHT})"
            )
            order = "4, a.published DESC" if sort == "relevance" else "a.published DESC, 4"
        else:
            columns, order = "a.record, a.text, substr(a.text, 1, 200), NULL", "a.published DESC, a.rowid DESC"
        rows = self._conn.execute(
            f"SELECT {columns} FROM {source} {clause} ORDER BY {order} LIMIT ? OFFSET ?", params + [limit, offset]
        ).fetchall()
        hits = [
            Hit(_article(record, text), " ".join(snippet.split()), None if score is None else -score)
            for record, text, snippet, score in rows
        ]
        return SearchResult(total, hits, facets)

    def recent_warnings(self, limit: int = 20) -> list[dict]:
        """Indexed articles that carry warnings (e.g. invalid bytes replaced), newest first."""
        rows = self._conn.execute(
            "SELECT url, record ->> '$.warnings' FROM articles WHERE json_array_length(record, '$.warnings') > 0 "
            "ORDER BY indexed DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [{"item": url, **warning} for url, warnings in rows for warning in json.loads(warnings)]

    def facets(self) -> dict[str, dict[str, int]]:
        """Article counts per language, source and tag over the whole index."""
        return self._facets("articles a", "", [])

    def _facets(self, source: str, clause: str, params: list, size: int = 50) -> dict[str, dict[str, int]]:
        """Counts per language, source and tag among the articles a search matched (``source`` + ``clause``)."""
        def count(column: str, join: str = "") -> dict[str, int]:
            sql = f"SELECT {column}, COUNT(*) FROM {source}{join} {clause} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {size}"
            return dict(self._conn.execute(sql, params))

        return {
            "language": count("coalesce(a.language, 'und')"),
            "source": count("a.source"),
            "tag": count("t.tag", " JOIN article_tags t ON t.article = a.rowid"),
        }


def _article(record: str, text: str) -> Article:
    data = json.loads(record)
    data["text"] = text
    return Article.from_dict(data)
