"""The asyncio poller: the fetcher's guards on the async path, politeness measured by the servers,
one-query scheduling, and what parsing refuses or caps (entity expansion, huge feeds)."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import brotli
import pytest

from ingest import feeds
from ingest.feed_store import FeedState, FeedStore
from ingest.feeds import parse_feed
from ingest.http import AsyncFetcher, Fetcher
from ingest.poller import Poller, due_feeds
from newsmon.app.stages import DISCOVERED, publisher
from newsmon.bus import SqliteBus
from newsmon.errors import AddressRefused, FeedParseError, FetchError
from newsmon.settings import Feed, FetchSettings, PollSettings
from tests.support.harness import spaced, wait_for
from tests.support.polling import poll_once
from tests.support.sites import Page, TestSite, rss

LOOPBACK = ["127.0.0.1/32"]


def _get(url: str, **settings) -> object:
    """One GET with the async fetcher, as the poller makes it."""
    values = dict(allow_private=LOOPBACK, connect_timeout=2, read_timeout=1, total_timeout=3, max_bytes=100_000)
    values.update(settings)

    async def get():
        fetcher = AsyncFetcher(FetchSettings(**values), concurrency=4)
        try:
            return await fetcher.get(url)
        finally:
            await fetcher.aclose()

    return asyncio.run(get())


@pytest.fixture
def site():
    with TestSite({"/ok": Page(b"<rss/>")}) as s:
        yield s


def test_async_fetcher_refuses_loopback_unless_allow_listed_and_checks_names_after_resolution(site):
    with pytest.raises(AddressRefused, match="127.0.0.1 is not public"):
        _get(site.url("/ok"), allow_private=[])
    with pytest.raises(AddressRefused, match="is not public"):
        _get(f"http://localhost:{site.port}/ok", allow_private=[])
    assert site.requests == []  # refused before connecting
    assert _get(site.url("/ok")).content == b"<rss/>"


def test_async_fetcher_checks_every_redirect_hop_and_stops_loops_and_other_schemes(site):
    site.routes["/hop"] = Page(status=302, headers={"Location": f"http://127.0.0.2:{site.port}/ok"})
    with pytest.raises(AddressRefused, match="127.0.0.2"):
        _get(site.url("/hop"))
    site.routes["/a"] = Page(status=301, headers={"Location": "/ok"})
    result = _get(site.url("/a"))
    assert (result.final_url, result.moved_permanently) == (site.url("/ok"), True)
    site.routes["/loop1"] = Page(status=302, headers={"Location": "/loop2"})
    site.routes["/loop2"] = Page(status=302, headers={"Location": "/loop1"})
    with pytest.raises(FetchError, match="redirect loop"):
        _get(site.url("/loop1"))
    for i in range(8):
        site.routes[f"/r{i}"] = Page(status=302, headers={"Location": f"/r{i + 1}"})
    with pytest.raises(FetchError, match="more than 5 redirects"):
        _get(site.url("/r0"))
    site.routes["/file"] = Page(status=302, headers={"Location": "file:///etc/passwd"})
    with pytest.raises(FetchError, match="non-http"):
        _get(site.url("/file"))
    with pytest.raises(FetchError, match="non-http"):
        _get("ftp://127.0.0.1/feed.xml")


def test_async_fetcher_caps_the_decompressed_size(site):
    site.routes["/big"] = Page(b"x" * 200_000)
    site.routes["/gzip-bomb"] = Page(gzip.compress(b"\0" * 5_000_000), headers={"Content-Encoding": "gzip"})
    site.routes["/br-bomb"] = Page(brotli.compress(b"\0" * 5_000_000), headers={"Content-Encoding": "br"})
    for path in ("/big", "/gzip-bomb", "/br-bomb"):
        with pytest.raises(FetchError, match="exceeds the 100000-byte limit"):
            _get(site.url(path))


def test_async_fetcher_cuts_off_a_trickling_server_at_the_total_deadline(site):
    site.routes["/trickle"] = Page(b"y" * 100, trickle=0.3)  # never idle for read_timeout, slow overall
    started = time.monotonic()
    with pytest.raises(FetchError, match="longer than 2 s") as err:
        _get(site.url("/trickle"), total_timeout=2)
    assert err.value.transient and time.monotonic() - started < 3.5

    def trickle_headers(handler):  # even the status line, a byte at a time: the deadline covers it too
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.3)

    site.routes["/slow-headers"] = trickle_headers
    started = time.monotonic()
    with pytest.raises(FetchError, match="longer than 2 s"):
        _get(site.url("/slow-headers"), total_timeout=2)
    assert time.monotonic() - started < 3.5


@pytest.mark.slow
def test_async_fetcher_negotiates_http2_over_tls_and_keeps_http11_on_plain_http(site):
    """A real h2 server (hypercorn, TLS with a throw-away CA): ALPN picks HTTP/2, the connection goes to
    the vetted address while the certificate is still checked against the host name."""
    trustme = pytest.importorskip("trustme")
    hypercorn = pytest.importorskip("hypercorn.asyncio")
    from hypercorn.config import Config

    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    config = Config()
    with cert.cert_chain_pems[0].tempfile() as certfile, cert.private_key_pem.tempfile() as keyfile:
        config.certfile, config.keyfile = certfile, keyfile
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config.bind = [f"127.0.0.1:{port}"]

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/rss+xml")]})
            await send({"type": "http.response.body", "body": scope["http_version"].encode()})

        stop = threading.Event()
        server = threading.Thread(target=asyncio.run, daemon=True, args=(hypercorn.serve(
            app, config, shutdown_trigger=lambda: asyncio.get_running_loop().run_in_executor(None, stop.wait)),))
        server.start()
        try:
            async def check():
                context = ssl.create_default_context()
                ca.configure_trust(context)
                fetcher = AsyncFetcher(FetchSettings(allow_private=LOOPBACK), concurrency=4, verify=context)
                try:
                    return (await fetcher.get(f"https://localhost:{port}/feed.xml"),
                            await fetcher.get(site.url("/ok")))
                finally:
                    await fetcher.aclose()

            tls, plain = wait_for(lambda: asyncio.run(check()), 10, "the h2 server", ignore=(FetchError,))
        finally:
            stop.set()
            server.join(timeout=10)
    assert (tls.http_version, tls.content) == ("HTTP/2", b"2")
    assert plain.http_version == "HTTP/1.1"
    with pytest.raises(AddressRefused):  # the same guard on the TLS path: loopback not allow-listed
        _get(f"https://localhost:{port}/feed.xml", allow_private=[])


class _Meter:
    """Requests in flight, overall and per host, and start times, as the servers see them."""

    def __init__(self, delay: float = 0.3):
        self.delay = delay
        self.lock = threading.Lock()
        self.now: dict[str, int] = {}
        self.max: dict[str, int] = {}
        self.total = self.total_max = 0
        self.starts: dict[str, list[float]] = {}

    def __call__(self, handler) -> None:
        host = handler.server.site.base_url
        with self.lock:
            self.now[host] = self.now.get(host, 0) + 1
            self.max[host] = max(self.max.get(host, 0), self.now[host])
            self.total += 1
            self.total_max = max(self.total_max, self.total)
            self.starts.setdefault(host, []).append(time.monotonic())
        time.sleep(self.delay)
        with self.lock:
            self.now[host] -= 1
            self.total -= 1
        path = handler.path
        handler._send(Page(rss([(path, "{{BASE_URL}}" + path + ".html")]),
                           headers={"Content-Type": "application/rss+xml"}))


def _poller(tmp_path, fetch: FetchSettings, settings: PollSettings, fetcher: Fetcher | None = None):
    """The poller as `newsmon run` opens it (publishing to the embedded bus), sharing ``fetcher``'s host budget."""
    bus = SqliteBus(tmp_path / "queue.db")
    return Poller(FeedStore(tmp_path / "state.db"), fetch, settings, publish=publisher(bus),
                  limits=fetcher.limits if fetcher else None), bus


@pytest.mark.slow
def test_feed_polls_and_article_fetches_share_one_per_host_budget(tmp_path):
    """The async poller and the extract stage's threads together: never more than per_host in
    flight to the host, host_delay between any two starts; another host is not held up."""
    meter, quick_served = _Meter(), []
    fetch = FetchSettings(allow_private=["127.0.0.0/8"], per_host=2, host_delay=0.1)
    fetcher = Fetcher(fetch)
    poller, bus = _poller(tmp_path, fetch, PollSettings(parse_workers=0), fetcher)
    with TestSite({f"/f{n}": meter for n in range(6)} | {f"/page{n}": meter for n in range(4)}) as busy, \
            TestSite({"/quick": lambda handler: (quick_served.append(time.monotonic()),
                                                 handler._send(Page(rss([("q", "/q.html")]))))},
                     host="127.0.0.2") as other:
        feed_list = [Feed(name=f"f{n}", url=busy.url(f"/f{n}")) for n in range(6)]
        quick = Feed(name="quick", url=other.url("/quick"))
        with ThreadPoolExecutor(4) as pool:  # article pages fetched meanwhile, as the extract stage does
            pages = [pool.submit(fetcher.get, busy.url(f"/page{n}")) for n in range(4)]
            report = poller.poll(feed_list + [quick])
            assert all(page.result().status == 200 for page in pages)
    assert (report.polled, report.failed, report.discovered) == (7, 0, 7)
    assert bus.size(DISCOVERED) == 7
    host = busy.base_url
    assert meter.max[host] == 2 and len(meter.starts[host]) == 10
    starts = sorted(meter.starts[host])
    assert spaced(starts, 0.1), starts
    assert len(other.requests) == 1 and quick_served[0] < starts[2]  # not queued behind the busy host


@pytest.mark.slow
def test_poll_concurrency_caps_requests_in_flight_across_hosts(tmp_path):
    meter = _Meter(delay=0.2)
    fetch = FetchSettings(allow_private=["127.0.0.0/8"], per_host=2, host_delay=0)
    poller, _ = _poller(tmp_path, fetch, PollSettings(concurrency=3, parse_workers=0))
    sites = [TestSite({f"/f{n}": meter for n in range(4)}, host=f"127.0.0.{h}") for h in range(1, 6)]
    for s in sites:
        s.__enter__()
    try:
        feed_list = [Feed(name=f"{h}-{n}", url=s.url(f"/f{n}")) for h, s in enumerate(sites) for n in range(4)]
        report = poller.poll(feed_list)
    finally:
        for s in sites:
            s.__exit__(None, None, None)
    assert report.polled == 20 and report.failed == 0
    assert meter.total_max == 3 and max(meter.max.values()) <= 2


def test_one_broken_feed_never_blocks_the_others(tmp_path):
    with TestSite({"/ok.xml": Page(rss([("A", "{{BASE_URL}}/a.html")])), "/bad.xml": Page(b"<html>no</html>"),
                   "/down.xml": Page(b"", 503)}) as site:
        # Parsed in a worker process, as in `newsmon run`.
        poller, _ = _poller(tmp_path, FetchSettings(allow_private=LOOPBACK, host_delay=0), PollSettings(parse_workers=1))
        feed_list = [Feed(name=n, url=site.url(f"/{n}.xml")) for n in ("bad", "down", "ok")]
        try:
            report = poller.poll(feed_list)
        finally:
            poller.close()
    states = poller.store.states()
    assert (report.polled, report.failed, report.discovered) == (3, 2, 1)
    assert "not a feed" in states[site.url("/bad.xml")].last_error
    assert states[site.url("/down.xml")].last_error == "HTTP 503"


def test_due_feeds_reads_the_store_once_for_many_feeds(tmp_path):
    store = FeedStore(tmp_path / "state.db")
    many = [Feed(name=f"f{n}", url=f"https://feeds{n % 50}.example/{n}.xml") for n in range(10_000)]
    store.save_many(FeedState(f.url, f.name, last_polled=1000.0, next_poll=1000.0 + n % 2 * 500)
                    for n, f in enumerate(many))
    reads = []

    class Counting(FeedStore):
        def states(self):
            reads.append(1)
            return super().states()

    counting = Counting(tmp_path / "state.db")
    started = time.monotonic()
    due = due_feeds(many, counting, now=1200.0)
    assert len(due) == 5_000 and len(reads) == 1 and time.monotonic() - started < 1.0


BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY lol "lol">'
                  + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol;" if i == 1 else b"&lol%d;" % (i - 1)) * 10)
                             for i in range(1, 10))
                  + b']><rss version="2.0"><channel><title>&lol9;</title>'
                  b"<item><title>&lol9;</title><link>http://x.example/a</link></item></channel></rss>")


def test_entity_expansion_is_refused_before_any_parser_sees_the_document(tmp_path):
    """expat 2.4+ would stop the amplification, but feedparser then re-reads the document with its
    lenient parser; lxml would not expand either (resolve_entities=False). Refused outright."""
    started = time.monotonic()
    with pytest.raises(FeedParseError, match="declares XML entities"):
        parse_feed(BILLION_LAUGHS, Feed(name="t", url="https://x.example/f"), "https://x.example/f")
    external = b'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY x SYSTEM "file:///etc/passwd">]><rss><channel>&x;</channel></rss>'
    with pytest.raises(FeedParseError, match="declares XML entities"):
        parse_feed(external, Feed(name="t", url="https://x.example/f"), "https://x.example/f")
    assert time.monotonic() - started < 1.0
    # A DOCTYPE without entity declarations (RSS 0.91's) is fine.
    rss091 = (b'<?xml version="1.0" encoding="ISO-8859-1"?><!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD '
              b'RSS 0.91//EN" "http://my.netscape.com/publish/formats/rss-0.91.dtd"><rss version="0.91"><channel>'
              b"<title>Caf\xe9</title><item><title>\xc9t\xe9</title><link>/a.html</link></item></channel></rss>")
    parsed = parse_feed(rss091, Feed(name="t", url="https://x.example/f"), "https://x.example/f")
    assert [(a.title, a.canonical_url, a.source) for a in parsed.articles] == [("Été", "https://x.example/a.html", "Café")]
    with TestSite({"/lol.xml": Page(BILLION_LAUGHS, headers={"Content-Type": "application/rss+xml"})}) as site:
        store = FeedStore(tmp_path / "state.db")
        result = poll_once(Feed(name="lol", url=site.url("/lol.xml")), FetchSettings(allow_private=LOOPBACK), store)
    assert "declares XML entities" in result.error and store.get(site.url("/lol.xml")).failures == 1


@pytest.mark.parametrize("kind", ["rss", "atom"])
def test_a_huge_feed_is_cut_to_max_entries_before_parsing_with_the_reason(kind, caplog, tmp_path):
    if kind == "rss":
        items = "".join(f"<item><title>t{i}</title><link>http://x.example/{i}</link></item>" for i in range(100_000))
        doc = f'<?xml version="1.0"?><rss version="2.0"><channel><title>Big</title>{items}</channel></rss>'
    else:
        items = "".join(f'<entry><title>t{i}</title><id>{i}</id><link href="http://x.example/{i}"/></entry>'
                        for i in range(100_000))
        doc = f'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>Big</title>{items}</feed>'
    started = time.monotonic()
    parsed = parse_feed(doc.encode(), Feed(name="t", url="https://x.example/f"), "https://x.example/f", max_entries=500)
    assert time.monotonic() - started < 3  # feedparser needs ~12 s and ~250 MB for the whole document
    assert len(parsed.articles) == 500 and parsed.articles[-1].title == "t499" and parsed.warning is None
    assert parsed.skipped == ["99500 entries after the first 500 (poll.max_entries)"]
    with TestSite({"/big.xml": Page(doc.encode(), headers={"Content-Type": "application/xml"})}) as site:
        result = poll_once(Feed(name="big", url=site.url("/big.xml")),
                           FetchSettings(allow_private=LOOPBACK, max_bytes=20_000_000), FeedStore(tmp_path / "s.db"),
                           PollSettings(max_entries=300))
    assert len(result.new) == 300 and "skipped 99700 entries after the first 300 (poll.max_entries)" in caplog.text


ODD_FEEDS = {
    "rdf 1.0": (b'<?xml version="1.0"?><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
                b'xmlns="http://purl.org/rss/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"><channel '
                b'rdf:about="http://x.example/"><title>RDF news</title></channel><item rdf:about="http://x.example/1">'
                b"<title>One</title><link>http://x.example/1</link><dc:date>2026-02-12T10:00:00Z</dc:date>"
                b"<dc:creator>Ann</dc:creator></item></rdf:RDF>", "application/rdf+xml"),
    "rss 2.0, no dates, duplicate guids and links, an entry without a link": (
        b'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Odd</title>'
        b"<item><title>A</title><guid>same</guid><link>/a.html</link></item>"
        b"<item><title>A again</title><guid>same</guid><link>/a.html#comments</link></item>"
        b"<item><title>B</title><guid>same</guid><link>https://x.example/b.html?utm_source=rss</link></item>"
        b"<item><title>No link</title><guid isPermaLink=\"false\">c</guid></item></channel></rss>", "text/plain"),
    "charset only in the HTTP header": (
        b"<rss version=\"2.0\"><channel><title>Gr\xfc\xdfe</title><item><title>M\xfcnchen</title>"
        b"<link>http://x.example/m</link><pubDate>Thu, 12 Feb 2026 10:00:00 +0100</pubDate></item></channel></rss>",
        "text/xml; charset=iso-8859-1"),
}


@pytest.mark.parametrize("name", list(ODD_FEEDS))
def test_both_parsers_read_odd_feeds_alike(name, monkeypatch):
    """Well-formed XML goes to fastfeedparser, the rest to feedparser: on what both can read they agree."""
    body, content_type = ODD_FEEDS[name]
    feed = Feed(name="t", url="https://x.example/feed")

    def read():
        parsed = parse_feed(body, feed, "https://x.example/feed", content_type)
        return parsed.title, [(a.canonical_url, a.title, a.published, a.authors) for a in parsed.articles], parsed.skipped

    fast = read()
    monkeypatch.setattr(feeds, "read_well_formed", lambda content: None)
    assert read() == fast
    title, articles, skipped = fast
    if name == "rdf 1.0":
        assert (title, articles) == ("RDF news", [("http://x.example/1", "One", "2026-02-12T10:00:00Z", ["Ann"])])
    elif name.startswith("rss 2.0"):
        assert title == "Odd" and [a[:3] for a in articles] == [("https://x.example/a.html", "A", None),
                                                                ("https://x.example/b.html", "B", None)]
        assert skipped == ["'No link': entry has no http(s) link"]
    else:
        assert (title, articles) == ("Grüße", [("http://x.example/m", "München", "2026-02-12T09:00:00Z", [])])
