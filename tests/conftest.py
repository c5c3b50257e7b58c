"""The fixtures the test modules share; the helpers they share are in ``tests/support/``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from newsmon import settings as config
from tests.support.engines import engines
from tests.support.harness import NEWSMON, REPO, free_port, start_server
from tests.support.search_cluster import delete_prefix


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A copy of the repository's config with no feeds; tests write the feeds they need."""
    target = tmp_path / "config"
    shutil.copytree(REPO / "config", target)
    (target / "feeds.yaml").write_text("feeds: []\n")
    return target


@pytest.fixture
def make_settings(config_dir: Path, tmp_path: Path):
    """Settings for a test: loopback allowed, short timeouts, extraction in-process unless asked."""

    def make(**overrides) -> config.Settings:
        values = {
            "fetch.allow_private": ["127.0.0.1/32"],
            "fetch.connect_timeout": 2,
            "fetch.read_timeout": 2,
            "fetch.total_timeout": 5,
            "fetch.retries": 0,
            "extract.workers": 0,
        }
        values.update(overrides)
        return config.load(config_dir, tmp_path / "data", overrides=values)

    return make


def _engine(variable: str, name: str) -> str:
    """The address of a real engine: $VARIABLE (a cluster of the user's own, or the one `make test`
    started), else the engine `make engines` starts, started (or reused) now and left running for the
    next run (`make engines-stop` stops it). A machine without a JDK or Maven skips, but not on CI."""
    import os

    if os.environ.get(variable):
        return os.environ[variable]
    missing = [tool for tool in ("java", "javac", "mvn") if not shutil.which(tool)]
    if missing and os.environ.get("CI") != "true":
        pytest.skip(f"{variable} is not set and {', '.join(missing)} not installed: no real {name} to test")
    try:
        return engines.start([name], use_env=False)[variable]
    except engines.EngineError as exc:
        pytest.fail(f"{variable} is not set and the {name} engine did not start: {exc}")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """kafka://HOST:PORT of a real Kafka broker (see _engine)."""
    return "kafka://" + _engine("KAFKA_BOOTSTRAP", "kafka").removeprefix("kafka://")


@pytest.fixture(scope="session")
def es_url() -> str:
    """http(s)://HOST:PORT of a real OpenSearch (or Elasticsearch) cluster (see _engine)."""
    return _engine("ES_URL", "opensearch").rstrip("/")


@pytest.fixture
def es_prefix(es_url):
    """A fresh index prefix on the search cluster; its template and indices are deleted afterwards."""
    import uuid

    name = f"newsmon-test-{uuid.uuid4().hex[:8]}"
    yield name
    delete_prefix(es_url, name)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict:
    """The environment of a data directory the demo pipeline filled once (14 articles, 7 languages)."""
    import os
    import subprocess

    root = tmp_path_factory.mktemp("demo")
    shutil.copytree(REPO / "config", root / "config")
    env = {**os.environ, "NEWSMON_CONFIG_DIR": str(root / "config"), "NEWSMON_DATA_DIR": str(root / "data"),
           "NEWSMON_ALLOW_PRIVATE": "127.0.0.1/32"}
    env.pop("NEWSMON_API_TOKEN", None)
    result = subprocess.run(NEWSMON + ["demo", "--port", str(free_port())], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return env


@pytest.fixture(scope="session")
def api_server(demo_data) -> str:
    """The base URL of `newsmon serve` over the demo data."""
    base, proc = start_server(demo_data)
    yield base
    proc.terminate()
    proc.wait(timeout=10)
