"""``newsmon config check``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click


@click.group("config")
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
    from newsmon.app.config_check import config_problems

    # Resolved as settings.load() resolves them; load() itself is the authority in _config_problems.
    config_dir = Path(os.environ.get("NEWSMON_CONFIG_DIR") or "config")
    data_dir = Path(os.environ.get("NEWSMON_DATA_DIR") or "data")
    problems, settings, files_failed = config_problems(config_dir, data_dir)
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
