"""Feed documents to discovered-article records: RSS 0.9x/1.0/2.0, Atom, RDF and JSON Feed.

Parsing is pure and CPU-bound (the poller runs it in worker processes, ``ingest.poller``).
It never expands XML entities, reads at most ``poll.max_entries`` entries, and sees only
bytes the guarded fetcher fetched: feedparser never opens a URL itself. Well-formed XML is
read by fastfeedparser (~40x faster); anything else by feedparser, leniently, with its
diagnosis kept as a warning.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin

import fastfeedparser
import feedparser
from lxml import etree

from ingest.urls import canonicalize
from newsmon.dates import from_epoch, parse_iso, utc_now
from newsmon.errors import FeedParseError
from newsmon.record import Article, article_id
from newsmon.settings import Feed


@dataclass
class ParsedFeed:
    title: str
    articles: list[Article]
    skipped: list[str] = field(default_factory=list)  # one reason per entry that was left out
    warning: str | None = None


def _iso(parsed: time.struct_time | None) -> str | None:
    """feedparser's dates are UTC struct_times."""
    return from_epoch(calendar.timegm(parsed)) if parsed else None


def _json_feed(content: bytes) -> feedparser.FeedParserDict | None:
    """A JSON Feed (1.0/1.1, jsonfeed.org) in feedparser's shape, or None if the bytes are not one.

    feedparser 6 reads RSS, Atom and RDF only; this maps the fields parse_feed uses.
    """
    if not content.lstrip()[:1] == b"{":
        return None
    try:
        doc = json.loads(content)
    except (ValueError, RecursionError) as exc:
        raise FeedParseError(f"not a feed (JSON that does not parse: {exc})") from None
    if not isinstance(doc, dict) or not str(doc.get("version", "")).startswith("https://jsonfeed.org/version/"):
        raise FeedParseError("not a feed (JSON without a jsonfeed.org version)")
    entries = []
    for item in doc.get("items") or []:
        if not isinstance(item, dict):
            continue
        authors = item.get("authors") or ([item["author"]] if isinstance(item.get("author"), dict) else [])
        entry = feedparser.FeedParserDict(
            id=str(item.get("id", "")), title=str(item.get("title") or ""),
            link=str(item.get("url") or item.get("external_url") or ""),
            authors=[{"name": str(a["name"])} for a in authors if isinstance(a, dict) and a.get("name")],
        )
        for source, target in (("date_published", "published_parsed"), ("date_modified", "updated_parsed")):
            entry[target] = _utc_struct(item.get(source))
        entries.append(entry)
    return feedparser.FeedParserDict(version="json1", bozo=False, feed={"title": str(doc.get("title") or "")},
                                     entries=entries)


_DOCTYPE_SUBSET = re.compile(rb"<!DOCTYPE[^\[>]*\[(.*?)\]\s*>", re.DOTALL | re.IGNORECASE)
_ENTRY_END = re.compile(rb"</(?:[\w.-]+:)?(?:item|entry)\s*>")
_TAG = re.compile(rb"<(/?)([\w.:-]+)[^>]*?(/?)>")


def _refuse_entity_declarations(content: bytes) -> None:
    """Entity declarations in the DTD are how "billion laughs" and external-entity attacks start; no
    real feed needs them. expat 2.4+ stops the amplification itself, but feedparser then re-parses the
    document with its lenient parser, so the document is refused here, before either sees it."""
    head = content[: content.find(b"]>", 0, 1_000_000) + 2] if b"<!DOCTYPE" in content[:65536] else b""
    subset = _DOCTYPE_SUBSET.search(head)
    if subset and b"<!ENTITY" in subset.group(1).upper():
        raise FeedParseError("refused: the document declares XML entities (entity expansion is never done)")


def _first_entries(content: bytes, max_entries: int) -> tuple[bytes, int]:
    """The document cut after its ``max_entries``-th entry and closed again (the elements open before
    the first entry), so a feed of 100,000 entries costs the parser what ``max_entries`` do; and how
    many entries were left out."""
    ends = _ENTRY_END.finditer(content)
    last = None
    for _ in range(max_entries):
        if (last := next(ends, None)) is None:
            return content, 0
    rest = content[last.end():]
    left_out = len(_ENTRY_END.findall(rest))
    if not left_out:
        return content, 0
    first = re.search(rb"<(?:[\w.-]+:)?(?:item|entry)[\s>]", content)
    open_tags: list[bytes] = []
    for closing, name, empty in _TAG.findall(content[: first.start()] if first else b""):
        if empty:
            continue
        if closing:
            if name in open_tags:
                del open_tags[len(open_tags) - 1 - open_tags[::-1].index(name):]
        else:
            open_tags.append(name)
    return content[: last.end()] + b"".join(b"</" + name + b">" for name in reversed(open_tags)), left_out


# Well-formedness only: no DTD loaded, no entity resolved, nothing fetched, libxml2's size limits kept.
_STRICT_XML = etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False)


def read_well_formed(content: bytes) -> feedparser.FeedParserDict | None:
    """A well-formed RSS/Atom/RDF document read by fastfeedparser (lxml: ~0.2 ms for 20 entries, where
    feedparser takes ~7 ms), in feedparser's shape for the fields parse_feed uses; None for anything
    else, which feedparser then reads leniently and diagnoses (bozo)."""
    try:
        etree.fromstring(content, _STRICT_XML)
    except (etree.XMLSyntaxError, ValueError):
        return None
    try:
        # Always bytes: given a str that looks like a URL, fastfeedparser would fetch it itself.
        doc = fastfeedparser.parse(bytes(content), include_content=False, include_tags=False, include_media=False,
                                   include_enclosures=False)
    except ValueError:  # HTML, or XML that is not a feed
        return None
    entries = []
    for item in doc.entries:
        entry = feedparser.FeedParserDict(
            id=str(item.get("id") or ""), title=str(item.get("title") or ""), link=str(item.get("link") or ""),
            authors=[{"name": str(a["name"])} for a in item.get("authors") or [] if a.get("name")],
        )
        for source, target in (("published", "published_parsed"), ("updated", "updated_parsed")):
            entry[target] = _utc_struct(item.get(source))
        if item.get("updated") and item.get("published") == item["updated"]:
            entry["published_parsed"] = None  # fastfeedparser copies the update date where none is published
        entries.append(entry)
    return feedparser.FeedParserDict(version="xml", bozo=False, feed={"title": str(doc.feed.get("title") or "")},
                                     entries=entries)


def _utc_struct(iso: str | None) -> time.struct_time | None:
    try:
        return parse_iso(iso).utctimetuple() if iso else None
    except ValueError:
        return None  # unreadable: the entry simply has no date


def parse_feed(content: bytes, feed: Feed, final_url: str, content_type: str = "",
               max_entries: int = 1000) -> ParsedFeed:
    """Entries of a feed document (RSS 0.9x/1.0/2.0, Atom, JSON Feed) as discovered-article records (pure: no I/O).

    At most ``max_entries`` entries are read (the first ones: feeds list the newest first); the rest
    are left out with one reason in ``skipped``."""
    left_out = 0
    parsed = _json_feed(content)
    if parsed is None:
        _refuse_entity_declarations(content)
        content, left_out = _first_entries(content, max_entries)
        parsed = read_well_formed(content)
        # fastfeedparser reads no link from an Atom <id> or from a <link> element's text; feedparser does.
        if parsed is None or not all(entry.get("link") for entry in parsed.entries):
            parsed = feedparser.parse(content, response_headers={"content-type": content_type or "application/xml",
                                                                 "content-location": final_url})
    left_out += max(0, len(parsed.entries) - max_entries)
    del parsed.entries[max_entries:]
    if not parsed.version and not parsed.entries:
        detail = f": {parsed.bozo_exception}" if parsed.bozo else ""
        raise FeedParseError(f"not a feed (no RSS, Atom or RDF document found{detail})")
    now = utc_now()
    title = parsed.feed.get("title", "") or feed.name
    articles, skipped, batch = [], [], set()
    for position, entry in enumerate(parsed.entries):
        label = entry.get("title") or entry.get("id") or f"entry #{position + 1}"
        given = entry.get("link") or ""
        try:  # urljoin raises on a malformed host ("Invalid IPv6 URL"): that entry is left out, not the feed
            link = urljoin(final_url, given)
            canonical = canonicalize(link) if given and link.lower().startswith(("http://", "https://")) else None
        except ValueError as exc:
            skipped.append(f"{label!r}: unusable link {given!r} ({exc})")
            continue
        if canonical is None:
            skipped.append(f"{label!r}: entry has no http(s) link")
            continue
        if canonical in batch:
            continue
        batch.add(canonical)
        authors = [a.get("name", "") for a in entry.get("authors", []) if a.get("name")]
        articles.append(
            Article(
                id=article_id(canonical),
                url=link,
                canonical_url=canonical,
                feed_url=feed.url,
                source=title,
                title=entry.get("title", ""),
                authors=authors or ([entry["author"]] if entry.get("author") else []),
                published=_iso(entry.get("published_parsed") or entry.get("updated_parsed")),
                published_from="feed" if entry.get("published_parsed") else
                               "feed-updated" if entry.get("updated_parsed") else None,
                discovered=now,
                language_hint=feed.language,
            )
        )
    if left_out:
        skipped.append(f"{left_out} entries after the first {max_entries} (poll.max_entries)")
    problem = f"{type(parsed.bozo_exception).__name__}: {parsed.bozo_exception}" if parsed.bozo else ""
    if problem and not articles:
        raise FeedParseError(f"malformed feed with no usable entry ({problem})")
    warning = f"feed is not well-formed, parsed leniently ({problem})" if problem else None
    return ParsedFeed(title, articles, skipped, warning)
