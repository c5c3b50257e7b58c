"""The API's request parameters and response shapes: they make the OpenAPI document, and the
tests check answers against it. Every input is validated here and refused with 422 naming the
parameter and the reason."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, StringConstraints

from newsmon.dates import to_iso
from newsmon.query import parse
from newsmon.search import Filters

Language = Annotated[str, StringConstraints(pattern=r"^([a-z]{2,3}(-[a-z]{2,4})?|und)$")]
Source = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class StoryMember(BaseModel):
    id: str
    url: str
    title: str
    source: str
    language: str | None
    published: str | None


class SearchHit(StoryMember):
    tags: list[str]
    snippet: str = Field(description="HTML: escaped text with <mark> around what matched")
    story: str
    duplicates: list[StoryMember] = Field(description="the same story under other URLs")


class Bucket(BaseModel):
    value: str
    count: int


class Day(BaseModel):
    day: str
    count: int


class SearchAnswer(BaseModel):
    total: int = Field(description="stories matched: near-duplicates count once")
    articles: int = Field(description="articles matched, copies included")
    page: int
    size: int
    hits: list[SearchHit]
    facets: dict[str, list[Bucket]] = Field(description="stories per language, source and tag")
    timeline: list[Day] = Field(description="stories per day of publication")


class SavedSearchIn(BaseModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    q: Annotated[str, StringConstraints(max_length=500)] = ""
    lang: list[Language] = Field(default=[], max_length=20)
    source: list[Source] = Field(default=[], max_length=20)
    tag: list[Tag] = Field(default=[], max_length=20)
    since: datetime | None = None
    until: datetime | None = None
    sort: Literal["relevance", "date"] | None = None


class SavedSearchOut(BaseModel):
    id: str
    name: str
    params: dict
    url: str = Field(description="the web page's address for this search, to share")
    created: str


class SavedSearchList(BaseModel):
    saved_searches: list[SavedSearchOut]


class AlertSnippet(BaseModel):
    cli: str
    yaml: str


class Problem(BaseModel):
    error: str


class Search:
    """The query and filters of a request, validated (shared by search, exports and alert snippets)."""

    def __init__(
        self,
        q: Annotated[str, Query(max_length=500, description='words, "phrases", a OR b, -excluded, prefix*')] = "",
        lang: Annotated[list[Language], Query(max_length=20, description="language code; repeatable")] = [],  # noqa: B006
        source: Annotated[list[Source], Query(max_length=20, description="source name; repeatable")] = [],  # noqa: B006
        tag: Annotated[list[Tag], Query(max_length=20, description="topic; repeatable")] = [],  # noqa: B006
        since: Annotated[datetime | None, Query(description="published at or after (date or date-time)")] = None,
        until: Annotated[datetime | None, Query(description="published before (date or date-time)")] = None,
        sort: Annotated[Literal["relevance", "date"] | None, Query(description="default: relevance with a query, "
                                                                                "else date")] = None,
    ):
        self.q = q
        self.filters = Filters(list(lang), list(source), list(tag), moment(since, "since"), moment(until, "until"))
        self.sort = sort or ("relevance" if not parse(q).empty else "date")
        self.key = (q, tuple(lang), tuple(source), tuple(tag), self.filters.since, self.filters.until, self.sort)


def moment(value: datetime | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        return to_iso(value)
    except (OverflowError, ValueError):
        raise RequestValidationError([{"loc": ("query", name), "msg": "date out of range", "type": "value_error",
                                       "input": str(value)}]) from None
