"""The whole embedded pipeline, in process: the demo site end to end, and bad input that must not stop it."""

import json
import socket
import threading

import pytest

from newsmon.app.demo import DemoSite, demo_feeds
from newsmon.app.runtime import run
from newsmon.app.status import collect_stats
from newsmon.bus import DEAD_LETTERS, SqliteBus
from newsmon.record import Article
from newsmon.search import Filters
from newsmon.settings import Feed
from sinks.sqlite_index import SqliteIndex
from tests.support.harness import EURONEWS_SLUG, SITE
from tests.support.sites import Page, TestSite, article_html, rss

MANIFEST = json.loads((SITE / "MANIFEST.json").read_text())
CHROME = ["Newsletter", "PUBLICITÉ", "Copier/coller", "À découvrir également"]


def _run_once(settings, feeds):
    return run(settings, feeds, once=True, stop=threading.Event(), force_poll=True)


@pytest.mark.slow
def test_demo_site_end_to_end_then_nothing_new(make_settings):
    settings = make_settings()
    with DemoSite() as site:
        feeds = [Feed(**f) for f in demo_feeds(site.base_url)]
        progress = _run_once(settings, feeds)
        assert (progress.discovered, progress.done["index"], sum(progress.failed.values())) == (14, 14, 0)
        again = _run_once(settings, feeds)
        assert (again.discovered, again.done["index"]) == (0, 0)

    index = SqliteIndex(settings.data_dir / "index.db")
    assert index.count() == len(MANIFEST) == 14
    by_url = {h.article.url.split("?")[0].rsplit("/", 1)[-1][:-5]: h.article for h in index.search("", limit=100).hits}
    for entry in MANIFEST:
        article = by_url[entry["slug"]]
        assert article.language == entry["lang"], entry["slug"]
        assert sorted(article.tag_names) == sorted(entry["topics"]), entry["slug"]
        assert article.source == entry["outlet"]
        assert article.extraction_method == "json-ld"  # each demo page says its text in JSON-LD too, word for word
        assert [p["stage"] for p in article.provenance] == ["extract", "language", "tag", "index"]

    hits = index.search("securite", Filters(languages=["fr"])).hits
    euronews = next(h.article for h in hits if EURONEWS_SLUG in h.article.url)
    assert {"nato", "ukraine"} <= set(euronews.tag_names)
    assert "Arctic Sentry" in euronews.text and "Boris Pistorius" in euronews.text
    assert not [c for c in CHROME if c in euronews.text]
    assert euronews.published == "2026-02-12T16:45:00Z"
    assert euronews.page_canonical_url.endswith(f"/articles/{EURONEWS_SLUG}.html")
    # Listed in both feeds, once with tracking parameters: one article.
    assert sum(EURONEWS_SLUG in h.article.url for h in index.search("", limit=100).hits) == 1
    # The ISO-8859-1 page kept its umlauts.
    german = by_url["klimaschutz-waermenetz-buerger-auenfeld"]
    assert "Bürger" in german.text and "\ufffd" not in german.text


def _stream_30_mb(handler):
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html")
    handler.send_header("Connection", "close")
    handler.end_headers()
    chunk = b"<p>" + b"x" * 65_000 + b"</p>"
    for _ in range(30_000_000 // len(chunk)):
        handler.wfile.write(chunk)


GOOD = article_html("Defence ministers agree on aid", [
    "Defence ministers of the alliance met in Brussels on Thursday and agreed on a new package of military aid.",
    "The package includes air defence systems and ammunition, and officials said deliveries would start soon.",
    "NATO's secretary general said the meeting showed that European allies were taking more responsibility.",
])


def test_bad_feeds_and_pages_are_recorded_and_the_rest_goes_on(make_settings):
    routes = {
        "/good.xml": Page(rss([
            ("Good one", "{{BASE_URL}}/good1.html"),
            ("Loop", "{{BASE_URL}}/loop.html"),
            ("A PDF", "{{BASE_URL}}/report.pdf"),
            ("Huge", "{{BASE_URL}}/huge.html"),
            ("Bad bytes", "{{BASE_URL}}/latin.html"),
            ("Empty page", "{{BASE_URL}}/empty.html"),
            ("Missing", "{{BASE_URL}}/missing.html"),
            ("Good two", "{{BASE_URL}}/good2.html"),
        ]), headers={"Content-Type": "application/rss+xml"}),
        "/good1.html": Page(GOOD),
        "/good2.html": Page(GOOD.replace(b"Thursday", b"Friday")),
        "/loop.html": Page(status=302, headers={"Location": "/loop.html"}),
        "/report.pdf": Page(b"%PDF-1.7 ...", headers={"Content-Type": "application/pdf"}),
        "/huge.html": _stream_30_mb,
        "/latin.html": Page(GOOD.replace(b"Brussels", b"Br\xfcssel \xff\xfe"), headers={"Content-Type": "text/html; charset=utf-8"}),
        "/empty.html": Page(b"<html><head><title>x</title></head><body><nav>Home</nav></body></html>"),
        "/404.xml": Page(b"gone", status=404),
        "/500.xml": Page(b"oops", status=500),
        "/slow.xml": Page(rss([]), delay=3),
        "/notxml.xml": Page(b"<html><body><h1>Welcome</h1></body></html>"),
        "/malformed.xml": Page(b"<?xml version='1.0'?><rss><channel><title>x<item><link>"),
        "/empty.xml": Page(rss([]), headers={"Content-Type": "application/rss+xml"}),
    }
    settings = make_settings(**{"fetch.read_timeout": 1})
    with TestSite(routes) as site:
        feeds = [Feed(name=p, url=site.url(p)) for p in routes if p.endswith(".xml")]
        progress = _run_once(settings, feeds)

    index = SqliteIndex(settings.data_dir / "index.db")
    indexed = [Article.from_dict(record) for record in index.export("")]  # every article (near-copies too)
    assert sorted(a.title for a in indexed) == ["Bad bytes", "Good one", "Good two"]
    latin = next(a for a in indexed if a.title == "Bad bytes")
    assert "\ufffd" in latin.text and any("invalid utf-8" in w["reason"] for w in latin.warnings)

    bus = SqliteBus(settings.data_dir / "queue.db")
    errors = {json.loads(m.value)["url"].rsplit("/", 1)[-1]: m.headers for m in bus.recent(DEAD_LETTERS, 50)}
    assert set(errors) == {"loop.html", "report.pdf", "huge.html", "empty.html", "missing.html"}
    assert "redirect loop" in errors["loop.html"]["error"]
    assert "application/pdf" in errors["report.pdf"]["error"]
    assert "byte limit" in errors["huge.html"]["error"]
    assert "no extractable text" in errors["empty.html"]["error"]
    assert "HTTP 404" in errors["missing.html"]["error"]
    assert all(h["stage"] == "extract" and h["topic"] == "articles.discovered" for h in errors.values())
    assert progress.feed_errors == 5  # 404, 500, timeout, not XML, malformed; the empty feed is fine

    # `newsmon stats` shows each of them with its URL and reason.
    stats = collect_stats(settings)
    reported = {(e["item"].rsplit("/", 1)[-1], e["reason"].split(":")[0]) for e in stats["recent_errors"]}
    assert {name for name, _ in reported} == set(errors) | {"404.xml", "500.xml", "slow.xml", "notxml.xml", "malformed.xml"}
    assert [w["item"].rsplit("/", 1)[-1] for w in stats["recent_warnings"]] == ["latin.html"]


def test_an_article_robots_txt_disallows_is_a_dead_letter_with_the_reason(make_settings):
    text = "The harbour council met on Monday to discuss the budget of the new bridge in detail. " * 4
    routes = {"/robots.txt": Page(b"User-agent: newsmon\nDisallow: /members/\n", headers={"Content-Type": "text/plain"}),
              "/news/a.html": Page(article_html("Open story", [text, text])),
              "/members/b.html": Page(article_html("Members only", [text, text]))}
    with TestSite(routes) as site:
        site.routes["/feed.xml"] = Page(rss([("Open story", site.url("/news/a.html")),
                                             ("Members only", site.url("/members/b.html"))]))
        settings = make_settings()
        progress = run(settings, [Feed(name="t", url=site.url("/feed.xml"))], once=True, stop=threading.Event())
        assert "/members/b.html" not in [path for path, _ in site.requests]  # never requested
    assert progress.done["index"] == 1
    bus = SqliteBus(settings.data_dir / "queue.db")
    [dead] = bus.recent(DEAD_LETTERS, 10)
    assert "disallowed by" in dead.headers["error"] and "robots.txt" in dead.headers["error"]
    bus.close()


def test_the_demo_site_takes_a_burst_of_connections_while_busy():
    """The pipeline opens more connections at once than socketserver's default backlog of 5: with its
    accept loop held up (a loaded machine), every connection of a burst still completes."""
    site = DemoSite(0)  # listening, not accepting yet
    port = int(site.base_url.rsplit(":", 1)[1])
    sockets = []
    try:
        for _ in range(20):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=1.0))
    finally:
        for s in sockets:
            s.close()
        site.__exit__(None, None, None)
    assert len(sockets) == 20
