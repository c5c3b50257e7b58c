"""The analysts' HTTP API and web page (``newsmon serve``), over whichever search index is configured.

Read-only on the articles: search with filters, facets and a per-day timeline (near-duplicates
grouped, counted once), one article in full, exports of a whole query streamed as CSV or NDJSON
with constant memory, saved searches, and the alert subscription a search would make. Every
input is validated here and refused with 422 naming the parameter and the reason; the query
syntax itself never fails (``newsmon/query.py``). With ``NEWSMON_API_TOKEN`` set, every route
needs it (but ``/healthz``), as ``Authorization: Bearer`` or as the cookie ``/login`` sets for browsers.
"""

from __future__ import annotations

import csv
import hmac
import html
import io
import json
import os
import shlex
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlencode

import yaml
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from newsmon import __version__
from newsmon.dates import to_iso
from newsmon.errors import ConfigError, SinkUnavailable
from newsmon.pipeline import open_alerts, open_index
from newsmon.query import parse
from newsmon.saved import SavedSearches, SearchParams
from newsmon.search import Filters, Hit
from newsmon.settings import Settings

WEB = Path(__file__).resolve().parent / "web"
TOKEN_ENV = "NEWSMON_API_TOKEN"
COOKIE = "newsmon_token"
MAX_WINDOW = 10_000  # page * size: deeper than this, export the query instead
EXPORT_BATCH = 500  # rows per chunk written to the socket
_OPEN_PATHS = ("/login", "/healthz")  # how a browser presents the token; liveness for orchestrators (no data)
CSV_COLUMNS = ("id", "url", "title", "source", "language", "published", "tags", "story")
SECURITY_HEADERS = {
    # The page's own scripts and styles only: article text can never run as code.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Language = Annotated[str, StringConstraints(pattern=r"^([a-z]{2,3}(-[a-z]{2,4})?|und)$")]
Source = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=100)]


# -- response shapes (they make the OpenAPI document; tests check answers against it) -------------

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


# -- the search index, per server thread -----------------------------------------------------------

class Readers:
    """Index readers: one SQLite connection per server thread (a connection serves one request at a
    time), or one Elasticsearch client shared by all (httpx clients are thread-safe)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list = []
        self._shared = bool(settings.pipeline.elasticsearch.url)

    def _new(self):
        try:
            index = open_index(self.settings, writer=False)
        except (ConfigError, SinkUnavailable) as exc:
            raise HTTPException(503, f"search index unavailable: {exc}") from None
        if index is None:
            raise HTTPException(503, "no index yet: run `newsmon demo` or `newsmon run` first")
        return index

    def get(self):
        holder = self if self._shared else self._local
        index = getattr(holder, "index", None)
        if index is None:
            with self._lock:
                index = getattr(holder, "index", None) or self._new()
                holder.index = index
                self._open.append(index)
        return index

    @contextmanager
    def own(self) -> Iterator:
        """A reader for one long export: its own SQLite connection (its cursor stays open while the
        client downloads), or the shared client."""
        if self._shared:
            yield self.get()
            return
        index = self._new()
        try:
            yield index
        finally:
            index.close()

    def close(self) -> None:
        for index in self._open:
            index.close()


class ResultCache:
    """Recent search answers, each valid while the index's generation is the one it was computed at
    (the embedded index raises it on every write; Elasticsearch keeps its own request cache, so
    nothing is cached for it). Repeated searches and the opening page are answered without counting
    every match again, and never with stale results."""

    def __init__(self, entries: int):
        self.entries = entries
        self._lock = threading.Lock()
        self._answers: OrderedDict[tuple, tuple[int, object]] = OrderedDict()

    def search(self, index, key: tuple, compute):
        generation = index.generation() if self.entries else None
        if generation is None:
            return compute()
        with self._lock:
            cached = self._answers.get(key)
            if cached and cached[0] == generation:
                self._answers.move_to_end(key)
                return cached[1]
        answer = compute()
        with self._lock:
            self._answers[key] = (generation, answer)
            self._answers.move_to_end(key)
            while len(self._answers) > self.entries:
                self._answers.popitem(last=False)
        return answer


# -- parameters ------------------------------------------------------------------------------------

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
        self.filters = Filters(list(lang), list(source), list(tag), _moment(since, "since"), _moment(until, "until"))
        self.sort = sort or ("relevance" if not parse(q).empty else "date")
        self.key = (q, tuple(lang), tuple(source), tuple(tag), self.filters.since, self.filters.until, self.sort)


def _moment(value: datetime | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        return to_iso(value)
    except (OverflowError, ValueError):
        raise RequestValidationError([{"loc": ("query", name), "msg": "date out of range", "type": "value_error",
                                       "input": str(value)}]) from None


def _summary(hit: Hit) -> dict:
    a = hit.article
    return {"id": a.id, "url": a.url, "title": a.title, "source": a.source, "language": a.language,
            "published": a.published, "tags": a.tag_names, "snippet": hit.snippet_html(), "story": hit.story or a.id,
            "duplicates": hit.duplicates}


def _buckets(counts: dict[str, int]) -> list[dict]:
    return [{"value": value, "count": count} for value, count in counts.items()]


def alert_snippet(search: Search, name: str, channel: str) -> dict:
    """The subscription that alerts on what this search finds: a CLI command and subscribers.yaml lines."""
    rule = {k: v for k, v in (("query", search.q.strip()), ("tags", search.filters.tags),
                              ("languages", search.filters.languages), ("sources", search.filters.sources)) if v}
    args = ["newsmon", "alerts", "add", name]
    for flag, key in (("--query", "query"), ("--tag", "tags"), ("--lang", "languages"), ("--source", "sources")):
        values = rule.get(key) or []
        for value in [values] if isinstance(values, str) else values:
            args += [flag, value]
    args += ["--channel", channel]
    if channel.startswith("https://"):
        args += ["--secret-env", "ALERT_SECRET"]
    subscriber = {"name": name, "channel": channel, "rules": [rule]}
    if channel.startswith("https://"):
        subscriber["secret_env"] = "ALERT_SECRET"
    return {"cli": shlex.join(args),
            "yaml": yaml.safe_dump({"subscribers": [subscriber]}, allow_unicode=True, sort_keys=False)}


# -- the application -------------------------------------------------------------------------------

def create_app(settings: Settings, token: str | None = None) -> FastAPI:
    """The ASGI application. ``token``: required on every route when given (NEWSMON_API_TOKEN)."""
    readers = Readers(settings)
    cache = ResultCache(settings.pipeline.serve.cache_entries)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    saved = SavedSearches(settings.data_dir / "saved.db")
    saved_lock = threading.Lock()  # one connection for the few writes saved searches see

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        readers.close()
        saved.close()

    app = FastAPI(title="newsmon", version=__version__, description=__doc__.split("\n\n")[1].replace("\n", " "),
                  docs_url="/api/docs", redoc_url=None, openapi_url="/openapi.json", lifespan=lifespan)
    problems = {400: {"model": Problem}, 401: {"model": Problem}, 503: {"model": Problem}}

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
        message = "; ".join(f"{_where(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors)
        return JSONResponse({"error": message or "invalid request", "detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if token and request.url.path not in _OPEN_PATHS and not _authorised(request, token):
            if request.url.path == "/":  # a browser opening the page: sign in first, then come back here
                response = RedirectResponse("/login?" + urlencode({"next": str(request.url.replace(
                    scheme="", netloc=""))}), status_code=303)
            else:
                response = JSONResponse({"error": "a bearer token is required (Authorization: Bearer …, or log in "
                                                  "at /login)"}, status_code=401,
                                        headers={"WWW-Authenticate": "Bearer"})
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/api/search", response_model=SearchAnswer, responses=problems, tags=["search"])
    def search(search: Annotated[Search, Depends()],
               page: Annotated[int, Query(ge=1, le=MAX_WINDOW)] = 1,
               size: Annotated[int, Query(ge=0, le=100)] = 20) -> JSONResponse:
        """Matching articles, one hit per story (its best article; the other versions listed with it),
        with stories counted per language, source, tag and day."""
        if page * size > MAX_WINDOW:
            raise RequestValidationError([{"loc": ("query", "page"), "type": "value_error", "input": page,
                                           "msg": f"page × size may be at most {MAX_WINDOW:,}: export the query "
                                                  "(/api/search.csv or .ndjson) to read every match"}])
        index = readers.get()
        result = cache.search(index, (*search.key, page, size), lambda: index.search(
            search.q, search.filters, sort=search.sort, limit=size, offset=(page - 1) * size))
        # Built to match SearchAnswer (the tests check answers against the OpenAPI document); returned as a
        # response so FastAPI does not validate and re-encode it on this hot path.
        return JSONResponse({
            "total": result.total, "articles": result.total if result.articles is None else result.articles,
            "page": page, "size": size, "hits": [_summary(h) for h in result.hits],
            "facets": {name: _buckets(counts) for name, counts in result.facets.items()},
            "timeline": [{"day": day, "count": count} for day, count in result.timeline]})

    @app.get("/api/articles/{article_id}", responses={404: {"model": Problem}, **problems}, tags=["search"])
    def article(article_id: Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$")]) -> dict:
        """One article's full record, with the other articles of its story."""
        index = readers.get()
        found = index.get(article_id)
        if found is None:
            raise HTTPException(404, f"no article with id {article_id}")
        story, duplicates = index.story(article_id) or (article_id, [])
        return {**found.to_dict(), "story": story, "duplicates": duplicates}

    def export(search: Search, media_type: str, rows) -> StreamingResponse:
        name = "newsmon-export." + ("csv" if media_type == "text/csv" else "ndjson")

        def stream() -> Iterator[bytes]:
            with readers.own() as index:
                yield from rows(index.export(search.q, search.filters, text=media_type != "text/csv"))

        return StreamingResponse(stream(), media_type=media_type,
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/api/search.csv", response_class=StreamingResponse, responses={200: {"content": {"text/csv": {}}}},
             tags=["export"])
    def export_csv(search: Annotated[Search, Depends()]) -> StreamingResponse:
        """Every article the query matches (copies included, with their story), newest first, as CSV."""
        return export(search, "text/csv", _csv_chunks)

    @app.get("/api/search.ndjson", response_class=StreamingResponse,
             responses={200: {"content": {"application/x-ndjson": {}}}}, tags=["export"])
    def export_ndjson(search: Annotated[Search, Depends()]) -> StreamingResponse:
        """Every article the query matches, full records with their text, one JSON object per line."""
        return export(search, "application/x-ndjson", _ndjson_chunks)

    @app.get("/api/saved-searches", response_model=SavedSearchList, responses=problems, tags=["saved searches"])
    def saved_list() -> dict:
        with saved_lock:
            return {"saved_searches": [_saved_out(s) for s in saved.all()]}

    @app.post("/api/saved-searches", status_code=201, response_model=SavedSearchOut, responses=problems,
              tags=["saved searches"])
    def saved_add(body: SavedSearchIn) -> dict:
        params = SearchParams(body.q, body.lang, body.source, body.tag, _moment(body.since, "since"),
                              _moment(body.until, "until"), body.sort)
        with saved_lock:
            return _saved_out(saved.add(body.name, params))

    @app.get("/api/saved-searches/{saved_id}", response_model=SavedSearchOut,
             responses={404: {"model": Problem}, **problems}, tags=["saved searches"])
    def saved_get(saved_id: Annotated[str, PathParam(max_length=64)]) -> dict:
        with saved_lock:
            found = saved.get(saved_id)
        if found is None:
            raise HTTPException(404, f"no saved search with id {saved_id}")
        return _saved_out(found)

    @app.delete("/api/saved-searches/{saved_id}", status_code=204, responses={404: {"model": Problem}, **problems},
                tags=["saved searches"])
    def saved_delete(saved_id: Annotated[str, PathParam(max_length=64)]) -> Response:
        with saved_lock:
            if not saved.delete(saved_id):
                raise HTTPException(404, f"no saved search with id {saved_id}")
        return Response(status_code=204)

    @app.get("/api/alert-snippet", response_model=AlertSnippet, responses=problems, tags=["alerts"])
    def snippet(search: Annotated[Search, Depends()],
                name: Annotated[str, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")] = "my-alert",
                channel: Annotated[str, Query(max_length=500, description="https://…, mailto:…, slack://…, "
                                                                          "file://…")] = "file://alerts.jsonl") -> dict:
        """The alert subscription that sends what this search finds: `newsmon alerts add …` and the
        subscribers.yaml entry."""
        if not search.q.strip() and not search.filters.tags:
            raise HTTPException(400, "q or tag: an alert rule needs a query, a topic tag, or both")
        return alert_snippet(search, name, channel)

    @app.get("/api/alerts/{name}/feed.atom", response_class=Response, tags=["alerts"],
             responses={200: {"content": {"application/atom+xml": {}}}, 404: {"model": Problem}})
    def alerts_feed(name: Annotated[str, PathParam(max_length=100)]) -> Response:
        """A subscriber's recent alerts as an Atom feed, for feed readers."""
        if name not in {s.name for s in settings.subscribers}:
            raise HTTPException(404, f"no subscriber named {name}")
        log = open_alerts(settings, channels=False)
        try:
            return Response(log.atom(name), media_type="application/atom+xml")
        finally:
            log.close(drain=0)

    @app.get("/login", include_in_schema=False)
    def login_form(next_: Annotated[str, Query(alias="next", max_length=2000)] = "/") -> HTMLResponse:
        return HTMLResponse(_login_page(next_))

    @app.post("/login", include_in_schema=False)
    def login(token_field: Annotated[str, Form(alias="token", max_length=1000)],
              next_: Annotated[str, Form(alias="next", max_length=2000)] = "/") -> Response:
        if not token or not hmac.compare_digest(token_field.encode(), token.encode()):
            return HTMLResponse(_login_page(next_, "Wrong token."), status_code=401)
        response = RedirectResponse(_local(next_), status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=False)
        return response

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=WEB), name="static")
    return app


def _where(loc) -> str:
    """The parameter an error is about: ``size`` for ("query", "size"), ``lang[2]`` for ("query", "lang", 2)."""
    parts = [str(p) for p in loc if p not in ("query", "path", "body")]
    return (parts[0] + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts[1:])) if parts else "request"


def _authorised(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        given = request.cookies.get(COOKIE, "")
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def _saved_out(saved) -> dict:
    return {"id": saved.id, "name": saved.name, "params": vars(saved.params), "url": saved.url,
            "created": saved.created}


def _csv_chunks(records: Iterator[dict]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for n, record in enumerate(records, 1):
        writer.writerow([" ".join(t["topic"] for t in record.get("tags", [])) if c == "tags" else record.get(c)
                         for c in CSV_COLUMNS])
        if n % EXPORT_BATCH == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def _ndjson_chunks(records: Iterator[dict]) -> Iterator[bytes]:
    lines = []
    for record in records:
        lines.append(json.dumps(record, ensure_ascii=False))
        if len(lines) == EXPORT_BATCH:
            yield ("\n".join(lines) + "\n").encode()
            lines = []
    if lines:
        yield ("\n".join(lines) + "\n").encode()


def _local(target: str) -> str:
    """A path on this server to go back to after signing in; anything else (another site) is "/"."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


def _login_page(next_: str, error: str = "") -> str:
    alert = f'<p role="alert">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>newsmon: sign in</title></head>
<body><main><h1>newsmon</h1>{alert}
<form method="post" action="/login"><input type="hidden" name="next" value="{html.escape(_local(next_))}">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button></form></main></body></html>
"""


def token_from_env(env=os.environ) -> str | None:
    return env.get(TOKEN_ENV) or None
