"""Reading what was found: ``search``, ``serve`` (the API and web page), ``extract`` (local files)."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import click

from newsmon.app.cli.common import load, log, parse_date, print_hits, reader
from newsmon.dates import utc_now
from newsmon.record import Article, article_id


@click.command()
@click.argument("query", required=False, default="")
@click.option("--lang", "languages", multiple=True, help="Only this language (ISO 639-1); repeatable.")
@click.option("--tag", "tags", multiple=True, help="Only articles with this topic tag; repeatable.")
@click.option("--source", "sources", multiple=True, help="Only this source (site name); repeatable.")
@click.option("--since", help="Published on or after this date (YYYY-MM-DD or ISO 8601).")
@click.option("--until", help="Published before this date.")
@click.option("--sort", type=click.Choice(["relevance", "date"]), default="relevance", show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per hit, with the full text.")
def search(query, languages, tags, sources, since, until, sort, limit, offset, as_json) -> None:
    """Search indexed articles.

    QUERY: words (all must match), "exact phrases", a OR b, -excluded, prefix*.
    Case and accents do not matter: securite finds sécurité.
    """
    from newsmon.search import Filters

    filters = Filters(list(languages), list(sources), list(tags), parse_date(since, "--since"),
                      parse_date(until, "--until"))
    with reader(load()) as index:
        result = index.search(query, filters, sort=sort, limit=limit, offset=offset)
    if as_json:
        for hit in result.hits:
            click.echo(json.dumps({**hit.summary(), "text": hit.article.text}, ensure_ascii=False))
        return
    click.echo(f"{result.total} match{'es' if result.total != 1 else ''}", err=True)
    print_hits(result.hits, start=offset + 1)


@click.command()
@click.option("--host", help="Address to listen on (default: serve.host in pipeline.yaml, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: serve.port, 8080).")
def serve(host: str | None, port: int | None) -> None:
    """Serve the search API (/api/…, OpenAPI at /openapi.json) and the web page (/) over the index.

    With NEWSMON_API_TOKEN set, every request needs that token (Authorization: Bearer, or /login in a browser).
    """
    import uvicorn

    from newsmon.app.api.app import create_app
    from newsmon.app.api.auth import TOKEN_ENV, token_from_env

    settings = load()
    host = host or settings.pipeline.serve.host
    port = settings.pipeline.serve.port if port is None else port
    token = token_from_env()
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning("serving on %s without %s: anyone who can reach it can read the index", host, TOKEN_ENV)
    click.echo(f"newsmon serve: http://{host}:{port}/ (API docs at /api/docs)", err=True)
    uvicorn.run(create_app(settings, token), host=host, port=port, log_level="warning", access_log=False)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
def extract(paths, as_json) -> None:
    """Extract, detect the language of and tag local HTML files (.html or .html.gz)."""
    from enrich.keywords import KeywordTagger
    from enrich.language import detect_language
    from ingest.extract import Extractor, decode_html
    from ingest.pages import apply_extraction
    from newsmon.errors import ExtractionError

    settings = load()
    tagger = KeywordTagger(settings.topics)
    extractor = Extractor(settings.pipeline.extract)
    failures = 0
    try:
        for path in paths:
            try:
                raw = path.read_bytes()
                if path.suffix == ".gz":
                    raw = gzip.decompress(raw)
                html, encoding, warnings = decode_html(raw)
                extracted = extractor(html, None)
            except (OSError, EOFError, ExtractionError) as exc:
                failures += 1
                message = str(exc).replace("page: ", "")
                click.echo(json.dumps({"path": str(path), "error": message}) if as_json else f"{path}: {message}", err=not as_json)
                continue
            uri = path.resolve().as_uri()
            article = Article(id=article_id(uri), url=uri, canonical_url=uri, feed_url="", fetched=utc_now())
            extracted.warnings = warnings + extracted.warnings
            article = tagger.tag(detect_language(apply_extraction(article, extracted), settings.pipeline.language))
            out = {
                "path": str(path),
                "title": article.title,
                "authors": article.authors,
                "published": article.published,
                "source": article.source,
                "language": article.language,
                "language_confidence": article.language_confidence,
                "tags": [{"topic": t.topic, "terms": t.terms} for t in article.tags],
                "method": article.extraction_method,
                "encoding": encoding,
                "warnings": [w["reason"] for w in article.warnings],
                "text": article.text,
            }
            if as_json:
                click.echo(json.dumps(out, ensure_ascii=False))
            else:
                tags = ", ".join(t["topic"] for t in out["tags"]) or "-"
                click.echo(f"== {path}\n{out['title']}\n[{out['language']} · tags: {tags} · {out['method']}]\n\n{out['text']}\n")
    finally:
        extractor.close()
    if failures:
        sys.exit(1)
