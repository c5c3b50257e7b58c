from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml

from newsmon import settings as config

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "newsmon" / "app" / "demo_site"
EURONEWS_SLUG = "otan-ukraine-aide-35-milliards"
NEWSMON = [sys.executable, "-m", "newsmon.app.cli"]


def wait_for(predicate, timeout: float, what: str, *, every: float = 0.05, detail=None, ignore=()):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` seconds pass
    (AssertionError naming ``what``, plus ``detail()``). Exceptions of the types in ``ignore``
    count as "not yet" (a server still starting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except ignore:
            pass
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{detail()}" if detail else ""))


def demo_page(slug: str, base_url: str = "http://127.0.0.1:8765") -> bytes:
    return (SITE / "articles" / f"{slug}.html").read_bytes().replace(b"{{BASE_URL}}", base_url.encode())


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A copy of the repository's config with no feeds; tests write the feeds they need."""
    target = tmp_path / "config"
    shutil.copytree(REPO / "config", target)
    (target / "feeds.yaml").write_text("feeds: []\n")
    return target


def write_feeds(config_dir: Path, feeds: list[dict]) -> None:
    (config_dir / "feeds.yaml").write_text(yaml.safe_dump({"feeds": feeds}))


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


def _load_engines():
    """deploy/engines/engines.py, which `make engines` runs: the tests start the same engines the same way."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("engines", REPO / "deploy" / "engines" / "engines.py")
    module = sys.modules["engines"] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
    spec.loader.exec_module(module)
    return module


engines = _load_engines()


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


def es_settings(url: str, **overrides) -> config.ElasticsearchSettings:
    """The sink's settings for a test on the cluster at ``url``: short retries. $ES_CA_FILE: a cluster's own CA
    (its credentials come from NEWSMON_ES_API_KEY or NEWSMON_ES_USERNAME/PASSWORD, as in production)."""
    import os

    values = {"url": url, "ca_file": os.environ.get("ES_CA_FILE") or None, "backoff_max": 0.2, "give_up_after": 10.0}
    return config.ElasticsearchSettings(**{**values, **overrides})


@pytest.fixture
def es_prefix(es_url):
    """A fresh index prefix on the search cluster; its template and indices are deleted afterwards."""
    import uuid

    from sinks.elasticsearch import EsIndex, ServiceError

    name = f"newsmon-test-{uuid.uuid4().hex[:8]}"
    yield name
    index = EsIndex(es_settings(es_url, index_prefix=name))
    try:
        for concrete in index._call("GET", f"/{name}-*/_alias"):
            index._call("DELETE", f"/{concrete}")
        index._call("DELETE", f"/_index_template/{name}")
    except ServiceError as exc:  # a test that never connected installed no template
        assert "404" in str(exc), exc
    finally:
        index.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def start_server(env: dict) -> tuple[str, object]:
    """``newsmon serve`` in a subprocess; its base URL once /healthz answers, and the process."""
    import subprocess
    import urllib.request

    port = free_port()
    proc = subprocess.Popen(NEWSMON + ["serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"newsmon serve exited {proc.returncode}: {proc.stderr.read()}")
        with urllib.request.urlopen(base + "/healthz", timeout=2) as answer:  # 401 with a token: still up
            return answer.status == 200

    try:
        wait_for(up, 30, "newsmon serve to answer /healthz", ignore=(OSError,))
    except BaseException:
        proc.kill()
        raise
    return base, proc


@pytest.fixture(scope="session")
def api_server(demo_data) -> str:
    """The base URL of `newsmon serve` over the demo data."""
    base, proc = start_server(demo_data)
    yield base
    proc.terminate()
    proc.wait(timeout=10)
