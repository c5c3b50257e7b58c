"""The analysts' HTTP API and web page (``newsmon serve``), over whichever search index is configured.

Read-only on the articles: search with filters, facets and a per-day timeline (near-duplicates
grouped, counted once), one article in full, exports of a whole query streamed as CSV or NDJSON
with constant memory, saved searches, and the alert subscription a search would make. Every
input is validated here and refused with 422 naming the parameter and the reason; the query
syntax itself never fails (``newsmon/query.py``). With ``NEWSMON_API_TOKEN`` set, every route
needs it (but ``/healthz``), as ``Authorization: Bearer`` or as the cookie ``/login`` sets for browsers.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from newsmon import __version__
from newsmon.app import config_files
from newsmon.app.api import auth
from newsmon.app.api.exports import csv_chunks, ndjson_chunks
from newsmon.app.api.models import (
    AlertSnippet,
    Problem,
    SavedSearchIn,
    SavedSearchList,
    SavedSearchOut,
    Search,
    SearchAnswer,
    moment,
)
from newsmon.app.api.readers import Readers, ResultCache
from newsmon.app.saved import SavedSearches, SearchParams
from newsmon.app.stages import open_alerts
from newsmon.errors import ConfigError, NewsmonError, QueryError, ServiceError, Unavailable
from newsmon.search import Hit
from newsmon.settings import Settings

WEB = Path(__file__).resolve().parent.parent / "web"
MAX_WINDOW = 10_000  # page * size: deeper than this, export the query instead
SECURITY_HEADERS = {
    # The page's own scripts and styles only: article text can never run as code.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _summary(hit: Hit) -> dict:
    a = hit.article
    return {"id": a.id, "url": a.url, "title": a.title, "source": a.source, "language": a.language,
            "published": a.published, "tags": a.tag_names, "snippet": hit.snippet_html(), "story": hit.story or a.id,
            "duplicates": hit.duplicates}


def _buckets(counts: dict[str, int]) -> list[dict]:
    return [{"value": value, "count": count} for value, count in counts.items()]


def alert_snippet(search: Search, name: str, channel: str) -> dict:
    """The subscription that alerts on what this search finds: a CLI command and subscribers.yaml lines."""
    rule = config_files.new_rule(query=search.q, tags=search.filters.tags, languages=search.filters.languages,
                                 sources=search.filters.sources)
    subscriber = config_files.new_subscriber(name, channel, rule,
                                             secret_env="ALERT_SECRET" if channel.startswith("https://") else None)
    return {"cli": config_files.subscribe_command(subscriber), "yaml": config_files.subscribers_yaml([subscriber])}


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

    @app.exception_handler(NewsmonError)
    async def _newsmon_error(request: Request, exc: NewsmonError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=http_status(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if token and request.url.path not in auth.OPEN_PATHS and not auth.authorised(request, token):
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
        return export(search, "text/csv", csv_chunks)

    @app.get("/api/search.ndjson", response_class=StreamingResponse,
             responses={200: {"content": {"application/x-ndjson": {}}}}, tags=["export"])
    def export_ndjson(search: Annotated[Search, Depends()]) -> StreamingResponse:
        """Every article the query matches, full records with their text, one JSON object per line."""
        return export(search, "application/x-ndjson", ndjson_chunks)

    @app.get("/api/saved-searches", response_model=SavedSearchList, responses=problems, tags=["saved searches"])
    def saved_list() -> dict:
        with saved_lock:
            return {"saved_searches": [_saved_out(s) for s in saved.all()]}

    @app.post("/api/saved-searches", status_code=201, response_model=SavedSearchOut, responses=problems,
              tags=["saved searches"])
    def saved_add(body: SavedSearchIn) -> dict:
        params = SearchParams(body.q, body.lang, body.source, body.tag, moment(body.since, "since"),
                              moment(body.until, "until"), body.sort)
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
        return HTMLResponse(auth.login_page(next_))

    @app.post("/login", include_in_schema=False)
    def login(token_field: Annotated[str, Form(alias="token", max_length=1000)],
              next_: Annotated[str, Form(alias="next", max_length=2000)] = "/") -> Response:
        if not token or not hmac.compare_digest(token_field.encode(), token.encode()):
            return HTMLResponse(auth.login_page(next_, "Wrong token."), status_code=401)
        response = RedirectResponse(auth.local_path(next_), status_code=303)
        response.set_cookie(auth.COOKIE, token, httponly=True, samesite="strict", secure=False)
        return response

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=WEB), name="static")
    return app


def http_status(exc: NewsmonError) -> int:
    """The one place a newsmon error becomes an HTTP status: a query that cannot be searched is the
    client's to fix; an index that cannot be reached or used, the server's, for now."""
    if isinstance(exc, QueryError):
        return 400
    if isinstance(exc, (Unavailable, ServiceError, ConfigError)):
        return 503
    return 500


def _where(loc) -> str:
    """The parameter an error is about: ``size`` for ("query", "size"), ``lang[2]`` for ("query", "lang", 2)."""
    parts = [str(p) for p in loc if p not in ("query", "path", "body")]
    return (parts[0] + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts[1:])) if parts else "request"


def _saved_out(saved) -> dict:
    return {"id": saved.id, "name": saved.name, "params": vars(saved.params), "url": saved.url,
            "created": saved.created}

