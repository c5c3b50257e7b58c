"""Operating the pipeline's engines and edges: dead letters (``dlq``), Kafka ``topics``, the
Elasticsearch/OpenSearch template (``es``), and ``fetch`` (one URL with the fetcher's rules)."""

from __future__ import annotations

import json
import time

import click

from newsmon.app.cli.common import bus_option, load
from newsmon.bus import DEAD_LETTERS


@click.group()
def dlq() -> None:
    """Dead letters: records a stage could not process, with the reason."""


@dlq.command("list")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@bus_option
def dlq_list(limit: int, as_json: bool, bus: str | None) -> None:
    """The most recent dead letters, newest first."""
    from newsmon.app.stages import open_bus
    from newsmon.app.status import dead_letter_summary

    bus_ = open_bus(load(bus))
    try:
        messages = bus_.recent(DEAD_LETTERS, limit)
    finally:
        bus_.close()
    for message in messages:
        summary = dead_letter_summary(message)
        if as_json:
            click.echo(json.dumps(summary, ensure_ascii=False))
        else:
            click.echo(f"{summary['at']} [{summary['stage']}] {summary['item']} (from {summary['source']}, "
                       f"attempt {summary['attempts']}): {summary['reason']}")
    if not as_json:
        click.echo(f"{len(messages)} dead letter(s) shown", err=True)


@dlq.command("replay")
@bus_option
def dlq_replay(bus: str | None) -> None:
    """Send every dead letter not replayed yet back to the topic it came from (attempt count + 1)."""
    from newsmon.app.stages import open_bus

    settings = load(bus)
    bus_ = open_bus(settings)
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


@click.group()
def topics() -> None:
    """Kafka topics of the pipeline."""


@topics.command("create")
@bus_option
def topics_create(bus: str | None) -> None:
    """Create the pipeline's topics with the partitions and replication set in pipeline.yaml (kafka: ...)."""
    from newsmon.app.stages import create_topics

    settings = load(bus)
    if settings.pipeline.bus == "embedded":
        click.echo("the embedded bus needs no topics")
        return
    outcomes = create_topics(settings)
    for topic, outcome in outcomes.items():
        click.echo(f"{topic}: {outcome}")
    if failed := [topic for topic, outcome in outcomes.items() if outcome.startswith("failed")]:
        raise click.ClickException(f"{len(failed)} topic(s) not created")


@click.group()
def es() -> None:
    """The Elasticsearch/OpenSearch search index."""


@es.command("template")
def es_template() -> None:
    """Print the index template newsmon installs (mappings, analyzers, read alias), for review or provisioning.

    Install it yourself with: PUT _index_template/<index_prefix> (body: this JSON).
    """
    from sinks.elasticsearch import index_template

    prefix = load().pipeline.elasticsearch.index_prefix
    click.echo(json.dumps(index_template(prefix), indent=2))


@click.command()
@click.argument("url")
@click.option("--allow-private", "allow", multiple=True, metavar="CIDR",
              help="Also allow this non-public network (besides fetch.allow_private); repeatable.")
@click.option("--body", is_flag=True, help="Print the body too (decompressed, as received).")
def fetch(url: str, allow: tuple[str, ...], body: bool) -> None:
    """Fetch one URL through newsmon's fetcher, with its rules (address policy, redirects, size and time
    caps), and print status, final URL, redirects, headers and size; or the refusal reason (exit 1)."""
    from ingest.http import Fetcher
    from newsmon.errors import FetchError

    settings = load()
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
