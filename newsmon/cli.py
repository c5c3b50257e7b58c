"""The ``newsmon`` command line."""

from __future__ import annotations

import gzip
import json
import logging
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from newsmon import __version__, settings as config
from newsmon.bus import DEAD_LETTERS, SqliteBus
from newsmon.record import Article, article_id, to_iso, utc_now

log = logging.getLogger("newsmon")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "trafilatura", "htmldate", "charset_normalizer", "pebble"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _load(**overrides) -> config.Settings:
    try:
        return config.load(overrides=overrides)
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from None


class _Reporter:
    """Progress on stderr: one updating line on a terminal, a line every few seconds otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_line, self.last_time = "", 0.0

    def __call__(self, progress) -> None:
        line = progress.line()
        now = time.monotonic()
        if line == self.last_line or (not self.tty and now - self.last_time < 2.0):
            return
        self.last_line, self.last_time = line, now
        click.echo(("\r\033[K" if self.tty else "") + line, err=True, nl=not self.tty)

    def finish(self, progress) -> None:
        self.last_time = 0.0
        self.last_line = ""
        self(progress)
        if self.tty:
            click.echo("", err=True)


def _stop_on_signals() -> threading.Event:
    """First Ctrl-C or SIGTERM: finish the batch in hand, commit, and exit cleanly."""
    stop = threading.Event()

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("stopping after the current batch (press Ctrl-C again to abort)")
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


@click.group()
@click.version_option(__version__, prog_name="newsmon")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Monitor news feeds: fetch, extract, detect language, tag topics, index, search.

    Data goes to $NEWSMON_DATA_DIR (default ./data); configuration is read from
    $NEWSMON_CONFIG_DIR (default ./config).
    """
    _setup_logging(verbose)


@main.command()
@click.option("--port", default=8765, show_default=True, help="Port of the sample site on 127.0.0.1 (article URLs include it).")
def demo(port: int) -> None:
    """Serve the bundled sample news site on 127.0.0.1 and run the whole pipeline over it once."""
    from newsmon.demo import DemoSite, demo_feeds
    from newsmon.pipeline import run

    settings = _load(**{"fetch.allow_private": ["127.0.0.1/32"]})  # the sample site is on loopback, on purpose
    stop = _stop_on_signals()
    reporter = _Reporter()
    try:
        site = DemoSite(port)
    except OSError as exc:
        raise click.ClickException(f"cannot serve the sample site on 127.0.0.1:{port}: {exc} (try --port)") from None
    with site:
        click.echo(f"Sample news site on {site.base_url}; data in {settings.data_dir}/", err=True)
        feeds = [config.Feed(**f) for f in demo_feeds(site.base_url)]
        progress = run(settings, feeds, once=True, stop=stop, report=reporter, force_poll=True)
    reporter.finish(progress)
    click.echo(f"\nThis run: {progress.discovered} new articles discovered, "
               f"{progress.done['index']} indexed, {sum(progress.failed.values())} failed.")
    _print_stats(_collect_stats(settings), brief=True)
    click.echo("\nExample: newsmon search securite --lang fr")
    from sinks.sqlite_index import Filters, SqliteIndex

    index = SqliteIndex(settings.data_dir / "index.db")
    _print_hits(index.search("securite", Filters(languages=["fr"]), limit=3).hits)
    index.close()
    click.echo("\nTry: newsmon search 'NATO OR OTAN' · newsmon search klima* --lang de · newsmon stats")


@main.command("run")
@click.option("--once", is_flag=True, help="Poll every feed once, process everything, and exit.")
def run_command(once: bool) -> None:
    """Poll the configured feeds and process articles continuously until stopped (Ctrl-C)."""
    from newsmon.pipeline import run

    settings = _load()
    if not settings.feeds:
        raise click.ClickException(f"{settings.config_dir / 'feeds.yaml'}: no feeds configured")
    stop = _stop_on_signals()
    reporter = _Reporter()
    try:
        progress = run(settings, settings.feeds, once=once, stop=stop, report=reporter)
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    reporter.finish(progress)


@main.command()
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
    from sinks.sqlite_index import Filters, SqliteIndex

    filters = Filters(list(languages), list(sources), list(tags), _date(since, "--since"), _date(until, "--until"))
    settings = _load()
    path = settings.data_dir / "index.db"
    if not path.exists():
        raise click.ClickException(f"{path}: no index yet (run `newsmon demo` or `newsmon run` first)")
    index = SqliteIndex(path)
    result = index.search(query, filters, sort=sort, limit=limit, offset=offset)
    index.close()
    if as_json:
        for hit in result.hits:
            click.echo(json.dumps({**hit.summary(), "text": hit.article.text}, ensure_ascii=False))
        return
    click.echo(f"{result.total} match{'es' if result.total != 1 else ''}", err=True)
    _print_hits(result.hits, start=offset + 1)


def _date(value: str | None, option: str) -> str | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD or ISO 8601)", param_hint=option) from None
    return to_iso(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))


def _print_hits(hits, start: int = 1) -> None:
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("[", "]")
    for number, hit in enumerate(hits, start):
        a = hit.article
        meta = " · ".join(x for x in (a.source, a.language, (a.published or "")[:10], ", ".join(a.tag_names)) if x)
        click.echo(f"{number}. {a.title}\n   {meta}\n   {a.url}\n   {hit.snippet_marked(bold, plain)}")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
def extract(paths, as_json) -> None:
    """Extract, detect the language of and tag local HTML files (.html or .html.gz)."""

    from enrich.keywords import KeywordTagger
    from enrich.language import detect_language
    from ingest.extract import ExtractionError, Extractor, decode_html
    from ingest.pages import apply_extraction

    settings = _load()
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


def _collect_stats(settings: config.Settings) -> dict:
    from ingest.feeds import FeedStore
    from newsmon.pipeline import DETECTED, DISCOVERED, EXTRACTED, TAGGED
    from sinks.sqlite_index import SqliteIndex

    data = settings.data_dir
    stats: dict = {"data_dir": str(data), "stages": {}, "index": {}, "feeds": [], "recent_errors": [],
                   "recent_warnings": []}
    if not (data / "queue.db").exists():
        return stats
    bus = SqliteBus(data / "queue.db")
    for stage, topic in (("extract", DISCOVERED), ("language", EXTRACTED), ("tag", DETECTED), ("index", TAGGED)):
        stats["stages"][stage] = {"consumes": topic, "backlog": bus.backlog(stage, topic)}
    sizes = bus.topic_sizes()
    stats["dead_letters"] = sizes.get(DEAD_LETTERS, 0)
    for message in bus.recent(DEAD_LETTERS, 20):
        record = {"at": message.headers.get("failed_at"), "stage": message.headers.get("stage"),
                  "item": _url_of(message.value) or message.key, "reason": message.headers.get("error")}
        stats["recent_errors"].append(record)
    bus.close()
    store = FeedStore(data / "state.db")
    for state in store.all():
        stats["feeds"].append({"name": state.name, "url": state.url, "last_status": state.last_status,
                               "failures": state.failures, "last_error": state.last_error,
                               "new_last_poll": state.entries_new})
        if state.last_error:
            stats["recent_errors"].append({"at": None, "stage": "poll", "item": state.url, "reason": state.last_error})
    store.close()
    index = SqliteIndex(data / "index.db")
    stats["index"] = {"articles": index.count(), **index.facets()}
    stats["recent_warnings"] = index.recent_warnings()
    index.close()
    return stats


def _url_of(raw: bytes) -> str | None:
    try:
        return json.loads(raw).get("url")
    except (ValueError, AttributeError):
        return None


def _print_stats(stats: dict, brief: bool = False) -> None:
    index = stats.get("index") or {}
    click.echo(f"\nIndex: {index.get('articles', 0)} articles")
    for facet in ("language", "tag", "source"):
        counts = index.get(facet) or {}
        if counts:
            click.echo(f"  per {facet}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if not brief:
        click.echo("\nStages (backlog = records waiting):")
        for name, stage in stats["stages"].items():
            click.echo(f"  {name:<9} {stage['backlog']:>6}   reads {stage['consumes']}")
        click.echo(f"  dead letters: {stats.get('dead_letters', 0)}")
        click.echo("\nFeeds:")
        for feed in stats["feeds"]:
            status = feed["last_error"] or f"HTTP {feed['last_status']}, {feed['new_last_poll']} new"
            click.echo(f"  {feed['name']}: {status}  ({feed['url']})")
    errors = stats["recent_errors"]
    click.echo(f"\nErrors ({len(errors)} recent):" if errors else "\nErrors: none")
    for err in errors:
        click.echo(f"  [{err['stage']}] {err['item']}: {err['reason']}")
    if stats["recent_warnings"]:
        click.echo(f"\nWarnings on indexed articles ({len(stats['recent_warnings'])} recent):")
        for warning in stats["recent_warnings"]:
            click.echo(f"  [{warning['stage']}] {warning['item']}: {warning['reason']}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def stats(as_json: bool) -> None:
    """Counts per stage, language, tag and source, feed status, and recent errors."""
    collected = _collect_stats(_load())
    if as_json:
        click.echo(json.dumps(collected, ensure_ascii=False, indent=2))
    else:
        _print_stats(collected)


if __name__ == "__main__":
    main()
