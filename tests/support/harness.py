"""Where things are and how tests drive newsmon: the repository's paths, the command line, the demo
pages, feeds.yaml, ``newsmon serve`` in a subprocess, free ports, and waiting with a deadline."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent.parent
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


def write_feeds(config_dir: Path, feeds: list[dict]) -> None:
    (config_dir / "feeds.yaml").write_text(yaml.safe_dump({"feeds": feeds}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict) -> tuple[str, subprocess.Popen]:
    """``newsmon serve`` in a subprocess; its base URL once /healthz answers, and the process."""
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


def spaced(starts: list[float], delay: float) -> bool:
    """Request arrivals a server saw keep ``delay`` between starts: over the whole run, and each gap at
    least half of it. (A server thread stamps an arrival when it gets to run: on a loaded machine one
    stamp comes late and the next gap looks short, so a strict minimum gap would measure the scheduler.)"""
    starts = sorted(starts)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    return bool(gaps) and starts[-1] - starts[0] >= 0.95 * delay * len(gaps) and min(gaps) >= delay / 2
