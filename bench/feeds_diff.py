"""newsmon's feed parsing against plain feedparser, document by document (a differential run).

    python bench/feeds_diff.py CORPUS_DIR [--show N]

For every ``.xml``/``.json``/``.rdf``/``.atom`` file below CORPUS_DIR (feedparser's test corpus
unpacked under /tmp, for one), parse it with ``ingest.feeds.parse_feed`` and with ``feedparser.parse``
on the same bytes, the same base URL and the content type the file's ``Header:`` comment gives.
Counts:
- crashes: any exception from parse_feed but its own clear FeedParseError;
- lost: documents where an entry that feedparser gives an http(s) link has no article in newsmon's
  result (entries beyond ``max_entries`` aside), and how many entries;
- title / date disagreements on the entries both found (feedparser's title, its published or updated
  date to the second).
"""

from __future__ import annotations

import argparse
import calendar
import re
import sys
import traceback
from pathlib import Path

import feedparser

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ingest.feeds import parse_feed  # noqa: E402
from ingest.urls import canonicalize  # noqa: E402
from newsmon.dates import from_epoch  # noqa: E402
from newsmon.errors import FeedParseError  # noqa: E402
from newsmon.settings import Feed  # noqa: E402

_CONTENT_TYPE = re.compile(rb"^\s*Header:\s*Content-type:\s*(.+?)\s*$", re.I | re.M)
SUFFIXES = (".xml", ".json", ".rdf", ".atom", ".rss")


def _canonical(link: str) -> str | None:
    try:
        return canonicalize(link)
    except ValueError:
        return None


def compare(path: Path, root: Path) -> dict:
    content = path.read_bytes()
    base = f"http://feeds.test/{path.relative_to(root).as_posix()}"
    match = _CONTENT_TYPE.search(content[:2000])
    content_type = match.group(1).decode("latin-1") if match else ""
    feed = Feed(name=path.stem, url=base)
    out = {"crash": None, "error": None, "lost": [], "title": 0, "date": 0, "entries": 0}
    try:
        ours = parse_feed(content, feed, base, content_type)
    except FeedParseError as exc:
        ours, out["error"] = None, str(exc)
    except Exception:  # noqa: BLE001 - counting crashes is this script's job
        out["crash"] = traceback.format_exc(limit=-2).strip().splitlines()[-1]
        return out
    theirs = feedparser.parse(content, response_headers={"content-type": content_type or "application/xml",
                                                         "content-location": base})
    found = {a.canonical_url: a for a in (ours.articles if ours else [])}
    for entry in theirs.entries:
        canonical = _canonical(entry.get("link") or "")
        if canonical is None:
            continue
        out["entries"] += 1
        article = found.get(canonical)
        if article is None:
            out["lost"].append(entry.get("link"))
            continue
        if (entry.get("title") or "") != article.title:
            out["title"] += 1
        moment = entry.get("published_parsed") or entry.get("updated_parsed")
        if (from_epoch(calendar.timegm(moment)) if moment else None) != article.published:
            out["date"] += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--show", type=int, default=10, help="list this many documents of each kind")
    args = parser.parse_args()
    files = sorted(p for p in args.corpus.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    results = {path: compare(path, args.corpus) for path in files}
    crashes = {p: r for p, r in results.items() if r["crash"]}
    lost = {p: r for p, r in results.items() if r["lost"]}
    errors = sum(1 for r in results.values() if r["error"])
    entries = sum(r["entries"] for r in results.values())
    print(f"{len(files)} documents, {entries} entries that feedparser links")
    print(f"crashes: {len(crashes)}")
    for path, r in list(crashes.items())[: args.show]:
        print(f"  {path.relative_to(args.corpus)}: {r['crash']}")
    print(f"documents with lost entries: {len(lost)} ({sum(len(r['lost']) for r in lost.values())} entries)")
    for path, r in list(lost.items())[: args.show]:
        print(f"  {path.relative_to(args.corpus)}: {r['lost'][:3]}")
    print(f"refused with a clear error: {errors} documents")
    print(f"title disagreements: {sum(r['title'] for r in results.values())} entries; "
          f"date disagreements: {sum(r['date'] for r in results.values())} entries")


if __name__ == "__main__":
    main()
