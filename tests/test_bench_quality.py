"""Smoke runs of the quality benchmarks on sets made here (the real ones stay outside the repository)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.harness import EURONEWS_SLUG, demo_page
from tests.test_metadata import TITLE, euronews

REPO = Path(__file__).resolve().parent.parent


def _snippet_set(root: Path) -> Path:
    (root / "eval").mkdir(parents=True)
    (root / "eval" / "euronews.html").write_bytes(demo_page(EURONEWS_SLUG))
    (root / "evaldata.json").write_text(json.dumps({"http://127.0.0.1:8765/articles/x.html": {
        "file": "euronews.html", "with": ["Arctic Sentry", "Boris Pistorius"],
        "without": ["À découvrir également", "Abonnez-vous à nos newsletters"]}}))
    return root


def _news_set(root: Path) -> Path:
    country = root / "fr"
    country.mkdir(parents=True)
    (country / "Euronews_2026_02_12.html").write_text(euronews(declares_author=False), encoding="utf-8")
    (country / "meta.info").write_text(json.dumps({"Euronews_2026_02_12.html": {
        "url": f"http://127.0.0.1:8765/articles/{EURONEWS_SLUG}.html", "crawl_date": "2026-02-12 18:00:00"}}))
    (country / "Euronews.json").write_text(json.dumps({"V1": {
        "title": TITLE, "authors": ["Euronews"], "publishing_date": "2026-02-12 17:45:00+01:00",
        "body": {"summary": [], "sections": [{"headline": [], "paragraphs": [
            "Le ministre allemand de la Défense, Boris Pistorius, a annoncé que l'Allemagne allait livrer cinq "
            "missiles intercepteurs supplémentaires, appelés PAC-3, à l'Ukraine."]}]}}}))
    return root


@pytest.mark.slow
def test_quality_bench_scores_every_system_in_one_table(tmp_path):
    sets = [_snippet_set(tmp_path / "snippets"), _news_set(tmp_path / "news")]
    out = subprocess.run([sys.executable, str(REPO / "bench" / "quality.py"), *map(str, sets), "--speed", "1"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    quality, _, speed = out.partition("\nspeed over")
    rows = {line.split()[0]: line.split() for line in quality.splitlines() if line.split()}
    assert "2 pages: 1 in snippet sets, 1 in news sets" in out
    # newsmon: both snippets found, no chrome; on the news page title, date and authors right.
    assert rows["newsmon"][1:4] == ["1.000", "1.000", "1.000"]
    assert rows["newsmon"][7:10] == ["1.000", "1.000", "1.000"]
    # trafilatura alone reads the byline's chrome as the author ("Par Euronews Mis à jour").
    assert rows["trafilatura"][9] == "0.000"
    assert rows["htmldate"][1:4] == ["-", "-", "-"] and rows["htmldate"][8] == "1.000"  # dates only
    assert "newsmon extract (all of it)" in speed and "bare + language + tags" in speed


@pytest.mark.slow
def test_feeds_differential_counts_crashes_and_lost_entries(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "ok.xml").write_text('<rss version="2.0"><channel><title>t</title><item><title>A</title>'
                                   "<link>https://x.example/a</link></item></channel></rss>")
    (corpus / "bad-link.xml").write_text('<rss version="2.0"><channel><title>t</title><item><title>B</title>'
                                         "<link>http://example.c[o.test/</link></item><item><title>C</title>"
                                         "<link>https://x.example/c</link></item></channel></rss>")
    (corpus / "atom-id.xml").write_text('<feed xmlns="http://www.w3.org/2005/Atom"><entry><title>D</title>'
                                        "<id>https://x.example/d</id></entry></feed>")
    out = subprocess.run([sys.executable, str(REPO / "bench" / "feeds_diff.py"), str(corpus)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "3 documents, 3 entries that feedparser links" in out
    assert "crashes: 0" in out and "documents with lost entries: 0 (0 entries)" in out
