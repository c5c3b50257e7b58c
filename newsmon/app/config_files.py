"""The operator's YAML files, edited as the operator wrote them.

``alerts add/remove`` and ``feeds import`` change subscribers.yaml and feeds.yaml through
ruamel.yaml's round-trip mode, so comments, key order, flow style and quoting stay as they
were; only the entries added or removed change. The edited document is validated as the
processes will read it, then the file is replaced atomically (a running process reloading it
never sees half a file).
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.util import load_yaml_guess_indent

from newsmon import settings as config
from newsmon.errors import ConfigError


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)  # the shipped files' style: "  - name: ..."
    yaml.width = 4096  # never re-wrap a long line
    return yaml


def _edit(path: Path, key: str, model: type[config._Model], change: Callable[[CommentedSeq], object]):
    """Read ``path`` (or start it), apply ``change`` to its list under ``key``, validate the whole
    document with ``model``, write it back atomically; returns what ``change`` returned."""
    yaml = _yaml()
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if text.strip():  # indented as the operator indents: "- name" or "  - name" under the key
        _, indent, offset = load_yaml_guess_indent(text)
        if indent and offset is not None and indent > offset:  # (4, 2): "  - name", (2, 0): "- name"
            yaml.indent(mapping=indent - offset, sequence=indent, offset=offset)
    doc = yaml.load(text) if text.strip() else None
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, CommentedMap):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if doc.get(key) is None:
        doc[key] = CommentedSeq()
    outcome = change(doc[key])
    try:
        model.model_validate(_plain(doc))
    except ValidationError as exc:
        raise ConfigError(config.describe(path, exc)) from None
    out = io.StringIO()
    yaml.dump(doc, out)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(out.getvalue(), encoding="utf-8")
    tmp.replace(path)
    return outcome


def _plain(node):
    """ruamel's round-trip nodes as plain dicts, lists and scalars, for validation."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def new_rule(*, query: str = "", tags=(), languages=(), sources=(), min_hits: int = 1) -> dict:
    """A subscriber rule as written by hand: only the parts given."""
    return {k: v for k, v in {"tags": list(tags), "query": query.strip(), "languages": list(languages),
                              "sources": list(sources), "min_hits": min_hits if min_hits != 1 else None}.items() if v}


def new_subscriber(name: str, channel: str, rule: dict, *, mode: str = "immediate", digest: dict | None = None,
                   rate_limit: int | None = None, secret_env: str | None = None) -> dict:
    optional = {"mode": mode if mode != "immediate" else None, "digest": digest or None, "rate_limit": rate_limit,
                "secret_env": secret_env}
    return {"name": name, "channel": channel, "rules": [rule], **{k: v for k, v in optional.items() if v}}


def add_subscriber_rule(path: Path, subscriber: dict) -> bool:
    """Add ``subscriber`` (one rule) to subscribers.yaml, or its rule to the subscriber of that name if
    it has the same channel; True if the subscriber existed."""

    def change(subscribers: CommentedSeq) -> bool:
        existing = next((s for s in subscribers if s.get("name") == subscriber["name"]), None)
        if existing is None:
            subscribers.append(subscriber)
            return False
        if existing.get("channel") != subscriber["channel"]:
            raise ConfigError(f"subscriber {subscriber['name']} exists with channel {existing.get('channel')}: "
                              "remove it first, or use a new name")
        existing.setdefault("rules", CommentedSeq()).append(subscriber["rules"][0])
        return True

    return _edit(path, "subscribers", config.SubscribersFile, change)


def remove_subscriber(path: Path, name: str) -> bool:
    """Remove the subscriber ``name`` from subscribers.yaml; False if there was none."""

    def change(subscribers: CommentedSeq) -> bool:
        for n, sub in enumerate(subscribers):
            if sub.get("name") == name:
                del subscribers[n]
                return True
        return False

    return _edit(path, "subscribers", config.SubscribersFile, change)


def add_feeds(path: Path, feeds: list[dict]) -> None:
    """Append feeds (already checked one by one) to feeds.yaml."""
    _edit(path, "feeds", config.FeedsFile, lambda entries: entries.extend(feeds))


def subscribe_command(subscriber: dict) -> str:
    """The ``newsmon alerts add`` command line that makes ``subscriber`` (its one rule)."""
    rule = subscriber["rules"][0]
    args = ["newsmon", "alerts", "add", subscriber["name"]]
    for flag, key in (("--query", "query"), ("--tag", "tags"), ("--lang", "languages"), ("--source", "sources")):
        values = rule.get(key) or []
        for value in [values] if isinstance(values, str) else values:
            args += [flag, value]
    args += ["--channel", subscriber["channel"]]
    if subscriber.get("secret_env"):
        args += ["--secret-env", subscriber["secret_env"]]
    return shlex.join(args)


def subscribers_yaml(subscribers: list[dict]) -> str:
    """``subscribers.yaml`` text holding these subscribers, in the shipped file's style."""
    out = io.StringIO()
    _yaml().dump({"subscribers": subscribers}, out)
    return out.getvalue()
