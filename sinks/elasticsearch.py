"""The Elasticsearch (or OpenSearch) search index: the index stage's sink and a search backend.

Talks to the REST API with httpx rather than a vendor client: the few endpoints used
here (``/``, ``_index_template``, ``_mapping``, ``_bulk``, ``_search``) are the same on
Elasticsearch 8 and 9 and OpenSearch 2, whereas elasticsearch-py 9 sends
``compatible-with=9`` headers that ES 8 rejects and refuses to talk to OpenSearch.

Layout in the cluster: one index per month, ``<prefix>-YYYY.MM``, all created from one
index template that also puts them behind the read alias ``<prefix>``. An article's
month comes from the article itself (published, else discovered, else fetched), never
from the time of writing, so a re-index lands in the same concrete index and replaces
the document (``_id`` = article id) instead of duplicating it. Old months are removed by
deleting their index.

Text is indexed twice: ``title``/``text`` with an accent-folding analyzer for every
article (``securite`` finds "sécurité"), and ``title_<lang>``/``text_<lang>`` with
that language's stemming analyzer for articles in a language listed below.

Near-duplicates (the same story under several URLs, ``sinks/stories.py``) share a ``story``
keyword, assigned by the index stage from MinHash sketches it keeps in ``stories.db`` in its
data directory; searches collapse on it (one hit per story, the others listed with it) and
count stories with ``cardinality`` aggregations, as the embedded index does. Each index-stage
instance has its own ``stories.db``: with several instances on Kafka, copies of a story that
land on different instances are not grouped.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from newsmon import metrics, sqlite
from newsmon.errors import ServiceError, SinkUnavailable
from newsmon.query import Query, Term, parse
from newsmon.record import Article
from newsmon.retry import backoff, retriable_status
from newsmon.search import GROUPED_LIMIT, SUMMARY_FIELDS, Filters, Hit, SearchResult
from newsmon.settings import ElasticsearchSettings
from newsmon.text import MARK_CLOSE, MARK_OPEN
from sinks.stories import STORY_WINDOW_DAYS, StoryIndex

log = logging.getLogger(__name__)

# Detected language -> built-in analyzer, on Elasticsearch and OpenSearch alike.
LANGUAGE_ANALYZERS = {
    "ar": "arabic", "bg": "bulgarian", "ca": "catalan", "cs": "czech", "da": "danish", "de": "german",
    "el": "greek", "en": "english", "es": "spanish", "fi": "finnish", "fr": "french", "hu": "hungarian",
    "id": "indonesian", "it": "italian", "lv": "latvian", "nl": "dutch", "no": "norwegian", "pt": "portuguese",
    "ro": "romanian", "ru": "russian", "sv": "swedish", "tr": "turkish",
}
_TITLE_BOOST = 5
_FACETS = {"language": "language", "source": "source", "tag": "tags"}
PAGE = 1_000  # documents per request when reading a whole query (exports, the story backfill)
# Stories counted with HyperLogLog++: near-exact below precision_threshold (40,000 is the maximum
# Elasticsearch allows), approximate above it (errors of a few per cent), where SQLite counts exactly.
_STORIES = {"cardinality": {"field": "story", "precision_threshold": 40_000}}
_OLDEST_FIRST = [{"date": {"order": "asc", "missing": "_last"}}, {"id": "asc"}]  # a story's articles, as on SQLite
_NDJSON = {"Content-Type": "application/x-ndjson"}
_PROBE_EVERY = 5.0  # seconds between connection attempts to a cluster found unreachable


def index_template(prefix: str) -> dict:
    """The composable index template behind every monthly index: settings, mappings and the read alias."""
    text = {"type": "text", "analyzer": "newsmon_folding"}
    keyword = {"type": "keyword"}
    per_language = {
        f"{field_}_{lang}": {"type": "text", "analyzer": analyzer}
        for lang, analyzer in LANGUAGE_ANALYZERS.items() for field_ in ("title", "text")
    }
    return {
        "index_patterns": [f"{prefix}-*"],
        "priority": 200,
        "_meta": {"managed_by": "newsmon"},
        "template": {
            "settings": {
                "analysis": {
                    "analyzer": {
                        "newsmon_folding": {"type": "custom", "tokenizer": "standard",
                                            "filter": ["lowercase", "asciifolding"]},
                    }
                }
            },
            "mappings": {
                # Only the fields below are indexed; the rest of the record (provenance, tag
                # positions...) is kept in _source unindexed, so new record fields never change the mapping.
                "dynamic": False,
                # The per-language copies are for matching only: the text is stored once, in "text".
                "_source": {"excludes": ["title_*", "text_*"]},
                "properties": {
                    **{name: keyword for name in ("id", "url", "canonical_url", "final_url", "feed_url", "source",
                                                  "language", "tags", "matched_terms", "authors", "story")},
                    **{name: {"type": "date"} for name in ("date", "published", "discovered", "fetched")},
                    "language_confidence": {"type": "float"},
                    "warning_count": {"type": "integer"},
                    "title": text,
                    "text": text,
                    "tag_hits": {"type": "object", "enabled": False},
                    **per_language,
                },
            },
            "aliases": {prefix: {}},
        },
    }


def index_for(article: Article, prefix: str) -> str:
    """The concrete monthly index of an article, from its own dates: stable across re-indexing."""
    for stamp in (article.published, article.discovered, article.fetched):
        if stamp and len(stamp) >= 7 and stamp[:4].isdigit() and stamp[5:7].isdigit() and stamp[4] == "-":
            return f"{prefix}-{stamp[:4]}.{stamp[5:7]}"
    return f"{prefix}-undated"


def to_document(article: Article, story: str | None = None) -> dict:
    """The document of an article in its story (by default its own: an article without near-duplicates)."""
    doc = article.to_dict()
    doc["story"] = story or article.id
    doc["tag_hits"] = doc.pop("tags")
    doc["tags"] = article.tag_names
    doc["matched_terms"] = sorted({term for hit in article.tags for term in hit.terms})
    doc["date"] = article.published or article.fetched or article.discovered
    doc["warning_count"] = len(article.warnings)
    if article.language in LANGUAGE_ANALYZERS:
        doc[f"title_{article.language}"] = article.title
        doc[f"text_{article.language}"] = article.text
    return doc


def from_document(doc: dict) -> Article:
    data = {k: v for k, v in doc.items() if k not in ("tags", "matched_terms", "date", "warning_count", "story")}
    data["tags"] = data.pop("tag_hits", [])
    return Article.from_dict(data)


def _bulk_chunks(actions: list[tuple[Article, bytes]], max_docs: int, max_bytes: int) -> Iterator[list[tuple[Article, bytes]]]:
    chunk, size = [], 0
    for action in actions:
        if chunk and (len(chunk) >= max_docs or size + len(action[1]) > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(action)
        size += len(action[1])
    if chunk:
        yield chunk


def _error_text(error) -> str:
    if isinstance(error, dict):
        text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
        cause = error.get("caused_by")
        return f"{text} (caused by {_error_text(cause)})" if cause else text
    return str(error)


@dataclass(frozen=True)
class Credentials:
    api_key: str | None = None
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_env(cls, env=os.environ) -> Credentials:
        """Secrets come from the environment only, never from the YAML files."""
        return cls(env.get("NEWSMON_ES_API_KEY") or None, env.get("NEWSMON_ES_USERNAME") or None,
                   env.get("NEWSMON_ES_PASSWORD") or None)


class EsIndex:
    """Bulk sink and search backend over one Elasticsearch/OpenSearch cluster."""

    def __init__(self, settings: ElasticsearchSettings, credentials: Credentials | None = None,
                 stories: Path | None = None):
        """``stories``: the SQLite file of the sketches the sink assigns stories from (the index
        stage's data directory); without it they are kept in memory, for this process only."""
        credentials = credentials or Credentials.from_env()
        self.settings = settings
        self.prefix = settings.index_prefix
        headers = {"Accept": "application/json"}
        auth = None
        if credentials.api_key:
            headers["Authorization"] = f"ApiKey {credentials.api_key}"
        elif credentials.username:
            auth = httpx.BasicAuth(credentials.username, credentials.password or "")
        self._http = httpx.Client(
            base_url=settings.url.rstrip("/"), headers=headers, auth=auth,
            verify=settings.ca_file or True,
            timeout=httpx.Timeout(settings.request_timeout, connect=min(5.0, settings.request_timeout)),
        )
        self._problem: str | None = None  # why the cluster cannot be used now, while it cannot
        self._next_probe = 0.0
        self.product = ""  # e.g. "Elasticsearch 8.15.0", once connected
        self._known_indices: set[str] = set()
        self._stories_path = stories
        self._stories_db: sqlite3.Connection | None = None  # opened by the first write: readers never need it
        self._story_index: StoryIndex | None = None

    def close(self) -> None:
        self._http.close()
        if self._stories_db is not None:
            self._stories_db.close()

    # -- start-up ---------------------------------------------------------------------------

    def connect(self, install: bool = True) -> EsIndex:
        """Detect product and version, refuse unsupported ones, install the index template (idempotent).

        Search-only use (``install=False``) needs no write privileges.
        """
        info = self._call("GET", "/")
        version = info.get("version", {})
        number = str(version.get("number", "0"))
        major = int(number.split(".")[0]) if number.split(".")[0].isdigit() else 0
        if version.get("distribution") == "opensearch":
            self.product, supported = f"OpenSearch {number}", major in (2, 3)
        else:
            self.product, supported = f"Elasticsearch {number}", major in (8, 9)
        if not supported:
            raise ServiceError(f"{self.settings.url}: {self.product} is not supported "
                          "(supported: Elasticsearch 8.x and 9.x, OpenSearch 2.x and 3.x)")
        if not install:
            return self
        template = index_template(self.prefix)
        self._call("PUT", f"/_index_template/{self.prefix}", json=template)
        # A template shapes only the indices created after it: the months that already exist get the
        # fields added since they were created (adding a field is allowed; the others are unchanged).
        self._call("PUT", f"/{self.prefix}-*/_mapping", params={"allow_no_indices": "true"},
                   json={"properties": template["template"]["mappings"]["properties"]})
        self._backfill_stories()
        log.info("elasticsearch: %s at %s, template %s installed", self.product, self.settings.url, self.prefix)
        self._set_problem(None)
        return self

    def try_connect(self) -> EsIndex:
        """Connect now if the cluster answers; if it is down, the sink connects when it comes back."""
        try:
            self.connect()
        except SinkUnavailable as exc:
            self._set_problem(str(exc))
            log.warning("elasticsearch: not reachable yet, will keep trying: %s", exc)
        return self

    def health(self) -> str | None:
        """None while the cluster takes writes; else the last error, after trying to connect again
        (at most every few seconds, however often readiness is asked)."""
        if self._problem is not None and time.monotonic() >= self._next_probe:
            self._next_probe = time.monotonic() + _PROBE_EVERY
            self.try_connect()
        return self._problem

    def generation(self) -> None:
        return None  # the cluster keeps its own request cache; no answer is cached here

    def _set_problem(self, problem: str | None) -> None:
        if problem is None and self._problem is not None:
            log.info("elasticsearch: available again")
        self._problem = problem

    def _call(self, method: str, path: str, **kwargs) -> dict:
        """One request; retriable failures raise SinkUnavailable, the rest ServiceError."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise SinkUnavailable(f"{self.settings.url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            try:
                error = _error_text(response.json().get("error", response.text))
            except ValueError:
                error = response.text[:300]
            message = f"{method} {path}: HTTP {response.status_code}: {error}"
            if retriable_status(response.status_code):
                raise SinkUnavailable(message)
            raise ServiceError(message)
        return response.json()

    def _ensure_index(self, name: str) -> None:
        """Create a monthly index explicitly, so clusters that forbid auto-creation work too."""
        if name in self._known_indices:
            return
        try:
            self._call("PUT", f"/{name}")
        except ServiceError as exc:
            if "resource_already_exists_exception" not in str(exc):
                raise
        self._known_indices.add(name)

    def _backfill_stories(self) -> None:
        """Give documents indexed before stories existed their own id as story. Leaving it missing
        is not an option: collapsing puts every document without a value into one single group.
        Runs at each writer start (it then finds nothing), in pages: memory stays constant."""
        body = {"query": {"bool": {"must_not": [{"exists": {"field": "story"}}]}}, "_source": False,
                "sort": [{"id": "asc"}], "size": PAGE, "track_total_hits": False}
        done = 0
        while hits := self._search(body)["hits"]["hits"]:
            lines = [json.dumps(line) for hit in hits for line in (
                {"update": {"_index": hit["_index"], "_id": hit["_id"]}}, {"doc": {"story": hit["_id"]}})]
            items = self._call("POST", "/_bulk", content=("\n".join(lines) + "\n").encode(), headers=_NDJSON)["items"]
            failed = [item["update"] for item in items if item["update"].get("status", 500) >= 300]
            if failed:  # left for the next start; meanwhile those documents collapse together
                log.warning("elasticsearch: story not set on %d old document(s): %s", len(failed),
                            _error_text(failed[0].get("error")))
            done += len(hits) - len(failed)
            if len(hits) < PAGE:
                break
            body["search_after"] = hits[-1]["sort"]
        if done:
            log.info("elasticsearch: story set on %d document(s) indexed before stories", done)

    # -- the sink ---------------------------------------------------------------------------

    def _assign_stories(self, articles: list[Article]) -> dict[str, str]:
        """The story of each article, by id. Committed before the documents are sent: a batch
        delivered again after a failure gets the same stories back."""
        if self._stories_db is None:
            self._stories_db = sqlite.connect(self._stories_path)
            self._story_index = StoryIndex(self._stories_db)
        clock = time.time()
        with self._stories_db:
            self._stories_db.execute("BEGIN IMMEDIATE")
            since = clock - STORY_WINDOW_DAYS * 86400
            return {a.id: self._story_index.story_of(a, clock, since) for a in articles}

    def write(self, articles: list[Article]) -> list[tuple[Article, str]]:
        """Index articles by id; returns those Elasticsearch rejected for good, each with its error.

        Retriable failures (429, 5xx, connection errors, for the whole request or single
        items) are retried with backoff until ``give_up_after``; then SinkUnavailable is
        raised and the runner re-delivers the batch later. Memory stays bounded by one batch.
        """
        s = self.settings
        stories = self._assign_stories(articles)
        actions = []
        for article in articles:
            head = {"index": {"_index": index_for(article, self.prefix), "_id": article.id}}
            doc = to_document(article, stories[article.id])
            body = json.dumps(head) + "\n" + json.dumps(doc, ensure_ascii=False) + "\n"
            actions.append((article, body.encode("utf-8")))
        deadline = time.monotonic() + s.give_up_after
        rejected: list[tuple[Article, str]] = []
        attempt = 0
        while actions:
            retry, last_error = [], ""
            for chunk in _bulk_chunks(actions, s.bulk_docs, s.bulk_bytes):
                try:
                    if not self.product:
                        self.connect()
                    for name in {index_for(article, self.prefix) for article, _ in chunk}:
                        self._ensure_index(name)
                    metrics.BULK_DOCUMENTS.observe(len(chunk))
                    metrics.BULK_BYTES.observe(sum(len(body) for _, body in chunk))
                    # The joined body is not kept in a local: a failed request's traceback would hold it.
                    items = self._call("POST", "/_bulk", content=b"".join(body for _, body in chunk),
                                       headers=_NDJSON)["items"]
                except SinkUnavailable as exc:
                    retry += chunk
                    last_error = str(exc)
                    continue
                for action, item in zip(chunk, items):
                    outcome = item.get("index", {})
                    status = outcome.get("status", 500)
                    if status < 300:
                        continue
                    if retriable_status(status):
                        retry.append(action)
                        last_error = f"item {action[0].id}: HTTP {status}: {_error_text(outcome.get('error'))}"
                    else:
                        rejected.append((action[0], f"elasticsearch rejected it: HTTP {status}: "
                                                    f"{_error_text(outcome.get('error'))}"))
            if not retry:
                self._set_problem(None)
                return rejected
            self._set_problem(last_error)
            delay = backoff(attempt, 0.5, s.backoff_max)
            attempt += 1
            if time.monotonic() + delay > deadline:
                raise SinkUnavailable(f"{len(retry)} document(s) not accepted after {s.give_up_after:g}s: {last_error}")
            log.warning("elasticsearch: %d document(s) to retry in %.1fs: %s", len(retry), delay, last_error)
            time.sleep(delay)
            actions = retry
        return rejected

    # -- the search backend ------------------------------------------------------------------

    def _search(self, body: dict) -> dict:
        try:
            return self._call("POST", f"/{self.prefix}/_search", json=body)
        except ServiceError as exc:
            if "index_not_found_exception" in str(exc):  # nothing indexed yet
                return {"hits": {"total": {"value": 0}, "hits": []}, "aggregations": {}}
            raise

    def search(self, query: str, filters: Filters | None = None, *, sort: str = "relevance", limit: int = 10,
               offset: int = 0) -> SearchResult:
        """One hit per story, best first; totals, facets and the timeline count stories."""
        body = search_body(parse(query), filters or Filters(), sort=sort, limit=limit, offset=offset)
        answer = self._search(body)
        hits = []
        for hit in answer["hits"]["hits"]:
            highlight = hit.get("highlight", {})
            fragments = highlight.get("text") or highlight.get("title") or []
            article = from_document(hit["_source"])
            snippet = " ".join(fragments[0].split()) if fragments else article.text[:200]
            hits.append(Hit(article, snippet, hit.get("_score"), _story(hit["_source"])))
        members = self._members([hit.story for hit in hits])
        for hit in hits:
            hit.duplicates = _others(members.get(hit.story, []), hit.article.id)
        aggregations = answer.get("aggregations", {})
        # Stories per day: a story counts on each day it has a matching article. SQLite counts it on its
        # first day only; the same here would need every story's first date (a terms aggregation over all
        # the stories matched), so the two differ for stories whose copies appeared on several days.
        days = aggregations.get("timeline", {}).get("buckets", [])
        timeline = [(day["key_as_string"], day["stories"]["value"]) for day in days]
        return SearchResult(aggregations.get("stories", {}).get("value", 0), hits, _facets(aggregations, stories=True),
                            answer["hits"]["total"]["value"], timeline)

    def get(self, article_id: str) -> Article | None:
        answer = self._search({"query": {"ids": {"values": [article_id]}}, "size": 1})
        hits = answer["hits"]["hits"]
        return from_document(hits[0]["_source"]) if hits else None

    def story(self, article_id: str) -> tuple[str, list[dict]] | None:
        """The story of an article and its other articles (summaries, oldest first, at most
        ``GROUPED_LIMIT``); None if unknown."""
        found = self._search({"query": {"ids": {"values": [article_id]}}, "size": 1, "_source": ["id", "story"]})
        if not found["hits"]["hits"]:
            return None
        story = _story(found["hits"]["hits"][0]["_source"])
        return story, _others(self._members([story]).get(story, []), article_id)

    def _members(self, stories: list[str]) -> dict[str, list[dict]]:
        """Summaries of the articles of these stories, oldest first, per story (up to one more than are
        listed with an article, which may be among them). All of a story's articles, as on SQLite, not
        only those a query matched: that is what inner hits of the search itself would list."""
        if not stories:
            return {}
        answer = self._search({
            "query": {"terms": {"story": stories}}, "size": len(stories), "_source": False,
            "collapse": {"field": "story", "inner_hits": {"name": "members", "size": GROUPED_LIMIT + 1,
                                                          "_source": list(SUMMARY_FIELDS), "sort": _OLDEST_FIRST}},
        })
        return {hit["fields"]["story"][0]: [{name: member["_source"].get(name) for name in SUMMARY_FIELDS}
                                            for member in hit["inner_hits"]["members"]["hits"]["hits"]]
                for hit in answer["hits"]["hits"]}

    def export(self, query: str, filters: Filters | None = None, *, text: bool = True) -> Iterator[dict]:
        """Every matching article's record (copies included, each with its ``story``; the text only if
        asked), newest first, streamed in pages of ``PAGE``: memory stays constant however many there are.

        Pages follow each other with ``search_after`` on (date, id), which the 10,000-hit
        ``max_result_window`` of from/size does not limit. They are not one snapshot: a point in time
        would make them one, but its API differs between Elasticsearch and OpenSearch. An article
        indexed during the export may be left out; re-indexing keeps its place (same date and id).
        """
        body = {"query": _bool_query(parse(query), filters or Filters()), "size": PAGE, "track_total_hits": False,
                "sort": [{"date": {"order": "desc", "missing": "_last"}}, {"id": "asc"}]}
        if not text:
            body["_source"] = {"excludes": ["text"]}
        while True:
            hits = self._search(body)["hits"]["hits"]
            for hit in hits:
                record = from_document(hit["_source"]).to_dict()
                if not text:
                    del record["text"]
                record["story"] = _story(hit["_source"])
                yield record
            if len(hits) < PAGE:
                return
            body["search_after"] = hits[-1]["sort"]
            hits = hit = record = None  # let the page go before the next one arrives: one in memory at a time

    def count(self) -> int:
        return self.search("", limit=0).articles

    def facets(self) -> dict[str, dict[str, int]]:
        """Article counts per language, source and tag over the whole index."""
        return _facets(self._search(search_body(Query(), Filters(), sort="date", limit=0, offset=0))
                       .get("aggregations", {}), stories=False)

    def recent_warnings(self, limit: int = 20) -> list[dict]:
        answer = self._search({"query": {"range": {"warning_count": {"gte": 1}}}, "size": limit,
                               "sort": [{"fetched": {"order": "desc", "missing": "_last"}}],
                               "_source": ["url", "warnings"]})
        return [{"item": h["_source"]["url"], **w} for h in answer["hits"]["hits"] for w in h["_source"].get("warnings", [])]


def _term_clause(term: Term) -> dict:
    fields = [f"title^{_TITLE_BOOST}", "text", f"title_*^{_TITLE_BOOST}", "text_*"]
    if term.phrase or term.prefix:
        kind = "phrase_prefix" if term.prefix else "phrase"
        return {"multi_match": {"query": term.text, "type": kind, "fields": fields}}
    return {"multi_match": {"query": term.text, "type": "best_fields", "operator": "and", "fields": fields}}


def _bool_query(query: Query, filters: Filters) -> dict:
    """The structured bool query for the analyst's query and filters (Elasticsearch never parses user
    input as query syntax, so nothing can be injected)."""
    must = [{"bool": {"should": [_term_clause(t) for t in group], "minimum_should_match": 1}} for group in query.groups]
    must_not = [_term_clause(t) for t in query.excluded]
    flt: list[dict] = []
    for name, values in (("language", filters.languages), ("source", filters.sources), ("tags", filters.tags)):
        if values:
            flt.append({"terms": {name: values}})
    if filters.since or filters.until:
        flt.append({"range": {"date": {k: v for k, v in (("gte", filters.since), ("lt", filters.until)) if v}}})
    return {"bool": {"must": must or [{"match_all": {}}], "must_not": must_not, "filter": flt}}


def search_body(query: Query, filters: Filters, *, sort: str, limit: int, offset: int) -> dict:
    """The _search request for one page of the analyst's query: one hit per story with its other
    articles, and the counts of stories matched, per facet value and per day."""
    by_date = {"date": {"order": "desc", "missing": "_last"}}
    return {
        "query": _bool_query(query, filters),
        "sort": ["_score", by_date] if sort == "relevance" and query.groups else [by_date, "_score"],
        "from": offset,
        "size": limit,
        "track_total_hits": True,  # hits.total: the articles matched, copies included
        # One hit per story, its best article (this also keeps an article ever written to two monthly
        # indices one hit); EsIndex.search then lists the story's other articles with it.
        "collapse": {"field": "story"},
        "highlight": {
            "pre_tags": [MARK_OPEN], "post_tags": [MARK_CLOSE], "require_field_match": False,
            "fields": {"text": {"fragment_size": 160, "number_of_fragments": 1}, "title": {"number_of_fragments": 0}},
        },
        # Collapsing shapes the hits only: aggregations see every matching article.
        "aggs": {
            "stories": _STORIES,
            **{name: {"terms": {"field": field_, "size": 50, "order": [{"stories": "desc"}, {"_key": "asc"}],
                                **({"missing": "und"} if name == "language" else {})},
                      "aggs": {"stories": _STORIES}}
               for name, field_ in _FACETS.items()},
            "timeline": {"date_histogram": {"field": "date", "calendar_interval": "day", "format": "yyyy-MM-dd",
                                            "min_doc_count": 1},
                         "aggs": {"stories": _STORIES}},
        },
    }


def _story(source: dict) -> str:
    """A document's story; its own id for one from before stories, until the writer backfilled it."""
    return source.get("story") or source["id"]


def _others(members: list[dict], article_id: str) -> list[dict]:
    """The members of a story but the article they are listed with, as many as SQLite lists."""
    return [m for m in members if m["id"] != article_id][:GROUPED_LIMIT]


def _facets(aggregations: dict, *, stories: bool) -> dict[str, dict[str, int]]:
    """Per facet value, its stories (the cardinality sub-aggregation) or its articles (doc_count)."""
    return {name: {b["key"]: b["stories"]["value"] if stories else b["doc_count"]
                   for b in aggregations.get(name, {}).get("buckets", [])} for name in _FACETS}
