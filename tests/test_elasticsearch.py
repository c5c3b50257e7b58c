"""The Elasticsearch sink and search backend, against the stand-in server of tests/fake_es.py."""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import subprocess
import threading
import tracemalloc

import pytest

from newsmon.app.runtime import run
from newsmon.app.stages import TAGGED, open_index
from newsmon.bus import DEAD_LETTERS, SqliteBus
from newsmon.dates import to_epoch
from newsmon.errors import ConfigError, ServiceError, SinkUnavailable
from newsmon.query import parse
from newsmon.record import Article, TagHit, article_id
from newsmon.runner import Stage, process_batch
from newsmon.search import Filters
from newsmon.settings import ElasticsearchSettings, Feed
from newsmon.text import MARK_CLOSE, MARK_OPEN
from sinks.elasticsearch import PAGE, EsIndex, index_for, search_body
from tests.conftest import NEWSMON, wait_for
from tests.fake_es import FakeEs
from tests.sites import Page, TestSite, article_html, rss


@pytest.fixture
def fake():
    server = FakeEs().start()
    yield server
    server.stop()


def _settings(fake: FakeEs, **overrides) -> ElasticsearchSettings:
    values = {"url": fake.url, "backoff_max": 0.05, "give_up_after": 5.0, "request_timeout": 5.0}
    return ElasticsearchSettings(**{**values, **overrides})


def _article(n: int, *, language="en", text="The council met on Monday.", title=None, published="2026-02-12T16:45:00Z",
             tags=()) -> Article:
    url = f"https://news.example.org/a{n}"
    return Article(
        id=article_id(url), url=url, canonical_url=url, feed_url="https://news.example.org/feed.xml",
        source="Example News", title=title or f"Story {n}", text=text, language=language, published=published,
        discovered="2026-03-01T08:00:00Z", fetched="2026-03-01T08:00:05Z",
        tags=[TagHit(t, {t: 1}, [(0, len(t))]) for t in tags],
    )


def _bulk_requests(fake: FakeEs) -> list[tuple[str, str, int]]:
    return [r for r in fake.requests if r[1].startswith("/_bulk")]


@pytest.mark.parametrize("flavor, product", [("es8", "Elasticsearch 8.15.3"), ("es9", "Elasticsearch 9.1.0"),
                                             ("opensearch2", "OpenSearch 2.17.1")])
def test_detects_the_product_and_installs_the_template(flavor, product):
    server = FakeEs(flavor=flavor).start()
    try:
        index = EsIndex(_settings(server)).connect()
        assert index.product == product
        template = server.templates["newsmon-articles"]
        assert template["index_patterns"] == ["newsmon-articles-*"]
        assert "newsmon-articles" in template["template"]["aliases"]
        props = template["template"]["mappings"]["properties"]
        assert props["text_fr"]["analyzer"] == "french" and props["title_de"]["analyzer"] == "german"
        assert props["tags"]["type"] == props["matched_terms"]["type"] == props["id"]["type"] == "keyword"
        index.connect()  # again: idempotent
        assert len(server.templates) == 1
        index.close()
    finally:
        server.stop()


def test_refuses_an_unsupported_version_with_the_reason(make_settings):
    server = FakeEs(flavor="es7").start()
    try:
        with pytest.raises(ServiceError, match=r"Elasticsearch 7\.17\.0 is not supported .*8\.x and 9\.x"):
            EsIndex(_settings(server)).connect()
        # The index stage does not start on it: a configuration error the operator sees (the CLI prints it).
        with pytest.raises(ConfigError, match=r"^search index: http://127\.0\.0\.1:\d+: Elasticsearch 7\.17\.0 is not"):
            open_index(make_settings(**{"elasticsearch": {"url": server.url}}))
    finally:
        server.stop()


def test_reindexing_updates_the_same_document_in_the_same_monthly_index(fake):
    index = EsIndex(_settings(fake)).connect()
    first = [_article(n) for n in range(3)]
    assert index.write(first) == []
    again = [_article(n, text="Updated: the council met again.") for n in range(3)]
    for article in again:
        article.fetched = "2026-07-09T10:00:00Z"  # re-fetched months later: same index, decided by the article
    assert index.write(again) == []
    docs = fake.documents()
    assert sorted(docs) == sorted(("newsmon-articles-2026.02", a.id) for a in first)
    assert all(doc["text"].startswith("Updated") for doc in docs.values())
    assert index.count() == 3


def test_monthly_index_comes_from_the_article_not_the_clock():
    article = _article(1, published=None)
    assert index_for(article, "p") == "p-2026.03"  # discovered
    article.published = "2025-12-31T23:59:00Z"
    assert index_for(article, "p") == "p-2025.12"


def test_bulk_batches_respect_the_document_and_byte_caps(fake):
    index = EsIndex(_settings(fake, bulk_docs=10, bulk_bytes=20_000)).connect()
    articles = [_article(n, text="word " * 600) for n in range(25)]  # ~3 KB each
    assert index.write(articles) == []
    sizes = [size for _, _, size in _bulk_requests(fake)]
    assert len(fake.documents()) == 25
    assert len(sizes) >= 4 and max(sizes) <= 20_000


def test_whole_request_429_and_503_are_retried_with_backoff(fake):
    fake.bulk_statuses = [429, 503, 503]
    index = EsIndex(_settings(fake)).connect()
    assert index.write([_article(n) for n in range(5)]) == []
    assert len(fake.documents()) == 5
    assert len(_bulk_requests(fake)) == 4
    assert index.health() is None


def test_partial_bulk_failure_retries_the_retriable_and_rejects_the_mapping_error(fake, tmp_path):
    """Through the runner: the 429 item is retried and indexed, the bad date goes to dead letters with ES's error."""
    bus = SqliteBus(tmp_path / "queue.db")
    articles = [_article(n) for n in range(6)]
    articles[2].published = "last Tuesday"  # not a date: the mapping refuses it
    fake.item_statuses = {articles[4].id: [429, 503]}
    for article in articles:
        bus.publish(TAGGED, article.id, article.to_json())
    bus.flush()
    index = EsIndex(_settings(fake)).connect()
    stage = Stage("index", TAGGED, sink=index)
    consumer = bus.consumer("index", [TAGGED])
    result = process_batch(stage, bus, consumer, max_records=50)
    assert (result.consumed, result.produced, result.failed) == (6, 5, 1)
    stored = {doc_id for _, doc_id in fake.documents()}
    assert stored == {a.id for n, a in enumerate(articles) if n != 2}
    [dead] = bus.recent(DEAD_LETTERS, 10)
    assert dead.key == articles[2].id
    assert "document_parsing_exception" in dead.headers["error"] and "last Tuesday" in dead.headers["error"]
    assert bus.backlog("index", TAGGED) == 0
    bus.close()


def _index_stage_thread(settings, stop: threading.Event, feeds=()):
    thread = threading.Thread(target=run, args=(settings, list(feeds)),
                              kwargs={"names": ["index"], "once": False, "stop": stop}, daemon=True)
    thread.start()
    return thread


class _count_logged(logging.Handler):
    """Counts log records containing ``text`` while in its ``with`` block."""

    def __init__(self, text: str):
        super().__init__()
        self.text, self.count = text, 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += self.text in record.getMessage()

    def __enter__(self):
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self)


@pytest.mark.slow
def test_elasticsearch_down_during_a_stream_loses_nothing_and_keeps_memory_bounded(fake, make_settings):
    settings = make_settings(**{"elasticsearch": {
        "url": fake.url, "bulk_docs": 20, "flush_seconds": 0.05, "backoff_max": 0.1, "give_up_after": 0.5,
    }})
    bus = SqliteBus(settings.data_dir / "queue.db")
    first = [_article(n) for n in range(40)]
    for article in first:
        bus.publish(TAGGED, article.id, article.to_json())
    bus.flush()
    stop = threading.Event()
    thread = _index_stage_thread(settings, stop)
    wait_for(lambda: len(fake.documents()) == 40, 30, "the first 40 indexed")

    fake.stop()  # Elasticsearch goes down mid-stream; 1,000 more articles (~5 MB) arrive meanwhile
    big_text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 80
    tracemalloc.start()
    for n in range(40, 1040):
        article = _article(n, text=big_text)
        bus.publish(TAGGED, article.id, article.to_json())
    bus.flush()
    tracemalloc.reset_peak()
    failures = _count_logged("stage index: sink unavailable")
    with failures:
        wait_for(lambda: failures.count >= 3, 30, "the stage retrying against the dead cluster")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2_000_000, f"peak {peak} bytes while down: the stage buffers more than one batch"
    assert bus.backlog("index", TAGGED) == 1000  # all of it waits on disk, none committed

    fake.start(fake.port)  # back
    wait_for(lambda: bus.backlog("index", TAGGED) == 0, 60, "the backlog indexed after recovery")
    stop.set()
    thread.join(timeout=30)
    assert len(fake.documents()) == 1040
    assert bus.size(DEAD_LETTERS) == 0
    bus.close()


def test_search_backend_features(fake):
    index = EsIndex(_settings(fake)).connect()
    index.write([
        _article(1, language="fr", title="La sécurité de l'Europe", text="Les alliés parlent de sécurité et de défense.",
                 tags=["nato"], published="2026-02-12T16:45:00Z"),
        _article(2, language="en", title="Harbour budget", text="The council approved the harbour budget.",
                 published="2026-02-10T09:00:00Z"),
        _article(3, language="en", title="Security talks", text="Security talks in Brussels: NATO allies meet.",
                 tags=["nato"], published="2026-01-05T09:00:00Z"),
        _article(4, language="de", title="Klimaschutz", text="Der Rat beschließt das Wärmenetz für den Klimaschutz.",
                 tags=["climate"], published="2026-02-01T09:00:00Z"),
    ])
    # Accent folding: securite finds sécurité, with the match highlighted.
    result = index.search("securite")
    assert [h.article.id for h in result.hits] == [article_id("https://news.example.org/a1")]
    assert f"{MARK_OPEN}sécurité{MARK_CLOSE}" in result.hits[0].snippet
    # OR, phrases, exclusion, prefix.
    assert {h.article.title for h in index.search("securite OR security").hits} == {"La sécurité de l'Europe", "Security talks"}
    assert [h.article.title for h in index.search('"harbour budget"').hits] == ["Harbour budget"]
    assert [h.article.title for h in index.search("council -harbour").hits] == []
    assert [h.article.title for h in index.search("klima*").hits] == ["Klimaschutz"]
    # Filters, date range, sort by date, pagination, facets.
    assert [h.article.title for h in index.search("", Filters(tags=["nato"]), sort="date").hits] == [
        "La sécurité de l'Europe", "Security talks"]
    assert [h.article.title for h in index.search("", Filters(languages=["en"], since="2026-02-01T00:00:00Z")).hits] == [
        "Harbour budget"]
    page = index.search("", sort="date", limit=2, offset=2)
    assert page.total == 4 and [h.article.title for h in page.hits] == ["Klimaschutz", "Security talks"]
    assert page.facets["language"] == {"en": 2, "fr": 1, "de": 1}
    assert page.facets["tag"] == {"nato": 2, "climate": 1}
    # Records come back whole, tags included.
    hit = index.search("klimaschutz").hits[0].article
    assert hit.tags[0].topic == "climate" and hit.tags[0].terms == {"climate": 1}
    assert index.get(article_id("https://news.example.org/a4")).title == "Klimaschutz"


def test_query_syntax_cannot_inject(fake):
    """Backend syntax in a query is plain text: the request carries only structured clauses."""
    index = EsIndex(_settings(fake)).connect()
    index.write([_article(1, text="The council met."), _article(2, text="Budget cuts.")])
    for hostile in ['text:* OR _id:*', '{"match_all": {}}', "council) | (budget~2"]:
        assert index.search(hostile).total <= 1, hostile
    # Punctuation alone has no words to match: it browses everything, like the empty query does.
    for punctuation in ["*", "+-|\\"]:
        assert search_body(parse(punctuation), Filters(), sort="relevance", limit=10, offset=0)["query"]["bool"]["must"] \
            == [{"match_all": {}}], punctuation
    body = search_body(parse("text:* OR _id:*"), Filters(), sort="relevance", limit=10, offset=0)
    assert "query_string" not in json.dumps(body)
    clauses = body["query"]["bool"]["must"][0]["bool"]["should"]
    # Analysed as text (a prefix of "text:"), never parsed as field syntax.
    assert [(c["multi_match"]["query"], c["multi_match"]["type"]) for c in clauses] \
        == [("text:", "phrase_prefix"), ("_id:", "phrase_prefix")]


def test_search_when_nothing_is_indexed_yet(fake):
    index = EsIndex(_settings(fake)).connect(install=False)
    assert index.search("anything").total == 0


@pytest.mark.slow
def test_pipeline_and_cli_on_elasticsearch(fake, make_settings, config_dir, tmp_path):
    text = "The harbour council met on Monday to discuss the budget of the new bridge in detail. " * 4

    def page(i: int) -> Page:  # three different stories (the same text would be one story, one hit)
        own = " ".join(f"detail{i}n{k}" for k in range(60)) + "."
        return Page(article_html(f"Bridge story {i}", [text + own, text.replace("Monday", "Friday")]))

    routes = {f"/a{i}.html": page(i) for i in range(3)}
    with TestSite(routes) as site:
        site.routes["/feed.xml"] = Page(rss([(f"Bridge story {i}", site.url(f"/a{i}.html")) for i in range(3)]),
                                   headers={"Content-Type": "application/rss+xml"})
        settings = make_settings(**{"elasticsearch": {"url": fake.url}})
        progress = run(settings, [Feed(name="t", url=site.url("/feed.xml"))], once=True, stop=threading.Event(),
                       force_poll=True)
    assert progress.done["index"] == 3
    assert len(fake.documents()) == 3
    assert not (settings.data_dir / "index.db").exists()  # the embedded index is not used

    env = {"NEWSMON_CONFIG_DIR": str(config_dir), "NEWSMON_DATA_DIR": str(tmp_path / "data"), "NEWSMON_ES_URL": fake.url,
           "PATH": "/usr/bin:/bin"}
    found = subprocess.run(NEWSMON + ["search", "bridge", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert sorted(json.loads(line)["title"] for line in found.stdout.splitlines()) == [f"Bridge story {i}" for i in range(3)]
    template = subprocess.run(NEWSMON + ["es", "template"], env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(template.stdout)["template"]["aliases"] == {"newsmon-articles": {}}

    fake.stop()
    down = subprocess.run(NEWSMON + ["search", "bridge"], env=env, capture_output=True, text=True, timeout=60)
    fake.start(fake.port)
    assert down.returncode == 1
    assert "search index:" in down.stderr and fake.url in down.stderr and "ConnectError" in down.stderr


def test_writer_starts_while_elasticsearch_is_down_and_reports_unhealthy(fake, make_settings):
    fake.stop()
    settings = make_settings(**{"elasticsearch": {"url": fake.url, "give_up_after": 0.2, "backoff_max": 0.05}})
    index = open_index(settings)
    assert "ConnectError" in index.health()
    with pytest.raises(SinkUnavailable):
        index.write([_article(1)])
    fake.start(fake.port)
    assert index.write([_article(1)]) == []
    assert index.health() is None and index.product.startswith("Elasticsearch")
    index.close()


# -- near-duplicate stories, exports and the API over Elasticsearch ----------------------------

STORY = ("The port authority of Ellis confirmed on Tuesday that three NATO frigates will dock next week "
         "to load equipment bound for Ukraine, the largest such shipment since the spring. Dock workers "
         "said the preparations began overnight and would continue through the weekend, with road closures "
         "around the northern quay. The mayor welcomed the visit and promised minimal disruption to ferries.")
TRIMMED_COPY = STORY.replace(" The mayor welcomed the visit and promised minimal disruption to ferries.", "")
OTHER_STORY = ("The city council approved a new cycling lane along the river on Monday after a long debate about "
               "parking spaces, trees and the cost of the works, which begin in April and last four months.")


def _story_articles(copy_published: str = "2026-02-12T10:00:00Z") -> tuple[Article, Article, Article]:
    """An original, its trimmed copy from another source, and a different story."""
    first = _article(1, title="NATO frigates to dock at Ellis", text=STORY, published="2026-02-12T08:00:00Z",
                     tags=["harbour"])
    copy = _article(2, title="Frigates due in Ellis port", text=TRIMMED_COPY, published=copy_published,
                    tags=["harbour"])
    other = _article(3, title="Cycling lane approved", text=OTHER_STORY, published="2026-02-11T09:00:00Z",
                     tags=["harbour"])
    first.source, copy.source, other.source = "Ellis Post", "Wire", "Wire"
    return first, copy, other


def test_near_duplicates_are_one_hit_and_count_once(fake, tmp_path):
    index = EsIndex(_settings(fake), stories=tmp_path / "stories.db").connect()
    first, copy, other = _story_articles()
    assert index.write([first, copy, other]) == []
    assert {doc["id"]: doc["story"] for doc in fake.documents().values()} == {
        first.id: first.id, copy.id: first.id, other.id: other.id}

    result = index.search("frigates OR cycling")
    assert (result.total, result.articles) == (2, 3)
    grouped = next(h for h in result.hits if h.story == first.id)
    assert grouped.article.id == copy.id  # equal scores: the newer article stands for its story
    assert grouped.duplicates == [{"id": first.id, "url": first.url, "title": first.title, "source": "Ellis Post",
                                   "language": "en", "published": first.published}]
    assert index.search("mayor").hits[0].duplicates[0]["id"] == copy.id  # only the original matches: it stands
    assert next(h for h in result.hits if h.story == other.id).duplicates == []
    assert result.facets["tag"] == {"harbour": 2} and result.facets["language"] == {"en": 2}
    assert result.facets["source"] == {"Wire": 2, "Ellis Post": 1}
    assert index.story(copy.id) == (first.id, [{"id": first.id, "url": first.url, "title": first.title,
                                                "source": "Ellis Post", "language": "en",
                                                "published": first.published}])
    assert index.story(other.id) == (other.id, [])
    assert index.story("0" * 32) is None
    index.close()

    # The sketches outlive the process: a copy indexed after a restart still joins its story.
    again = EsIndex(_settings(fake), stories=tmp_path / "stories.db").connect()
    late = _article(4, title="Ellis awaits NATO frigates", text=TRIMMED_COPY + " Ferries run as usual.")
    again.write([late])
    assert again.story(late.id)[0] == first.id
    assert again.search("frigates").total == 1
    again.close()


def test_timeline_counts_stories_per_day(fake):
    index = EsIndex(_settings(fake)).connect()
    first, copy, other = _story_articles(copy_published="2026-02-13T07:00:00Z")
    index.write([first, copy, other])
    result = index.search("", sort="date")
    assert result.total == 2
    # A story counts on each day it has an article (SQLite: on its first day only, see EsIndex.search).
    assert result.timeline == [("2026-02-11", 1), ("2026-02-12", 1), ("2026-02-13", 1)]
    assert index.search("cycling").timeline == [("2026-02-11", 1)]
    assert index.search("nothing-matches-this").timeline == []


def test_export_streams_every_match_across_search_after_pages(fake):
    index = EsIndex(_settings(fake, bulk_docs=500)).connect()
    count = 2_500
    for start in range(0, count, 500):  # distinct texts: every article its own story
        index.write([_article(n, text=f"Harbour report {n}: " + " ".join(f"w{n}x{k}" for k in range(12)),
                                    published=f"2026-02-{n % 28 + 1:02d}T{n % 24:02d}:00:00Z")
                           for n in range(start, start + 500)])
    fake.requests.clear()
    records = list(index.export("harbour"))
    assert len(records) == len({r["id"] for r in records}) == count
    order = [(to_epoch(r["published"]), r["id"]) for r in records]
    assert order == sorted(order, key=lambda o: (-o[0], o[1]))  # newest first, then by id
    assert all(r["story"] == r["id"] and r["text"].startswith("Harbour report") for r in records)
    pages = [r for r in fake.requests if r[1].endswith("/_search")]
    assert len(pages) == 3  # 1,000 + 1,000 + 500, each after the last sort values of the one before

    def peak(rows: int | None) -> int:
        tracemalloc.start()
        for _ in itertools.islice(index.export("harbour"), rows):
            pass
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return top

    one_page = peak(PAGE)
    every_page = peak(None)
    assert every_page < 1.5 * one_page, (one_page, every_page)  # a page at a time, however many there are

    lean = list(index.export("harbour", Filters(since="2026-02-28T00:00:00Z")))
    assert 0 < len(lean) < count and all(r["published"] >= "2026-02-28" for r in lean)
    assert all("text" not in r and r["story"] for r in index.export("harbour", text=False))
    assert list(index.export("nothing-matches-this")) == []


def test_documents_from_before_stories_become_their_own_story(fake):
    """An install from before stories: the writer adds the field to existing indices and backfills it."""
    index = EsIndex(_settings(fake)).connect()
    old = [_article(n, text=f"Harbour news number {n} " * 3) for n in range(5)]
    index.write(old)
    for doc in fake.documents().values():
        del doc["story"], doc["__indexed"]["story"]
    before = index.search("harbour")
    assert (before.total, before.articles, len(before.hits)) == (0, 5, 1)  # all in one group, and none counted
    fake.requests.clear()
    index.connect()
    assert ("PUT", "/newsmon-articles-*/_mapping?allow_no_indices=true") in [r[:2] for r in fake.requests]
    assert {doc["id"]: doc.get("story") for doc in fake.documents().values()} == {a.id: a.id for a in old}
    result = index.search("harbour")
    assert (result.total, result.articles, len(result.hits)) == (5, 5, 5)
    index.close()


def test_the_api_over_elasticsearch(fake, make_settings):
    from fastapi.testclient import TestClient

    from newsmon.app.api.app import create_app

    settings = make_settings(**{"elasticsearch": {"url": fake.url}})
    writer = open_index(settings)
    first, copy, other = _story_articles()
    assert writer.write([first, copy, other]) == []
    writer.close()
    assert (settings.data_dir / "stories.db").exists()

    with TestClient(create_app(settings)) as client:
        body = client.get("/api/search", params={"q": "frigates OR cycling"}).json()
        assert (body["total"], body["articles"]) == (2, 3)
        grouped = next(h for h in body["hits"] if h["story"] == first.id)
        assert "<mark>frigates</mark>" in grouped["snippet"].lower()
        assert [d["id"] for d in grouped["duplicates"]] == [first.id]
        assert {"value": "harbour", "count": 2} in body["facets"]["tag"]
        assert body["facets"]["source"] == [{"value": "Wire", "count": 2}, {"value": "Ellis Post", "count": 1}]
        assert body["timeline"] == [{"day": "2026-02-11", "count": 1}, {"day": "2026-02-12", "count": 1}]
        assert client.get("/api/search", params={"q": "frigates", "page": 2, "size": 1}).json()["hits"] == []

        record = client.get(f"/api/articles/{copy.id}").json()
        assert record["title"] == copy.title and record["text"] == TRIMMED_COPY
        assert record["story"] == first.id and [d["id"] for d in record["duplicates"]] == [first.id]
        assert client.get(f"/api/articles/{'0' * 32}").status_code == 404

        rows = list(csv.DictReader(io.StringIO(client.get("/api/search.csv", params={"q": "frigates"}).text)))
        assert sorted((r["id"], r["story"]) for r in rows) == sorted([(first.id, first.id), (copy.id, first.id)])
        assert rows[0]["id"] == copy.id  # newest first
        lines = client.get("/api/search.ndjson", params={"tag": "harbour"}).text.splitlines()
        records = [json.loads(line) for line in lines]
        assert sorted(r["id"] for r in records) == sorted([first.id, copy.id, other.id])
        assert all(r["text"] and r["story"] for r in records)
