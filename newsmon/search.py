"""The search index contract: what the index stage writes and analysts read, on either backend.

``sinks.sqlite_index.SqliteIndex`` (the embedded default) and ``sinks.elasticsearch.EsIndex``
(Elasticsearch or OpenSearch) implement ``SearchIndex``; the application (index stage, CLI, API)
uses only what is declared here. Queries are in the analyst's syntax (``newsmon.query``); each
backend translates them itself.

Near-duplicates (one story under several URLs) share a ``story`` id: a search returns one hit
per story, its best article, with the others in ``duplicates``, and counts stories, not copies,
in totals, facets and the timeline.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from newsmon.record import Article
from newsmon.text import marked, snippet_html

GROUPED_LIMIT = 20  # other articles of a story listed with its hit
SUMMARY_FIELDS = ("id", "url", "title", "source", "language", "published")  # of a story's other articles


@dataclass
class Filters:
    languages: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    since: str | None = None  # inclusive, ISO 8601 (a date alone means its start)
    until: str | None = None  # exclusive


@dataclass
class Hit:
    article: Article
    snippet: str  # with MARK_OPEN/MARK_CLOSE around matches
    score: float | None
    story: str = ""  # the story id; the article's own id when it has no near-duplicate
    duplicates: list[dict] = field(default_factory=list)  # the story's other articles (SUMMARY_FIELDS)

    def snippet_html(self) -> str:
        return snippet_html(self.snippet)

    def snippet_marked(self, open_: str, close: str) -> str:
        return marked(self.snippet, open_, close)

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


class SearchIndex(Protocol):
    def write(self, articles: list[Article]) -> list[tuple[Article, str]]:
        """Index (or re-index: the id is the key) articles, durably when this returns; the rejected
        ones with the reason. Raises ``SinkUnavailable`` when it cannot take them now."""

    def search(self, query: str, filters: Filters | None = None, *, sort: Literal["relevance", "date"] = "relevance",
               limit: int = 10, offset: int = 0) -> SearchResult:
        """One hit per story, best first; totals, facets and the timeline count stories."""

    def get(self, article_id: str) -> Article | None: ...

    def story(self, article_id: str) -> tuple[str, list[dict]] | None:
        """The story of an article and its other articles (summaries, oldest first); None if unknown."""

    def export(self, query: str, filters: Filters | None = None, *, text: bool = True) -> Iterator[dict]:
        """Every matching article's record (copies included, with its ``story``; the text if asked),
        newest first, streamed in constant memory."""

    def count(self) -> int:
        """Articles indexed."""

    def facets(self) -> dict[str, dict[str, int]]:
        """Article counts per language, source and tag over the whole index."""

    def recent_warnings(self, limit: int = 20) -> list[dict]:
        """Indexed articles that carry warnings, newest first: ``{"item": url, "stage", "reason", "at"}``."""

    def generation(self) -> int | None:
        """A number that changes whenever the index does, so an answer can be cached while it stays the
        same; None when the backend has no such number (the search cluster caches by itself)."""

    def health(self) -> str | None:
        """None when the index can be used, else why not; an unreachable cluster is tried again."""

    def close(self) -> None: ...
