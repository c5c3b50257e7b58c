"""OPML subscription lists (OPML 1.0, 1.1 and 2.0): the feeds a reader exports, for ``newsmon feeds import``.

An OPML file comes from elsewhere (another reader, a colleague, a download), so it is
parsed as untrusted input: with defusedxml, which refuses entity declarations (the
"billion laughs" expansion) and external entities or DTDs (local file reads, network
fetches) instead of processing them. Subscription lists need neither.

Only parsing happens here; whether a feed is valid or already configured is the
caller's business (the settings model decides, as for a hand-written feeds.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import fromstring


@dataclass(frozen=True)
class OpmlFeed:
    name: str  # the outline's title, else its text, else the URL's host
    url: str  # xmlUrl, whitespace stripped, otherwise as written (may be non-http: the caller rejects it)
    language: str | None = None  # the outline's language attribute, when it has one
    folder: str = ""  # enclosing outlines, "News / World": to name the outline in messages


def read_opml(data: bytes) -> list[OpmlFeed]:
    """The feeds (outlines with an ``xmlUrl``) of an OPML document, in document order, folders flattened.

    Raises ValueError naming the reason when ``data`` is not XML, not OPML, or declares
    entities or external references (refused, never expanded or fetched).
    """
    try:
        root = fromstring(data)
    except EntitiesForbidden as exc:
        if exc.sysid or exc.pubid:
            raise ValueError(f"refused: the file declares the external entity {exc.name!r} "
                             f"({exc.sysid or exc.pubid}); it is not read or fetched") from None
        raise ValueError(f"refused: the file declares the XML entity {exc.name!r}; OPML needs no entities, "
                         "and expanding them can exhaust memory (\"billion laughs\")") from None
    except (ExternalReferenceForbidden, DTDForbidden) as exc:
        raise ValueError(f"refused: the file refers to an external resource ({exc}); it is not fetched") from None
    except DefusedXmlException as exc:  # any other construct defusedxml refuses
        raise ValueError(f"refused: {exc}") from None
    except ParseError as exc:
        raise ValueError(f"not XML: {exc}") from None
    if _local(root.tag) != "opml":
        raise ValueError(f"not an OPML file: the root element is <{_local(root.tag)}>, expected <opml>")
    body = next((child for child in root if _local(child.tag) == "body"), None)
    if body is None:
        raise ValueError("not an OPML file: <opml> has no <body>")

    feeds: list[OpmlFeed] = []
    # Depth-first with an explicit stack: a hostile file may nest outlines deeper than Python's recursion limit.
    stack: list[tuple[Element, tuple[str, ...]]] = [(child, ()) for child in reversed(body)]
    while stack:
        element, folders = stack.pop()
        if _local(element.tag) != "outline":
            continue
        # OPML attribute names are camelCase (xmlUrl), but some exporters write them in lower case.
        attrs = {_local(key).lower(): value for key, value in element.attrib.items()}
        label = _clean(attrs.get("title", "")) or _clean(attrs.get("text", ""))
        if "xmlurl" in attrs:
            url = attrs["xmlurl"].strip()
            feeds.append(OpmlFeed(name=label or _host(url), url=url,
                                  language=_clean(attrs.get("language", "")) or None, folder=" / ".join(folders)))
        stack.extend((child, (*folders, label or "?")) for child in reversed(element))
    return feeds


def _local(name: str) -> str:
    """The name without its {namespace}: OPML has none, but a file may declare one anyway."""
    return name.rpartition("}")[2]


def _clean(text: str) -> str:
    return " ".join(text.split())  # titles exported with line breaks or runs of spaces


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or url
    except ValueError:  # e.g. a malformed IPv6 literal: the URL itself still names the feed
        return url
