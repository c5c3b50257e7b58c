"""``newsmon feeds``: the configured feeds, their health, re-enabling one, OPML import."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from newsmon import settings as config
from newsmon.app import config_files
from newsmon.app.cli.common import load
from newsmon.dates import from_epoch


@click.group("feeds")
def feeds_group() -> None:
    """The feeds to poll (config/feeds.yaml): list them, import an OPML subscription list."""


@feeds_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per feed.")
def feeds_status(as_json: bool) -> None:
    """How each configured feed fares: last answer, failures in a row, next poll, where it moved, why disabled.

    Broken feeds (disabled, or failing poll.broken_after times in a row) come first.
    """
    from ingest.feed_store import FeedStore

    settings = load()
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
                     "disabled": state.disabled, "last_success": from_epoch(state.last_success) if state.last_success else None,
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
    from ingest.feed_store import FeedStore

    settings = load()
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
    settings = load()
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
    http(s) (each one is named, with the reason). The feeds are appended to
    feeds.yaml, its comments and layout kept. The file is parsed safely: entity
    declarations (billion laughs) and external references are refused.
    """
    from pydantic import ValidationError

    from ingest.opml import read_opml

    settings = load()
    path = settings.config_dir / "feeds.yaml"
    try:
        found = read_opml(opml_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{opml_file}: {exc}") from None

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
        added.append(entry)
        click.echo(f"  + {label}  {item.url}")

    counts = f"{len(added)} feeds, skipped {skipped} (already configured), {invalid} invalid"
    if dry_run:
        click.echo(f"dry run, would have imported {counts}; {path} not changed")
        return
    if added:  # nothing new: leave the file alone
        config_files.add_feeds(path, added)
    click.echo(f"imported {counts}")


def _describe_feed_error(opml_file: Path, label: str, errors: list[dict]) -> str:
    reasons = "; ".join(err["msg"].removeprefix("Value error, ") for err in errors)  # pydantic's prefix says nothing
    return f"{opml_file}: outline {label!r}: {reasons}"
