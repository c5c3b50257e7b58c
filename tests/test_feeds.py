"""Feed polling: parsing, conditional GET, de-duplication, and broken feeds."""

import json
import subprocess
import time

import pytest

from ingest import poller
from ingest.feed_store import FeedStore
from ingest.feeds import parse_feed
from ingest.poller import adapt_interval, due_feeds
from newsmon.errors import FeedParseError
from newsmon.settings import Feed, FetchSettings, PollSettings
from tests.support.harness import NEWSMON, write_feeds
from tests.support.polling import poll_once
from tests.support.sites import Page, TestSite, rss

ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Atom test</title><id>tag:test,2026:feed</id>
<updated>2026-02-12T10:00:00Z</updated>
<entry><title>One</title><id>tag:test,2026:1</id><link rel="alternate" href="/articles/one.html?utm_source=atom#top"/>
<updated>2026-02-12T10:00:00+01:00</updated><author><name>Ana Author</name></author></entry>
<entry><title>No link</title><id>tag:test,2026:2</id><updated>2026-02-12T10:00:00Z</updated></entry>
<entry><title>One again</title><id>tag:test,2026:3</id><link href="/articles/one.html"/><updated>2026-02-12T10:00:00Z</updated></entry>
</feed>"""


def _fetcher() -> FetchSettings:
    return FetchSettings(allow_private=["127.0.0.1/32"], read_timeout=1, total_timeout=3)


def test_atom_relative_links_dates_authors_and_skipped_entries():
    parsed = parse_feed(ATOM, Feed(name="t", url="https://news.example/feed.atom", language="fr"),
                        "https://news.example/feed.atom")
    assert [a.canonical_url for a in parsed.articles] == ["https://news.example/articles/one.html"]
    one = parsed.articles[0]
    assert one.url == "https://news.example/articles/one.html?utm_source=atom#top"
    assert (one.published, one.authors, one.language_hint, one.source) == ("2026-02-12T09:00:00Z", ["Ana Author"], "fr", "Atom test")
    assert parsed.skipped == ["'No link': entry has no http(s) link"]


@pytest.mark.parametrize("body, message", [
    (b"<html><body>Not a feed</body></html>", "not a feed"),
    (b"\x00\x01binary", "not a feed"),
    (b"<?xml version='1.0'?><rss version='2.0'><channel><title>x</title><item><title>a", "malformed feed"),
])
def test_documents_that_are_not_feeds_raise_a_clear_error(body, message):
    with pytest.raises(FeedParseError, match=message):
        parse_feed(body, Feed(name="t", url="https://x.example/f"), "https://x.example/f")


def test_an_empty_feed_is_fine():
    assert parse_feed(rss([]), Feed(name="t", url="https://x.example/f"), "https://x.example/f").articles == []


def test_conditional_get_and_seen_entries_across_restarts(tmp_path):
    feed_body = rss([("A", "{{BASE_URL}}/a.html"), ("B", "{{BASE_URL}}/b.html")])
    with TestSite({"/feed.xml": Page(feed_body, headers={"Content-Type": "application/rss+xml", "ETag": '"v1"'})}) as site:
        feed = Feed(name="t", url=site.url("/feed.xml"))
        store = FeedStore(tmp_path / "state.db")
        first = poll_once(feed, _fetcher(), store)
        assert [a.title for a in first.new] == ["A", "B"]
        store.mark_seen(first.new)

        def answer_304_if_validated(handler):
            status = 304 if handler.headers.get("If-None-Match") == '"v1"' else 200
            handler._send(Page(b"" if status == 304 else feed_body, status=status, headers={"ETag": '"v1"'}))

        site.routes["/feed.xml"] = answer_304_if_validated
        store.close()
        store = FeedStore(tmp_path / "state.db")  # state survives a restart
        second = poll_once(feed, _fetcher(), store)
        assert second.not_modified and second.new == []
        assert site.requests[-1][1].get("If-None-Match") == '"v1"'

        # A changed feed with one old and one new entry: only the new one is emitted.
        site.routes["/feed.xml"] = Page(rss([("B", "{{BASE_URL}}/b.html"), ("C", "{{BASE_URL}}/c.html")]))
        third = poll_once(feed, _fetcher(), store)
        assert [a.title for a in third.new] == ["C"]


@pytest.mark.parametrize("page, reason", [
    (Page(b"nope", status=404), "HTTP 404"),
    (Page(b"oops", status=500), "HTTP 500"),
    (Page(rss([("A", "/a")]), delay=2.5), "timed out"),
    (Page(b"<html><body><p>Welcome</p></body></html>"), "not a feed"),
    (Page(b"<?xml version='1.0'?><rss><channel><item><title>broken"), "malformed feed"),
])
def test_feed_failures_are_recorded_with_the_reason(tmp_path, page, reason):
    with TestSite({"/feed.xml": page}) as site:
        store = FeedStore(tmp_path / "state.db")
        result = poll_once(Feed(name="broken", url=site.url("/feed.xml")), _fetcher(), store)
        assert reason in result.error
        state = store.get(site.url("/feed.xml"))
        assert reason in state.last_error and state.failures == 1


def _feed_page(items=(("A", "{{BASE_URL}}/a.html"),), **headers):
    return Page(rss(list(items)), headers={"Content-Type": "application/rss+xml", **headers})


def test_a_permanent_redirect_moves_the_feed_and_410_disables_it(tmp_path):
    with TestSite({"/old.xml": Page(b"", 301, headers={"Location": "/new.xml"}), "/new.xml": _feed_page()}) as site:
        feed = Feed(name="t", url=site.url("/old.xml"))
        store = FeedStore(tmp_path / "state.db")
        assert [a.title for a in poll_once(feed, _fetcher(), store).new] == ["A"]
        assert store.get(feed.url).moved_to == site.url("/new.xml")
        poll_once(feed, _fetcher(), store)
        assert site.requests[-1][0] == "/new.xml"  # polled where it moved, without the redirect

        site.routes["/new.xml"] = Page(b"gone", 410)
        result = poll_once(feed, _fetcher(), store)
        state = store.get(feed.url)
        assert result.error == "HTTP 410" and state.disabled.startswith("HTTP 410 Gone")
        assert due_feeds([feed], store, now=time.time() + 10 ** 6) == []  # never polled again ...
        assert store.broken(3) == 1
        assert store.enable(feed.url) and due_feeds([feed], store) == [feed]  # ... until enabled


def test_failing_feeds_back_off_exponentially_capped_and_honour_retry_after(tmp_path):
    with TestSite({"/f.xml": Page(b"down", 503)}) as site:
        feed = Feed(name="t", url=site.url("/f.xml"), interval=60)
        store = FeedStore(tmp_path / "state.db")
        settings = PollSettings(backoff_max=300)
        waits = []
        for _ in range(5):
            poll_once(feed, _fetcher(), store, settings, now=1000.0)
            waits.append(store.get(feed.url).next_poll - 1000.0)
        assert waits == [60, 120, 240, 300, 300]
        assert due_feeds([feed], store, now=1299.0) == [] and due_feeds([feed], store, now=1300.0) == [feed]
        site.routes["/f.xml"] = Page(b"slow down", 429, headers={"Retry-After": "7200"})
        poll_once(feed, _fetcher(), store, settings, now=1000.0)
        assert store.get(feed.url).next_poll == 1000.0 + 7200  # the server's wish beats the cap
        site.routes["/f.xml"] = _feed_page(**{"Cache-Control": "public, max-age=1800"})
        poll_once(feed, _fetcher(), store, settings, now=1000.0)
        state = store.get(feed.url)
        assert (state.failures, state.next_poll) == (0, 1000.0 + 1800)  # max-age above the interval


def test_an_unchanged_body_is_not_parsed_again_and_conditional_get_can_be_off(tmp_path, monkeypatch):
    with TestSite({"/f.xml": _feed_page(ETag='"v1"')}) as site:
        feed = Feed(name="t", url=site.url("/f.xml"), conditional=False)
        store = FeedStore(tmp_path / "state.db")
        assert len(poll_once(feed, _fetcher(), store).new) == 1
        parses = []
        monkeypatch.setattr(poller, "parse_feed", lambda *a, **k: parses.append(a))
        second = poll_once(feed, _fetcher(), store)
        assert second.not_modified and parses == []
        assert "If-None-Match" not in site.requests[-1][1]  # this server answers 304 wrongly, say


def test_feeds_status_shows_broken_feeds_first_and_enable_brings_one_back(config_dir, tmp_path):
    env = {"NEWSMON_CONFIG_DIR": str(config_dir), "NEWSMON_DATA_DIR": str(tmp_path / "data"),
           "NEWSMON_ALLOW_PRIVATE": "127.0.0.1/32", "PATH": "/usr/bin:/bin"}

    def newsmon(*args):
        return subprocess.run(NEWSMON + list(args), env=env, capture_output=True, text=True, timeout=120)

    with TestSite({"/ok.xml": Page(rss([])), "/gone.xml": Page(b"gone", 410)}) as site:
        write_feeds(config_dir, [{"name": "a-ok", "url": site.url("/ok.xml")},
                                 {"name": "b-gone", "url": site.url("/gone.xml")}])
        assert newsmon("run", "--once").returncode == 0
    rows = [json.loads(line) for line in newsmon("feeds", "status", "--json").stdout.splitlines()]
    assert [(r["name"], r["broken"]) for r in rows] == [("b-gone", True), ("a-ok", False)]
    assert rows[0]["disabled"].startswith("HTTP 410 Gone") and rows[0]["next_poll_in_s"] is None
    # An empty feed served as text/html is a feed all the same: a quiet one, so its interval grows (900 * 1.25).
    assert rows[1]["last_status"] == 200 and rows[1]["last_error"] is None and 1000 < rows[1]["next_poll_in_s"] <= 1125
    assert "DISABLED: HTTP 410 Gone" in newsmon("feeds", "status").stdout
    assert newsmon("feeds", "enable", site.url("/gone.xml")).returncode == 0
    assert json.loads(newsmon("feeds", "status", "--json").stdout.splitlines()[0])["disabled"] is None
    refused = newsmon("feeds", "enable", "https://never.example/x.xml")
    assert refused.returncode == 1 and "not a feed this data directory has polled" in refused.stderr


def test_json_feed_1_1_with_relative_links_authors_and_entries_without_links():
    doc = json.dumps({
        "version": "https://jsonfeed.org/version/1.1", "title": "JSON news",
        "items": [
            {"id": "1", "url": "/a.html?utm_medium=json", "title": "Première", "date_published": "2026-02-12T10:00:00+01:00",
             "authors": [{"name": "Ann"}]},
            {"id": "2", "external_url": "https://elsewhere.example/b", "title": "Linked out", "author": {"name": "Bo"}},
            {"id": "3", "title": "No link", "date_published": "not a date"},
        ],
    }).encode()
    parsed = parse_feed(doc, Feed(name="t", url="https://x.example/feed.json"), "https://x.example/feed.json",
                        "application/feed+json")
    assert [(a.canonical_url, a.title, a.published, a.authors, a.source) for a in parsed.articles] == [
        ("https://x.example/a.html", "Première", "2026-02-12T09:00:00Z", ["Ann"], "JSON news"),
        ("https://elsewhere.example/b", "Linked out", None, ["Bo"], "JSON news"),
    ]
    assert parsed.skipped == ["'No link': entry has no http(s) link"]
    for bad in (b'{"version": "1", "items": []}', b"{" * 100_000, b'{"version": "https://jsonfeed.org/version/1.1",'):
        with pytest.raises(FeedParseError, match="not a feed"):
            parse_feed(bad, Feed(name="t", url="https://x.example/f"), "https://x.example/f")


def test_intervals_adapt_to_how_often_a_feed_publishes_within_bounds(tmp_path):
    with TestSite({"/f.xml": _feed_page()}) as site:
        feed = Feed(name="t", url=site.url("/f.xml"), interval=800)
        store = FeedStore(tmp_path / "state.db")
        settings = PollSettings(adapt_factor=4, min_interval=60)
        intervals = []
        for n in range(6):  # a new entry at every poll: polled more and more often, down to 800 / 4
            site.routes["/f.xml"] = _feed_page([(f"S{n}", "{{BASE_URL}}" + f"/s{n}.html")])
            store.mark_seen(poll_once(feed, _fetcher(), store, settings, now=1000.0).new)
            intervals.append(store.get(feed.url).interval)
        assert intervals == [600, 450, 337.5, 253.125, 200, 200]
        quiet = []
        for _ in range(14):  # then nothing new: less and less often, up to 800 * 4
            poll_once(feed, _fetcher(), store, settings, now=1000.0)
            quiet.append(store.get(feed.url).interval)
        assert quiet[0] == 250 and quiet[-1] == 3200 and quiet == sorted(quiet)
        assert store.get(feed.url).next_poll == 1000.0 + 3200
    fixed = PollSettings(adapt_factor=1)
    assert adapt_interval(feed, 800, True, fixed) == adapt_interval(feed, 800, False, fixed) == 800
    often = Feed(name="t", url=feed.url, interval=20)  # below min_interval on purpose: still honoured
    assert adapt_interval(often, 20, True, settings) == 20 and adapt_interval(often, 20, False, settings) == 25


def test_one_entry_with_a_malformed_link_is_skipped_with_its_reason_not_the_feed():
    body = rss([("Broken", "http://example.c[o.test/"), ("Fine", "https://x.example/fine.html")])
    parsed = parse_feed(body, Feed(name="t", url="https://x.example/f"), "https://x.example/f")
    assert [a.canonical_url for a in parsed.articles] == ["https://x.example/fine.html"]
    assert parsed.skipped == ["'Broken': unusable link 'http://example.c[o.test/' (Invalid IPv6 URL)"]


def test_entries_linked_only_by_atom_id_or_link_text_or_an_rss_atom_link_are_kept():
    atom = b"""<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>
<entry><title>By id</title><id>https://x.example/by-id</id></entry>
<entry><title>By text</title><id>tag:x,2026:2</id><link rel="alternate">https://x.example/by-text</link></entry>
<entry><title>By href</title><id>tag:x,2026:3</id><link href="https://x.example/by-href"/></entry>
</feed>"""
    rss_with_atom_link = b"""<rss version="2.0"><channel><title>t</title>
<item><title>Atom-style</title><link href="https://x.example/atom-style"/></item></channel></rss>"""
    feed = Feed(name="t", url="https://x.example/f")
    assert [(a.title, a.canonical_url) for a in parse_feed(atom, feed, feed.url).articles] == [
        ("By id", "https://x.example/by-id"), ("By text", "https://x.example/by-text"),
        ("By href", "https://x.example/by-href")]
    assert [a.canonical_url for a in parse_feed(rss_with_atom_link, feed, feed.url).articles] == [
        "https://x.example/atom-style"]


def test_the_feed_says_whether_its_date_is_the_publication_or_an_update():
    atom = b"""<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>
<entry><title>P</title><link href="https://x.example/p"/><published>2026-02-12T10:00:00Z</published>
<updated>2026-02-13T10:00:00Z</updated></entry>
<entry><title>U</title><link href="https://x.example/u"/><updated>2026-02-13T10:00:00Z</updated></entry>
<entry><title>N</title><link href="https://x.example/n"/></entry></feed>"""
    parsed = parse_feed(atom, Feed(name="t", url="https://x.example/f"), "https://x.example/f")
    assert [(a.title, a.published, a.published_from) for a in parsed.articles] == [
        ("P", "2026-02-12T10:00:00Z", "feed"), ("U", "2026-02-13T10:00:00Z", "feed-updated"), ("N", None, None)]
