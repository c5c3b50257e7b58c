"""The ``newsmon`` command line."""

from __future__ import annotations

import gzip
import json
import logging
import signal
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import click
import yaml

from newsmon import __version__, logs, settings as config
from newsmon.bus import DEAD_LETTERS
from newsmon.record import Article, article_id, to_iso, utc_now

log = logging.getLogger("newsmon")


def _open_bus(settings: config.Settings):
    from newsmon.pipeline import open_bus

    try:
        return open_bus(settings)
    except config.ConfigError as exc:  # no broker answering
        raise click.ClickException(str(exc)) from None


def _bus_option(command):
    return click.option(
        "--bus", help="embedded (default) or kafka://HOST:PORT[,HOST:PORT]; also $NEWSMON_BUS."
    )(command)


def _load(bus: str | None = None, **overrides) -> config.Settings:
    if bus:
        overrides["bus"] = bus
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


def _watch_config(settings: config.Settings, bus: str | None) -> config.ConfigWatch:
    """Feeds and keywords are read again when their files change, and on SIGHUP."""
    watch = config.ConfigWatch(settings, {"bus": bus} if bus else None)
    signal.signal(signal.SIGHUP, lambda signum, frame: watch.requested.set())
    return watch


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
    logs.setup(verbose)


@main.command()
@click.option("--port", default=8765, show_default=True, help="Port of the sample site on 127.0.0.1 (article URLs include it).")
@_bus_option
def demo(port: int, bus: str | None) -> None:
    """Serve the bundled sample news site on 127.0.0.1 and run the whole pipeline over it once.

    On Kafka every stage runs as its own process, as it would in production.
    """
    from newsmon.demo import DemoSite, demo_feeds
    from newsmon.pipeline import run

    # The sample site is ours, on loopback on purpose: allowed, and fetched without politeness delays.
    settings = _load(bus, **{"fetch.allow_private": ["127.0.0.1/32"], "fetch.host_delay": 0, "fetch.per_host": 8})
    stop = _stop_on_signals()
    reporter = _Reporter()
    try:
        site = DemoSite(port)
    except OSError as exc:
        raise click.ClickException(f"cannot serve the sample site on 127.0.0.1:{port}: {exc} (try --port)") from None
    with site:
        click.echo(f"Sample news site on {site.base_url}; bus {settings.pipeline.bus}; data in {settings.data_dir}/", err=True)
        feeds = [config.Feed(**f) for f in demo_feeds(site.base_url)]
        if settings.pipeline.bus == "embedded":
            progress = run(settings, feeds, once=True, stop=stop, report=reporter, force_poll=True)
        else:
            progress = _demo_on_kafka(settings, feeds, stop, reporter)
    reporter.finish(progress)
    click.echo(f"\nThis run: {progress.discovered} new articles discovered, "
               f"{progress.done['index']} indexed, {sum(progress.failed.values())} failed.")
    _print_stats(_collect_stats(settings), brief=True)
    click.echo("\nExample: newsmon search securite --lang fr")
    from sinks.sqlite_index import Filters

    with _reader(settings) as index:
        _print_hits(index.search("securite", Filters(languages=["fr"]), limit=3).hits)
    click.echo("\nTry: newsmon search 'NATO OR OTAN' · newsmon search klima* --lang de · newsmon stats"
               " · newsmon serve (then http://127.0.0.1:8080/)")


def _demo_on_kafka(settings: config.Settings, feeds: list[config.Feed], stop: threading.Event, reporter):
    from newsmon.pipeline import run
    from newsmon.supervise import start_stages, stop_stages, wait_until_drained

    # Brokers that do not create topics on first use (production's) need them before the stages start.
    if failed := {t: o for t, o in _create_topics(settings).items() if o.startswith("failed")}:
        raise click.ClickException("; ".join(f"{topic}: {outcome}" for topic, outcome in failed.items()))

    names = ["extract", "language", "tag", "index", "alert"]
    env = {"NEWSMON_BUS": settings.pipeline.bus, "NEWSMON_DATA_DIR": str(settings.data_dir),
           "NEWSMON_CONFIG_DIR": str(settings.config_dir), "NEWSMON_ALLOW_PRIVATE": "127.0.0.1/32"}

    def indexed() -> int:
        with _reader(settings, required=False) as index:
            return index.count() if index else 0

    before = indexed()
    procs = start_stages(names, env)
    try:
        progress = run(settings, feeds, names=["poll"], once=True, stop=stop, report=reporter, force_poll=True)
        bus = _open_bus(settings)

        def tick():
            progress.done["index"] = indexed() - before
            reporter(progress)

        try:
            wait_until_drained(bus, names, procs, timeout=300, stop=stop, on_tick=tick)
            progress.failed["extract"] = 0
        finally:
            bus.close()
    finally:
        codes = stop_stages(procs)
    if any(codes):
        raise click.ClickException(f"stage processes exited with {codes}")
    progress.done["index"] = indexed() - before
    return progress


@main.command("run")
@click.option("--once", is_flag=True, help="Poll every feed once, process everything, and exit.")
@_bus_option
def run_command(once: bool, bus: str | None) -> None:
    """Poll the configured feeds and run every stage in this process until stopped (Ctrl-C, SIGTERM)."""
    from newsmon.pipeline import run

    settings = _load(bus)
    if not settings.feeds:
        raise click.ClickException(f"{settings.config_dir / 'feeds.yaml'}: no feeds configured")
    stop = _stop_on_signals()
    reporter = _Reporter()
    try:
        progress = run(settings, settings.feeds, once=once, stop=stop, report=reporter,
                       watch=None if once else _watch_config(settings, bus))
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    reporter.finish(progress)


@main.command()
@click.argument("name", type=click.Choice(["poll", "extract", "language", "tag", "index", "alert"]))
@_bus_option
def stage(name: str, bus: str | None) -> None:
    """Run one stage until stopped (SIGTERM/Ctrl-C: finish the batch, commit, leave the group, exit 0).

    \b
    poll      feeds -> articles.discovered (instances split the feeds between them)
    extract   articles.discovered -> articles.extracted (fetch the page, trafilatura)
    language  articles.extracted -> articles.detected (langdetect)
    tag       articles.detected -> articles.tagged (keyword topics)
    index     articles.tagged -> the search index
    alert     articles.tagged -> subscribers' channels (run one instance: it keeps the delivery log)
    """
    from newsmon.pipeline import run

    settings = _load(bus)
    stop = _stop_on_signals()
    try:
        logs.process_stage = name
        run(settings, settings.feeds, names=[name], once=False, stop=stop, watch=_watch_config(settings, bus))
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from None


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
    from sinks.sqlite_index import Filters

    filters = Filters(list(languages), list(sources), list(tags), _date(since, "--since"), _date(until, "--until"))
    with _reader(_load()) as index:
        result = index.search(query, filters, sort=sort, limit=limit, offset=offset)
    if as_json:
        for hit in result.hits:
            click.echo(json.dumps({**hit.summary(), "text": hit.article.text}, ensure_ascii=False))
        return
    click.echo(f"{result.total} match{'es' if result.total != 1 else ''}", err=True)
    _print_hits(result.hits, start=offset + 1)


@main.command()
@click.option("--host", help="Address to listen on (default: serve.host in pipeline.yaml, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: serve.port, 8080).")
def serve(host: str | None, port: int | None) -> None:
    """Serve the search API (/api/…, OpenAPI at /openapi.json) and the web page (/) over the index.

    With NEWSMON_API_TOKEN set, every request needs that token (Authorization: Bearer, or /login in a browser).
    """
    import uvicorn

    from newsmon.api import TOKEN_ENV, create_app, token_from_env

    settings = _load()
    host = host or settings.pipeline.serve.host
    port = settings.pipeline.serve.port if port is None else port
    token = token_from_env()
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning("serving on %s without %s: anyone who can reach it can read the index", host, TOKEN_ENV)
    click.echo(f"newsmon serve: http://{host}:{port}/ (API docs at /api/docs)", err=True)
    uvicorn.run(create_app(settings, token), host=host, port=port, log_level="warning", access_log=False)


@contextmanager
def _reader(settings: config.Settings, required: bool = True):
    """The search index for reading: Elasticsearch if configured, else the embedded one (None if absent)."""
    from newsmon.pipeline import open_index
    from newsmon.runner import SinkUnavailable
    from sinks.elasticsearch import EsError

    index = None
    try:
        index = open_index(settings, writer=False)
        if index is None and required:
            raise click.ClickException(f"{settings.data_dir / 'index.db'}: no index yet "
                                       "(run `newsmon demo` or `newsmon run` first)")
        yield index
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except (EsError, SinkUnavailable) as exc:  # the cluster is unreachable or refuses: say which and why
        raise click.ClickException(f"search index: {exc}") from None
    finally:
        if index is not None:
            index.close()


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
    from newsmon.pipeline import CONSUMED

    data = settings.data_dir
    stats: dict = {"data_dir": str(data), "bus": settings.pipeline.bus, "stages": {}, "dead_letters": 0,
                   "index": {}, "feeds": [], "recent_errors": [], "recent_warnings": []}
    if settings.pipeline.bus != "embedded" or (data / "queue.db").exists():
        bus = _open_bus(settings)
        try:
            for stage, topic in CONSUMED.items():
                lag = bus.lag(stage, topic)
                stats["stages"][stage] = {"consumes": topic, "backlog": sum(lag.values()), "lag_per_partition": lag}
            stats["dead_letters"] = bus.size(DEAD_LETTERS)
            stats["recent_errors"] = [_dead_letter_summary(m) for m in bus.recent(DEAD_LETTERS, 20)]
        finally:
            bus.close()
    if (data / "state.db").exists():
        store = FeedStore(data / "state.db")
        for state in store.all():
            stats["feeds"].append({"name": state.name, "url": state.url, "last_status": state.last_status,
                                   "failures": state.failures, "last_error": state.last_error,
                                   "new_last_poll": state.entries_new})
            if state.last_error:
                stats["recent_errors"].append({"at": None, "stage": "poll", "item": state.url, "reason": state.last_error})
        store.close()
    with _reader(settings, required=False) as index:
        if index:
            stats["index"] = {"articles": index.count(), **index.facets()}
            stats["recent_warnings"] = index.recent_warnings()
    if (data / "alerts.db").exists():
        alert_log = _open_alert_log(settings, channels=False)
        stats["alerts"] = alert_log.status()
        alert_log.close(drain=0)
    return stats


def _dead_letter_summary(message) -> dict:
    h = message.headers
    return {"at": h.get("failed_at"), "stage": h.get("stage"), "item": _url_of(message.value) or message.key,
            "reason": h.get("error"), "source": f"{h.get('topic')}[{h.get('partition')}]@{h.get('offset')}",
            "attempts": int(h.get("attempts", "1"))}


def _url_of(raw: bytes) -> str | None:
    try:
        url = json.loads(raw).get("url")
    except (ValueError, AttributeError):
        return None
    return url if isinstance(url, str) else None


def _print_stats(stats: dict, brief: bool = False) -> None:
    index = stats.get("index") or {}
    click.echo(f"\nIndex: {index.get('articles', 0)} articles")
    for facet in ("language", "tag", "source"):
        counts = index.get(facet) or {}
        if counts:
            click.echo(f"  per {facet}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if not brief:
        click.echo(f"\nStages on {stats['bus']} (backlog = records waiting; lag per partition on Kafka):")
        for name, stage in stats["stages"].items():
            parts = stage["lag_per_partition"]
            detail = "  " + " ".join(f"p{p}:{n}" for p, n in sorted(parts.items())) if len(parts) > 1 else ""
            click.echo(f"  {name:<9} {stage['backlog']:>6}   reads {stage['consumes']}{detail}")
        click.echo(f"  dead letters: {stats.get('dead_letters', 0)}")
        click.echo("\nFeeds:")
        for feed in stats["feeds"]:
            status = feed["last_error"] or f"HTTP {feed['last_status']}, {feed['new_last_poll']} new"
            click.echo(f"  {feed['name']}: {status}  ({feed['url']})")
    alerts_ = stats.get("alerts")
    if alerts_ and alerts_["subscribers"]:
        click.echo("\nAlerts: " + "; ".join(
            f"{name} " + (", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none")
            for name, counts in alerts_["subscribers"].items()))
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
@_bus_option
def stats(as_json: bool, bus: str | None) -> None:
    """Backlog per stage (lag per partition on Kafka), counts per language, tag and source, feeds, errors."""
    collected = _collect_stats(_load(bus))
    if as_json:
        click.echo(json.dumps(collected, ensure_ascii=False, indent=2))
    else:
        _print_stats(collected)


@main.group()
def dlq() -> None:
    """Dead letters: records a stage could not process, with the reason."""


@dlq.command("list")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_bus_option
def dlq_list(limit: int, as_json: bool, bus: str | None) -> None:
    """The most recent dead letters, newest first."""
    messages = _open_bus(_load(bus)).recent(DEAD_LETTERS, limit)
    for message in messages:
        summary = _dead_letter_summary(message)
        if as_json:
            click.echo(json.dumps(summary, ensure_ascii=False))
        else:
            click.echo(f"{summary['at']} [{summary['stage']}] {summary['item']} (from {summary['source']}, "
                       f"attempt {summary['attempts']}): {summary['reason']}")
    if not as_json:
        click.echo(f"{len(messages)} dead letter(s) shown", err=True)


@dlq.command("replay")
@_bus_option
def dlq_replay(bus: str | None) -> None:
    """Send every dead letter not replayed yet back to the topic it came from (attempt count + 1)."""
    bus_ = _open_bus(_load(bus))
    consumer = bus_.consumer("dlq-replay", [DEAD_LETTERS])
    replayed, deadline = 0, time.monotonic() + 120
    try:
        while bus_.backlog("dlq-replay", DEAD_LETTERS) and time.monotonic() < deadline:
            batch = consumer.poll(500, timeout=1.0)
            for message in batch:
                headers = {k: v for k, v in message.headers.items() if k in ("stage",)}
                headers["attempts"] = str(int(message.headers.get("attempts", "1")) + 1)
                bus_.publish(message.headers["topic"], message.key, message.value, headers)
            bus_.flush()  # back on their topics before the dead letters are marked as replayed
            consumer.commit(batch)
            replayed += len(batch)
    finally:
        consumer.close()
        bus_.close()
    click.echo(f"replayed {replayed} dead letter(s)")


@main.group()
def topics() -> None:
    """Kafka topics of the pipeline."""


@topics.command("create")
@_bus_option
def topics_create(bus: str | None) -> None:
    """Create the pipeline's topics with the partitions and replication set in pipeline.yaml (kafka: ...)."""
    settings = _load(bus)
    if settings.pipeline.bus == "embedded":
        click.echo("the embedded bus needs no topics")
        return
    outcomes = _create_topics(settings)
    for topic, outcome in outcomes.items():
        click.echo(f"{topic}: {outcome}")
    if failed := [topic for topic, outcome in outcomes.items() if outcome.startswith("failed")]:
        raise click.ClickException(f"{len(failed)} topic(s) not created")


def _create_topics(settings: config.Settings) -> dict[str, str]:
    """The pipeline's topics, created where missing: what happened to each (kafka_bus.create_topics)."""
    from newsmon.kafka_bus import create_topics
    from newsmon.pipeline import ALL_TOPICS

    k = settings.pipeline.kafka
    try:
        return create_topics(settings.pipeline.bus, [k.prefix + t for t in ALL_TOPICS], k.partitions, k.replication)
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def es() -> None:
    """The Elasticsearch/OpenSearch search index."""


@es.command("template")
def es_template() -> None:
    """Print the index template newsmon installs (mappings, analyzers, read alias), for review or provisioning.

    Install it yourself with: PUT _index_template/<index_prefix> (body: this JSON).
    """
    from sinks.elasticsearch import index_template

    prefix = _load().pipeline.elasticsearch.index_prefix
    click.echo(json.dumps(index_template(prefix), indent=2))


@main.group()
def alerts() -> None:
    """Alert subscribers: who gets which keyword hits, on which channel (config/subscribers.yaml)."""


def _subscribers_file(settings: config.Settings) -> Path:
    return settings.config_dir / "subscribers.yaml"


def _write_subscribers(path: Path, subscribers: list[dict]) -> None:
    """Validate, then replace the file atomically (comments in it are not kept)."""
    try:
        config.SubscribersFile.model_validate({"subscribers": subscribers})
    except ValueError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text("# Alert subscribers; see README \"Alerts\". Edited by `newsmon alerts add/remove`.\n"
                   + yaml.safe_dump({"subscribers": subscribers}, sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(path)


def _open_alert_log(settings: config.Settings, channels: bool = True):
    from newsmon.pipeline import open_alerts

    try:
        return open_alerts(settings, channels=channels)
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@alerts.command("add")
@click.argument("name")
@click.option("--tag", "tags", multiple=True, help="Topic from keywords.yaml (any of them); repeatable.")
@click.option("--query", default="", help='Words, "phrases", a OR b, -excluded, prefix*.')
@click.option("--lang", "languages", multiple=True, help="Only articles in this language; repeatable.")
@click.option("--source", "sources", multiple=True, help="Only articles from this source; repeatable.")
@click.option("--min-hits", type=int, default=1, show_default=True, help="Keyword occurrences needed.")
@click.option("--channel", required=True, help="https://… webhook, mailto:…, smtp://…, slack://…, file://…")
@click.option("--mode", type=click.Choice(["immediate", "digest"]), default="immediate", show_default=True)
@click.option("--every", type=click.Choice(["hourly", "daily", "weekly"]), help="Digest schedule (default daily).")
@click.option("--at", "at_", help="Digest time HH:MM (default 08:00).")
@click.option("--timezone", help="Digest time zone, e.g. Europe/Paris (default UTC).")
@click.option("--rate-limit", type=int, help="Immediate alerts per hour; the rest go into the next digest (default 20).")
@click.option("--secret-env", help="Environment variable holding the webhook signing secret.")
def alerts_add(name, tags, query, languages, sources, min_hits, channel, mode, every, at_, timezone, rate_limit,
               secret_env) -> None:
    """Subscribe NAME to articles matching a rule; an existing NAME with the same channel gets one more rule."""
    from sinks.channels import ChannelError, parse_channel

    settings = _load()
    try:
        kind = parse_channel(channel, data_dir=settings.data_dir).kind
    except ChannelError as exc:
        raise click.ClickException(str(exc)) from None
    if kind == "webhook" and not secret_env:
        raise click.ClickException("webhooks are signed: give --secret-env VAR (the variable holds the secret)")
    rule = {k: v for k, v in {"tags": list(tags), "query": query, "languages": list(languages),
                              "sources": list(sources), "min_hits": min_hits if min_hits != 1 else None}.items() if v}
    path = _subscribers_file(settings)
    current = [s.model_dump(exclude_defaults=True) for s in settings.subscribers]
    existing = next((s for s in current if s["name"] == name), None)
    if existing and existing["channel"] != channel:
        raise click.ClickException(f"subscriber {name} exists with channel {existing['channel']}: "
                                   "remove it first, or use a new name")
    if existing:
        existing["rules"].append(rule)
    else:
        digest = {k: v for k, v in {"every": every, "at": at_, "timezone": timezone}.items() if v}
        current.append({k: v for k, v in {"name": name, "channel": channel, "mode": mode, "rules": [rule],
                                           "digest": digest, "rate_limit": rate_limit, "secret_env": secret_env}.items()
                        if v})
    _write_subscribers(path, current)
    click.echo(f"{'added a rule to' if existing else 'added'} {name} in {path}")


@alerts.command("remove")
@click.argument("name")
def alerts_remove(name: str) -> None:
    """Unsubscribe NAME (its delivery history stays in the log)."""
    settings = _load()
    kept = [s.model_dump(exclude_defaults=True) for s in settings.subscribers if s.name != name]
    if len(kept) == len(settings.subscribers):
        raise click.ClickException(f"no subscriber named {name} in {_subscribers_file(settings)}")
    _write_subscribers(_subscribers_file(settings), kept)
    click.echo(f"removed {name}")


@alerts.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per subscriber.")
def alerts_list(as_json: bool) -> None:
    """The subscribers and their rules."""
    for sub in _load().subscribers:
        if as_json:
            click.echo(json.dumps(sub.model_dump(), ensure_ascii=False))
            continue
        when = "immediate" if sub.mode == "immediate" else f"digest {sub.digest.every} at {sub.digest.at} {sub.digest.timezone}"
        click.echo(f"{sub.name}  {sub.channel}  ({when}, {sub.rate_limit}/h)")
        for rule in sub.rules:
            parts = [f"tags {'|'.join(rule.tags)}" if rule.tags else "", f"query {rule.query!r}" if rule.query else "",
                     f"lang {','.join(rule.languages)}" if rule.languages else "",
                     f"source {','.join(rule.sources)}" if rule.sources else "",
                     f"min hits {rule.min_hits}" if rule.min_hits > 1 else ""]
            click.echo(f"  {rule.id}: " + " · ".join(p for p in parts if p))


@alerts.command("test")
@click.argument("name")
def alerts_test(name: str) -> None:
    """Send a sample alert to NAME's channel now and say whether it was accepted."""
    from sinks.channels import DeliveryError

    settings = _load()
    if name not in {s.name for s in settings.subscribers}:
        raise click.ClickException(f"no subscriber named {name} in {_subscribers_file(settings)}")
    log_ = _open_alert_log(settings)
    try:
        log_.send_test(name)
    except DeliveryError as exc:
        raise click.ClickException(f"{name}: {exc.reason}") from None
    finally:
        log_.close(drain=0)
    click.echo(f"{name}: test alert accepted by {log_.subscribers[name].channel}")


@alerts.command("status")
@click.option("--json", "as_json", is_flag=True, help="The status as one JSON object.")
def alerts_status(as_json: bool) -> None:
    """Deliveries per subscriber (sent, pending, held for a digest, duplicates, failed) and the failures."""
    log_ = _open_alert_log(_load(), channels=False)
    status = log_.status()
    log_.close(drain=0)
    if as_json:
        click.echo(json.dumps(status, ensure_ascii=False))
        return
    for name, counts in status["subscribers"].items():
        click.echo(f"{name}: " + (", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "nothing yet"))
    if status["retrying"]:
        click.echo(f"\n{status['retrying']} delivery(ies) waiting to be retried")
    if status["failed"]:
        click.echo("\nFailed (newsmon alerts replay sends them again):")
        for f in status["failed"]:
            click.echo(f"  {f['created']} {f['subscriber']} article {f['article_id']}: {f['error']} "
                       f"({f['attempts']} attempts)")


@alerts.command("feed")
@click.argument("name")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
def alerts_feed(name: str, limit: int) -> None:
    """Print NAME's matches as an Atom feed (newest first), for any feed reader."""
    settings = _load()
    if name not in {s.name for s in settings.subscribers}:
        raise click.ClickException(f"no subscriber named {name} in {_subscribers_file(settings)}")
    log_ = _open_alert_log(settings, channels=False)
    feed = log_.atom(name, limit)
    log_.close(drain=0)
    click.echo(feed.decode("utf-8"), nl=False)


@alerts.command("replay")
@click.option("--subscriber", help="Only this subscriber's failed deliveries.")
def alerts_replay(subscriber: str | None) -> None:
    """Send failed deliveries again (the running alert stage picks them up within a second)."""
    log_ = _open_alert_log(_load(), channels=False)
    count = log_.replay(subscriber)
    log_.close(drain=0)
    click.echo(f"{count} failed delivery(ies) queued again")


@main.group("config")
def config_group() -> None:
    """The configuration files in $NEWSMON_CONFIG_DIR (pipeline, feeds, keywords, subscribers)."""


@config_group.command("check")
@click.option("--json", "as_json", is_flag=True, help='Print {"ok": true|false, "problems": [...]} on stdout.')
def config_check(as_json: bool) -> None:
    """Check the configuration as the processes would at start-up, without running anything.

    \b
    Checks the four YAML files (pipeline.yaml with the NEWSMON_* environment
    overrides, feeds.yaml, keywords.yaml, subscribers.yaml), duplicate feed URLs,
    rule tags missing from keywords.yaml, and every subscriber's channel URL and
    webhook secret (the secret variables must be set in this environment).
    Every problem is listed, one per line naming the file, the key and the reason;
    the exit status is 1 if there is any. Nothing is created or connected to.
    """
    import os

    # Resolved as settings.load() resolves them; load() itself is the authority in _config_problems.
    config_dir = Path(os.environ.get("NEWSMON_CONFIG_DIR") or "config")
    data_dir = Path(os.environ.get("NEWSMON_DATA_DIR") or "data")
    problems, settings, files_failed = _config_problems(config_dir, data_dir)
    if as_json:
        click.echo(json.dumps({"ok": not problems, "problems": problems}, ensure_ascii=False))
    elif problems:
        for line in problems:
            click.echo(line, err=True)
        if files_failed:  # load() stops at the first broken file, before the overrides are applied
            click.echo("(the environment overrides are checked once the files are valid)", err=True)
        click.echo(f"{len(problems)} problem(s) in {config_dir}", err=True)
    else:
        click.echo(f"config OK: {len(settings.feeds)} feeds, {len(settings.topics)} topics, "
                   f"{len(settings.subscribers)} subscribers ({config_dir})")
    if problems:
        sys.exit(1)


def _config_problems(config_dir: Path, data_dir: Path) -> tuple[list[str], config.Settings | None, bool]:
    """Every problem as a line naming file, key and reason; the settings if they load; whether a file failed."""
    import os

    from sinks.alerts import check_subscribers

    problems: list[str] = []

    def add(message: str) -> None:
        # A ConfigError lists one problem per line, each starting with the file's path; a YAML syntax
        # error goes on over a few lines (the mark under the offending spot): those belong to it.
        found: list[str] = []
        for line in message.splitlines():
            if line.startswith(str(config_dir)) or not found:
                found.append(line)
            else:
                found[-1] += "\n" + line
        problems.extend(p for p in found if p not in problems)  # load() and the per-file pass report a file alike

    settings, load_error = None, ""
    try:
        settings = config.load(config_dir, data_dir)
    except config.ConfigError as exc:
        load_error = str(exc)
    if not config_dir.is_dir():
        add(load_error)
        return problems, None, False

    # load() stops at the first broken file: read each file on its own to report them all.
    # (file, model, required) as in settings.load().
    files, files_failed = {}, False
    for name, model, required in (("pipeline.yaml", config.PipelineSettings, False),
                                  ("feeds.yaml", config.FeedsFile, True),
                                  ("keywords.yaml", config.KeywordsFile, True),
                                  ("subscribers.yaml", config.SubscribersFile, False)):
        try:
            files[name] = config.read_yaml(config_dir / name, model, required)
        except config.ConfigError as exc:
            add(str(exc))
            files_failed = True
    add(load_error)  # what is left once the files are valid: pipeline.yaml with the environment overrides

    if feeds_file := files.get("feeds.yaml"):
        first: dict[str, int] = {}
        for n, feed in enumerate(feeds_file.feeds):
            url = feed.url.strip()
            if url in first:  # polled twice and every article discovered twice over: surely a mistake
                add(f"{config_dir / 'feeds.yaml'}: feeds[{n}].url: same URL as feeds[{first[url]}] ({url})")
            else:
                first[url] = n
    if subscribers_file := files.get("subscribers.yaml"):
        if keywords_file := files.get("keywords.yaml"):
            for line in config.unknown_topics(subscribers_file.subscribers, keywords_file.topics,
                                              config_dir / "subscribers.yaml"):
                add(line)
        try:  # parses channel URLs only: no connection, nothing created (data_dir resolves relative file:// paths)
            check_subscribers(subscribers_file.subscribers, data_dir, os.environ)
        except config.ConfigError as exc:
            add("\n".join(f"{config_dir / 'subscribers.yaml'}: {line}" for line in str(exc).splitlines()))
    return problems, settings, files_failed


@main.group("feeds")
def feeds_group() -> None:
    """The feeds to poll (config/feeds.yaml): list them, import an OPML subscription list."""


@feeds_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per feed.")
def feeds_status(as_json: bool) -> None:
    """How each configured feed fares: last answer, failures in a row, next poll, where it moved, why disabled.

    Broken feeds (disabled, or failing poll.broken_after times in a row) come first.
    """
    from ingest.feeds import FeedStore

    settings = _load()
    path = settings.data_dir / "state.db"
    if not path.exists():
        raise click.ClickException(f"{path}: no feed has been polled yet (run `newsmon run` or `newsmon stage poll`)")
    store = FeedStore(path)
    states = [store.get(feed.url) for feed in settings.feeds]
    store.close()
    now = time.time()
    threshold = settings.pipeline.poll.broken_after
    rows = []
    for feed, state in zip(settings.feeds, states):
        broken = bool(state.disabled) or state.failures >= threshold
        rows.append({"name": feed.name, "url": feed.url, "polled_at": state.moved_to or feed.url, "broken": broken,
                     "last_status": state.last_status, "failures": state.failures, "last_error": state.last_error,
                     "disabled": state.disabled, "last_success": to_iso(datetime.fromtimestamp(state.last_success,
                                                                                              timezone.utc))
                     if state.last_success else None,
                     "next_poll_in_s": None if state.disabled or state.next_poll is None
                     else max(0, round(state.next_poll - now))})
    rows.sort(key=lambda r: (not r["broken"], r["name"]))
    for row in rows:
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
            continue
        if row["disabled"]:
            health = f"DISABLED: {row['disabled']}"
        elif row["last_error"]:
            health = f"{'BROKEN' if row['broken'] else 'failing'} ({row['failures']} in a row): {row['last_error']}"
        elif row["last_status"] is None:
            health = "not polled yet"
        else:
            health = f"HTTP {row['last_status']}, last success {row['last_success']}"
        nxt = "" if row["next_poll_in_s"] is None else f"; next poll in {row['next_poll_in_s']} s"
        moved = f" (moved to {row['polled_at']})" if row["polled_at"] != row["url"] else ""
        click.echo(f"{row['name']}  {row['url']}{moved}\n  {health}{nxt}")


@feeds_group.command("enable")
@click.argument("url")
def feeds_enable(url: str) -> None:
    """Poll a feed again that was disabled (HTTP 410 Gone), and forget its failures."""
    from ingest.feeds import FeedStore

    settings = _load()
    store = FeedStore(settings.data_dir / "state.db")
    try:
        if not store.enable(url):
            raise click.ClickException(f"{url}: not a feed this data directory has polled")
    finally:
        store.close()
    click.echo(f"{url}: enabled; polled at the next round")


@feeds_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per feed.")
def feeds_list(as_json: bool) -> None:
    """The configured feeds, one per line: name, URL, poll interval, language hint."""
    settings = _load()
    for feed in settings.feeds:
        if as_json:
            click.echo(json.dumps(feed.model_dump(), ensure_ascii=False))
        else:
            hint = f", language {feed.language}" if feed.language else ""
            click.echo(f"{feed.name}  {feed.url}  (every {feed.interval} s{hint})")
    if not as_json:
        click.echo(f"{len(settings.feeds)} feed(s) in {settings.config_dir / 'feeds.yaml'}", err=True)


@feeds_group.command("import")
@click.argument("opml_file", metavar="FILE.opml", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--interval", type=click.IntRange(min=10), default=config.Feed.model_fields["interval"].default,
              show_default=True, help="Seconds between polls for the imported feeds (at least 10).")
@click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")
def feeds_import(opml_file: Path, interval: int, dry_run: bool) -> None:
    """Add the feeds of an OPML subscription list (exported by a feed reader) to feeds.yaml.

    \b
    Folders are flattened. Each new feed gets the outline's title (else its text,
    else the URL's host), its xmlUrl, --interval and its language attribute if any.
    URLs already configured are skipped, and so are outlines whose xmlUrl is not
    http(s) (each one is named, with the reason). feeds.yaml is rewritten, without
    its comments, only if a feed was added. The file is parsed safely: entity
    declarations (billion laughs) and external references are refused.
    """
    from pydantic import ValidationError

    from ingest.opml import read_opml

    settings = _load()
    path = settings.config_dir / "feeds.yaml"
    try:
        found = read_opml(opml_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{opml_file}: {exc}") from None

    # As written by hand: no nulls, and conditional only where it is turned off.
    merged = [feed.model_dump(exclude_none=True, exclude={"conditional"} if feed.conditional else None)
              for feed in settings.feeds]
    known = {feed.url.strip() for feed in settings.feeds}
    added, skipped, invalid = [], 0, 0
    for item in found:
        entry = {"name": item.name or item.url or "(untitled)", "url": item.url, "interval": interval}
        if item.language:
            entry["language"] = item.language
        label = f"{item.folder} / {entry['name']}" if item.folder else entry["name"]
        if item.url in known:
            skipped += 1
            click.echo(f"  = {label}  {item.url}  (already configured)")
            continue
        try:
            config.Feed.model_validate(entry)  # the same rules as a hand-written feeds.yaml
        except ValidationError as exc:
            if bad := [err["msg"] for err in exc.errors() if err["loc"] == ("interval",)]:  # the option, not the outline
                raise click.BadParameter(f"{interval}: {bad[0]}", param_hint="--interval") from None
            invalid += 1
            click.echo(f"{_describe_feed_error(opml_file, label, exc.errors())}: skipped", err=True)
            continue
        known.add(item.url)  # a feed listed in two folders is added once
        merged.append(entry)
        added.append(entry)
        click.echo(f"  + {label}  {item.url}")

    try:
        config.FeedsFile.model_validate({"feeds": merged})  # the whole file, as the processes will read it
    except ValidationError as exc:
        raise click.ClickException(config._describe(path, exc)) from None
    counts = f"{len(added)} feeds, skipped {skipped} (already configured), {invalid} invalid"
    if dry_run:
        click.echo(f"dry run, would have imported {counts}; {path} not changed")
        return
    if added:  # nothing new: leave the file (and its comments) alone
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text("# Feeds to poll; see README. Edited by `newsmon feeds import` (comments are not kept).\n"
                       + yaml.safe_dump({"feeds": merged}, sort_keys=False, allow_unicode=True), encoding="utf-8")
        tmp.replace(path)  # atomic: a running process reloading feeds.yaml never sees half a file
    click.echo(f"imported {counts}")


def _describe_feed_error(opml_file: Path, label: str, errors: list[dict]) -> str:
    reasons = "; ".join(err["msg"].removeprefix("Value error, ") for err in errors)  # pydantic's prefix says nothing
    return f"{opml_file}: outline {label!r}: {reasons}"


@main.command()
@click.argument("url")
@click.option("--allow-private", "allow", multiple=True, metavar="CIDR",
              help="Also allow this non-public network (besides fetch.allow_private); repeatable.")
@click.option("--body", is_flag=True, help="Print the body too (decompressed, as received).")
def fetch(url: str, allow: tuple[str, ...], body: bool) -> None:
    """Fetch one URL through newsmon's fetcher, with its rules (address policy, redirects, size and time
    caps), and print status, final URL, redirects, headers and size; or the refusal reason (exit 1)."""
    from ingest.http import Fetcher, FetchError

    settings = _load()
    fetch_settings = settings.pipeline.fetch.model_copy(
        update={"allow_private": [*settings.pipeline.fetch.allow_private, *allow]})
    try:
        fetcher = Fetcher(fetch_settings)
    except ValueError as exc:  # a CIDR that is not one
        raise click.BadParameter(str(exc), param_hint="--allow-private") from None
    try:
        result = fetcher.get(url)
    except FetchError as exc:
        raise click.ClickException(f"{url}: {exc.reason}") from None
    finally:
        fetcher.close()
    click.echo(f"HTTP {result.status}  {result.final_url}")
    for hop in result.redirects:
        click.echo(f"  redirected to {hop}")
    for name, value in result.headers.items():
        click.echo(f"{name}: {value}")
    click.echo(f"\n{len(result.content)} bytes (decompressed)")
    if body:
        click.echo(result.content.decode(result.charset or "utf-8", "replace"))


if __name__ == "__main__":
    main()
