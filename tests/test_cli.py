"""The newsmon command as an operator or analyst runs it, in subprocesses."""

import gzip
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ingest.urls import canonicalize
from newsmon.record import article_id
from tests.support.harness import EURONEWS_SLUG, NEWSMON, SITE, free_port, wait_for, write_feeds
from tests.support.sites import Page, TestSite, article_html, rss


@pytest.fixture
def env(config_dir, tmp_path):
    return {**os.environ, "NEWSMON_CONFIG_DIR": str(config_dir), "NEWSMON_DATA_DIR": str(tmp_path / "data"),
            "NEWSMON_ALLOW_PRIVATE": "127.0.0.1/32"}


def newsmon(env, *args, check=True, timeout=120):
    result = subprocess.run(NEWSMON + list(args), env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"newsmon {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


@pytest.mark.slow
def test_demo_then_search_and_stats(env):
    port = str(free_port())
    first = newsmon(env, "demo", "--port", port)
    assert "14 new articles discovered, 14 indexed, 0 failed" in first.stdout
    assert "per language: " in first.stdout and "fr 3" in first.stdout
    assert "Les alliés de l'OTAN" in first.stdout  # the example search

    second = newsmon(env, "demo", "--port", port)
    assert "0 new articles discovered, 0 indexed, 0 failed" in second.stdout
    assert "Index: 14 articles" in second.stdout

    hits = [json.loads(line) for line in newsmon(env, "search", "securite", "--lang", "fr", "--json").stdout.splitlines()]
    euronews = next(h for h in hits if EURONEWS_SLUG in h["url"])
    assert {"nato", "ukraine"} <= set(euronews["tags"])
    assert "OTAN" in euronews["matched_terms"]["nato"]
    assert "<mark>sécurité</mark>" in euronews["snippet"]
    assert euronews["id"] == article_id(canonicalize(euronews["url"])) and f"/articles/{EURONEWS_SLUG}.html" in euronews["url"]
    assert (euronews["title"], euronews["language"], euronews["published"], euronews["source"]) == (
        "Les alliés de l'OTAN promettent 35 milliards d'aide à l'Ukraine", "fr", "2026-02-12T16:45:00Z", "Euronews")
    assert "Arctic Sentry" in euronews["text"] and "Boris Pistorius" in euronews["text"]
    for chrome in ("Newsletter", "PUBLICITÉ", "Copier/coller", "À découvrir également"):
        assert chrome not in euronews["text"]

    human = newsmon(env, "search", '"Arctic Sentry"').stdout
    assert human.startswith("1. Les alliés de l'OTAN")
    stats = json.loads(newsmon(env, "stats", "--json").stdout)
    assert stats["index"]["articles"] == 14
    assert all(stage["backlog"] == 0 for stage in stats["stages"].values())

    # The demo's subscriber (NATO in French, config/subscribers.yaml) got the Euronews article once,
    # although the demo ran twice.
    alerts = [json.loads(line) for line in (Path(env["NEWSMON_DATA_DIR"]) / "alerts.jsonl").read_text().splitlines()]
    assert [a["items"][0]["url"].rsplit("/", 1)[1] for a in alerts] == [f"{EURONEWS_SLUG}.html"]
    assert "Alerts: demo-desk sent 1" in second.stdout and stats["alerts"]["subscribers"]["demo-desk"] == {"sent": 1}


def test_search_rejects_bad_dates_and_missing_index(env):
    result = newsmon(env, "search", "x", check=False)
    assert result.returncode == 1 and "no index yet" in result.stderr
    result = newsmon(env, "search", "x", "--since", "last tuesday", check=False)
    assert result.returncode == 2 and "'last tuesday' is not a date" in result.stderr


def test_invalid_config_names_file_key_and_reason(env, config_dir):
    (config_dir / "feeds.yaml").write_text("feeds:\n  - name: x\n    url: ftp://nope\n    interval: 1\n")
    result = newsmon(env, "run", "--once", check=False)
    assert result.returncode == 1
    assert "feeds.yaml: feeds[0].url: Value error, 'ftp://nope' is not an http(s) URL" in result.stderr
    assert "feeds.yaml: feeds[0].interval: Input should be greater than or equal to 10" in result.stderr


def test_extract_local_files(env, tmp_path):
    page = (SITE / "articles" / f"{EURONEWS_SLUG}.html").read_bytes()
    (tmp_path / "a.html.gz").write_bytes(gzip.compress(page))
    (tmp_path / "b.html").write_bytes(SITE.joinpath("articles", "klimaschutz-waermenetz-buerger-auenfeld.html").read_bytes())
    (tmp_path / "empty.html").write_bytes(b"<html><body></body></html>")
    result = newsmon(env, "extract", str(tmp_path / "a.html.gz"), str(tmp_path / "empty.html"), str(tmp_path / "b.html"),
                     "--json", check=False)
    assert result.returncode == 1  # one file failed; the others were still processed
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [os.path.basename(l["path"]) for l in lines] == ["a.html.gz", "empty.html", "b.html"]
    euronews, empty, german = lines
    assert euronews["language"] == "fr" and {"nato", "ukraine"} <= {t["topic"] for t in euronews["tags"]}
    assert "Arctic Sentry" in euronews["text"] and "PUBLICITÉ" not in euronews["text"]
    assert "no extractable text" in empty["error"]
    assert german["language"] == "de" and german["encoding"] == "cp1252" and "Bürger" in german["text"]


def _indexed(env) -> int:
    path = os.path.join(env["NEWSMON_DATA_DIR"], "index.db")
    if not os.path.exists(path):
        return 0
    import sqlite3
    with sqlite3.connect(path) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM articles").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def _pages(count, delay=0.02):
    routes, items = {}, []
    words = ["alliance", "ministers", "energy", "markets", "elections", "weather", "science", "football"]
    for i in range(count):
        paragraphs = [f"Report number {i} about {words[i % 8]} and {words[(i * 3) % 8]}: " + "Officials met on Monday to discuss the plan in detail. " * 4] * 3
        routes[f"/a{i}.html"] = Page(article_html(f"Story {i}", paragraphs), delay=delay)
        items.append((f"Story {i}", "{{BASE_URL}}/a%d.html" % i))
    routes["/feed.xml"] = Page(rss(items), headers={"Content-Type": "application/rss+xml"})
    return routes


def test_sigterm_stops_cleanly_and_commits(env, config_dir):
    with TestSite(_pages(6)) as site:
        write_feeds(config_dir, [{"name": "t", "url": site.url("/feed.xml"), "interval": 3600}])
        proc = subprocess.Popen(NEWSMON + ["run"], env=env, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: _indexed(env) == 6, 60, "6 articles indexed")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    stats = json.loads(newsmon(env, "stats", "--json").stdout)
    assert all(stage["backlog"] == 0 for stage in stats["stages"].values())


@pytest.mark.slow
def test_kill_9_at_any_moment_loses_nothing_and_duplicates_nothing(env, config_dir):
    count = 60
    (config_dir / "pipeline.yaml").write_text("extract:\n  workers: 1\nfetch:\n  concurrency: 4\nrunner:\n  batch_size: 5\n")
    with TestSite(_pages(count, delay=0.1)) as site:
        write_feeds(config_dir, [{"name": "t", "url": site.url("/feed.xml"), "interval": 3600}])
        at_kill = []
        # Kill the whole process group (runner and extraction workers, as a container kill) when the
        # index has reached each threshold: before anything is indexed, then in the middle of the stream.
        for threshold in (0, 10, 25, 40):
            proc = subprocess.Popen(NEWSMON + ["run", "--once"], env=env, stderr=subprocess.DEVNULL, start_new_session=True)
            before = _indexed(env)
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                if (threshold == 0 and os.path.exists(os.path.join(env["NEWSMON_DATA_DIR"], "queue.db"))) or \
                        (threshold and _indexed(env) >= threshold):
                    os.killpg(proc.pid, signal.SIGKILL)
                    at_kill.append(_indexed(env))
                    break
                time.sleep(0.02)
            proc.wait(timeout=30)
            assert _indexed(env) >= before
        assert sum(0 < n < count for n in at_kill) >= 2, f"indexed counts at kill time: {at_kill}"
        newsmon(env, "run", "--once")

    import sqlite3
    with sqlite3.connect(os.path.join(env["NEWSMON_DATA_DIR"], "index.db")) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM articles")]
        fts_rows = conn.execute("SELECT COUNT(*) FROM articles_fts_docsize").fetchone()[0]
        titles = sorted(r[0] for r in conn.execute("SELECT title FROM articles"))
    assert len(ids) == len(set(ids)) == count == fts_rows
    assert titles == sorted(f"Story {i}" for i in range(count))
    stats = json.loads(newsmon(env, "stats", "--json").stdout)
    assert stats["dead_letters"] == 0
    assert all(stage["backlog"] == 0 for stage in stats["stages"].values())
