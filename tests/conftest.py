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


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """kafka://… of a real Kafka-protocol broker: $KAFKA_BOOTSTRAP if set, else librdkafka's mock cluster."""
    import os
    import subprocess

    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield "kafka://" + os.environ["KAFKA_BOOTSTRAP"].removeprefix("kafka://")
        return
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "kafka_mock.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()  # the helper prints its address first, or exits
    if not line:
        proc.kill()
        pytest.fail("the mock Kafka cluster did not start")
    yield "kafka://" + line
    proc.stdin.close()
    proc.wait(timeout=10)


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
