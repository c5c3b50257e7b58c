"""`newsmon config check`: every problem the processes would refuse to start on, each naming file, key and reason."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from newsmon import settings as config
from newsmon.errors import ConfigError
from tests.support.harness import NEWSMON, REPO, write_feeds


@pytest.fixture
def env(config_dir: Path, tmp_path: Path) -> dict[str, str]:
    # Overrides from the outer environment (a developer's NEWSMON_BUS, say) would change what is checked.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEWSMON_")}
    return {**clean, "NEWSMON_CONFIG_DIR": str(config_dir), "NEWSMON_DATA_DIR": str(tmp_path / "data")}


def check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(NEWSMON + ["config", "check", *args], env=env, capture_output=True, text=True, timeout=60)


def problems(env: dict[str, str]) -> list[str]:
    """The problems from --json, after checking that the text output says the same and exits 1."""
    text = check(env)
    assert text.returncode == 1, text.stdout + text.stderr
    result = check(env, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["problems"]
    for problem in report["problems"]:
        assert problem in text.stderr
    return report["problems"]


def add_subscriber(config_dir: Path, **subscriber) -> None:
    path = config_dir / "subscribers.yaml"
    data = yaml.safe_load(path.read_text())
    data["subscribers"].append(subscriber)
    path.write_text(yaml.safe_dump(data, allow_unicode=True))


def test_the_repositorys_own_config_passes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSMON_")}
    env.update(NEWSMON_CONFIG_DIR=str(REPO / "config"), NEWSMON_DATA_DIR=str(tmp_path / "data"))
    result = check(env)
    assert result.returncode == 0, result.stderr
    settings = config.load(REPO / "config", tmp_path / "data")
    assert result.stdout.strip() == (f"config OK: {len(settings.feeds)} feeds, {len(settings.topics)} topics, "
                                     f"{len(settings.subscribers)} subscribers ({REPO / 'config'})")
    assert json.loads(check(env, "--json").stdout) == {"ok": True, "problems": []}
    assert not (tmp_path / "data").exists()  # checking creates nothing, not even the data directory


def test_bad_yaml_syntax(env, config_dir):
    (config_dir / "keywords.yaml").write_text("topics:\n  nato: [NATO\n")
    [problem] = problems(env)
    assert problem.startswith(f"{config_dir / 'keywords.yaml'}: not valid YAML: ")
    assert "line 3" in problem  # the YAML mark stays with its problem, not counted as problems of its own


def test_top_level_not_a_mapping(env, config_dir):
    (config_dir / "feeds.yaml").write_text("- name: x\n  url: https://example.org/rss\n")
    assert problems(env) == [f"{config_dir / 'feeds.yaml'}: expected a mapping at the top level, got list"]


def test_misspelt_key_in_pipeline_yaml(env, config_dir):
    (config_dir / "pipeline.yaml").write_text("fetch:\n  concurency: 4\n")
    assert problems(env) == [f"{config_dir / 'pipeline.yaml'}: fetch.concurency: Extra inputs are not permitted"]


def test_bad_value_from_an_environment_override(env, config_dir):
    env["NEWSMON_BUS"] = "nonsense"
    [problem] = problems(env)
    assert problem.startswith(f"{config_dir / 'pipeline.yaml'} (with environment overrides): bus: ")
    assert "'nonsense': expected 'embedded' or kafka://HOST:PORT" in problem


def test_feed_url_not_http(env, config_dir):
    write_feeds(config_dir, [{"name": "Gopher", "url": "gopher://example.org/news"}])
    assert problems(env) == [f"{config_dir / 'feeds.yaml'}: feeds[0].url: Value error, "
                             "'gopher://example.org/news' is not an http(s) URL"]


def test_duplicate_feed_url(env, config_dir):
    write_feeds(config_dir, [{"name": "A", "url": "https://example.org/rss"},
                             {"name": "B", "url": "https://example.org/other"},
                             {"name": "C", "url": "https://example.org/rss "}])  # the same, give or take a space
    assert problems(env) == [f"{config_dir / 'feeds.yaml'}: feeds[2].url: same URL as feeds[0] "
                             "(https://example.org/rss)"]


def test_unknown_topic_in_a_subscriber_rule_is_reported_as_the_alert_stage_would(env, config_dir, tmp_path):
    add_subscriber(config_dir, name="desk", channel="file://desk.jsonl", rules=[{"tags": ["nato", "natto"]}])
    assert problems(env) == [f"{config_dir / 'subscribers.yaml'}: rule desk/1: no topic 'natto' in keywords.yaml"]

    from newsmon.app.stages import open_alerts

    with pytest.raises(ConfigError) as refused:  # the alert stage refuses to start with the same words
        open_alerts(config.load(config_dir, tmp_path / "data"))
    assert problems(env) == str(refused.value).splitlines()


def test_bad_channel_url(env, config_dir):
    add_subscriber(config_dir, name="desk", channel="mailto:not-an-address", rules=[{"tags": ["nato"]}])
    assert problems(env) == [f"{config_dir / 'subscribers.yaml'}: subscriber desk: channel mailto:not-an-address: "
                             "'not-an-address' is not an e-mail address"]


def test_webhook_without_secret(env, config_dir):
    add_subscriber(config_dir, name="hook", channel="https://example.org/hook", secret_env="HOOK_SECRET",
                   rules=[{"tags": ["nato"]}])
    env.pop("HOOK_SECRET", None)
    [problem] = problems(env)
    assert problem.startswith(f"{config_dir / 'subscribers.yaml'}: subscriber hook: webhooks are signed")
    assert "(HOOK_SECRET is empty)" in problem

    env["HOOK_SECRET"] = "s3cret"  # present in the environment: fine
    assert check(env).returncode == 0


def test_bad_time_zone(env, config_dir):
    add_subscriber(config_dir, name="digest", channel="file://digest.jsonl", mode="digest",
                   digest={"every": "daily", "timezone": "Europe/Pariss"}, rules=[{"tags": ["nato"]}])
    assert problems(env) == [f"{config_dir / 'subscribers.yaml'}: subscribers[1].digest.timezone: Value error, "
                             "'Europe/Pariss' is not an IANA time zone (e.g. Europe/Paris)"]


def test_every_broken_file_is_reported_not_just_the_first(env, config_dir):
    (config_dir / "pipeline.yaml").write_text("runner:\n  batch_size: 0\n")
    write_feeds(config_dir, [{"name": "", "url": "ftp://example.org/rss", "interval": 900}])
    add_subscriber(config_dir, name="hook", channel="https://example.org/hook", rules=[{"tags": ["nato"]}])
    found = problems(env)
    assert found == [
        f"{config_dir / 'pipeline.yaml'}: runner.batch_size: Input should be greater than or equal to 1",
        f"{config_dir / 'feeds.yaml'}: feeds[0].name: String should have at least 1 character",
        f"{config_dir / 'feeds.yaml'}: feeds[0].url: Value error, 'ftp://example.org/rss' is not an http(s) URL",
        f"{config_dir / 'subscribers.yaml'}: subscriber hook: webhooks are signed; set secret_env to an environment "
        "variable holding the secret",
    ]
    result = check(env)
    assert result.stdout == "" and result.stderr.rstrip().endswith(f"4 problem(s) in {config_dir}")


def test_missing_config_directory(env, tmp_path):
    env["NEWSMON_CONFIG_DIR"] = str(tmp_path / "nowhere")
    assert problems(env) == [f"{tmp_path / 'nowhere'}: config directory not found (set NEWSMON_CONFIG_DIR)"]
