"""``newsmon stats``: what the pipeline is doing, as text or JSON."""

from __future__ import annotations

import json

import click

from newsmon.app.cli.common import bus_option, load


@click.command()
@click.option("--json", "as_json", is_flag=True)
@bus_option
def stats(as_json: bool, bus: str | None) -> None:
    """Backlog per stage (lag per partition on Kafka), counts per language, tag and source, feeds, errors."""
    from newsmon.app.status import collect_stats

    collected = collect_stats(load(bus))
    if as_json:
        click.echo(json.dumps(collected, ensure_ascii=False, indent=2))
    else:
        print_stats(collected)


def print_stats(stats: dict, brief: bool = False) -> None:
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
