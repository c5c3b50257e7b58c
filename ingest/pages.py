"""The fetch+extract stage: a discovered article record in, an article with text and metadata out."""

from __future__ import annotations

import logging
from dataclasses import replace

from ingest.extract import Extracted, Extractor, decode_html
from ingest.http import HTML_TYPES, Fetcher
from ingest.robots import RobotsRules
from newsmon.dates import normalise_iso, utc_now
from newsmon.record import Article

log = logging.getLogger(__name__)


def apply_extraction(article: Article, extracted: Extracted) -> Article:
    """Merge what the page says into the record; the feed's own title, authors and date win."""
    updated = replace(
        article,
        text=extracted.text,
        extraction_method=extracted.method,
        title=article.title or extracted.title,
        authors=article.authors or extracted.authors,
        published=article.published or normalise_iso(extracted.date),
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
