"""Article pages to text and metadata: charset decoding, trafilatura, and a JSON-LD fallback.

``extract_html`` is a pure function. ``Extractor`` runs it in recycled worker
processes with a time limit, because a pathological page can make lxml or
trafilatura run for minutes, and only a process can be stopped mid-parse.
"""

from __future__ import annotations

import codecs
import json
import re
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import charset_normalizer
import trafilatura
from pebble import ProcessExpired, ProcessPool

from newsmon.errors import ExtractionError
from newsmon.runner import worker_context
from newsmon.settings import ExtractSettings


@dataclass
class Extracted:
    text: str
    method: str  # "trafilatura" or "json-ld": which one produced ``text``
    title: str = ""
    authors: list[str] = field(default_factory=list)
    date: str | None = None  # ISO 8601 as the page states it
    sitename: str = ""
    canonical_url: str | None = None
    warnings: list[str] = field(default_factory=list)


# -- bytes to text -----------------------------------------------------------

_META_CHARSET = re.compile(
    rb"""<meta[^>]+?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE
)
# WHATWG encoding standard: pages labelled latin-1 or ascii are decoded as windows-1252.
_WHATWG_ALIASES = {"iso8859-1": "cp1252", "latin-1": "cp1252", "ascii": "cp1252"}
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def _codec(label: str | bytes | None) -> str | None:
    if not label:
        return None
    if isinstance(label, bytes):
        label = label.decode("ascii", "ignore")
    try:
        name = codecs.lookup(label.strip()).name
    except LookupError:
        return None
    return _WHATWG_ALIASES.get(name, name)


def decode_html(content: bytes, header_charset: str | None = None) -> tuple[str, str, list[str]]:
    """Decode page bytes: BOM, then the HTTP header charset, then ``<meta charset>``, then detection.

    Returns (text, encoding used, warnings). Invalid byte sequences are replaced, not fatal.
    """
    warnings = []
    encoding = None
    for bom, name in _BOMS:
        if content.startswith(bom):
            content, encoding = content[len(bom) :], name
            break
    encoding = encoding or _codec(header_charset)
    if not encoding:
        match = _META_CHARSET.search(content[:4096])
        encoding = _codec(match.group(1)) if match else None
    if not encoding:
        best = charset_normalizer.from_bytes(content[:65536]).best()
        encoding = _codec(best.encoding) if best else None
        encoding = encoding or "utf-8"
        warnings.append(f"no charset declared; detected {encoding}")
    try:
        return content.decode(encoding), encoding, warnings
    except UnicodeDecodeError as exc:
        warnings.append(f"invalid {encoding} byte sequence at offset {exc.start}; replaced")
        return content.decode(encoding, errors="replace"), encoding, warnings


# -- text and metadata -------------------------------------------------------

_JSON_LD = re.compile(r"""<script[^>]+type\s*=\s*["']application/ld\+json["'][^>]*>(.*?)</script>""", re.I | re.S)


def _json_ld_objects(html: str):
    for block in _JSON_LD.findall(html):
        try:
            data = json.loads(block)
        except json.JSONDecodeError:
            continue
        stack = [data]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, dict):
                yield item
                if isinstance(item.get("@graph"), list):
                    stack.extend(item["@graph"])


def json_ld_article(html: str) -> dict:
    """The first schema.org object on the page that carries an ``articleBody``, or {}."""
    return next((o for o in _json_ld_objects(html) if isinstance(o.get("articleBody"), str)), {})


def _authors(value: str | None) -> list[str]:
    return [a.strip() for a in (value or "").split(";") if a.strip()]


def extract_html(html: str, url: str | None = None, fallback_below: int = 200, min_text: int = 50) -> Extracted:
    """Main text and metadata of an article page, favouring precision (page chrome stays out).

    A result shorter than ``fallback_below`` characters falls back to the page's JSON-LD
    ``articleBody``; a final text shorter than ``min_text`` is no article at all.
    """
    doc = trafilatura.bare_extraction(
        html,
        url=url,
        favor_precision=True,
        with_metadata=True,
        include_comments=False,
        include_tables=False,
        date_extraction_params={"extensive_search": False, "original_date": True},
    )
    text = (doc.text or "").strip() if doc else ""
    method = "trafilatura"
    if len(text) < fallback_below:
        body = re.sub(r"\s*\n\s*\n\s*", "\n", str(json_ld_article(html).get("articleBody", ""))).strip()
        if len(body) > len(text):
            text, method = body, "json-ld"
    if len(text) < min_text:
        raise ExtractionError(f"{url or 'page'}: no extractable text ({len(text)} characters)")
    if doc is None:
        return Extracted(text=text, method=method)
    return Extracted(
        text=text,
        method=method,
        title=doc.title or "",
        authors=_authors(doc.author),
        date=doc.date,
        sitename=doc.sitename or "",
        canonical_url=doc.url,
    )


class Extractor:
    """Runs ``extract_html`` with a time limit in worker processes that are replaced every N pages."""

    def __init__(self, settings: ExtractSettings):
        self.settings = settings
        self._pool = None
        if settings.workers:
            self._pool = ProcessPool(
                max_workers=settings.workers, max_tasks=settings.max_tasks_per_worker, context=worker_context()
            )

    def __call__(self, html: str, url: str | None = None) -> Extracted:
        args = (html, url, self.settings.fallback_below_chars, self.settings.min_text_chars)
        if self._pool is None:
            return extract_html(*args)
        future = self._pool.schedule(extract_html, args=args, timeout=self.settings.timeout)
        try:
            return future.result()
        except FutureTimeout:
            raise ExtractionError(
                f"{url or 'page'}: extraction took longer than {self.settings.timeout:g} s and was stopped"
            ) from None
        except ProcessExpired as exc:
            raise ExtractionError(f"{url or 'page'}: extraction worker died ({exc})") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool.join()
