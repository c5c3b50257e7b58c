"""An article page's title, authors, publication date and site, read from what the publisher declares.

The publisher's structured data (schema.org JSON-LD, then ``<meta>`` tags, then a date in the
URL) is read first: it names the article's headline, authors and first publication as the
newsroom's system holds them, where the page's visible chrome mixes them with labels, dates and
other stories. What a page does not declare comes from its visible byline (trafilatura's byline
rules) and from htmldate's extensive search. trafilatura's own metadata pass is not used: it costs
about as much as the text extraction and rewrites names ("dpa" becomes "Dpa", "ndr.de" "NDR de").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from html import unescape
from urllib.parse import urljoin

import htmldate
from lxml.html import HtmlElement

from newsmon.dates import parse_iso

# -- JSON-LD -------------------------------------------------------------------------------

_JSON_LD = re.compile(r"""<script[^>]+type\s*=\s*["']application/ld\+json["'][^>]*>(.*?)</script>""", re.I | re.S)
# schema.org types of the page's own story (NewsArticle, ReportageNewsArticle, BlogPosting, ...).
_ARTICLE_TYPE = re.compile(r"Article|Posting|Report|Story", re.I)


def json_ld_objects(html: str):
    """Every JSON object of the page's JSON-LD blocks, ``@graph`` members included."""
    for block in _JSON_LD.findall(html):
        try:
            data = json.loads(block)
        except (json.JSONDecodeError, RecursionError):
            continue
        stack = [data]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(reversed(item))
            elif isinstance(item, dict):
                yield item
                if isinstance(item.get("@graph"), list):
                    stack.extend(reversed(item["@graph"]))


def _is_article(obj: dict) -> bool:
    kinds = obj.get("@type")
    return any(isinstance(k, str) and _ARTICLE_TYPE.search(k) for k in (kinds if isinstance(kinds, list) else [kinds]))


def json_ld_article(html: str) -> dict:
    """The page's story as JSON-LD: the first article-typed object, else the first with an
    ``articleBody``, else {}."""
    objects = list(json_ld_objects(html))
    return (next((o for o in objects if _is_article(o)), None)
            or next((o for o in objects if isinstance(o.get("articleBody"), str)), {}))


def _names(value) -> list[str]:
    """Names in a schema.org author value: a string, a Person/Organization, or a list of them."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        name = value.get("name")
        if not name and value.get("givenName"):
            name = " ".join(str(value[k]) for k in ("givenName", "familyName") if value.get(k))
        return _names(name) if name else []
    if isinstance(value, list):
        return [n for item in value for n in _names(item)]
    return []


# -- authors -------------------------------------------------------------------------------

# Words that introduce a byline, in the languages newsmon meets most ("By", "Par", "Von", ...).
_BYLINE_WORD = re.compile(
    r"^(?:(?:written|words|reporting|text|texte|texto|testo|tekst|foto|fotos|photos?|bilder?|video)\s+)?"
    r"(?:by|from|par|von|di|por|door|av|af|przez|autor(?:in)?|author|auteur|autore|auteurs?|"
    r"text|texte|texto|tekst|redakcja|written\s+by)\b\s*[:.]?\s*", re.I)
# Labels that follow a byline's name: publication and update stamps.
_LABEL = re.compile(
    r"\b(?:mis\s+à\s+jour|publié|updated?|last\s+updated|published|posted|aktualisiert|veröffentlicht|"
    r"stand|actualizado|actualización|publicado|atualizado|aggiornat[oa]|pubblicato|bijgewerkt|"
    r"gepubliceerd|oppdatert|publisert|uppdaterad|publicerad|opdateret|udgivet|zaktualizowano|"
    r"opublikowano|aktualizováno|publikováno)\b.*$", re.I | re.S)
_DATE_OR_TIME = re.compile(r"\d{1,4}[./-]\d{1,2}(?:[./-]\d{1,4})?|\b\d{1,2}[:h]\d{2}\b|\b(?:GMT|UTC|CET|CEST)\S*", re.I)
_CONTACT = re.compile(r"\S+@\S+|https?://\S+|www\.\S+|\B@\w+")
_EMAIL_NAME = re.compile(r"\S+@\S+\s*\(([^)]+)\)")  # RSS's "ana@example.org (Ana Berg)"
_ASIDE = re.compile(r"\([^)]*(?:\)|$)")  # initials or a place after a name: "Anna Berg (abe)"
_SPLIT = re.compile(r"\s*(?:[;,|•·]|\s/\s|\s(?:and|&|und|et|y|e|og|och|en|i|ve|и)\s)\s*", re.I)
# Job titles a byline appends to a name ("Anna Berg / Journalist").
_ROLE = re.compile(r"^(?:journalist(?:in)?|reporter(?:in)?|redakteur(?:in)?|korrespondent(?:in)?|correspondent|"
                   r"editor|staff(?: writer)?|redaktion|rédaction|redacción|redazione|photographer|fotograf(?:in)?)$",
                   re.I)
_MAX_NAME_WORDS = 5  # a longer part is a description ("professor at the faculty of ..."), not a name
_META_AUTHOR = ("author", "article:author", "byl", "dc.creator", "parsely-author", "sailthru.author",
                "cxenseparse:author")


def _key(name: str) -> str:
    return re.sub(r"[\W_]+", "", name.casefold())


def clean_authors(raw: list[str]) -> list[str]:
    """Names only: byline words, labels and dates stripped, lists split, e-mail addresses and URLs
    dropped; an agency or the outlet named as the author stays. Spelling and case are kept."""
    names: list[str] = []
    for value in raw:
        text = _EMAIL_NAME.sub(r"\1", " ".join(str(value).split()))
        text = _ASIDE.sub(" ", _CONTACT.sub(" ", _LABEL.sub("", text)))
        for part in _SPLIT.split(_DATE_OR_TIME.sub(" ", text)):
            part = part.strip(" \t-–—:()[]\"'")
            while (stripped := _BYLINE_WORD.sub("", part, count=1)) != part:
                part = stripped.strip(" \t-–—:")
            part = " ".join(part.split())
            if (not part or _ROLE.match(part) or len(part.split()) > _MAX_NAME_WORDS
                    or not any(ch.isalpha() for ch in part)):
                continue
            if _key(part) not in {_key(n) for n in names}:  # "Sophie Foster" and its slug "sophie-foster"
                names.append(part)
    return names


# -- dates ---------------------------------------------------------------------------------

EARLIEST = datetime(1995, 1, 1, tzinfo=timezone.utc)  # no news site published before this
_META_PUBLISHED = (
    "article:published_time", "og:published_time", "og:article:published_time", "datepublished",
    "article.published", "publishdate", "publish-date", "publish_date", "pubdate", "published-date",
    "parsely-pub-date", "sailthru.date", "dc.date.issued", "dcterms.issued", "dcterms.created", "dc.date",
    "cxenseparse:recs:publishtime", "rnews:datepublished", "date",
)
_URL_DATE = re.compile(r"/((?:19|20)\d{2})[/-](0?[1-9]|1[0-2])[/-](0?[1-9]|[12]\d|3[01])(?=[/_.-]|$)")
_ISO_DAY = re.compile(r"^\s*(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})")


def parse_date(value: str | None) -> datetime | None:
    """A date as the page states it (its own offset kept; UTC when it gives none), or None."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        return parse_iso(value)
    except ValueError:
        pass
    if match := _ISO_DAY.match(value):
        try:
            return datetime(*map(int, match.groups()), tzinfo=timezone.utc)
        except ValueError:
            return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None


def plausible(moment: datetime, latest: datetime) -> bool:
    """Not before 1995, not after ``latest`` (the fetch, plus a day for time zones)."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return EARLIEST <= aware <= latest


# -- bylines -------------------------------------------------------------------------------

# The byline rules of trafilatura's AUTHOR_XPATHS, most specific first, applied in one pass over the
# page: those XPaths match with EXSLT regular expressions, which call back into Python for each
# element (three scans, ~11 ms a page, for half the pages). Nor is the page copied to prune
# comments, figures and dates out of it, as trafilatura's extract_author does: a candidate inside
# such a part is passed over instead, and clean_authors strips dates.
_MAYBE_BYLINE = re.compile(r"uthor|yl|BBL|name|writer|zuozhe|bianji|xiaobian|-by")
_SPECIFIC_CLASS = re.compile(r"author-?name|AuthorName|authorName")
_GENERIC_ID = re.compile(r"author|zuozhe|bianji|xiaobian")
_GENERIC_CLASS = re.compile(r"author|channel-name|zuozhe|bianji|xiaobian|submitted-by|posted-by|journalist-name")
_ANY_ID = re.compile(r"[Aa]uthor")
_ANY_CLASS = re.compile(r"[Aa]uthor|screenname|writer|[Bb]yline")


def _byline_rank(elem: HtmlElement) -> int | None:
    """0, 1 or 2 for trafilatura's specific, generic and last-resort byline rules; None for no byline."""
    cls, ident, rel = elem.get("class") or "", elem.get("id") or "", elem.get("rel")
    itemprop, testid, component = elem.get("itemprop") or "", elem.get("data-testid"), elem.get("data-component") or ""
    if elem.tag == "author":
        return 0
    if not (_MAYBE_BYLINE.search(cls) or _MAYBE_BYLINE.search(ident) or rel in ("author", "me")
            or "author" in itemprop or testid or "Byline" in component):
        return None
    tag = elem.tag
    if tag in ("a", "address", "div", "link", "p", "span", "strong") and (
            rel in ("author", "me") or ident == "author" or cls == "author" or itemprop == "author name"
            or testid in ("AuthorCard", "AuthorURL") or _SPECIFIC_CLASS.search(cls)):
        return 0
    if tag in ("a", "div", "h3", "h4", "p", "span") and (
            cls in ("byline", "username", "byl", "BBL") or "author" in itemprop or _GENERIC_ID.search(ident)
            or _GENERIC_CLASS.search(cls)):
        return 1
    if "Byline" in component or "author" in itemprop or _ANY_ID.search(ident) or _ANY_CLASS.search(cls):
        return 2
    return None


_NOT_BYLINE_CLASS = re.compile(r"^[Cc]omments|commentlist|comments-list|sidebar|is-hidden|quote|embedly-instagram|"
                               r"article-(?:share|support)|print|category|meta-date|meta-reviewer")
_NOT_BYLINE_ID = re.compile(r"^comments|comment-?list|ProductReviews")
_NOT_BYLINE_TAGS = {"time", "figure"}


def _outside_byline(elem: HtmlElement) -> bool:
    if elem.tag in _NOT_BYLINE_TAGS:
        return True
    if elem.tag not in ("a", "div", "section", "span"):  # the elements trafilatura prunes by class and id
        return False
    cls, ident = elem.get("class") or "", elem.get("id") or ""
    return (cls in ("comments", "title", "date") or ident == "comments"
            or bool(_NOT_BYLINE_CLASS.search(cls)) or bool(_NOT_BYLINE_ID.search(ident))
            or "Figure" in (elem.get("data-component") or ""))


def _byline_text(elem: HtmlElement) -> str:
    parts = [elem.text or ""]
    for child in elem:
        if isinstance(child.tag, str) and child.tag not in _NOT_BYLINE_TAGS:
            parts.append(_byline_text(child))
        parts.append(child.tail or "")
    return " ".join(parts)


def _byline(tree: HtmlElement) -> list[str]:
    """The authors a visible byline names, for pages that declare none."""
    ranked: list[tuple[int, HtmlElement]] = []
    for elem in tree.iter():
        if isinstance(elem.tag, str) and (rank := _byline_rank(elem)) is not None:
            ranked.append((rank, elem))
    ranked.sort(key=lambda pair: pair[0])  # stable: page order within a rank
    for _, elem in ranked:
        if any(_outside_byline(e) for e in (elem, *elem.iterancestors())):
            continue
        text = " ".join(_byline_text(elem).split())
        if 2 < len(text) < 120 and (names := clean_authors([text])):
            return names
    return []


# -- the whole ---------------------------------------------------------------------------

@dataclass
class Metadata:
    title: str = ""
    authors: list[str] = field(default_factory=list)
    date: str | None = None  # ISO 8601 as the page states it (its offset kept)
    date_source: str | None = None  # "json-ld", "meta", "url" or "htmldate"
    sitename: str = ""
    canonical_url: str | None = None
    article_body: str = ""  # the JSON-LD articleBody, one paragraph a line


def _meta_tags(tree: HtmlElement) -> dict[str, str]:
    """The first content of each <meta name|property|itemprop>, by lower-cased key."""
    tags: dict[str, str] = {}
    for meta in tree.iter("meta"):
        content = (meta.get("content") or "").strip()
        if not content:
            continue
        for attr in ("property", "name", "itemprop"):
            key = (meta.get(attr) or "").strip().lower()
            if key:
                tags.setdefault(key, content)
    return tags


def _text(value) -> str:
    return " ".join(value.split()) if isinstance(value, str) else ""


_MIN_HEADLINE_WORDS = 3  # fewer: a logo or a section name in an <h1>
_TITLE_SEPARATOR = re.compile(r"\s+[|–—\-·:]\s+|\s*[｜：]\s*")


def _title(article: dict, tags: dict[str, str], tree: HtmlElement, sitename: str) -> str:
    """The headline as the reader sees it: an <h1> the declared title contains (that one often carries
    a kicker or the site's name too), else the declared title without the site's name, else an <h1>."""
    page_title = _text(tree.findtext(".//title") or "")
    declared = (_text(article.get("headline")) or _text(tags.get("og:title")) or _text(tags.get("twitter:title"))
                or page_title)
    declared = _text(unescape(declared))  # some sites escape their JSON-LD twice ("&quot;")
    for h1 in tree.iter("h1"):
        heading = " ".join(h1.text_content().split())
        if heading and (not declared or len(heading.split()) >= _MIN_HEADLINE_WORDS
                        and (heading in declared or heading in page_title)):
            return heading
    parts = _TITLE_SEPARATOR.split(declared)
    if len(parts) > 1 and sitename and parts[-1].casefold().replace(" ", "") in sitename.casefold().replace(" ", ""):
        return declared[: declared.rfind(parts[-1])].rstrip(" |–—-·:｜：")
    return declared


def read_metadata(tree: HtmlElement, html: str, url: str | None) -> Metadata:
    """Title, authors, date (with where it came from), site name and canonical URL of a page."""
    article = json_ld_article(html)
    tags = _meta_tags(tree)
    publisher = article.get("publisher")
    sitename = (_text(tags.get("og:site_name")) or (_text(publisher.get("name")) if isinstance(publisher, dict) else "")
                or _text(tags.get("application-name")))
    meta = Metadata(sitename=sitename, title=_title(article, tags, tree, sitename))
    if isinstance(body := article.get("articleBody"), str):
        meta.article_body = re.sub(r"\s*\n\s*\n\s*", "\n", body).strip()
    canonical = tree.find(".//link[@rel='canonical']")
    link = (canonical.get("href") if canonical is not None else None) or tags.get("og:url")
    meta.canonical_url = urljoin(url, link.strip()) if url and link else link

    meta.authors = (clean_authors(_names(article.get("author")))
                    or clean_authors([v for k in _META_AUTHOR if (v := tags.get(k))])
                    or _byline(tree))

    latest = datetime.now(timezone.utc) + timedelta(days=1)  # the page was fetched just now
    candidates = [("json-ld", article.get("datePublished")), ("json-ld", article.get("dateCreated")),
                  *(("meta", tags.get(k)) for k in _META_PUBLISHED)]
    if url and (match := _URL_DATE.search(url)):
        candidates.append(("url", "-".join(match.groups())))
    for source, value in candidates:
        moment = parse_date(value) if isinstance(value, str) else None
        if moment is not None and plausible(moment, latest):
            meta.date = moment.isoformat() if source != "url" else moment.date().isoformat()
            meta.date_source = source
            break
    if not meta.date:  # nothing declared: htmldate's search of the whole page (original date first)
        found = htmldate.find_date(tree, url=url, extensive_search=True, original_date=True,
                                   min_date=EARLIEST.date().isoformat(), max_date=latest.date().isoformat())
        if found and (moment := parse_date(found)) and plausible(moment, latest):
            meta.date, meta.date_source = found, "htmldate"
    return meta
