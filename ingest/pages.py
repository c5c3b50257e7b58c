"""The fetch+extract stage: a discovered article record in, an article with text and metadata out."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from ingest.extract import Extracted, Extractor, decode_html
from ingest.http import HTML_TYPES, Fetcher
from ingest.metadata import clean_authors, parse_date, plausible
from ingest.robots import RobotsRules
from newsmon.dates import to_iso, utc_now
from newsmon.record import Article

log = logging.getLogger(__name__)


def _utc(value: str | None, latest: datetime) -> str | None:
    """A date as UTC ISO 8601, or None if unparseable or implausible (before 1995, after ``latest``)."""
    moment = parse_date(value)
    return to_iso(moment) if moment is not None and plausible(moment, latest) else None


def publication(article: Article, extracted: Extracted, latest: datetime) -> tuple[str | None, str | None]:
    """(published, what gave it): the feed's publication date, else the page's (JSON-LD, meta tags,
    URL, htmldate), else the feed's update date. The page's date goes before a feed's update date, as
    the original publication goes before a modification, unless the page's is the later one."""
    feed_date = _utc(article.published, latest)
    page_date = _utc(extracted.date, latest)
    if feed_date and article.published_from != "feed-updated":
        return feed_date, article.published_from or "feed"
    if page_date and (not feed_date or page_date <= feed_date):
        return page_date, extracted.date_source
    return (feed_date, article.published_from) if feed_date else (None, None)


def apply_extraction(article: Article, extracted: Extracted, now: datetime | None = None) -> Article:
    """Merge what the page says into the record; the feed's own title and authors win, the date is
    chosen by ``publication`` (no date more than a day after ``now``)."""
    latest = (now or datetime.now(timezone.utc)) + timedelta(days=1)
    published, published_from = publication(article, extracted, latest)
    updated = replace(
        article,
        text=extracted.text,
        extraction_method=extracted.method,
        title=article.title or extracted.title,
        authors=clean_authors(article.authors) or extracted.authors,
        published=published,
        published_from=published_from,
        source=extracted.sitename or article.source,
        page_canonical_url=extracted.canonical_url,
        warnings=list(article.warnings),
    )
    for warning in extracted.warnings:
        log.warning("%s: %s", article.url, warning)
        updated.warn("extract", warning)
    return updated


def fetch_and_extract(article: Article, fetcher: Fetcher, extractor: Extractor, retries: int = 2,
                      robots: RobotsRules | None = None) -> Article:
    if robots is not None:
        robots.check(article.url)
    response = fetcher.get(article.url, accept_types=HTML_TYPES, retries=retries)
    html, _, warnings = decode_html(response.content, response.charset)
    extracted = extractor(html, response.final_url)
    extracted.warnings = warnings + extracted.warnings
    updated = apply_extraction(article, extracted)
    updated.final_url = response.final_url
    updated.fetched = utc_now()
    return updated
