"""Latency of ``GET /api/search`` on the embedded index with many articles, and the export of a whole query.

    python bench/search_api.py [--articles 100000] [--rounds 20] [--export]

Builds a SQLite index of synthetic-but-realistic articles: seven languages, sentences drawn
from the bundled demo articles with a third of their words swapped for others of the same
language (so the vocabulary and term frequencies look like news, and texts do not repeat),
300 sources, dates over a year, topics tagged by the real keyword tagger, and 5 % near-
duplicate copies (the same story, trimmed, from another source). Then it starts
``newsmon serve`` in its own process and times typical analyst queries over HTTP (keep-alive,
one at a time), each query ``--rounds`` times after one warm-up round, and prints p50/p95 per
query and overall beside the target: first with the answer cache off (every search counts its
matches), then on (a search repeated while the index is unchanged). ``--export`` also streams every article as CSV and NDJSON
and reports rows/s and the server's resident memory before and at its peak.
Target (issue #6): p95 < 50 ms with 100,000 articles.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from enrich.keywords import KeywordTagger  # noqa: E402
from ingest.extract import decode_html, extract_html  # noqa: E402
from newsmon import settings as config  # noqa: E402
from newsmon.dates import to_iso  # noqa: E402
from newsmon.record import Article, article_id  # noqa: E402
from sinks.sqlite_index import SqliteIndex  # noqa: E402

SITE = REPO / "newsmon" / "app" / "demo_site"
QUERIES = [  # (label, parameters): what analysts type, with and without filters
    ("otan, lang=fr", {"q": "otan", "lang": "fr"}),
    ("securite", {"q": "securite"}),
    ("ukraine, sort=date", {"q": "ukraine", "sort": "date"}),
    ("NATO OR OTAN", {"q": "NATO OR OTAN"}),
    ("klima*, lang=de", {"q": "klima*", "lang": "de"}),
    ('"banque centrale"', {"q": '"banque centrale"'}),
    ("energie -solar", {"q": "energie -solar"}),
    ("inflation since 2026-06", {"q": "inflation", "since": "2026-06-01"}),
    ("otan, page 5", {"q": "otan", "page": "5"}),
    ("tag=nato (no words)", {"tag": "nato"}),
    ("source + tag=economy", {"source": "Source 7", "tag": "economy"}),
    ("everything (home page)", {}),
]


# Share of articles about each topic (a general news stream), and how often its keywords recur in one.
TOPIC_RATES = {"nato": 0.03, "ukraine": 0.05, "climate": 0.03, "energy": 0.03, "elections": 0.03, "ai": 0.02,
               "economy": 0.04, "security": 0.05}


def _language_words() -> dict[str, tuple[list[str], list[str]]]:
    """Per language, from the demo articles: function words (in several of its articles, or the 40
    most frequent where it has one article), most frequent first, and the other words."""
    import json
    from collections import Counter

    counts: dict[str, Counter] = {}
    spread: dict[str, Counter] = {}
    for entry in json.loads((SITE / "MANIFEST.json").read_text()):
        raw = (SITE / "articles" / f"{entry['slug']}.html").read_bytes()
        words = re.findall(r"\w+", extract_html(decode_html(raw)[0]).text.lower())  # some pages: legacy encodings
        counts.setdefault(entry["lang"], Counter()).update(words)
        spread.setdefault(entry["lang"], Counter()).update(set(words))
    out = {}
    for lang, c in counts.items():
        ranked = [w for w, _ in c.most_common()]
        several = max(spread[lang].values()) > 1
        common = [w for w in ranked if spread[lang][w] > 1] if several else ranked[:40]
        out[lang] = (common, [w for w in ranked if w not in set(common)])
    return out


def _pseudo_words(rng: random.Random, count: int) -> list[str]:
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"] + ["an", "er", "in", "or", "us", "ei", "ou"]
    return ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(count)]


def make_articles(count: int, seed: int = 6):
    """Articles whose words follow Zipf's law over a 30,000-word vocabulary per language (the demo
    articles' words as the frequent ones), with topic keywords at news-stream rates."""
    rng = random.Random(seed)
    settings = config.load(REPO / "config", Path(tempfile.gettempdir()))
    languages = _language_words()
    vocab = {}
    for lang, (common, other) in languages.items():  # function words lead; the demo's content words are rare
        rest = _pseudo_words(rng, 30_000 - len(common) - len(other))
        for position, word in enumerate(other):
            rest.insert(500 + position * 37 % len(rest), word)
        vocab[lang] = common + rest
    weights = list(itertools.accumulate(1 / (rank + 1) ** 1.07 for rank in range(30_000)))
    start = datetime(2025, 12, 1, tzinfo=timezone.utc)
    recent: list[Article] = []
    for n in range(count):
        url = f"https://site{n % 300}.example.org/news/{n}"
        source = f"Source {n % 300}"
        if recent and rng.random() < 0.05:  # a near-duplicate: a recent story, trimmed, from elsewhere
            original = rng.choice(recent)
            text, lang = original.text.rsplit(". ", 1)[0] + ".", original.language
            title, published = original.title, original.published
        else:
            lang = rng.choice(list(vocab))
            words = rng.choices(vocab[lang], cum_weights=weights, k=rng.randint(250, 450))
            for topic, rate in TOPIC_RATES.items():
                if rng.random() < rate:
                    terms = settings.topics[topic].keywords + settings.topics[topic].languages.get(lang, [])
                    for _ in range(rng.randint(1, 4)):
                        words.insert(rng.randrange(len(words)), rng.choice(terms))
            cuts = sorted(rng.sample(range(8, len(words) - 1), len(words) // 18))
            sentences = [" ".join(words[a:b]).capitalize() + "." for a, b in zip([0, *cuts], [*cuts, len(words)])]
            text = " ".join(sentences)
            title = " ".join(rng.choices(vocab[lang], cum_weights=weights, k=rng.randint(5, 10))).capitalize()
            published = to_iso(start + timedelta(seconds=rng.randrange(365 * 86400)))
        article = Article(id=article_id(url), url=url, canonical_url=url, feed_url=url.rsplit("/", 2)[0] + "/feed",
                          source=source, title=title, text=text, language=lang, published=published)
        recent = (recent + [article])[-50:]
        yield article


def build_index(path: Path, count: int) -> float:
    settings = config.load(REPO / "config", path.parent)
    tagger = KeywordTagger(settings.topics)
    index = SqliteIndex(path)
    started = time.perf_counter()
    articles = make_articles(count)
    while batch := [tagger.tag(a) for a in itertools.islice(articles, 1000)]:
        index.write(batch)
    index.close()
    return time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--articles", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--export", action="store_true", help="also time CSV and NDJSON exports of everything")
    parser.add_argument("--data", type=Path, help="keep the index in this directory and reuse it on later runs")
    parser.add_argument("--export-rows", type=int, metavar="N",
                        help="only export: copy the index's articles until it holds N (e.g. 1000000), then stream "
                             "every one as CSV and NDJSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "data"
        data.mkdir(parents=True, exist_ok=True)
        if (data / "index.db").exists():
            print(f"reusing {data / 'index.db'}")
        else:
            built = build_index(data / "index.db", args.articles)
            print(f"indexed {args.articles:,} articles in {built:.0f} s ({args.articles / built:,.0f}/s)")
        print(f"index.db {(data / 'index.db').stat().st_size / 2**20:,.0f} MB")
        if args.export_rows:
            big = Path(tmp) / "big"
            big.mkdir()
            _grow(data / "index.db", big / "index.db", args.export_rows)
            with _server(big, REPO / "config") as (client, pid):
                _export(client, pid)
            return
        timings: dict[tuple[str, str], list[float]] = {}
        matches: dict[str, int] = {}
        for mode, entries in (("uncached", 0), ("cached", 256)):
            config_dir = Path(tmp) / f"config-{mode}"
            shutil.copytree(REPO / "config", config_dir)
            with (config_dir / "pipeline.yaml").open("a") as extra:  # the last serve: wins
                extra.write(f"\nserve: {{cache_entries: {entries}}}\n")
            with _server(data, config_dir) as (client, pid):
                for round_ in range(args.rounds + 1):
                    for label, params in QUERIES:
                        started = time.perf_counter()
                        answer = client.get("/api/search", params=params)
                        elapsed = (time.perf_counter() - started) * 1000
                        answer.raise_for_status()
                        matches[label] = answer.json()["articles"]
                        if round_:  # the first round warms the page cache (and fills the answer cache)
                            timings.setdefault((mode, label), []).append(elapsed)
                rss = _rss_mb(pid)
                if args.export and mode == "cached":
                    _export(client, pid)
        print(f"\n{'query':<26} {'matches':>8} {'uncached p50':>13} {'p95':>6} {'repeated p50':>13} {'p95':>6}")
        for label, _ in [*QUERIES, ("all queries", None)]:
            cells = []
            for mode in ("uncached", "cached"):
                values = ([v for (m, _), vs in timings.items() if m == mode for v in vs] if label == "all queries"
                          else timings[(mode, label)])
                cells.append(f"{statistics.median(values):>13.1f} {_pct(values, 95):>6.1f}")
            print(f"{label:<26} {matches.get(label, ''):>8,} {cells[0]} {cells[1]}" if label in matches else
                  f"{label:<26} {'':>8} {cells[0]} {cells[1]}")
        every = [v for (m, _), vs in timings.items() if m == "uncached" for v in vs]
        print(f"target p95 < 50 ms: uncached p95 is {_pct(every, 95) / 50:.2f}x of it; server RSS {rss:.0f} MB")


@contextmanager
def _server(data: Path, config_dir: Path):
    """``newsmon serve`` over ``data`` in its own process: a keep-alive client for it, and its pid."""
    port = _free_port()
    env = {**os.environ, "NEWSMON_DATA_DIR": str(data), "NEWSMON_CONFIG_DIR": str(config_dir)}
    env.pop("NEWSMON_API_TOKEN", None)
    server = subprocess.Popen([sys.executable, "-m", "newsmon.app.cli", "serve", "--port", str(port)], env=env,
                              stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.get("/healthz")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            yield client, server.pid
    finally:
        server.terminate()
        server.wait(timeout=10)


def _grow(source: Path, target: Path, rows: int) -> None:
    """A copy of the index with its articles repeated (new ids and URLs) until it holds ``rows``: for
    exports, which read the articles and their facts, not the full-text index (not filled for copies)."""
    import sqlite3

    shutil.copy(source, target)
    db = sqlite3.connect(target, isolation_level=None)
    have = db.execute("SELECT COUNT(*) FROM articles").fetchone()[0]
    started = time.perf_counter()
    db.execute("DROP TRIGGER articles_ai")  # recreated when SqliteIndex opens it again
    for copy in range(1, -(-rows // have)):
        wanted = min(have, rows - copy * have)
        db.execute("BEGIN")
        db.execute("INSERT INTO articles (id, url, source, title, text, language, published, indexed, record) "
                   f"SELECT id || '-{copy}', url || '?copy={copy}', source, title, text, language, published, indexed, "
                   f"json_set(record, '$.id', id || '-{copy}') FROM articles WHERE rowid <= ?", (wanted,))
        db.execute("INSERT INTO article_facts SELECT a.rowid, a.id, 1, coalesce(a.language, 'und'), a.source, "
                   "a.published, NULL FROM articles a WHERE a.id LIKE ?", (f"%-{copy}",))
        db.execute("COMMIT")
    total = db.execute("SELECT COUNT(*) FROM articles").fetchone()[0]
    db.close()
    print(f"copied to {total:,} articles in {time.perf_counter() - started:.0f} s, "
          f"{target.stat().st_size / 2**30:.1f} GB")


def _export(client: httpx.Client, pid: int) -> None:
    for suffix in ("csv", "ndjson"):
        before = _rss_mb(pid)
        started, rows, nbytes = time.perf_counter(), 0, 0
        with client.stream("GET", f"/api/search.{suffix}") as answer:
            for chunk in answer.iter_bytes():
                rows += chunk.count(b"\n")
                nbytes += len(chunk)
        elapsed = time.perf_counter() - started
        print(f"export {suffix:<6} {rows - (suffix == 'csv'):>9,} rows {nbytes / 2**20:>7,.0f} MB in "
              f"{elapsed:5.1f} s ({rows / elapsed:,.0f} rows/s); server RSS {before:.0f} MB before, "
              f"peak {_rss_mb(pid, 'VmHWM'):.0f} MB")

if __name__ == "__main__":
    main()
