"""Page metadata: authors as names only, the publication date from the best signal, the headline."""

import re
from datetime import datetime, timezone

import pytest

from ingest.extract import Extracted, decode_html, extract_html, strip_chrome_lines
from ingest.metadata import clean_authors
from ingest.pages import apply_extraction
from newsmon.record import Article
from tests.support.harness import EURONEWS_SLUG, demo_page

URL = "http://127.0.0.1:8765/articles/x.html"
TITLE = "Les alliés de l'OTAN promettent 35 milliards d'aide à l'Ukraine"
# The byline as Euronews lays it out: trafilatura alone reads "Par Euronews Mis à jour" from it.
BYLINE = ('<div class="c-article-byline"><div class="c-article-byline__author">Par <a href="/profiles/euronews">'
          'Euronews</a> <span class="c-article-byline__dates">Mis à jour <time datetime="2026-02-12T18:02:00+01:00">'
          '12/02/2026 - 18:02 GMT+1</time></span></div></div>')


def euronews(declares_author: bool = True, declares_date: bool = True) -> str:
    html = demo_page(EURONEWS_SLUG).decode()
    html = re.sub(r'<div class="c-article-byline">.*?</div>\s*</div>', BYLINE, html, count=1, flags=re.S)
    if not declares_author:
        html = html.replace('<meta name="author" content="Euronews">\n', "")
        html = re.sub(r'\s*"author": \{[^}]*\},', "", html)
    if not declares_date:
        html = re.sub(r'<script type="application/ld\+json">.*?</script>', "", html, flags=re.S)
        html = re.sub(r'<meta property="article:(?:published|modified)_time"[^>]*>', "", html)
    return html


@pytest.mark.parametrize("declares_author, declares_date, source", [
    (True, True, "json-ld"), (False, True, "json-ld"), (False, False, "htmldate")])
def test_euronews_page_gives_clean_authors_its_title_and_date(declares_author, declares_date, source):
    page = extract_html(euronews(declares_author, declares_date), URL)
    assert page.authors == ["Euronews"]
    assert page.title == TITLE
    assert (page.date[:10], page.date_source) == ("2026-02-12", source)


@pytest.mark.parametrize("raw, names", [
    (["Par Euronews Mis à jour"], ["Euronews"]),
    (["Par Euronews Publié le 12/02/2026 - 17:45 GMT+1 • Mis à jour 12/02/2026 - 18:02 GMT+1"], ["Euronews"]),
    (["By Jane Doe and John Smith"], ["Jane Doe", "John Smith"]),
    (["Von Felix Schröder und Jörg Soldwisch, dpa"], ["Felix Schröder", "Jörg Soldwisch", "dpa"]),
    (["Por María R. Sahuquillo"], ["María R. Sahuquillo"]),
    (["Di Mario Rossi e Anna Bianchi"], ["Mario Rossi", "Anna Bianchi"]),
    (["Door Pieter van Dijk"], ["Pieter van Dijk"]),
    (["Av Kari Nordmann og Ola Nordmann"], ["Kari Nordmann", "Ola Nordmann"]),
    (["Mathias Hagen / Journalist"], ["Mathias Hagen"]),
    (["Elena Oberholzer (obe), Oliver Maksan (oma)"], ["Elena Oberholzer", "Oliver Maksan"]),
    (["ana@example.org (Ana Berg)"], ["Ana Berg"]),
    (["Ana Berg ana.berg@example.org", "https://www.facebook.com/example", "@example"], ["Ana Berg"]),
    (["Sophie Foster", "sophie-foster"], ["Sophie Foster"]),
    (["Mykola Petrenko, Professor at the Faculty of Social Sciences of the University"], ["Mykola Petrenko"]),
    (["AFP", "Reuters"], ["AFP", "Reuters"]),
    (["Updated 12:30"], []),
])
def test_authors_are_names_only(raw, names):
    assert clean_authors(raw) == names


def _page(head: str, body: str = "") -> str:
    paragraphs = "".join(f"<p>Paragraph {n} of a story about the harbour and its council, long enough to count.</p>"
                         for n in range(6))
    return f"<html><head><title>T</title>{head}</head><body><article><h1>A headline of words</h1>{body}" \
           f"{paragraphs}</article></body></html>"


def _ld(**fields) -> str:
    items = ",".join(f'"{k}": "{v}"' for k, v in fields.items())
    return f'<script type="application/ld+json">{{"@type": "NewsArticle", {items}}}</script>'


@pytest.mark.parametrize("head, url, date, source", [
    # The original publication, not the modification, whatever the order on the page.
    (_ld(dateModified="2026-02-13T09:00:00Z", datePublished="2026-02-12T17:45:00+01:00"), None,
     "2026-02-12T17:45:00+01:00", "json-ld"),
    ('<meta property="article:modified_time" content="2026-02-13T09:00:00Z">'
     '<meta property="article:published_time" content="2026-02-12T08:00:00Z">', None, "2026-02-12T08:00:00+00:00", "meta"),
    # Implausible dates are passed over: a year in the future, before 1995.
    (_ld(datePublished="2099-01-01T00:00:00Z") + '<meta name="pubdate" content="2026-02-12">', None,
     "2026-02-12T00:00:00+00:00", "meta"),  # no zone given: UTC
    (_ld(datePublished="1970-01-01T00:00:00Z"), "https://news.example/2026/02/12/story.html", "2026-02-12", "url"),
])
def test_publication_date_from_the_best_signal(head, url, date, source):
    page = extract_html(_page(head), url)
    assert (page.date, page.date_source) == (date, source)


def _article(published=None, published_from=None) -> Article:
    return Article(id="x", url=URL, canonical_url=URL, feed_url="f", published=published, published_from=published_from)


NOW = datetime(2026, 2, 14, tzinfo=timezone.utc)


@pytest.mark.parametrize("feed, feed_from, page, page_from, published, published_from", [
    ("2026-02-12T10:00:00Z", "feed", "2026-02-11", "json-ld", "2026-02-12T10:00:00Z", "feed"),  # the feed's pubDate
    # A feed's update date gives way to the page's earlier original publication, not to a later one.
    ("2026-02-13T10:00:00Z", "feed-updated", "2026-02-12T17:45:00+01:00", "json-ld", "2026-02-12T16:45:00Z", "json-ld"),
    ("2026-02-12T10:00:00Z", "feed-updated", "2026-02-13", "meta", "2026-02-12T10:00:00Z", "feed-updated"),
    ("2026-03-20T10:00:00Z", "feed", "2026-02-12", "htmldate", "2026-02-12T00:00:00Z", "htmldate"),  # feed's: future
    (None, None, "1990-05-01", "htmldate", None, None),  # before 1995: no date rather than a wrong one
])
def test_the_record_takes_the_feed_or_the_page_date(feed, feed_from, page, page_from, published, published_from):
    extracted = Extracted(text="t", method="trafilatura", date=page, date_source=page_from)
    updated = apply_extraction(_article(feed, feed_from), extracted, now=NOW)
    assert (updated.published, updated.published_from) == (published, published_from)


def test_headline_without_the_site_name():
    page = extract_html(_page('<meta property="og:site_name" content="Harbour News">'
                              '<meta property="og:title" content="Council votes on the new quay | Harbour News">')
                        .replace("<h1>A headline of words</h1>", ""))
    assert page.title == "Council votes on the new quay"


def test_chrome_lines_go_the_story_stays():
    text = ("The council met on Monday.\nLesen Sie auch: Der Hafen wird größer\nRead more: Another story\n"
            "Follow us on Facebook, Twitter and Instagram\nSign up for our newsletter\nUpdated 12/02/2026 10:00\n"
            "© 2026 Harbour News\nThe newsletter the council sends to residents each month will now also be printed "
            "and delivered to every household in the harbour district, the mayor said after the vote.")
    assert strip_chrome_lines(text).split("\n") == [
        "The council met on Monday.", text.split("\n")[-1]]


def test_utf8_bytes_under_a_legacy_meta_charset_are_read_as_utf8():
    text, encoding, warnings = decode_html("<meta charset='iso-8859-1'><p>für sanción</p>".encode())
    assert ("für sanción" in text, encoding) == (True, "utf-8")
    assert warnings == ["declared iso-8859-1 but the bytes are UTF-8"]


def test_tables_of_the_story_are_kept():
    html, _, _ = decode_html(demo_page(EURONEWS_SLUG))
    table = ("<table><tr><th>Pays</th><th>Aide annoncée</th></tr><tr><td>Norvège</td>"
             "<td>1,2 milliard de couronnes</td></tr></table>")
    html = html.replace("<h2>Arctic Sentry</h2>", table + "<h2>Arctic Sentry</h2>")
    assert "1,2 milliard de couronnes" in extract_html(html, URL).text
