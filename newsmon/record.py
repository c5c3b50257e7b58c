"""The article record: the one versioned, JSON-serialisable shape that flows between stages.

Each stage reads a record and returns an updated copy. Fields a newer version of
newsmon adds are kept in ``extra`` and written back out, so an older stage in a
mixed deployment never drops them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from newsmon.dates import utc_now
from newsmon.errors import RecordError

SCHEMA_VERSION = 1


def article_id(canonical_url: str) -> str:
    """Stable id: the same canonical URL gives the same id on every machine and run."""
    return hashlib.sha256(canonical_url.encode("utf-8")).hexdigest()[:32]


@dataclass
class TagHit:
    """One topic found in an article: which terms matched, how often and where (in ``text``)."""

    topic: str
    terms: dict[str, int]
    positions: list[tuple[int, int]]

    @property
    def count(self) -> int:
        return sum(self.terms.values())


@dataclass
class Article:
    id: str
    url: str  # as the feed gave it
    canonical_url: str  # normalised form of url; the id is derived from it
    feed_url: str
    source: str = ""  # site name
    title: str = ""
    authors: list[str] = field(default_factory=list)
    published: str | None = None
    published_from: str | None = None  # what gave ``published``: feed, feed-updated, json-ld, meta, url or htmldate
    discovered: str | None = None
    fetched: str | None = None
    final_url: str | None = None  # after redirects
    page_canonical_url: str | None = None  # the page's own <link rel=canonical>
    language_hint: str | None = None  # from the feed's configuration
    text: str = ""
    extraction_method: str | None = None
    language: str | None = None
    language_confidence: float | None = None
    tags: list[TagHit] = field(default_factory=list)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # fields from newer schema versions
    schema_version: int = SCHEMA_VERSION

    @property
    def tag_names(self) -> list[str]:
        return [hit.topic for hit in self.tags]

    def warn(self, stage: str, reason: str) -> None:
        self.warnings.append({"stage": stage, "at": utc_now(), "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in _FIELDS if f.name not in ("tags", "extra")}
        out["tags"] = [
            {"topic": h.topic, "terms": h.terms, "positions": [list(p) for p in h.positions]}
            for h in self.tags
        ]
        out.update(self.extra)
        return out

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Article:
        known = {f.name for f in _FIELDS}
        missing = [name for name in ("id", "url", "canonical_url", "feed_url") if not data.get(name)]
        if missing:
            raise RecordError(f"article record lacks required field(s): {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in known and k not in ("tags", "extra")}
        for name, value in kwargs.items():
            if not isinstance(value, _TYPES[name]):
                raise RecordError(f"article record field {name!r} has type {type(value).__name__}")
        try:
            kwargs["tags"] = [
                TagHit(h["topic"], dict(h["terms"]), [tuple(p) for p in h.get("positions", [])])
                for h in data.get("tags", [])
            ]
        except (KeyError, TypeError) as exc:
            raise RecordError(f"article record has malformed tags: {exc!r}") from exc
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise RecordError(f"article record does not fit the schema: {exc}") from exc

    @classmethod
    def from_json(cls, raw: bytes) -> Article:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordError(f"message is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise RecordError(f"message is JSON but not an object: {type(data).__name__}")
        return cls.from_dict(data)


_FIELDS = dataclasses.fields(Article)
_OPTIONAL_STR = (str, type(None))
_TYPES: dict[str, type | tuple[type, ...]] = {
    **{f.name: _OPTIONAL_STR for f in _FIELDS if f.type == "str | None"},
    **{f.name: str for f in _FIELDS if f.type == "str"},
    **{f.name: list for f in _FIELDS if f.type.startswith("list[")},
    "language_confidence": (int, float, type(None)),
    "schema_version": int,
}
