"""Running the pipeline: ``demo``, ``run``, ``stage``."""

from __future__ import annotations

import threading

import click

from newsmon import logs
from newsmon import settings as config
from newsmon.app.cli.common import Reporter, bus_option, load, print_hits, reader, stop_on_signals, watch_config
from newsmon.app.stages import PARTS, SOURCE, STAGES


@click.command()
@click.option("--port", default=8765, show_default=True, help="Port of the sample site on 127.0.0.1 (article URLs include it).")
@bus_option
def demo(port: int, bus: str | None) -> None:
    """Serve the bundled sample news site on 127.0.0.1 and run the whole pipeline over it once.

    On Kafka every stage runs as its own process, as it would in production.
    """
    from newsmon.app.cli.status import print_stats
    from newsmon.app.demo import DemoSite, demo_feeds
    from newsmon.app.runtime import run
    from newsmon.app.status import collect_stats
    from newsmon.search import Filters

    # The sample site is ours, on loopback on purpose: allowed, and fetched without politeness delays.
    settings = load(bus, **{"fetch.allow_private": ["127.0.0.1/32"], "fetch.host_delay": 0, "fetch.per_host": 8})
    stop = stop_on_signals()
    reporter = Reporter()
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
    print_stats(collect_stats(settings), brief=True)
    click.echo("\nExample: newsmon search securite --lang fr")
    with reader(settings) as index:
        print_hits(index.search("securite", Filters(languages=["fr"]), limit=3).hits)
    click.echo("\nTry: newsmon search 'NATO OR OTAN' · newsmon search klima* --lang de · newsmon stats"
               " · newsmon serve (then http://127.0.0.1:8080/)")


def _demo_on_kafka(settings: config.Settings, feeds: list[config.Feed], stop: threading.Event, reporter):
    from newsmon.app.runtime import run
    from newsmon.app.stages import create_topics, open_bus
    from newsmon.app.supervise import start_stages, stop_stages, wait_until_drained

    # Brokers that do not create topics on first use (production's) need them before the stages start.
    if failed := {t: o for t, o in create_topics(settings).items() if o.startswith("failed")}:
        raise click.ClickException("; ".join(f"{topic}: {outcome}" for topic, outcome in failed.items()))
    names = list(STAGES)
    env = {"NEWSMON_BUS": settings.pipeline.bus, "NEWSMON_DATA_DIR": str(settings.data_dir),
           "NEWSMON_CONFIG_DIR": str(settings.config_dir), "NEWSMON_ALLOW_PRIVATE": "127.0.0.1/32"}

    def indexed() -> int:
        with reader(settings, required=False) as index:
            return index.count() if index else 0

    before = indexed()
    procs = start_stages(names, env)
    try:
        progress = run(settings, feeds, names=[SOURCE], once=True, stop=stop, report=reporter, force_poll=True)
        bus = open_bus(settings)

        def tick():
            progress.done["index"] = indexed() - before
            reporter(progress)

        try:
            wait_until_drained(bus, names, procs, timeout=300, stop=stop, on_tick=tick)
        finally:
            bus.close()
    finally:
        codes = stop_stages(procs)
    if any(codes):
        raise click.ClickException(f"stage processes exited with {codes}")
    progress.done["index"] = indexed() - before
    return progress


@click.command("run")
@click.option("--once", is_flag=True, help="Poll every feed once, process everything, and exit.")
@bus_option
def run_command(once: bool, bus: str | None) -> None:
    """Poll the configured feeds and run every stage in this process until stopped (Ctrl-C, SIGTERM)."""
    from newsmon.app.runtime import run

    settings = load(bus)
    if not settings.feeds:
        raise click.ClickException(f"{settings.config_dir / 'feeds.yaml'}: no feeds configured")
    stop = stop_on_signals()
    reporter = Reporter()
    progress = run(settings, settings.feeds, once=once, stop=stop, report=reporter,
                   watch=None if once else watch_config(settings, bus))
    reporter.finish(progress)


@click.command()
@click.argument("name", type=click.Choice(PARTS))
@bus_option
def stage(name: str, bus: str | None) -> None:
    """Run one part of the pipeline until stopped (SIGTERM/Ctrl-C: finish the batch, commit, leave the
    group, exit 0).

    \b
    poll      feeds -> articles.discovered (instances split the feeds between them)
    extract   articles.discovered -> articles.extracted (fetch the page, trafilatura)
    language  articles.extracted -> articles.detected (langdetect)
    tag       articles.detected -> articles.tagged (keyword topics)
    index     articles.tagged -> the search index
    alert     articles.tagged -> subscribers' channels (run one instance: it keeps the delivery log)
    """
    from newsmon.app.runtime import run

    settings = load(bus)
    stop = stop_on_signals()
    logs.process_stage = name
    run(settings, settings.feeds, names=[name], once=False, stop=stop, watch=watch_config(settings, bus))
