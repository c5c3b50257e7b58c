"""Alert rule evaluation with many subscribers, and alert latency, in one run.

    python bench/alerts.py [--subscribers 10000] [--alerts 200]

1. Rule evaluation: the demo articles (extracted, language-detected, tagged once) against
   N subscribers' rules (topic tags with language filters, queries with words, phrases,
   OR, exclusions and prefixes drawn from the articles' own vocabulary, so some match).
   The rule index beside checking every rule for every article, on the same rules.
2. Latency in immediate mode: tagged articles published on the embedded bus one at a
   time; the alert stage (embedded runner, dispatcher) delivers each to a signed webhook
   on 127.0.0.1. Tagged -> delivered, p50/p95/max.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from enrich.keywords import KeywordTagger  # noqa: E402
from enrich.language import detect_language  # noqa: E402
from ingest.extract import decode_html, extract_html  # noqa: E402
from newsmon import settings as config  # noqa: E402
from newsmon.app.runtime import run  # noqa: E402
from newsmon.app.stages import TAGGED  # noqa: E402
from newsmon.bus import SqliteBus  # noqa: E402
from newsmon.record import Article, article_id  # noqa: E402
from sinks.alert_rules import RuleIndex, _evaluate, _Words  # noqa: E402
from tests.support.receivers import WebhookReceiver  # noqa: E402


def demo_articles(settings: config.Settings) -> list[Article]:
    tagger = KeywordTagger(settings.topics)
    out = []
    for page in sorted((REPO / "newsmon" / "app" / "demo_site" / "articles").glob("*.html")):
        url = f"https://news.example.org/{page.name}"
        extracted = extract_html(decode_html(page.read_bytes())[0], url=url)
        article = Article(id=article_id(url), url=url, canonical_url=url, feed_url="https://news.example.org/rss.xml",
                          source=extracted.sitename or "Example", title=extracted.title, text=extracted.text)
        out.append(tagger.tag(detect_language(article, settings.pipeline.language)))
    return out


def subscribers(count: int, articles: list[Article], topics: list[str], seed: int = 7) -> list[config.Subscriber]:
    rng = random.Random(seed)
    vocabulary = sorted({w for a in articles for w in _Words(a).unique if len(w) > 3 and not w.isdigit()})
    languages = sorted({a.language for a in articles if a.language})
    subs = []
    for n in range(count):
        kind = n % 4
        if kind == 0:
            rule = {"tags": [rng.choice(topics)], "languages": [rng.choice(languages)]}
        elif kind == 1:
            rule = {"query": f"{rng.choice(vocabulary)} {rng.choice(vocabulary)}"}
        elif kind == 2:
            rule = {"query": f'"{rng.choice(vocabulary)} {rng.choice(vocabulary)}" OR {rng.choice(vocabulary)} '
                             f"-{rng.choice(vocabulary)}"}
        else:
            rule = {"tags": [rng.choice(topics)], "query": f"{rng.choice(vocabulary)[:5]}*"}
        subs.append(config.Subscriber(name=f"s{n}", channel="file://bench.jsonl", rules=[rule]))
    return subs


def evaluation(articles: list[Article], subs: list[config.Subscriber], rounds: int = 5) -> None:
    index = RuleIndex(subs)
    started = time.perf_counter()
    for _ in range(rounds):
        matched = sum(len(index.match(a)) for a in articles)
    indexed = rounds * len(articles) / (time.perf_counter() - started)
    candidates = statistics.mean(len(index.candidates(a, _Words(a))) for a in articles)

    every_rule = [c for key_rules in index._by_key.values() for c in key_rules]
    unique = list({id(c): c for c in every_rule}.values())
    started = time.perf_counter()
    naive_matched = 0
    for article in articles:
        words = _Words(article)
        found = {c.subscriber for c in unique if _evaluate(c, article, words)}
        naive_matched += len(found)
    naive = len(articles) / (time.perf_counter() - started)
    assert naive_matched == matched, (naive_matched, matched)  # the same answers both ways

    print(f"rule evaluation: {len(subs):,} subscribers, {len(articles)} demo articles, "
          f"{matched / len(articles):.0f} matches per article on average")
    print(f"{'method':<36} {'articles/s':>11} {'ms/article':>11} {'x every rule':>13}")
    print(f"{'rule index (newsmon)':<36} {indexed:>11,.1f} {1000 / indexed:>11.2f} {indexed / naive:>13.1f}")
    print(f"{'every rule for every article':<36} {naive:>11,.1f} {1000 / naive:>11.2f} {1.0:>13.1f}")
    print(f"  rules checked per article through the index: {candidates:,.0f} of {len(unique):,}")


def latency(articles: list[Article], count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, WebhookReceiver(["bench-secret"]) as hook:
        data = Path(tmp)
        (data / "config").mkdir()
        for name in ("keywords.yaml", "pipeline.yaml"):
            (data / "config" / name).write_text((REPO / "config" / name).read_text())
        (data / "config" / "feeds.yaml").write_text("feeds: []\n")
        (data / "config" / "subscribers.yaml").write_text(
            f"subscribers:\n  - name: bench\n    channel: {hook.url}\n    secret_env: BENCH_SECRET\n"
            "    rate_limit: 100000\n    rules: [{query: the OR la OR der OR el OR il OR de OR het OR o}]\n")
        os.environ["BENCH_SECRET"] = "bench-secret"  # the alert stage reads secrets from the environment
        settings = config.load(config_dir=data / "config", data_dir=data / "data")
        stop = threading.Event()
        thread = threading.Thread(target=run, args=(settings, []), kwargs={"names": ["alert"], "once": False,
                                                                          "stop": stop}, daemon=True)
        thread.start()
        bus = SqliteBus(data / "data" / "queue.db")
        published: dict[str, float] = {}
        rng = random.Random(11)
        vocabulary = sorted({w for a in articles for w in a.text.split() if w.isalpha()})
        for n in range(-1, count):  # n = -1: a warm-up alert, before the clock starts
            base = articles[n % len(articles)]
            url = f"{base.url}?n={n}"
            # A story of its own each time (the same text twice would be a duplicate, rightly not alerted).
            story = " ".join(rng.choice(vocabulary) for _ in range(300))
            article = replace(base, id=article_id(url), url=url, canonical_url=url, text=f"The edition {n}. {story}")
            published[article.id] = time.time()
            bus.publish(TAGGED, article.id, article.to_json())
            bus.flush()
            if n < 0:
                deadline = time.monotonic() + 60
                while not hook.accepted and time.monotonic() < deadline:
                    time.sleep(0.05)
                hook.accepted.clear()
                hook.arrived.clear()
                continue
            time.sleep(0.05)
        deadline = time.monotonic() + 60
        while len(hook.accepted) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join(timeout=30)
        bus.close()
    delays = sorted(at - published[alert["items"][0]["id"]] for alert, at in zip(hook.accepted, hook.arrived))
    pct = statistics.quantiles(delays, n=100)
    print(f"\nlatency, immediate mode: {len(delays)} of {count} alerts delivered to a signed webhook on 127.0.0.1")
    print(f"  tagged -> delivered: p50 {1000 * pct[49]:.0f} ms, p95 {1000 * pct[94]:.0f} ms, "
          f"max {1000 * delays[-1]:.0f} ms (goal: under 2,000 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--alerts", type=int, default=200)
    args = parser.parse_args()
    settings = config.load(config_dir=REPO / "config")
    articles = demo_articles(settings)
    evaluation(articles, subscribers(args.subscribers, articles, sorted(settings.topics)))
    latency(articles, args.alerts)


if __name__ == "__main__":
    main()
