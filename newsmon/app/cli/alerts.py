"""``newsmon alerts``: subscribers (config/subscribers.yaml), their deliveries, tests and replays."""

from __future__ import annotations

import json

import click

from newsmon import settings as config
from newsmon.app import config_files
from newsmon.app.cli.common import load


@click.group()
def alerts() -> None:
    """Alert subscribers: who gets which keyword hits, on which channel (config/subscribers.yaml)."""


def _subscribers_file(settings: config.Settings):
    return settings.config_dir / "subscribers.yaml"


def _known(settings: config.Settings, name: str) -> None:
    if name not in {s.name for s in settings.subscribers}:
        raise click.ClickException(f"no subscriber named {name} in {_subscribers_file(settings)}")


def _alert_log(settings: config.Settings, channels: bool = True):
    from newsmon.app.stages import open_alerts

    return open_alerts(settings, channels=channels)


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
    from sinks.channels import parse_channel

    settings = load()
    kind = parse_channel(channel, data_dir=settings.data_dir).kind
    if kind == "webhook" and not secret_env:
        raise click.ClickException("webhooks are signed: give --secret-env VAR (the variable holds the secret)")
    rule = config_files.new_rule(query=query, tags=tags, languages=languages, sources=sources, min_hits=min_hits)
    digest = {k: v for k, v in {"every": every, "at": at_, "timezone": timezone}.items() if v}
    subscriber = config_files.new_subscriber(name, channel, rule, mode=mode, digest=digest, rate_limit=rate_limit,
                                             secret_env=secret_env)
    path = _subscribers_file(settings)
    existed = config_files.add_subscriber_rule(path, subscriber)
    click.echo(f"{'added a rule to' if existed else 'added'} {name} in {path}")


@alerts.command("remove")
@click.argument("name")
def alerts_remove(name: str) -> None:
    """Unsubscribe NAME (its delivery history stays in the log)."""
    path = _subscribers_file(load())
    if not config_files.remove_subscriber(path, name):
        raise click.ClickException(f"no subscriber named {name} in {path}")
    click.echo(f"removed {name}")


@alerts.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per subscriber.")
def alerts_list(as_json: bool) -> None:
    """The subscribers and their rules."""
    for sub in load().subscribers:
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
    from newsmon.errors import DeliveryError

    settings = load()
    _known(settings, name)
    log_ = _alert_log(settings)
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
    log_ = _alert_log(load(), channels=False)
    status = log_.status()
    log_.close(drain=0)
    if as_json:
        click.echo(json.dumps(status, ensure_ascii=False))
        return
    for name, counts in status["subscribers"].items():
        click.echo(f"{name}: " + (", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "nothing yet"))
    if status["retrying"]:
        click.echo(f"\n{status['retrying']} delivery(ies) waiting to be retried (the next at {status['next_retry']})")
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
    settings = load()
    _known(settings, name)
    log_ = _alert_log(settings, channels=False)
    feed = log_.atom(name, limit)
    log_.close(drain=0)
    click.echo(feed.decode("utf-8"), nl=False)


@alerts.command("replay")
@click.option("--subscriber", help="Only this subscriber's failed deliveries.")
def alerts_replay(subscriber: str | None) -> None:
    """Send failed deliveries again (the running alert stage picks them up within a second)."""
    log_ = _alert_log(load(), channels=False)
    count = log_.replay(subscriber)
    log_.close(drain=0)
    click.echo(f"{count} failed delivery(ies) queued again")
