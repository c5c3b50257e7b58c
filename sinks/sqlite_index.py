"""The embedded search index: SQLite FTS5 over the enriched article records.

The ``unicode61`` tokenizer with ``remove_diacritics 2`` makes search case- and
accent-insensitive (``securite`` finds "sécurité"); ranking is FTS5's bm25 with
the title weighted above the body. Upserts are keyed by article id, so a
redelivered or re-fetched article updates its row instead of adding one.

Near-duplicates (the same story under several URLs, ``sinks/stories.py``) share a
``story`` id assigned when they are indexed: a search returns one hit per story
(its best-ranked article, the others listed with it) and counts stories, not
copies, in its totals, facets and timeline.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from newsmon.bus import connect_sqlite
from newsmon.record import Article, utc_now
from sinks.query import parse, to_fts5
from sinks.stories import StoryIndex

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
    record    TEXT NOT NULL, -- the full record as JSON, without the text (stored once, above)
    story     TEXT           -- the id of the first article of its near-duplicate story
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


STORY_WINDOW_DAYS = 7.0  # a copy indexed within this many days of the first joins its story
_GROUPED_LIMIT = 20  # other articles of a story listed with its hit
_FACET_SIZE = 50


@dataclass
class Hit:
    article: Article
    snippet: str  # with MARK_OPEN/MARK_CLOSE around matches
    score: float | None
    story: str = ""  # the story id; the article's own id when it has no near-duplicate
    duplicates: list[dict] = field(default_factory=list)  # the story's other articles (id, url, title, ...)

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
            "story": self.story or a.id,
            "duplicates": self.duplicates,
        }


@dataclass
class SearchResult:
    total: int  # stories matched (near-duplicates counted once)
    hits: list[Hit] = field(default_factory=list)
    facets: dict[str, dict[str, int]] = field(default_factory=dict)  # stories per language/source/tag of all matches
    articles: int | None = None  # articles matched, copies included (None: the same as total)
    timeline: list[tuple[str, int]] = field(default_factory=list)  # (YYYY-MM-DD, stories first published that day)


@dataclass
class Filters:
    languages: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    since: str | None = None  # inclusive, ISO 8601 (a date alone means its start)
    until: str | None = None  # exclusive


_SUMMARY_FIELDS = ("id", "url", "title", "source", "language", "published")  # of a story's other articles


class SqliteIndex:
    def __init__(self, path: Path, story_window_days: float = STORY_WINDOW_DAYS):
        self._conn = connect_sqlite(path)
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA temp_store=MEMORY")  # the per-search table of matches
        self._conn.executescript(_SCHEMA)
        if "story" not in {row[1] for row in self._conn.execute("PRAGMA table_info(articles)")}:
            with self._conn:  # an index.db from before stories: every article its own story
                self._conn.execute("ALTER TABLE articles ADD COLUMN story TEXT")
                self._conn.execute("UPDATE articles SET story = id")
        self._conn.execute("CREATE INDEX IF NOT EXISTS articles_by_story ON articles(story)")
        self._stories = StoryIndex(self._conn)
        self._window = story_window_days * 86400

    def close(self) -> None:
        self._conn.close()

    def upsert_many(self, articles: list[Article]) -> list[tuple[Article, str]]:
        """Index (or re-index) articles in one transaction; returns the rejected ones (none, here)."""
        now, clock = utc_now(), time.time()
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for article in articles:
                record = article.to_dict()
                record.pop("text")
                story = self._stories.story_of(article, clock, clock - self._window)
                (rowid,) = self._conn.execute(
                    "INSERT INTO articles (id, url, source, title, text, language, published, indexed, record, story) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET url = excluded.url, "
                    "source = excluded.source, title = excluded.title, text = excluded.text, "
                    "language = excluded.language, published = excluded.published, indexed = excluded.indexed, "
                    "record = excluded.record, story = excluded.story RETURNING rowid",
                    (
                        article.id, article.url, article.source, article.title, article.text, article.language,
                        article.published or article.fetched, now, json.dumps(record, ensure_ascii=False), story,
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

    def story(self, article_id: str) -> tuple[str, list[dict]] | None:
        """The story of an article and its other articles (summaries, oldest first); None if unknown."""
        row = self._conn.execute("SELECT coalesce(story, id) FROM articles WHERE id = ?", (article_id,)).fetchone()
        if row is None:
            return None
        return row[0], self._members([row[0]], exclude={article_id}).get(row[0], [])

    def count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM articles").fetchone()[0]

    def _matching(self, query: str, filters: Filters) -> tuple[str, str, list, str | None]:
        """FROM, WHERE and parameters selecting the articles that match, and the FTS5 expression if any."""
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
        return source, f"WHERE {' AND '.join(where)}" if where else "", params, must

    def search(
        self, query: str, filters: Filters | None = None, *, sort: str = "relevance", limit: int = 10, offset: int = 0
    ) -> SearchResult:
        """One hit per story, best first; totals, facets and the timeline count stories."""
        source, clause, params, must = self._matching(query, filters or Filters())
        score = f"bm25(articles_fts, {_TITLE_WEIGHT}, {_TEXT_WEIGHT})" if must else "NULL"
        order = "score, published DESC, rid" if must and sort == "relevance" else "published DESC, score, rid"
        db = self._conn
        db.execute("BEGIN")  # one snapshot for every statement below, while the index stage writes
        try:
            db.execute("DROP TABLE IF EXISTS temp.matched")
            # Matches evaluated once, into a temporary table the counts and the page are read from.
            db.execute(
                f"CREATE TEMP TABLE matched AS SELECT a.rowid AS rid, coalesce(a.story, a.id) AS story, "
                f"coalesce(a.language, 'und') AS language, a.source AS source, substr(a.published, 1, 10) AS day, "
                f"a.published AS published, {score} AS score FROM {source} {clause}", params)
            articles, total = db.execute("SELECT COUNT(*), COUNT(DISTINCT story) FROM matched").fetchone()
            facets = {
                "language": self._count("language"),
                "source": self._count("source"),
                "tag": self._count("t.tag", " JOIN article_tags t ON t.article = m.rid"),
            }
            timeline = db.execute("SELECT day, COUNT(*) FROM (SELECT min(day) AS day FROM matched WHERE day "
                                  "IS NOT NULL GROUP BY story) GROUP BY 1 ORDER BY 1").fetchall()  # on its first day
            page = db.execute(
                f"SELECT rid, story, score FROM (SELECT *, row_number() OVER (PARTITION BY story ORDER BY {order}) AS n "
                f"FROM matched) WHERE n = 1 ORDER BY {order} LIMIT ? OFFSET ?", (limit, offset)).fetchall()
            hits = self._hits(page, must)
            db.execute("DROP TABLE temp.matched")
        finally:
            db.execute("COMMIT")
        return SearchResult(total, hits, facets, articles, [tuple(day) for day in timeline])

    def _count(self, column: str, join: str = "") -> dict[str, int]:
        sql = (f"SELECT {column}, COUNT(DISTINCT m.story) FROM matched m{join} GROUP BY 1 ORDER BY 2 DESC, 1 "
               f"LIMIT {_FACET_SIZE}")
        return dict(self._conn.execute(sql))

    def _hits(self, page: list[tuple[int, str, float | None]], must: str | None) -> list[Hit]:
        if not page:
            return []
        rowids = [rid for rid, _, _ in page]
        marks = ",".join("?" * len(rowids))
        if must:
            rows = self._conn.execute(
                f"SELECT a.rowid, a.record, a.text, snippet(articles_fts, -1, '{MARK_OPEN}', '{MARK_CLOSE}', '…', 24) "
                f"FROM articles a JOIN articles_fts ON articles_fts.rowid = a.rowid "
                f"WHERE articles_fts MATCH ? AND a.rowid IN ({marks})", [must, *rowids])
        else:
            rows = self._conn.execute(
                f"SELECT rowid, record, text, substr(text, 1, 200) FROM articles WHERE rowid IN ({marks})", rowids)
        found = {rid: (record, text, snippet) for rid, record, text, snippet in rows}
        members = self._members([story for _, story, _ in page])
        hits = []
        for rid, story, score in page:
            record, text, snippet = found[rid]
            article = _article(record, text)
            others = [m for m in members.get(story, []) if m["id"] != article.id][:_GROUPED_LIMIT]
            hits.append(Hit(article, " ".join(snippet.split()), None if score is None else -score, story, others))
        return hits

    def _members(self, stories: list[str], exclude: set[str] = frozenset()) -> dict[str, list[dict]]:
        """Summaries of the articles of these stories, oldest first, per story."""
        marks = ",".join("?" * len(stories))
        out: dict[str, list[dict]] = {}
        for story, *values in self._conn.execute(
                f"SELECT story, {', '.join(_SUMMARY_FIELDS)} FROM articles WHERE story IN ({marks}) "
                f"ORDER BY published, id", stories):
            if values[0] not in exclude:
                out.setdefault(story, []).append(dict(zip(_SUMMARY_FIELDS, values)))
        return out

    def export(self, query: str, filters: Filters | None = None, *, text: bool = True) -> Iterator[dict]:
        """Every matching article's record (copies included, each with its ``story``; the text only if
        asked), newest first, streamed: memory stays constant however many there are. Give it a
        connection of its own (a fresh SqliteIndex): the cursor stays open while the caller reads."""
        source, clause, params, _ = self._matching(query, filters or Filters())
        record = "json_set(a.record, '$.story', coalesce(a.story, a.id)" + (", '$.text', a.text)" if text else ")")
        cursor = self._conn.execute(
            f"SELECT {record} FROM {source} {clause} ORDER BY a.published DESC, a.rowid DESC", params)
        for (row,) in cursor:
            yield json.loads(row)

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
        def count(column: str, join: str = "") -> dict[str, int]:
            sql = (f"SELECT {column}, COUNT(*) FROM articles a{join} GROUP BY 1 ORDER BY 2 DESC, 1 "
                   f"LIMIT {_FACET_SIZE}")
            return dict(self._conn.execute(sql))

        return {
            "language": count("coalesce(a.language, 'und')"),
            "source": count("a.source"),
            "tag": count("t.tag", " JOIN article_tags t ON t.article = a.rowid"),
        }


def _article(record: str, text: str) -> Article:
    data = json.loads(record)
    data["text"] = text
    return Article.from_dict(data)
