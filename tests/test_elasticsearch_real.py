"""The Elasticsearch scenarios against a real cluster: set ES_URL to run them.

    ES_URL=http://localhost:9200 make test
    ES_URL=https://es:9200 NEWSMON_ES_API_KEY=… ES_CA_FILE=ca.pem .venv/bin/python -m pytest tests/test_elasticsearch_real.py

Each test writes under its own index prefix and deletes its template and indices after.
An outage is simulated by a TCP relay in front of the cluster that the test cuts and restores;
the 429/503 scenarios need a server that can be told to fail, so they run on tests/fake_es.py only.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
import uuid
from urllib.parse import urlsplit

import pytest

from newsmon.app.stages import TAGGED
from newsmon.bus import DEAD_LETTERS, SqliteBus
from newsmon.dates import to_epoch
from newsmon.record import article_id
from newsmon.runner import Stage, process_batch
from newsmon.search import Filters
from newsmon.settings import ElasticsearchSettings
from newsmon.text import MARK_CLOSE, MARK_OPEN
from sinks.elasticsearch import EsIndex, index_for, to_document
from tests.conftest import wait_for
from tests.test_elasticsearch import (
    _article,
    _count_logged,
    _index_stage_thread,
    _story_articles,
)

ES_URL = os.environ.get("ES_URL", "")
pytestmark = pytest.mark.skipif(not ES_URL, reason="ES_URL is not set: no real Elasticsearch/OpenSearch cluster to test")


def _settings(url: str = ES_URL, **overrides) -> ElasticsearchSettings:
    values = {"url": url, "ca_file": os.environ.get("ES_CA_FILE") or None, "backoff_max": 0.2, "give_up_after": 10.0}
    return ElasticsearchSettings(**{**values, **overrides})


@pytest.fixture
def prefix():
    """A fresh index prefix; its template and indices are deleted afterwards."""
    name = f"newsmon-test-{uuid.uuid4().hex[:8]}"
    yield name
    index = EsIndex(_settings(index_prefix=name))
    try:
        for concrete in index._call("GET", f"/{name}-*/_alias"):
            index._call("DELETE", f"/{concrete}")
        index._call("DELETE", f"/_index_template/{name}")
    finally:
        index.close()


def _refreshed(index: EsIndex) -> EsIndex:
    """Make what was just written searchable now rather than within the refresh interval."""
    index._call("POST", f"/{index.prefix}/_refresh")
    return index


def _stored_ids(index: EsIndex) -> list[str]:
    answer = _refreshed(index)._call("POST", f"/{index.prefix}/_search",
                                     json={"size": 10_000, "_source": False, "query": {"match_all": {}}})
    return [hit["_id"] for hit in answer["hits"]["hits"]]


def test_connects_and_installs_the_template_idempotently(prefix):
    index = EsIndex(_settings(index_prefix=prefix)).connect()
    index.connect()
    installed = index._call("GET", f"/_index_template/{prefix}")["index_templates"]
    assert [t["name"] for t in installed] == [prefix]
    assert index.product.split()[0] in ("Elasticsearch", "OpenSearch")
    index.close()


def test_reindexing_updates_never_duplicates(prefix):
    index = EsIndex(_settings(index_prefix=prefix)).connect()
    assert index.write([_article(n) for n in range(3)]) == []
    again = [_article(n, text="Updated: the council met again.") for n in range(3)]
    for article in again:
        article.fetched = "2026-07-09T10:00:00Z"
    assert index.write(again) == []
    assert sorted(_stored_ids(index)) == sorted(a.id for a in again)
    assert all(h.article.text.startswith("Updated") for h in index.search("council", limit=10).hits)
    index.close()


def test_mapping_error_goes_to_dead_letters_and_the_rest_is_indexed(prefix, tmp_path):
    bus = SqliteBus(tmp_path / "queue.db")
    articles = [_article(n) for n in range(4)]
    articles[1].published = "last Tuesday"
    for article in articles:
        bus.publish(TAGGED, article.id, article.to_json())
    bus.flush()
    index = EsIndex(_settings(index_prefix=prefix)).connect()
    result = process_batch(Stage("index", TAGGED, sink=index), bus,
                           bus.consumer("index", [TAGGED]), max_records=50)
    assert (result.consumed, result.produced, result.failed) == (4, 3, 1)
    assert sorted(_stored_ids(index)) == sorted(a.id for n, a in enumerate(articles) if n != 1)
    [dead] = bus.recent(DEAD_LETTERS, 10)
    assert dead.key == articles[1].id and "last Tuesday" in dead.headers["error"]
    index.close()
    bus.close()


def test_language_analyzers_folding_and_search_features(prefix):
    index = EsIndex(_settings(index_prefix=prefix)).connect()
    index.write([
        _article(1, language="fr", title="La sécurité de l'Europe", text="Les alliés promettent une aide militaire.",
                 tags=["nato"], published="2026-02-12T16:45:00Z"),
        _article(2, language="en", title="Harbour budget", text="The councils approved the harbour budgets.",
                 published="2026-02-10T09:00:00Z"),
        _article(3, language="de", title="Klimaschutz", text="Der Rat beschließt das Wärmenetz.", tags=["climate"],
                 published="2026-01-05T09:00:00Z"),
    ])
    _refreshed(index)
    found = index.search("securite")
    assert [h.article.id for h in found.hits] == [article_id("https://news.example.org/a1")]
    assert f"{MARK_OPEN}sécurité{MARK_CLOSE}" in found.hits[0].snippet
    assert [h.article.title for h in index.search("allié").hits] == ["La sécurité de l'Europe"]  # french stemming
    assert [h.article.title for h in index.search("council budget").hits] == ["Harbour budget"]  # english stemming
    assert [h.article.title for h in index.search("klima*").hits] == ["Klimaschutz"]
    assert [h.article.title for h in index.search("", Filters(tags=["nato"])).hits] == ["La sécurité de l'Europe"]
    page = index.search("", sort="date", limit=1, offset=1)
    assert page.total == 3 and [h.article.title for h in page.hits] == ["Harbour budget"]
    assert page.facets["language"] == {"fr": 1, "en": 1, "de": 1}
    index.close()


class _Relay:
    """A TCP relay in front of the cluster: ``cut()`` is an outage, ``restore()`` its end."""

    def __init__(self, target: tuple[str, int]):
        relay = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                if not relay.up.is_set():
                    return
                with socket.create_connection(target, timeout=10) as upstream:
                    relay.open.append((self.request, upstream))
                    pump = threading.Thread(target=_pump, args=(upstream, self.request), daemon=True)
                    pump.start()
                    _pump(self.request, upstream)
                    pump.join()

        self.up, self.open = threading.Event(), []
        self.up.set()
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def cut(self) -> None:
        self.up.clear()
        for pair in self.open:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.open.clear()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@pytest.mark.slow
def test_outage_during_a_stream_loses_nothing(prefix, make_settings):
    parts = urlsplit(ES_URL)
    if parts.scheme != "http":
        pytest.skip("the outage relay forwards plain HTTP only (TLS would not match the relay's host name)")
    relay = _Relay((parts.hostname, parts.port or 9200))
    settings = make_settings(**{"elasticsearch": {"url": f"http://127.0.0.1:{relay.port}", "index_prefix": prefix, "bulk_docs": 20,
                                                  "flush_seconds": 0.05, "backoff_max": 0.2, "give_up_after": 1.0}})
    bus = SqliteBus(settings.data_dir / "queue.db")
    stop = threading.Event()
    thread = _index_stage_thread(settings, stop)
    try:
        relay.cut()
        for n in range(200):
            article = _article(n)
            bus.publish(TAGGED, article.id, article.to_json())
        bus.flush()
        failures = _count_logged("stage index: sink unavailable")
        with failures:
            wait_for(lambda: failures.count >= 2, 60, "the stage retrying while the cluster is unreachable")
        assert bus.backlog("index", TAGGED) == 200
        relay.restore()
        wait_for(lambda: bus.backlog("index", TAGGED) == 0, 120, "the backlog indexed after the outage")
    finally:
        stop.set()
        thread.join(timeout=30)
        relay.close()
    index = EsIndex(_settings(index_prefix=prefix))
    assert len(_stored_ids(index)) == 200
    assert bus.size(DEAD_LETTERS) == 0
    index.close()
    bus.close()


def test_stories_collapse_with_their_copies_and_count_once(prefix, tmp_path):
    """collapse on story, the story's articles as inner hits, cardinality counts (total, facets, timeline)."""
    index = EsIndex(_settings(index_prefix=prefix), stories=tmp_path / "stories.db").connect()
    first, copy, other = _story_articles(copy_published="2026-02-13T07:00:00Z")
    assert index.write([first, copy, other]) == []
    _refreshed(index)
    result = index.search("frigates OR cycling")
    assert (result.total, result.articles, len(result.hits)) == (2, 3, 2)
    grouped = next(h for h in result.hits if h.story == first.id)
    others = {first.id, copy.id} - {grouped.article.id}
    assert [d["id"] for d in grouped.duplicates] == list(others)
    assert set(grouped.duplicates[0]) == {"id", "url", "title", "source", "language", "published"}
    assert result.facets["source"] == {"Wire": 2, "Ellis Post": 1} and result.facets["tag"] == {"harbour": 2}
    assert result.timeline == [("2026-02-11", 1), ("2026-02-12", 1), ("2026-02-13", 1)]
    assert [d["id"] for d in index.search("mayor").hits[0].duplicates] == [copy.id]  # unmatched copies listed too
    assert index.story(copy.id) == (first.id, [{"id": first.id, "url": first.url, "title": first.title,
                                                "source": "Ellis Post", "language": "en",
                                                "published": first.published}])
    assert index.search("frigates", limit=1, offset=1).hits == []  # from/size over stories
    index.close()


def test_export_pages_through_search_after(prefix):
    index = EsIndex(_settings(index_prefix=prefix, bulk_docs=500)).connect()
    count = 2_500  # three pages, and more than from/size could reach with a small max_result_window
    for start in range(0, count, 500):
        index.write([_article(n, text=f"Harbour report {n}: " + " ".join(f"w{n}x{k}" for k in range(12)),
                                    published=f"2026-02-{n % 28 + 1:02d}T{n % 24:02d}:00:00Z")
                           for n in range(start, start + 500)])
    _refreshed(index)
    records = list(index.export("harbour"))
    assert len(records) == len({r["id"] for r in records}) == count
    order = [(to_epoch(r["published"]), r["id"]) for r in records]
    assert order == sorted(order, key=lambda o: (-o[0], o[1]))
    assert all(r["text"] and r["story"] == r["id"] for r in records)
    assert all("text" not in r for r in index.export("harbour", text=False))
    index.close()


def test_documents_from_before_stories_are_backfilled(prefix):
    """Documents written without a story (an older newsmon) get the field mapped and set to their own id."""
    index = EsIndex(_settings(index_prefix=prefix)).connect()
    old = [_article(n, text=f"Harbour news number {n} " * 3) for n in range(5)]
    lines = []
    for article in old:
        doc = to_document(article)
        del doc["story"]
        lines += [json.dumps({"index": {"_index": index_for(article, prefix), "_id": article.id}}), json.dumps(doc)]
    index._call("POST", "/_bulk", params={"refresh": "true"}, content=("\n".join(lines) + "\n").encode(),
                headers={"Content-Type": "application/x-ndjson"})
    index.connect()
    result = _refreshed(index).search("harbour")
    assert (result.total, result.articles, len(result.hits)) == (5, 5, 5)
    assert {h.story for h in result.hits} == {a.id for a in old}
    index.close()
