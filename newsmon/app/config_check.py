"""``newsmon config check``: every problem of the configuration, as the processes would meet them at
start-up, without creating or connecting to anything."""

from __future__ import annotations

import os
from pathlib import Path

from newsmon import settings as config
from newsmon.errors import ConfigError
from sinks.alerts import check_subscribers


def config_problems(config_dir: Path, data_dir: Path) -> tuple[list[str], config.Settings | None, bool]:
    """Every problem as a line naming file, key and reason; the settings if they load; whether a file failed."""
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
    except ConfigError as exc:
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
        except ConfigError as exc:
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
        except ConfigError as exc:
            add("\n".join(f"{config_dir / 'subscribers.yaml'}: {line}" for line in str(exc).splitlines()))
    return problems, settings, files_failed
