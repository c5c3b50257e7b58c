"""The Elasticsearch/OpenSearch sink when things go wrong, on the real node behind tests/support/es_proxy.py:
429s and 503s for whole requests and single documents, a hung request, an outage, another product's
answer to ``GET /``. Every document still lands in the real node, and is counted there.
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import threading
import time
import tracemalloc

import pytest

from newsmon.app.runtime import run
from newsmon.app.stages import TAGGED, open_index
from newsmon.bus import DEAD_LETTERS, SqliteBus
from newsmon.dates import to_epoch
from newsmon.errors import ConfigError, ServiceError, SinkUnavailable
from newsmon.runner import Stage, process_batch
from newsmon.search import Filters
from newsmon.settings import Feed
from sinks.elasticsearch import PAGE, EsIndex, index_for
from tests.support.es_proxy import EsProxy
from tests.support.harness import NEWSMON, wait_for
from tests.support.search_cluster import call, es_settings, news_article, refresh, stored
from tests.support.sites import Page, TestSite, article_html, rss

# GET / of the products the sink supports besides the node under test (the REST API documentation's shape).
ROOTS = {
    "es8": {"name": "n", "cluster_name": "c", "cluster_uuid": "x", "tagline": "You Know, for Search",
            "version": {"number": "8.15.3", "build_flavor": "default", "lucene_version": "9.11.1"}},
    "es9": {"name": "n", "cluster_name": "c", "cluster_uuid": "x", "tagline": "You Know, for Search",
            "version": {"number": "9.1.0", "build_flavor": "default", "lucene_version": "10.2.2"}},
    "es7": {"name": "n", "cluster_name": "c", "cluster_uuid": "x", "tagline": "You Know, for Search",
            "version": {"number": "7.17.0", "build_flavor": "default", "lucene_version": "8.11.1"}},
    "opensearch1": {"name": "n", "cluster_name": "c", "cluster_uuid": "x",
                    "version": {"distribution": "opensearch", "number": "1.3.19", "lucene_version": "8.10.1"}},
}


@pytest.fixture
def proxy(es_url):
    import os

    server = EsProxy(es_url, verify=os.environ.get("ES_CA_FILE") or True).start()
    yield server
    server.close()


def _settings(proxy: EsProxy, prefix: str, **overrides):
    values = {"index_prefix": prefix, "backoff_max": 0.05, "give_up_after": 5.0, "request_timeout": 5.0}
    return es_settings(proxy.url, **{**values, **overrides})


def _bulk_requests(proxy: EsProxy) -> list[tuple[str, str, int]]:
    return [r for r in proxy.requests if r[1].startswith("/_bulk")]


@pytest.mark.parametrize("flavor, product", [("node", "OpenSearch 2."), ("es8", "Elasticsearch 8.15.3"),
                                             ("es9", "Elasticsearch 9.1.0")])
def test_detects_the_product_and_installs_the_template(proxy, es_prefix, flavor, product):
    proxy.root = ROOTS.get(flavor)  # "node": the node's own answer
    index = EsIndex(_settings(proxy, es_prefix)).connect()
    assert index.product.startswith(product)
    index.connect()  # again: idempotent
    installed = call(index.settings.url, "GET", f"/_index_template/{es_prefix}")["index_templates"]
    assert [t["name"] for t in installed] == [es_prefix]
    template = installed[0]["index_template"]
    assert template["index_patterns"] == [f"{es_prefix}-*"] and es_prefix in template["template"]["aliases"]
    props = template["template"]["mappings"]["properties"]
    assert props["text_fr"]["analyzer"] == "french" and props["title_de"]["analyzer"] == "german"
    assert props["tags"]["type"] == props["matched_terms"]["type"] == props["id"]["type"] == "keyword"
    index.close()


@pytest.mark.parametrize("flavor, refused", [("es7", r"Elasticsearch 7\.17\.0 is not supported"),
                                             ("opensearch1", r"OpenSearch 1\.3\.19 is not supported")])
def test_refuses_an_unsupported_version_with_the_reason(proxy, es_prefix, make_settings, flavor, refused):
    proxy.root = ROOTS[flavor]
    with pytest.raises(ServiceError, match=refused + r" \(supported: Elasticsearch 8\.x and 9\.x, OpenSearch 2\.x and 3\.x\)"):
        EsIndex(_settings(proxy, es_prefix)).connect()
    # The index stage does not start on it: a configuration error the operator sees (the CLI prints it).
    with pytest.raises(ConfigError, match=r"^search index: http://127\.0\.0\.1:\d+: " + refused):
        open_index(make_settings(**{"elasticsearch": {"url": proxy.url, "index_prefix": es_prefix}}))


def test_monthly_index_comes_from_the_article_not_the_clock():
    article = news_article(1, published=None)
    assert index_for(article, "p") == "p-2026.03"  # discovered
    article.published = "2025-12-31T23:59:00Z"
    assert index_for(article, "p") == "p-2025.12"


def test_bulk_batches_respect_the_document_and_byte_caps(proxy, es_url, es_prefix):
    index = EsIndex(_settings(proxy, es_prefix, bulk_docs=10, bulk_bytes=20_000)).connect()
    articles = [news_article(n, text="word " * 600) for n in range(25)]  # ~3 KB each
    assert index.write(articles) == []
    sizes = [size for _, _, size in _bulk_requests(proxy)]
    assert len(stored(es_url, es_prefix)) == 25
    assert len(sizes) >= 4 and max(sizes) <= 20_000
    index.close()


def test_whole_request_429_and_503_are_retried_with_backoff(proxy, es_url, es_prefix):
    proxy.bulk_statuses = [429, 503, 503]
    index = EsIndex(_settings(proxy, es_prefix)).connect()
    assert index.write([news_article(n) for n in range(5)]) == []
    assert len(stored(es_url, es_prefix)) == 5
    assert len(_bulk_requests(proxy)) == 4
    assert index.health() is None
    index.close()


def test_partial_bulk_failure_retries_the_retriable_and_rejects_the_mapping_error(proxy, es_url, es_prefix, tmp_path):
    """Through the runner: the 429 item is retried and indexed, the bad date goes to dead letters with the
    node's own error, and a re-indexed article stays in the monthly index its own dates give."""
    bus = SqliteBus(tmp_path / "queue.db")
    articles = [news_article(n) for n in range(6)]
    articles[2].published = "last Tuesday"  # not a date: the mapping refuses it
    proxy.item_statuses = {articles[4].id: [429, 503]}
    for article in articles:
        bus.publish(TAGGED, article.id, article.to_json())
    bus.flush()
    index = EsIndex(_settings(proxy, es_prefix)).connect()
    result = process_batch(Stage("index", TAGGED, sink=index), bus, bus.consumer("index", [TAGGED]),
                           max_records=50)
    assert (result.consumed, result.produced, result.failed) == (6, 5, 1)
    docs = stored(es_url, es_prefix)
    assert set(docs) == {a.id for n, a in enumerate(articles) if n != 2}
    assert {doc["_index"] for doc in docs.values()} == {f"{es_prefix}-2026.02"}
    [dead] = bus.recent(DEAD_LETTERS, 10)
    assert dead.key == articles[2].id
    assert "failed to parse field [published] of type [date]" in dead.headers["error"]
    assert "last Tuesday" in dead.headers["error"]
    assert bus.backlog("index", TAGGED) == 0
    bus.close()
    index.close()


def test_a_hung_request_times_out_and_the_batch_is_sent_again(proxy, es_url, es_prefix):
    index = EsIndex(_settings(proxy, es_prefix, request_timeout=1.0)).connect()
    proxy.hang("/_bulk")
    started = time.monotonic()
    assert index.write([news_article(n) for n in range(3)]) == []
    assert 1.0 <= time.monotonic() - started < 5.0
    assert len(_bulk_requests(proxy)) == 2 and len(stored(es_url, es_prefix)) == 3
    index.close()


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
def test_search_node_down_during_a_stream_loses_nothing_and_keeps_memory_bounded(proxy, es_url, es_prefix,
                                                                                 make_settings):
    settings = make_settings(**{"elasticsearch": {
        "url": proxy.url, "index_prefix": es_prefix, "bulk_docs": 20, "flush_seconds": 0.05, "backoff_max": 0.1,
        "give_up_after": 0.5,
    }})
    bus = SqliteBus(settings.data_dir / "queue.db")
    for article in [news_article(n) for n in range(40)]:
        bus.publish(TAGGED, article.id, article.to_json())
    bus.flush()
    stop = threading.Event()
    thread = _index_stage_thread(settings, stop)
    wait_for(lambda: len(stored(es_url, es_prefix)) == 40, 60, "the first 40 indexed")

    proxy.stop()  # the node becomes unreachable mid-stream; 1,000 more articles (~5 MB) arrive meanwhile
    big_text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 80
    tracemalloc.start()
    for n in range(40, 1040):
        article = news_article(n, text=big_text)
        bus.publish(TAGGED, article.id, article.to_json())
    bus.flush()
    tracemalloc.reset_peak()
    failures = _count_logged("stage index: sink unavailable")
    with failures:
        wait_for(lambda: failures.count >= 3, 30, "the stage retrying against the unreachable node")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2_000_000, f"peak {peak} bytes while down: the stage buffers more than one batch"
    assert bus.backlog("index", TAGGED) == 1000  # all of it waits on disk, none committed

    proxy.start(proxy.port)  # back
    wait_for(lambda: bus.backlog("index", TAGGED) == 0, 120, "the backlog indexed after recovery")
    stop.set()
    thread.join(timeout=30)
    assert len(stored(es_url, es_prefix)) == 1040
    assert bus.size(DEAD_LETTERS) == 0
    bus.close()


@pytest.mark.slow
def test_pipeline_and_cli_on_the_search_node(proxy, es_url, es_prefix, make_settings, config_dir, tmp_path):
    text = "The harbour council met on Monday to discuss the budget of the new bridge in detail. " * 4

    def page(i: int) -> Page:  # three different stories (the same text would be one story, one hit)
        own = " ".join(f"detail{i}n{k}" for k in range(60)) + "."
        return Page(article_html(f"Bridge story {i}", [text + own, text.replace("Monday", "Friday")]))

    routes = {f"/a{i}.html": page(i) for i in range(3)}
    with TestSite(routes) as site:
        site.routes["/feed.xml"] = Page(rss([(f"Bridge story {i}", site.url(f"/a{i}.html")) for i in range(3)]),
                                        headers={"Content-Type": "application/rss+xml"})
        settings = make_settings(**{"elasticsearch": {"url": proxy.url, "index_prefix": es_prefix}})
        progress = run(settings, [Feed(name="t", url=site.url("/feed.xml"))], once=True, stop=threading.Event(),
                       force_poll=True)
    assert progress.done["index"] == 3
    assert len(stored(es_url, es_prefix)) == 3
    assert not (settings.data_dir / "index.db").exists()  # the embedded index is not used

    (config_dir / "pipeline.yaml").write_text(f"elasticsearch:\n  index_prefix: {es_prefix}\n")
    env = {"NEWSMON_CONFIG_DIR": str(config_dir), "NEWSMON_DATA_DIR": str(tmp_path / "data"),
           "NEWSMON_ES_URL": proxy.url, "PATH": "/usr/bin:/bin"}
    found = subprocess.run(NEWSMON + ["search", "bridge", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert sorted(json.loads(line)["title"] for line in found.stdout.splitlines()) == [f"Bridge story {i}" for i in range(3)]
    template = subprocess.run(NEWSMON + ["es", "template"], env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(template.stdout)["template"]["aliases"] == {es_prefix: {}}

    proxy.stop()
    down = subprocess.run(NEWSMON + ["search", "bridge"], env=env, capture_output=True, text=True, timeout=60)
    proxy.start(proxy.port)
    assert down.returncode == 1
    assert "search index:" in down.stderr and proxy.url in down.stderr and "ConnectError" in down.stderr
    assert "Traceback" not in down.stderr


def test_writer_starts_while_the_search_node_is_down_and_reports_unhealthy(proxy, es_prefix, make_settings):
    proxy.stop()
    settings = make_settings(**{"elasticsearch": {"url": proxy.url, "index_prefix": es_prefix, "give_up_after": 0.2,
                                                  "backoff_max": 0.05}})
    index = open_index(settings)
    assert "ConnectError" in index.health()
    with pytest.raises(SinkUnavailable):
        index.write([news_article(1)])
    proxy.start(proxy.port)
    assert index.write([news_article(1)]) == []
    assert index.health() is None and index.product.startswith("OpenSearch")
    index.close()


def test_export_streams_every_match_across_search_after_pages(proxy, es_prefix):
    index = EsIndex(_settings(proxy, es_prefix, bulk_docs=500)).connect()
    count = 2_500  # three pages, and more than from/size could reach with a small max_result_window
    for start in range(0, count, 500):  # distinct texts: every article its own story
        index.write([news_article(n, text=f"Harbour report {n}: " + " ".join(f"w{n}x{k}" for k in range(12)),
                                    published=f"2026-02-{n % 28 + 1:02d}T{n % 24:02d}:00:00Z")
                           for n in range(start, start + 500)])
    refresh(index.settings.url, es_prefix)
    proxy.requests.clear()
    records = list(index.export("harbour"))
    assert len(records) == len({r["id"] for r in records}) == count
    order = [(to_epoch(r["published"]), r["id"]) for r in records]
    assert order == sorted(order, key=lambda o: (-o[0], o[1]))  # newest first, then by id
    assert all(r["story"] == r["id"] and r["text"].startswith("Harbour report") for r in records)
    pages = [r for r in proxy.requests if r[1].endswith("/_search")]
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
    index.close()
