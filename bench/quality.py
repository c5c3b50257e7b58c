"""Extraction quality: newsmon beside trafilatura's own configurations and htmldate, in one run, as one table.

    python bench/quality.py DIR [DIR ...]            # development sets unpacked under /tmp (never the repo)
    python bench/quality.py --half a DIR ...         # only the pages of one half (tune on a, report b)
    python bench/quality.py --dump out.jsonl DIR ... # every system's answer per page, for reading
    python bench/quality.py --speed 3 DIR ...        # then pages/s against bare trafilatura, 3 rounds

Each DIR is one of two kinds, told apart by what it holds:
- a snippet set (trafilatura's evaluation layout): ``evaldata.json`` mapping URL to
  ``{"file", "with": [...], "without": [...]}``, the pages in ``eval/`` or ``cache/``. Body scored
  as in trafilatura's own comparison: a "with" snippet found is a true positive, missing a false
  negative; a "without" snippet found is a false positive. Precision, recall, F1 over all snippets.
- a news set (fundus's layout): ``<cc>/<Publisher>_<YYYY_MM_DD>.html[.gz]`` with ``<cc>/<Publisher>.json``
  (expected ``title``, ``authors``, ``publishing_date``, ``body`` per parser version, the versions
  in the order of the pages' dates) and ``<cc>/meta.info`` (each page's URL). Body as token F1 and
  4-token shingle F1 (the measure of the article-extraction benchmark) against the expected summary,
  subheads and paragraphs; title equal after whitespace normalisation; date equal to the day (as
  the page states it, in its own time zone); authors equal as sets of names.

Systems: newsmon (``ingest.extract.extract_html``), bare trafilatura (``bare_extraction`` with its
defaults: comments included as ``extract`` does), ``favor_precision``, ``favor_recall``, and
htmldate's ``find_date`` with its defaults (extensive search: dates only).

``--speed``: what ``newsmon extract`` does per page (extraction, metadata, language, tags) against
bare ``trafilatura.extract`` alone and with the same language and tags, in one process, the three
interleaved in each round (the machine's speed drifts); prints the median pages/s and ratios.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import htmldate
import trafilatura

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from enrich.keywords import KeywordTagger  # noqa: E402
from enrich.language import detect_language  # noqa: E402
from ingest.extract import decode_html, extract_html  # noqa: E402
from ingest.pages import apply_extraction  # noqa: E402
from newsmon import settings as config  # noqa: E402
from newsmon.errors import ExtractionError  # noqa: E402
from newsmon.record import Article  # noqa: E402


@dataclass
class Page:
    key: str
    kind: str  # "snippets" or "news"
    url: str | None
    raw: bytes
    expected: dict


@dataclass
class Answer:
    text: str | None = None
    title: str | None = None
    authors: list[str] | None = None
    date: str | None = None  # YYYY-MM-DD as the page states it
    method: str | None = None


# -- the sets ------------------------------------------------------------------

def snippet_pages(root: Path) -> Iterator[Page]:
    for url, item in json.loads((root / "evaldata.json").read_text("utf-8")).items():
        path = next((root / d / item["file"] for d in ("eval", "cache") if (root / d / item["file"]).exists()), None)
        if path is not None:
            yield Page(f"{root.name}/{item['file']}", "snippets", url, path.read_bytes(), item)


def _version_order(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))


def news_pages(root: Path) -> Iterator[Page]:
    for expected_path in sorted(root.glob("*/*.json")):
        country = expected_path.parent
        meta = json.loads((country / "meta.info").read_text("utf-8")) if (country / "meta.info").exists() else {}
        versions = json.loads(expected_path.read_text("utf-8"))
        pages = sorted(p for p in country.glob(f"{expected_path.stem}_*.html*") if p.name.endswith((".html", ".html.gz")))
        for version, path in zip(sorted(versions, key=_version_order), pages):
            raw = path.read_bytes()
            url = meta.get(path.name, {}).get("url")
            yield Page(f"{root.name}/{country.name}/{path.name}", "news", url,
                       gzip.decompress(raw) if path.name.endswith(".gz") else raw, versions[version])


def load(dirs: list[Path], half: str | None) -> list[Page]:
    pages = []
    for root in dirs:
        if (root / "evaldata.json").exists():
            pages.extend(snippet_pages(root))
        elif any(root.glob("*/meta.info")):
            pages.extend(news_pages(root))
        else:
            sys.exit(f"{root}: neither a snippet set (evaldata.json) nor a news set (<cc>/meta.info)")
    if half:  # a fixed split by page name: the same halves on every machine and run
        pages = [p for p in pages if "ab"[hashlib.sha256(p.key.encode()).digest()[0] % 2] == half]
    return pages


# -- the systems -----------------------------------------------------------------

def _trafilatura(**options) -> Callable[[str, str | None], Answer]:
    def run(html: str, url: str | None) -> Answer:
        doc = trafilatura.bare_extraction(html, url=url, with_metadata=True, **options)
        if doc is None:
            return Answer()
        text = "\n".join(t for t in (doc.text, doc.comments) if t)
        authors = [a.strip() for a in (doc.author or "").split(";") if a.strip()]
        return Answer(text, doc.title, authors, (doc.date or "")[:10] or None, "trafilatura")
    return run


def _newsmon(html: str, url: str | None) -> Answer:
    try:
        page = extract_html(html, url)
    except ExtractionError:
        return Answer()
    return Answer(page.text, page.title, page.authors, (page.date or "")[:10] or None, page.method)


def _htmldate(html: str, url: str | None) -> Answer:
    return Answer(date=htmldate.find_date(html, url=url))


SYSTEMS: dict[str, Callable[[str, str | None], Answer]] = {
    "newsmon": _newsmon,
    "trafilatura": _trafilatura(),
    "favor_precision": _trafilatura(favor_precision=True),
    "favor_recall": _trafilatura(favor_recall=True),
    "htmldate": _htmldate,
}
DATES_ONLY = {"htmldate"}


# -- scoring ---------------------------------------------------------------------

_SPACE = re.compile(r"\s+")
# CJK characters are tokens of their own (those scripts put no spaces between words).
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]|[^\W\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]+")


def _norm(text: str | None) -> str:
    return _SPACE.sub(" ", text or "").strip()


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.casefold())


def _overlap_f1(got: Counter, want: Counter) -> float:
    common = sum((got & want).values())
    if not common:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(want.values())
    return 2 * precision * recall / (precision + recall)


def _shingles(tokens: list[str], n: int = 4) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(max(1, len(tokens) - n + 1)))


def expected_body(expected: dict) -> str:
    body = expected.get("body") or {}
    parts = list(body.get("summary") or [])
    for section in body.get("sections") or []:
        parts += list(section.get("headline") or []) + list(section.get("paragraphs") or [])
    return "\n".join(parts)


def _day(value: str | None) -> str | None:
    return value[:10] if value else None


@dataclass
class Score:
    tp: int = 0
    fn: int = 0
    fp: int = 0
    token_f1: list[float] = field(default_factory=list)
    shingle_f1: list[float] = field(default_factory=list)
    title: list[bool] = field(default_factory=list)
    date: list[bool] = field(default_factory=list)
    authors: list[bool] = field(default_factory=list)
    seconds: float = 0.0
    pages: int = 0

    def add(self, page: Page, answer: Answer, dates_only: bool = False) -> dict:
        verdict = {}
        if page.kind == "snippets":
            if dates_only:
                return verdict
            text = _norm(answer.text)
            found = [_norm(s) in text for s in page.expected["with"]] if text else [False] * len(page.expected["with"])
            leaked = [bool(text) and _norm(s) in text for s in page.expected["without"]]
            self.tp += sum(found)
            self.fn += len(found) - sum(found)
            self.fp += sum(leaked)
            verdict.update(missed=[s for s, ok in zip(page.expected["with"], found) if not ok],
                           leaked=[s for s, bad in zip(page.expected["without"], leaked) if bad])
            return verdict
        want = page.expected
        if not dates_only:
            got_tokens, want_tokens = _tokens(answer.text or ""), _tokens(expected_body(want))
            self.token_f1.append(_overlap_f1(Counter(got_tokens), Counter(want_tokens)))
            self.shingle_f1.append(_overlap_f1(_shingles(got_tokens), _shingles(want_tokens)))
            self.title.append(_norm(answer.title) == _norm(want.get("title")))
            self.authors.append({_norm(a) for a in answer.authors or []} == {_norm(a) for a in want.get("authors") or []})
            verdict.update(token_f1=round(self.token_f1[-1], 3), title_ok=self.title[-1], authors_ok=self.authors[-1])
        if want.get("publishing_date"):
            self.date.append(_day(answer.date) == _day(want["publishing_date"]))
            verdict["date_ok"] = self.date[-1]
        return verdict


def _mean(values: list) -> str:
    return f"{sum(values) / len(values):.3f}" if values else "-"


def table(scores: dict[str, Score]) -> str:
    head = (f"{'system':<16} {'P':>6} {'R':>6} {'F1':>6} | {'tokF1':>6} {'shF1':>6} {'title':>6} {'date':>6} "
            f"{'authors':>7} | {'ms/page':>7}")
    lines = [f"{'':<16} {'snippet set':^20} | {'news set':^37} |", head, "-" * len(head)]
    for name, s in scores.items():
        if s.tp + s.fn:
            p = s.tp / (s.tp + s.fp) if s.tp + s.fp else 0.0
            r = s.tp / (s.tp + s.fn)
            f1 = 2 * p * r / (p + r) if p + r else 0.0
            body = f"{p:>6.3f} {r:>6.3f} {f1:>6.3f}"
        else:
            body = f"{'-':>6} {'-':>6} {'-':>6}"
        ms = s.seconds / s.pages * 1000 if s.pages else 0.0
        lines.append(f"{name:<16} {body} | {_mean(s.token_f1):>6} {_mean(s.shingle_f1):>6} {_mean(s.title):>6} "
                     f"{_mean(s.date):>6} {_mean(s.authors):>7} | {ms:>7.1f}")
    return "\n".join(lines)


def speed(pages: list[Page], rounds: int) -> str:
    settings = config.load(REPO / "config", Path(tempfile.mkdtemp()))
    tagger, language = KeywordTagger(settings.topics), settings.pipeline.language
    docs = [(decode_html(p.raw)[0], p.url or f"http://bench.test/{n}") for n, p in enumerate(pages)]

    def record(url: str) -> Article:
        return Article(id=url, url=url, canonical_url=url, feed_url="")

    def bare(html: str, url: str) -> None:
        trafilatura.extract(html, url=url)

    def bare_enriched(html: str, url: str) -> None:
        text = trafilatura.extract(html, url=url)
        tagger.tag(detect_language(replace(record(url), text=text or ""), language))

    def newsmon(html: str, url: str) -> None:
        try:
            extracted = extract_html(html, url)
        except ExtractionError:
            return
        tagger.tag(detect_language(apply_extraction(record(url), extracted), language))

    variants = {"bare trafilatura.extract": bare, "bare + language + tags": bare_enriched,
                "newsmon extract (all of it)": newsmon}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        spent = dict.fromkeys(variants, 0.0)
        for html, url in docs:  # page by page, the variants in turn: the machine's drift hits all alike
            for name, run in variants.items():
                started = time.perf_counter()
                run(html, url)
                spent[name] += time.perf_counter() - started
        for name, value in spent.items():
            seconds[name].append(value)
    lines = [f"\nspeed over {len(docs)} pages, {rounds} rounds (median; newsmon's pages/s over each variant's, "
             "per round)", f"{'variant':<30} {'pages/s':>8} {'newsmon x':>10}"]
    ours = seconds["newsmon extract (all of it)"]
    for name, values in seconds.items():
        ratios = [v / o for o, v in zip(ours, values)]
        lines.append(f"{name:<30} {len(docs) / statistics.median(values):>8.1f} {statistics.median(ratios):>10.2f}   "
                     + " ".join(f"{r:.2f}" for r in ratios))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path, help="snippet or news sets (see above)")
    parser.add_argument("--half", choices=("a", "b"), help="score one fixed half of each set's pages")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, of: " + ", ".join(SYSTEMS))
    parser.add_argument("--speed", type=int, default=0, metavar="ROUNDS", help="then measure speed (see above)")
    parser.add_argument("--speed-pages", type=int, default=300, help="pages the speed rounds use (spread over the sets)")
    parser.add_argument("--dump", type=Path, help="write each page's answers and verdicts here (JSON lines)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # trafilatura logs every page it discards
    systems = {name: SYSTEMS[name] for name in args.systems.split(",")}
    pages = load(args.dirs, args.half)
    kinds = Counter(p.kind for p in pages)
    print(f"{len(pages)} pages: {kinds['snippets']} in snippet sets, {kinds['news']} in news sets", flush=True)
    scores = {name: Score() for name in systems}
    dump = args.dump.open("w", encoding="utf-8") if args.dump else None
    for page in pages:
        html = decode_html(page.raw)[0]
        row = {"page": page.key, "url": page.url}
        for name, system in systems.items():  # interleaved per page: the machine's drift hits all alike
            started = time.perf_counter()
            answer = system(html, page.url)
            scores[name].seconds += time.perf_counter() - started
            scores[name].pages += 1
            row[name] = {**vars(answer), **scores[name].add(page, answer, name in DATES_ONLY)}
        if dump:
            dump.write(json.dumps(row, ensure_ascii=False) + "\n")
    if dump:
        dump.close()
    print(table(scores))
    if args.speed:
        print(speed(pages[:: max(1, len(pages) // args.speed_pages)][: args.speed_pages], args.speed))


if __name__ == "__main__":
    main()
