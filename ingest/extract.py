"""Article pages to text and metadata: charset decoding, trafilatura, the page chrome it lets through
removed, and the publisher's JSON-LD text when it agrees or trafilatura finds too little.

``extract_html`` is a pure function. ``Extractor`` runs it in recycled worker
processes with a time limit, because a pathological page can make lxml or
trafilatura run for minutes, and only a process can be stopped mid-parse.
"""

from __future__ import annotations

import codecs
import re
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import charset_normalizer
import trafilatura
from pebble import ProcessExpired, ProcessPool
from trafilatura.utils import load_html

from ingest.metadata import read_metadata
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
    date_source: str | None = None  # which of the page's signals gave ``date`` (ingest.metadata)
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
        if encoding and encoding != "utf-8" and not content.isascii():
            # Pages re-saved by a CMS or a proxy keep a legacy <meta charset> over UTF-8 bytes; text in
            # a legacy encoding is almost never valid UTF-8 by chance, so valid UTF-8 is taken as such.
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                return text, "utf-8", [f"declared {match.group(1).decode('ascii', 'replace')} but the bytes are UTF-8"]
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


# -- page chrome the extractor lets through ----------------------------------------------

# Lines that introduce another story ("Lesen Sie auch:", "Lea también:", "Read more:").
_READ_MORE = re.compile(
    r"^\W*(?:lea (?:también|más)|le puede interesar|te puede interesar|puede interesarte|ver también|lee también|"
    r"auch lesen|lesen sie auch|lesen sie mehr|mehr zum thema|mehr themen|weitere beiträge|weiterlesen|"
    r"das könnte sie auch interessieren|read more|read also|also read|see also|related(?: articles?| stories)?|"
    r"more on this|recommended|à lire aussi|lire aussi|à découvrir également|voir aussi|leggi anche|leggi pure|"
    r"veja também|leia também|lees ook|les også|läs också)\b\s*[:.\-–]", re.I)
_SOCIAL = re.compile(r"\b(?:facebook|twitter|instagram|telegram|whatsapp|linkedin|youtube|tiktok|pinterest)\b", re.I)
_CALL_TO_ACTION = re.compile(r"\b(?:newsletter|subscribe|sign up|abonnieren|anmelden|abonnez|inscri|suscr[ií]b|"
                             r"iscriviti|assine)\w*", re.I)
_STAMP = re.compile(r"^\W*(?:aktualisiert|letzte änderung|zuletzt aktualisiert|stand|updated|last updated|published|"
                    r"posted|mis à jour|publié|actualizado|publicado|aggiornato|pubblicato)\b[^.]{0,40}\d", re.I)
_COPYRIGHT = re.compile(r"^\W*(?:©|\(c\)|copyright\b)", re.I)


def _chrome_line(line: str) -> bool:
    words = len(line.split())
    return bool(_READ_MORE.match(line)
                or (words <= 25 and (len(_SOCIAL.findall(line)) >= 2 or _CALL_TO_ACTION.search(line)))
                or (words <= 10 and _STAMP.match(line))
                or (words <= 30 and _COPYRIGHT.match(line)))


def strip_chrome_lines(text: str) -> str:
    """The text without lines that are page chrome in any layout: links to other stories, share and
    newsletter calls, publication stamps, copyright notices. Short lines only, so a paragraph of the
    story that mentions a newsletter stays; a text made only of such lines is returned as it is."""
    kept = [line for line in text.split("\n") if not _chrome_line(line.strip())]
    return "\n".join(kept) if kept else text


# -- text and metadata -------------------------------------------------------

def extract_html(html: str, url: str | None = None, fallback_below: int = 200, min_text: int = 50) -> Extracted:
    """Main text and metadata (``ingest.metadata``) of an article page.

    A result shorter than ``fallback_below`` characters falls back to the page's JSON-LD
    ``articleBody``; a final text shorter than ``min_text`` is no article at all.
    """
    tree = load_html(html)
    if tree is None:
        raise ExtractionError(f"{url or 'page'}: not an HTML document")
    meta = read_metadata(tree, html, url)
    # trafilatura's balanced mode (its main extractor checked against readability and jusText) with
    # tables: on both development sets it beats favor_precision, favor_recall and voting between the
    # three passes (bench/quality.py); comments are left out, as are the chrome lines it lets through.
    doc = trafilatura.bare_extraction(tree, url=url, include_comments=False, include_tables=True)
    text = strip_chrome_lines(doc.text or "").strip() if doc else ""
    method = "trafilatura"
    body = meta.article_body
    # The publisher's own text when trafilatura found too little, or when trafilatura's last resort
    # read it from the JSON-LD too (then it keeps its paragraph breaks, and the method says so).
    if body and ((len(text) < fallback_below and len(body) > len(text)) or body.split() == text.split()):
        text, method = body, "json-ld"
    if len(text) < min_text:
        raise ExtractionError(f"{url or 'page'}: no extractable text ({len(text)} characters)")
    return Extracted(text=text, method=method, title=meta.title, authors=meta.authors, date=meta.date,
                     date_source=meta.date_source, sitename=meta.sitename, canonical_url=meta.canonical_url)


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
