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

import json
import time
from collections.abc import Iterator
from pathlib import Path

from newsmon import sqlite
from newsmon.dates import utc_now
from newsmon.query import Query, Term, parse
from newsmon.record import Article
from newsmon.search import GROUPED_LIMIT, SUMMARY_FIELDS, Filters, Hit, SearchResult
from newsmon.text import MARK_CLOSE, MARK_OPEN
from sinks.stories import STORY_WINDOW_DAYS, StoryIndex

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
CREATE INDEX IF NOT EXISTS article_tags_by_article ON article_tags(article, tag);
-- What searches filter, count, group and sort by, in rows narrow enough to scan by the hundred thousand
-- (the articles rows carry the text).
CREATE TABLE IF NOT EXISTS article_facts (
    article   INTEGER PRIMARY KEY REFERENCES articles(rowid) ON DELETE CASCADE,
    story     TEXT NOT NULL,     -- the id of the first article of its near-duplicate story
    single    INTEGER NOT NULL,  -- 1 while the story has no other article: counted without DISTINCT
    language  TEXT NOT NULL,
    source    TEXT NOT NULL,
    published TEXT,
    tags      TEXT               -- JSON array of its topics (NULL: none), counted without a join per article
);
CREATE INDEX IF NOT EXISTS article_facts_by_story ON article_facts(story);
CREATE INDEX IF NOT EXISTS article_facts_by_date ON article_facts(published);
CREATE INDEX IF NOT EXISTS article_facts_by_language ON article_facts(language, published);
CREATE INDEX IF NOT EXISTS article_facts_by_source ON article_facts(source, published);
-- Story counts of the whole index (a search with no words and no filters: the page analysts open),
-- kept up to date as articles are indexed instead of counted over every article at each search.
CREATE TABLE IF NOT EXISTS story_values (  -- what each story counts for: its languages, sources, tags, first day
    story TEXT NOT NULL,
    kind  TEXT NOT NULL,                   -- language | source | tag | day | all
    value TEXT NOT NULL,
    PRIMARY KEY (story, kind, value)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS generation (n INTEGER NOT NULL);  -- one row: raised by every write, for caches
INSERT INTO generation SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM generation);
CREATE TABLE IF NOT EXISTS facet_counts (
    kind    TEXT NOT NULL,
    value   TEXT NOT NULL,
    stories INTEGER NOT NULL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
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

_TITLE_WEIGHT, _TEXT_WEIGHT = 5.0, 1.0


_FACET_SIZE = 50
# Stories among matched rows: articles alone in their story count one each, the others once per story.
_STORIES = "COUNT(*) FILTER (WHERE single) + COUNT(DISTINCT story) FILTER (WHERE NOT single)"




class SqliteIndex:
    def __init__(self, path: Path, story_window_days: float = STORY_WINDOW_DAYS):
        self._conn = sqlite.connect(path)
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA temp_store=MEMORY")  # the per-search table of matches
        self._conn.executescript(_SCHEMA)
        with self._conn:  # an index.db from before stories: every article its own story
            self._conn.execute(
                "INSERT INTO article_facts SELECT rowid, id, 1, coalesce(language, 'und'), source, published, "
                "(SELECT json_group_array(tag) FROM article_tags WHERE article = a.rowid HAVING count(*)) "
                "FROM articles a WHERE rowid NOT IN (SELECT article FROM article_facts)")
            if not self._conn.execute("SELECT 1 FROM facet_counts LIMIT 1").fetchone():
                self.recount()
        self._stories = StoryIndex(self._conn)
        self._window = story_window_days * 86400

    def close(self) -> None:
        self._conn.close()

    def write(self, articles: list[Article]) -> list[tuple[Article, str]]:
        """Index (or re-index) articles in one transaction; returns the rejected ones (none, here)."""
        now, clock = utc_now(), time.time()
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for article in articles:
                record = article.to_dict()
                record.pop("text")
                published = article.published or article.fetched
                (rowid,) = self._conn.execute(
                    "INSERT INTO articles (id, url, source, title, text, language, published, indexed, record) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET url = excluded.url, "
                    "source = excluded.source, title = excluded.title, text = excluded.text, "
                    "language = excluded.language, published = excluded.published, indexed = excluded.indexed, "
                    "record = excluded.record RETURNING rowid",
                    (
                        article.id, article.url, article.source, article.title, article.text, article.language,
                        published, now, json.dumps(record, ensure_ascii=False),
                    ),
                ).fetchone()
                story = self._stories.story_of(article, clock, clock - self._window)
                shared = story != article.id or self._conn.execute(
                    "SELECT 1 FROM article_facts WHERE story = ? AND article != ?", (story, rowid)).fetchone()
                if shared:
                    self._conn.execute("UPDATE article_facts SET single = 0 WHERE story = ? AND single", (story,))
                self._conn.execute(
                    "INSERT OR REPLACE INTO article_facts VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (rowid, story, 0 if shared else 1, article.language or "und", article.source, published,
                     json.dumps(article.tag_names) if article.tags else None))
                self._conn.execute("DELETE FROM article_tags WHERE article = ?", (rowid,))
                self._conn.executemany(
                    "INSERT INTO article_tags (tag, article) VALUES (?, ?)", [(t, rowid) for t in article.tag_names]
                )
                self._count_story(story)
            self._conn.execute("UPDATE generation SET n = n + 1")
        return []

    def health(self) -> None:
        return None  # a local file: usable whenever it could be opened

    def generation(self) -> int:
        """A number that changes whenever the index does: a search answer stays valid while it is the same."""
        return self._conn.execute("SELECT n FROM generation").fetchone()[0]

    def _count_story(self, story: str) -> None:
        """Bring the whole-index counts up to date with what ``story`` counts for now."""
        db = self._conn
        now = {(kind, value) for _, kind, value in db.execute(_story_values("WHERE f.story = ?"), (story,) * 5)}
        before = set(db.execute("SELECT kind, value FROM story_values WHERE story = ?", (story,)))
        for (kind, value), change in [*((kv, 1) for kv in now - before), *((kv, -1) for kv in before - now)]:
            if change > 0:
                db.execute("INSERT INTO story_values VALUES (?, ?, ?)", (story, kind, value))
            else:
                db.execute("DELETE FROM story_values WHERE story = ? AND kind = ? AND value = ?", (story, kind, value))
            db.execute("INSERT INTO facet_counts VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET stories = stories + ?",
                       (kind, value, change, change))
        if before - now:
            db.execute("DELETE FROM facet_counts WHERE stories <= 0")

    def recount(self) -> None:
        """Count the whole index again from scratch (an index.db from before the counts; the tests check
        that the counts kept while indexing are the same)."""
        db = self._conn
        db.execute("DELETE FROM story_values")
        db.execute("DELETE FROM facet_counts")
        db.execute(f"INSERT INTO story_values {_story_values('')}")
        db.execute("INSERT INTO facet_counts SELECT kind, value, COUNT(*) FROM story_values GROUP BY kind, value")

    def get(self, article_id: str) -> Article | None:
        row = self._conn.execute("SELECT record, text FROM articles WHERE id = ?", (article_id,)).fetchone()
        return _article(*row) if row else None

    def story(self, article_id: str) -> tuple[str, list[dict]] | None:
        """The story of an article and its other articles (summaries, oldest first); None if unknown."""
        row = self._conn.execute("SELECT f.story FROM articles a JOIN article_facts f ON f.article = a.rowid "
                                 "WHERE a.id = ?", (article_id,)).fetchone()
        if row is None:
            return None
        return row[0], self._members([row[0]], exclude={article_id}).get(row[0], [])

    def count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM articles").fetchone()[0]

    def _matching(self, query: str, filters: Filters) -> tuple[str, str, list, str | None]:
        """FROM, WHERE and parameters selecting the facts (``f``) of the articles that match, and the
        FTS5 expression if any."""
        must, must_not = to_fts5(parse(query))
        where, params = [], []
        if must:
            where.append("articles_fts MATCH ?")
            params.append(must)
        if must_not:
            where.append("f.article NOT IN (SELECT rowid FROM articles_fts WHERE articles_fts MATCH ?)")
            params.append(must_not)
        for column, values in (("f.language", filters.languages), ("f.source", filters.sources)):
            if values:
                where.append(f"{column} IN ({','.join('?' * len(values))})")
                params += values
        if filters.tags:  # as a set of articles: the planner can start from the tag instead of testing each article
            where.append(f"f.article IN (SELECT article FROM article_tags WHERE tag IN ({','.join('?' * len(filters.tags))}))")
            params += filters.tags
        if filters.since:
            where.append("f.published >= ?")
            params.append(filters.since)
        if filters.until:
            where.append("f.published < ?")
            params.append(filters.until)
        # CROSS JOIN keeps the full-text match the outer loop: left to itself, the planner may walk a
        # language's every article and test each against the match.
        source = "articles_fts CROSS JOIN article_facts f ON f.article = articles_fts.rowid" if must else "article_facts f"
        return source, f"WHERE {' AND '.join(where)}" if where else "", params, must

    def search(
        self, query: str, filters: Filters | None = None, *, sort: str = "relevance", limit: int = 10, offset: int = 0
    ) -> SearchResult:
        """One hit per story, best first; totals, facets and the timeline count stories."""
        source, clause, params, must = self._matching(query, filters or Filters())
        if not clause:
            return self._everything(limit, offset)
        ranked = must and sort == "relevance"  # bm25 is most of a broad search's cost: only when it orders
        score = f"bm25(articles_fts, {_TITLE_WEIGHT}, {_TEXT_WEIGHT})" if ranked else "NULL"
        order = "score, published DESC, rid DESC" if ranked else "published DESC, rid DESC"
        db = self._conn
        db.execute("BEGIN")  # one snapshot for every statement below, while the index stage writes
        try:
            db.execute("DROP TABLE IF EXISTS temp.matched")
            # Matches evaluated once, into a temporary table the counts and the page are read from.
            db.execute(
                f"CREATE TEMP TABLE matched AS SELECT f.article AS rid, f.story, f.single, f.language, f.source, "
                f"f.tags, substr(f.published, 1, 10) AS day, f.published, {score} AS score FROM {source} {clause}",
                params)
            articles, total = db.execute(f"SELECT COUNT(*), {_STORIES} FROM matched").fetchone()
            facets = {
                "language": self._count("language"),
                "source": self._count("source"),
                "tag": self._count("t.value", ", json_each(tags) t WHERE tags IS NOT NULL"),
            }
            timeline = db.execute(  # a story counts on the first day it was published
                "SELECT day, COUNT(*) FROM (SELECT day FROM matched WHERE single AND day IS NOT NULL UNION ALL "
                "SELECT min(day) FROM matched WHERE NOT single AND day IS NOT NULL GROUP BY story) "
                "GROUP BY 1 ORDER BY 1").fetchall()
            page = db.execute(  # a story's best article stands for it
                f"SELECT rid, story, score FROM (SELECT rid, story, score, published FROM matched WHERE single "
                f"UNION ALL SELECT rid, story, score, published FROM (SELECT *, row_number() OVER (PARTITION BY "
                f"story ORDER BY {order}) AS n FROM matched WHERE NOT single) WHERE n = 1) "
                f"ORDER BY {order} LIMIT ? OFFSET ?", (limit, offset)).fetchall() if limit else []
            hits = self._hits(page, must)
            db.execute("DROP TABLE temp.matched")
        finally:
            db.execute("COMMIT")
        return SearchResult(total, hits, facets, articles, [tuple(day) for day in timeline])

    def _everything(self, limit: int, offset: int) -> SearchResult:
        """The whole index, newest stories first, from the counts kept while indexing: the same answer
        as counting every article, at a cost that does not grow with the index."""
        db = self._conn
        db.execute("BEGIN")
        try:
            counts: dict[str, dict[str, int]] = {}
            for kind, value, stories in db.execute("SELECT kind, value, stories FROM facet_counts "
                                                   "ORDER BY kind, stories DESC, value"):
                counts.setdefault(kind, {})[value] = stories
            articles = db.execute("SELECT COUNT(*) FROM article_facts").fetchone()[0]
            page, seen = [], set()
            if limit:  # a story's newest article stands for it: walk the articles newest first
                for rid, story in db.execute("SELECT article, story FROM article_facts "
                                             "ORDER BY published DESC, article DESC"):
                    if story not in seen:
                        seen.add(story)
                        if len(seen) > offset:
                            page.append((rid, story, None))
                            if len(page) == limit:
                                break
            hits = self._hits(page, None)
        finally:
            db.execute("COMMIT")
        facets = {kind: dict(list(counts.get(kind, {}).items())[:_FACET_SIZE]) for kind in ("language", "source", "tag")}
        return SearchResult(counts.get("all", {}).get("", 0), hits, facets, articles,
                            sorted(counts.get("day", {}).items()))

    def _count(self, column: str, join: str = "") -> dict[str, int]:
        sql = f"SELECT {column}, {_STORIES} FROM matched{join} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {_FACET_SIZE}"
        return dict(self._conn.execute(sql))

    def _hits(self, page: list[tuple[int, str, float | None]], must: str | None) -> list[Hit]:
        if not page:
            return []
        rowids = [rid for rid, _, _ in page]
        marks = ",".join("?" * len(rowids))
        if must:
            rows = self._conn.execute(
                f"SELECT a.rowid, a.record, a.text, snippet(articles_fts, -1, '{MARK_OPEN}', '{MARK_CLOSE}', '…', 24) "
                f"FROM articles_fts CROSS JOIN articles a ON a.rowid = articles_fts.rowid "
                f"WHERE articles_fts MATCH ? AND articles_fts.rowid IN ({marks})", [must, *rowids])
        else:
            rows = self._conn.execute(
                f"SELECT rowid, record, text, substr(text, 1, 200) FROM articles WHERE rowid IN ({marks})", rowids)
        found = {rid: (record, text, snippet) for rid, record, text, snippet in rows}
        members = self._members([story for _, story, _ in page])
        hits = []
        for rid, story, score in page:
            record, text, snippet = found[rid]
            article = _article(record, text)
            others = [m for m in members.get(story, []) if m["id"] != article.id][:GROUPED_LIMIT]
            hits.append(Hit(article, " ".join(snippet.split()), None if score is None else -score, story, others))
        return hits

    def _members(self, stories: list[str], exclude: set[str] = frozenset()) -> dict[str, list[dict]]:
        """Summaries of the articles of these stories that have several, oldest first, per story."""
        marks = ",".join("?" * len(stories))
        out: dict[str, list[dict]] = {}
        columns = ", ".join(f"a.{c}" for c in SUMMARY_FIELDS)
        for story, *values in self._conn.execute(
                f"SELECT f.story, {columns} FROM article_facts f JOIN articles a ON a.rowid = f.article "
                f"WHERE f.story IN ({marks}) AND NOT f.single ORDER BY f.published, a.id", stories):
            if values[0] not in exclude:
                out.setdefault(story, []).append(dict(zip(SUMMARY_FIELDS, values)))
        return out

    def export(self, query: str, filters: Filters | None = None, *, text: bool = True) -> Iterator[dict]:
        """Every matching article's record (copies included, each with its ``story``; the text only if
        asked), newest first, streamed: memory stays constant however many there are. Give it a
        connection of its own (a fresh SqliteIndex): the cursor stays open while the caller reads."""
        source, clause, params, _ = self._matching(query, filters or Filters())
        record = "json_set(a.record, '$.story', f.story" + (", '$.text', a.text)" if text else ")")
        cursor = self._conn.execute(
            f"SELECT {record} FROM {source} CROSS JOIN articles a ON a.rowid = f.article {clause} "
            f"ORDER BY f.published DESC, f.article DESC", params)
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


def _fts5_term(term: Term) -> str:
    return '"' + term.text.replace('"', '""') + '"' + ("*" if term.prefix else "")


def to_fts5(query: Query) -> tuple[str | None, str | None]:
    """(MATCH expression for what must match, MATCH expression for what must not), each or None."""
    positive = " AND ".join(
        "(" + " OR ".join(_fts5_term(t) for t in group) + ")" if len(group) > 1 else _fts5_term(group[0])
        for group in query.groups
    )
    negative = " OR ".join(_fts5_term(t) for t in query.excluded)
    return positive or None, negative or None


def _story_values(where: str) -> str:
    """(story, kind, value) for what the stories selected by ``where`` (five times) count for in the
    whole-index facets: every language, source and tag of their articles, their first day, and 'all'."""
    union = " UNION ".join(f"SELECT f.story AS story, {kind} AS kind, {value} AS value FROM article_facts f{join} "
                           f"{where}{group}" for kind, value, join, group in (
                               ("'language'", "f.language", "", ""),
                               ("'source'", "f.source", "", ""),
                               ("'tag'", "t.tag", " JOIN article_tags t ON t.article = f.article", ""),
                               ("'day'", "min(substr(f.published, 1, 10))", "", " GROUP BY f.story"),
                               ("'all'", "''", "", "")))
    return f"SELECT story, kind, value FROM ({union}) WHERE value IS NOT NULL"


def _article(record: str, text: str) -> Article:
    data = json.loads(record)
    data["text"] = text
    return Article.from_dict(data)
