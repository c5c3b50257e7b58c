"""Throughput of extract + language + tag + index, beside bare ``trafilatura.extract`` on the same pages.

    python bench/pipeline.py                 # the bundled demo pages
    python bench/pipeline.py DIR [DIR ...]   # every .html / .html.gz file below these directories

The pipeline rows run the real embedded runner (SQLite bus, every stage, SQLite
FTS5 index) with the network left out: pages are served from memory to the
extract stage. Prints pages/s for each variant and its ratio to bare extraction
measured just before and after it in the same run (the machine's speed drifts).
Target (issue #2): pipeline >= 0.8 x bare extraction.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trafilatura

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from enrich.keywords import KeywordTagger  # noqa: E402
from ingest.extract import Extractor, decode_html, extract_html  # noqa: E402
from ingest.http import FetchResult  # noqa: E402
from newsmon import settings as config  # noqa: E402
from newsmon.app.runtime import Progress, StageThreads, stage_executors  # noqa: E402
from newsmon.app.stages import DISCOVERED, Resources, build_stages  # noqa: E402
from newsmon.bus import SqliteBus  # noqa: E402
from newsmon.record import Article, article_id  # noqa: E402
from sinks.sqlite_index import SqliteIndex  # noqa: E402


class MemoryFetcher:
    """Stands in for the HTTP fetcher: the benchmark measures processing, not the network."""

    def __init__(self, pages: dict[str, bytes]):
        self.pages = pages

    def get(self, url: str, **_) -> FetchResult:
        return FetchResult(url, 200, httpx.Headers({"content-type": "text/html"}), self.pages[url], [], None)


def load_pages(dirs: list[str]) -> list[tuple[str, bytes]]:
    if not dirs:
        site = REPO / "newsmon" / "app" / "demo_site" / "articles"
        return [(p.name, p.read_bytes().replace(b"{{BASE_URL}}", b"http://127.0.0.1:8765")) for p in sorted(site.glob("*.html"))]
    pages = []
    for d in dirs:
        for path in sorted(Path(d).rglob("*")):
            if path.name.endswith(".html"):
                pages.append((str(path), path.read_bytes()))
            elif path.name.endswith(".html.gz"):
                pages.append((str(path), gzip.decompress(path.read_bytes())))
    return pages


def bare_rate(pages: list[tuple[str, bytes]], count: int) -> float:
    trafilatura.extract(pages[0][1])  # warm up
    started = time.perf_counter()
    for i in range(count):
        trafilatura.extract(pages[i % len(pages)][1])
    return count / (time.perf_counter() - started)


def pipeline_rate(pages: list[tuple[str, bytes]], count: int, extract_workers: int, processes: int) -> float:
    data = Path(tempfile.mkdtemp())
    settings = config.load(REPO / "config", data, overrides={"extract.workers": extract_workers, "runner.processes": processes,
                                                                  "fetch.robots": False})  # pages come from memory
    memory = {}
    bus = SqliteBus(data / "queue.db")
    for i in range(count):
        name, raw = pages[i % len(pages)]
        url = f"http://bench.example/{i}/{Path(name).name}"
        memory[url] = raw
        bus.publish(DISCOVERED, article_id(url), Article(id=article_id(url), url=url, canonical_url=url, feed_url="bench").to_json())
    bus.flush()
    extractor = Extractor(settings.pipeline.extract)
    res = Resources(bus, fetcher=MemoryFetcher(memory), extractor=extractor, index=SqliteIndex(data / "index.db"),
                    tagger=KeywordTagger(settings.topics))
    stages = build_stages(settings, res, ("extract", "language", "tag", "index"))  # issue #2's pipeline
    progress = Progress()
    with stage_executors(stages, settings) as executors:
        extractor(decode_html(pages[0][1])[0])  # start the workers before the clock does
        started = time.perf_counter()
        with StageThreads(stages, res, settings, progress, executors, lambda: None) as workers:
            while not workers.idle():
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
    extractor.close()
    assert res.index.count() == count == progress.done["index"], (res.index.count(), progress)
    res.index.close()
    bus.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="*", help="directories of .html/.html.gz pages (default: the demo pages)")
    parser.add_argument("--count", type=int, default=1000,
                        help="pages per variant and round (the page set is cycled; enough for the stages to reach "
                             "their steady state, as a running pipeline is, rather than measure filling and draining)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; variants are interleaved and the median kept")
    args = parser.parse_args()
    pages = load_pages(args.dirs)
    if not pages:
        sys.exit("no .html or .html.gz pages found")
    settings = config.load(REPO / "config", Path(tempfile.mkdtemp()))
    print(f"{len(pages)} distinct pages, {sum(len(r) for _, r in pages) / len(pages) / 1024:.1f} KB on average, "
          f"{args.count} per variant; {len(settings.topics)} topics", flush=True)
    variants = {
        "bare trafilatura.extract, 1 process": lambda: bare_rate(pages, args.count),
        "pipeline, all in one process": lambda: pipeline_rate(pages, args.count, 0, 0),
        "pipeline, default (2 extract + 2 language workers)": lambda: pipeline_rate(pages, args.count, 2, 2),
    }
    # This machine's speed drifts by up to 1.5x over minutes: each round measures bare extraction
    # before and after each pipeline variant, and a variant's ratio is to the mean of those two.
    bare_label = "bare trafilatura.extract, 1 process"
    rates: dict[str, list[float]] = {label: [] for label in variants}
    ratios: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(args.rounds):
        before = variants[bare_label]()
        rates[bare_label].append(before)
        for label, measure in variants.items():
            if label == bare_label:
                continue
            rate = measure()
            after = variants[bare_label]()
            rates[label].append(rate)
            rates[bare_label].append(after)
            ratios[label].append(rate / ((before + after) / 2))
            before = after
    print(f"\n{'variant':<52} {'pages/s':>9} {'x bare':>8}   per round (x bare)")
    for label in variants:
        rate = statistics.median(rates[label])
        if label == bare_label:
            print(f"{label:<52} {rate:>9.1f} {1.0:>8.2f}   {' '.join(f'{r:.0f}' for r in rates[label])} pages/s")
        else:
            print(f"{label:<52} {rate:>9.1f} {statistics.median(ratios[label]):>8.2f}   "
                  f"{' '.join(f'{r:.2f}' for r in ratios[label])}")

    # Tagging cost with few and with many keywords (Aho-Corasick: should barely change).
    texts = [extract_html(decode_html(raw)[0]).text for _, raw in pages]
    small = KeywordTagger({"t": config.Topic(keywords=[f"word{i}" for i in range(10)])})
    large = KeywordTagger({f"t{i}": config.Topic(keywords=[f"word{i}", f"two words {i}"]) for i in range(5000)})
    print()
    for label, tagger in (("10 keywords", small), ("10,000 keywords", large)):
        started = time.perf_counter()
        for _ in range(50):
            for text in texts:
                tagger.find(text, "en")
        per_page = (time.perf_counter() - started) / (50 * len(texts)) * 1e6
        print(f"tagging with {label:<16} {per_page:>8.1f} µs/page")


if __name__ == "__main__":
    main()
