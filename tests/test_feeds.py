"""Feed polling: parsing, conditional GET, de-duplication, and broken feeds."""

import pytest

from ingest.feeds import FeedParseError, FeedStore, parse_feed, poll_feed
from ingest.http import Fetcher
from newsmon.settings import Feed, FetchSettings
from tests.sites import Page, TestSite, rss

ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Atom test</title><id>tag:test,2026:feed</id>
<updated>2026-02-12T10:00:00Z</updated>
<entry><title>One</title><id>tag:test,2026:1</id><link rel="alternate" href="/articles/one.html?utm_source=atom#top"/>
<updated>2026-02-12T10:00:00+01:00</updated><author><name>Ana Author</name></author></entry>
<entry><title>No link</title><id>tag:test,2026:2</id><updated>2026-02-12T10:00:00Z</updated></entry>
<entry><title>One again</title><id>tag:test,2026:3</id><link href="/articles/one.html"/><updated>2026-02-12T10:00:00Z</updated></entry>
</feed>"""


def _fetcher():
    return Fetcher(FetchSettings(allow_private=["127.0.0.1/32"], read_timeout=1, total_timeout=3))


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
        first = poll_feed(feed, _fetcher(), store)
        assert [a.title for a in first.new] == ["A", "B"]
        store.mark_seen(first.new)

        def answer_304_if_validated(handler):
            status = 304 if handler.headers.get("If-None-Match") == '"v1"' else 200
            handler._send(Page(b"" if status == 304 else feed_body, status=status, headers={"ETag": '"v1"'}))

        site.routes["/feed.xml"] = answer_304_if_validated
        store.close()
        store = FeedStore(tmp_path / "state.db")  # state survives a restart
        second = poll_feed(feed, _fetcher(), store)
        assert second.not_modified and second.new == []
        assert site.requests[-1][1].get("If-None-Match") == '"v1"'

        # A changed feed with one old and one new entry: only the new one is emitted.
        site.routes["/feed.xml"] = Page(rss([("B", "{{BASE_URL}}/b.html"), ("C", "{{BASE_URL}}/c.html")]))
        third = poll_feed(feed, _fetcher(), store)
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
        result = poll_feed(Feed(name="broken", url=site.url("/feed.xml")), _fetcher(), store)
        assert reason in result.error
        state = store.get(site.url("/feed.xml"))
        assert reason in state.last_error and state.failures == 1
