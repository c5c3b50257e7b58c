"""Operations: Prometheus metrics, health and readiness, JSON logs, configuration reload."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from newsmon.app import runtime
from newsmon.app.runtime import run
from newsmon.settings import ConfigWatch
from sinks.sqlite_index import SqliteIndex
from tests.support.es_proxy import EsProxy
from tests.support.harness import NEWSMON, free_port, wait_for, write_feeds
from tests.support.sites import Page, TestSite, article_html, rss


def _wait_for(predicate, timeout: float, what: str):
    return wait_for(predicate, timeout, what, ignore=(httpx.TransportError,))  # the server may not be up yet


def _samples(base: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _story_site(stories: dict[str, str], feed: str = "/feed.xml") -> TestSite:
    """A site with one feed linking a page per story (title -> text)."""
    routes = {}
    items = []
    for n, (title, text) in enumerate(stories.items()):
        routes[f"/s{n}.html"] = Page(article_html(title, [text, text.replace("council", "committee")]))
        items.append((title, "{{BASE_URL}}" + f"/s{n}.html"))
    routes[feed] = Page(rss(items), headers={"Content-Type": "application/rss+xml"})
    return TestSite(routes)


TEXT = "The harbour council met on Monday to discuss the budget of the new bridge and its tolls in detail. " * 3


@pytest.mark.slow
def test_a_running_pipeline_serves_metrics_health_and_json_logs_and_reloads_on_sighup(config_dir, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with _story_site({f"Bridge story {n}": TEXT + f" Story {n}." for n in range(3)}) as site:
        site.routes["/gone.xml"] = Page(b"gone", 404)
        write_feeds(config_dir, [{"name": "harbour", "url": site.url("/feed.xml"), "interval": 600},
                                 {"name": "gone", "url": site.url("/gone.xml"), "interval": 600}])
        log_path = tmp_path / "run.log"
        env = {**os.environ, "NEWSMON_CONFIG_DIR": str(config_dir), "NEWSMON_DATA_DIR": str(tmp_path / "data"),
               "NEWSMON_ALLOW_PRIVATE": "127.0.0.1/32", "NEWSMON_METRICS_ADDR": f"127.0.0.1:{port}",
               "NEWSMON_LOG_FORMAT": "json"}
        with open(log_path, "w") as log:
            proc = subprocess.Popen(NEWSMON + ["run"], env=env, stderr=log, start_new_session=True)
        try:
            def indexed():
                samples = _samples(base)
                return samples.get(("newsmon_stage_produced_records_total", frozenset({("stage", "index")})), 0) >= 3
            _wait_for(indexed, 60, "3 articles indexed, as the metrics count them")
            samples = _samples(base)
            assert samples[("newsmon_stage_consumed_records_total", frozenset({("stage", "extract")}))] == 3
            assert samples[("newsmon_feed_polls_total", frozenset({("feed", site.url("/feed.xml")), ("status", "200")}))] == 1
            assert samples[("newsmon_feed_polls_total", frozenset({("feed", site.url("/gone.xml")), ("status", "404")}))] == 1
            assert samples[("newsmon_discovered_to_indexed_seconds_count", frozenset())] == 3
            assert httpx.get(f"{base}/healthz").json() == {"alive": True}
            ready = httpx.get(f"{base}/readyz")
            assert ready.status_code == 200 and ready.json() == {"ready": True, "problems": {}}

            proc.send_signal(signal.SIGHUP)
            _wait_for(lambda: "configuration reloaded" in log_path.read_text(), 30, "the reload after SIGHUP")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert lines and all({"timestamp", "level", "logger", "message", "stage"} <= set(line) for line in lines)
    [gone] = [line for line in lines if line.get("feed_url") == site.url("/gone.xml")]
    assert gone["level"] == "WARNING" and "404" in gone["message"]


def test_readyz_follows_elasticsearch(make_settings, monkeypatch, es_url, es_prefix):
    monkeypatch.setattr(runtime.BusProbe, "every", 0.2)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proxy = EsProxy(es_url, verify=os.environ.get("ES_CA_FILE") or True).start()
    proxy.stop()  # unreachable when the index stage starts
    settings = make_settings(**{"metrics_addr": f"127.0.0.1:{port}",
                                "elasticsearch": {"url": proxy.url, "index_prefix": es_prefix}})
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(settings, []), kwargs={"names": ["index"], "once": False, "stop": stop},
                              daemon=True)
    thread.start()
    try:
        down = _wait_for(lambda: httpx.get(f"{base}/readyz"), 30, "the readiness endpoint")
        assert down.status_code == 503 and "ConnectError" in down.json()["problems"]["search index"]
        assert httpx.get(f"{base}/healthz").status_code == 200  # alive, only not ready
        proxy.start(proxy.port)
        _wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, 30, "ready once Elasticsearch is back")
    finally:
        stop.set()
        thread.join(timeout=30)
        proxy.close()


def test_feeds_and_keywords_reload_while_running(config_dir, make_settings):
    with _story_site({"Harbour news": TEXT}) as first, \
            _story_site({"Zorblax arrives": "The Zorblax festival opened downtown with music and food stalls. " * 5},
                        feed="/more.xml") as second:
        write_feeds(config_dir, [{"name": "first", "url": first.url("/feed.xml"), "interval": 600}])
        settings = make_settings()
        index_path = settings.data_dir / "index.db"

        def titles_and_tags() -> dict[str, list[str]]:
            if not index_path.exists():
                return {}
            index = SqliteIndex(index_path)
            try:
                return {h.article.title: h.article.tag_names for h in index.search("", limit=50).hits}
            finally:
                index.close()

        stop = threading.Event()
        watch = ConfigWatch(settings)
        thread = threading.Thread(target=run, args=(settings, settings.feeds),
                                  kwargs={"once": False, "stop": stop, "watch": watch}, daemon=True)
        thread.start()
        try:
            _wait_for(lambda: "Harbour news" in titles_and_tags(), 60, "the first feed's article")
            write_feeds(config_dir, [{"name": "first", "url": first.url("/feed.xml"), "interval": 600},
                                     {"name": "second", "url": second.url("/more.xml"), "interval": 600}])
            keywords = yaml.safe_load((config_dir / "keywords.yaml").read_text())
            keywords["topics"]["festivals"] = {"keywords": ["Zorblax"]}
            (config_dir / "keywords.yaml").write_text(yaml.safe_dump(keywords, allow_unicode=True))
            tags = _wait_for(lambda: titles_and_tags().get("Zorblax arrives"), 60, "the new feed's article")
            assert tags == ["festivals"]
        finally:
            stop.set()
            thread.join(timeout=30)


def test_an_invalid_edit_keeps_the_running_configuration(config_dir, make_settings, caplog):
    settings = make_settings()
    watch = ConfigWatch(settings)
    assert watch.poll() is None  # nothing changed
    (config_dir / "feeds.yaml").write_text("feeds:\n  - name: x\n    url: ftp://nope\n")
    assert watch.poll() is None
    assert "configuration not reloaded" in caplog.text and "feeds.yaml: feeds[0].url" in caplog.text
    write_feeds(config_dir, [{"name": "ok", "url": "https://example.org/feed.xml"}])
    assert [f.name for f in watch.poll().feeds] == ["ok"]
    watch.requested.set()  # SIGHUP: read again even without a change
    assert watch.poll() is not None and not watch.requested.is_set()
