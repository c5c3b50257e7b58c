"""The Elasticsearch (or OpenSearch) search index: the index stage's sink and a search backend.

Talks to the REST API with httpx rather than a vendor client: the few endpoints used
here (``/``, ``_index_template``, ``_bulk``, ``_search``, ``_count``) are the same on
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
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from newsmon import metrics
from newsmon.record import Article, utc_now
from newsmon.runner import SinkUnavailable, backoff
from newsmon.settings import ElasticsearchSettings
from sinks.query import Query, Term, parse
from sinks.sqlite_index import MARK_CLOSE, MARK_OPEN, Filters, Hit, SearchResult

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


class EsError(Exception):
    """Elasticsearch answered with an error that retrying will not fix (configuration, auth, bad request)."""


@dataclass
class Health:
    healthy: bool = True
    error: str | None = None
    since: str = field(default_factory=utc_now)

    def set(self, healthy: bool, error: str | None = None) -> None:
        if healthy != self.healthy:
            self.since = utc_now()
            if healthy:
                log.info("elasticsearch: available again")
        self.healthy, self.error = healthy, error


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
                                                  "language", "tags", "matched_terms", "authors")},
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


def to_document(article: Article) -> dict:
    doc = article.to_dict()
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
    data = {k: v for k, v in doc.items() if k not in ("tags", "matched_terms", "date", "warning_count")}
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


def _retriable(status: int) -> bool:
    return status == 429 or status >= 500


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

    def __init__(self, settings: ElasticsearchSettings, credentials: Credentials | None = None):
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
        self.health = Health()
        self.product = ""  # e.g. "Elasticsearch 8.15.0", once connected
        self._known_indices: set[str] = set()

    def close(self) -> None:
        self._http.close()

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
            raise EsError(f"{self.settings.url}: {self.product} is not supported "
                          "(supported: Elasticsearch 8.x and 9.x, OpenSearch 2.x and 3.x)")
        if not install:
            return self
        self._call("PUT", f"/_index_template/{self.prefix}", json=index_template(self.prefix))
        log.info("elasticsearch: %s at %s, template %s installed", self.product, self.settings.url, self.prefix)
        self.health.set(True)
        return self

    def try_connect(self) -> EsIndex:
        """Connect now if the cluster answers; if it is down, the sink connects when it comes back."""
        try:
            self.connect()
        except SinkUnavailable as exc:
            self.health.set(False, str(exc))
            log.warning("elasticsearch: not reachable yet, will keep trying: %s", exc)
        return self

    def _call(self, method: str, path: str, **kwargs) -> dict:
        """One request; retriable failures raise SinkUnavailable, the rest EsError."""
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
            if _retriable(response.status_code):
                raise SinkUnavailable(message)
            raise EsError(message)
        return response.json()

    def _ensure_index(self, name: str) -> None:
        """Create a monthly index explicitly, so clusters that forbid auto-creation work too."""
        if name in self._known_indices:
            return
        try:
            self._call("PUT", f"/{name}")
        except EsError as exc:
            if "resource_already_exists_exception" not in str(exc):
                raise
        self._known_indices.add(name)

    # -- the sink ---------------------------------------------------------------------------

    def upsert_many(self, articles: list[Article]) -> list[tuple[Article, str]]:
        """Index articles by id; returns those Elasticsearch rejected for good, each with its error.

        Retriable failures (429, 5xx, connection errors, for the whole request or single
        items) are retried with backoff until ``give_up_after``; then SinkUnavailable is
        raised and the runner re-delivers the batch later. Memory stays bounded by one batch.
        """
        s = self.settings
        actions = []
        for article in articles:
            head = {"index": {"_index": index_for(article, self.prefix), "_id": article.id}}
            body = json.dumps(head) + "\n" + json.dumps(to_document(article), ensure_ascii=False) + "\n"
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
                                       headers={"Content-Type": "application/x-ndjson"})["items"]
                except SinkUnavailable as exc:
                    retry += chunk
                    last_error = str(exc)
                    continue
                for action, item in zip(chunk, items):
                    outcome = item.get("index", {})
                    status = outcome.get("status", 500)
                    if status < 300:
                        continue
                    if _retriable(status):
                        retry.append(action)
                        last_error = f"item {action[0].id}: HTTP {status}: {_error_text(outcome.get('error'))}"
                    else:
                        rejected.append((action[0], f"elasticsearch rejected it: HTTP {status}: "
                                                    f"{_error_text(outcome.get('error'))}"))
            if not retry:
                self.health.set(True)
                return rejected
            self.health.set(False, last_error)
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
        except EsError as exc:
            if "index_not_found_exception" in str(exc):  # nothing indexed yet
                return {"hits": {"total": {"value": 0}, "hits": []}, "aggregations": {}}
            raise

    def search(self, query: str, filters: Filters | None = None, *, sort: str = "relevance", limit: int = 10,
               offset: int = 0) -> SearchResult:
        body = search_body(parse(query), filters or Filters(), sort=sort, limit=limit, offset=offset)
        answer = self._search(body)
        hits = []
        for hit in answer["hits"]["hits"]:
            highlight = hit.get("highlight", {})
            fragments = highlight.get("text") or highlight.get("title") or []
            article = from_document(hit["_source"])
            snippet = " ".join(fragments[0].split()) if fragments else article.text[:200]
            hits.append(Hit(article, snippet, hit.get("_score")))
        return SearchResult(answer["hits"]["total"]["value"], hits, _facets(answer.get("aggregations", {})))

    def get(self, article_id: str) -> Article | None:
        answer = self._search({"query": {"ids": {"values": [article_id]}}, "size": 1})
        hits = answer["hits"]["hits"]
        return from_document(hits[0]["_source"]) if hits else None

    def count(self) -> int:
        return self.search("", limit=0).total

    def facets(self) -> dict[str, dict[str, int]]:
        return self.search("", limit=0).facets

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


def search_body(query: Query, filters: Filters, *, sort: str, limit: int, offset: int) -> dict:
    """The _search request for the analyst's query: a structured bool query built from the parsed
    syntax (Elasticsearch never parses user input as query syntax, so nothing can be injected)."""
    must = [{"bool": {"should": [_term_clause(t) for t in group], "minimum_should_match": 1}} for group in query.groups]
    must_not = [_term_clause(t) for t in query.excluded]
    flt: list[dict] = []
    for name, values in (("language", filters.languages), ("source", filters.sources), ("tags", filters.tags)):
        if values:
            flt.append({"terms": {name: values}})
    if filters.since or filters.until:
        flt.append({"range": {"date": {k: v for k, v in (("gte", filters.since), ("lt", filters.until)) if v}}})
    by_date = {"date": {"order": "desc", "missing": "_last"}}
    return {
        "query": {"bool": {"must": must or [{"match_all": {}}], "must_not": must_not, "filter": flt}},
        "sort": ["_score", by_date] if sort == "relevance" and query.groups else [by_date, "_score"],
        "from": offset,
        "size": limit,
        "track_total_hits": True,
        # One hit per article even if it was ever written to two monthly indices.
        "collapse": {"field": "id"},
        "highlight": {
            "pre_tags": [MARK_OPEN], "post_tags": [MARK_CLOSE], "require_field_match": False,
            "fields": {"text": {"fragment_size": 160, "number_of_fragments": 1}, "title": {"number_of_fragments": 0}},
        },
        "aggs": {
            name: {"terms": {"field": field_, "size": 50, **({"missing": "und"} if name == "language" else {})}}
            for name, field_ in _FACETS.items()
        },
    }


def _facets(aggregations: dict) -> dict[str, dict[str, int]]:
    return {name: {b["key"]: b["doc_count"] for b in aggregations.get(name, {}).get("buckets", [])} for name in _FACETS}


