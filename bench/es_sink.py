"""The Elasticsearch sink's own overhead and the bulk requests it produces, in one run.

    python bench/es_sink.py [--docs 20000]

Articles are the demo pages, extracted once and cycled under new URLs (spread over three
months, so three monthly indices). Rows:

1. serialise only: to_document + the NDJSON bulk lines, no I/O (our CPU floor).
2. sink -> null server: EsIndex.write against a server on 127.0.0.1 (its own process)
   that reads each bulk body and answers "created" for every item, doing nothing else: serialisation,
   batching, HTTP and response parsing, i.e. everything the sink itself costs.
3. sink -> OpenSearch: the same against a real node ($ES_URL, else the one `make engines` starts),
   which analyses and stores every document (for reference: the node's cost, on the same two cores).
4. index stage -> null server: the index stage through the runner, from the embedded
   queue, batch by batch as in production (queue reads, decoding, commits included),
   beside the same stage writing the embedded SQLite FTS5 index.

"our CPU" is this process's CPU time per document (neither the null server's nor the node's is in it). Then the bulk requests the default settings (500 docs / 5 MB / 1 s) produce: documents
and bytes per request.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ingest.extract import decode_html, extract_html  # noqa: E402
from newsmon.app.stages import TAGGED  # noqa: E402
from newsmon.bus import SqliteBus  # noqa: E402
from newsmon.record import Article, TagHit, article_id  # noqa: E402
from newsmon.runner import Stage, process_batch  # noqa: E402
from newsmon.settings import ElasticsearchSettings  # noqa: E402
from sinks.elasticsearch import EsIndex, index_for, to_document  # noqa: E402
from sinks.sqlite_index import SqliteIndex  # noqa: E402


def articles(count: int) -> list[Article]:
    pages = sorted((REPO / "newsmon" / "app" / "demo_site" / "articles").glob("*.html"))
    extracted = [extract_html(decode_html(p.read_bytes())[0], url=f"https://news.example.org/{p.name}") for p in pages]
    out = []
    for n in range(count):
        page = extracted[n % len(extracted)]
        url = f"https://news.example.org/{n}/{pages[n % len(pages)].name}"
        month = 1 + n % 3
        out.append(Article(
            id=article_id(url), url=url, canonical_url=url, feed_url="https://news.example.org/rss.xml",
            source="Example News", title=page.title or "", text=page.text, authors=page.authors,
            language="en" if n % 2 else "fr", language_confidence=0.99,
            published=f"2026-0{month}-12T10:00:00Z", discovered="2026-03-01T08:00:00Z", fetched="2026-03-01T08:00:05Z",
            tags=[TagHit("nato", {"nato": 2}, [(0, 4), (10, 14)])],
        ))
    return out


def _serve_null_bulk(ready: multiprocessing.SimpleQueue) -> None:
    sizes = []  # (documents, bytes) per bulk request

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as with a real cluster

        def log_message(self, *args):
            pass

        def _answer(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith("/_bulk"):
                docs = body.count(b"\n") // 2
                sizes.append((docs, len(body)))
                item = {"index": {"_index": "x", "_id": "x", "status": 201, "result": "created"}}
                payload = {"took": 1, "errors": False, "items": [item] * docs}
            elif self.path == "/":
                payload = {"version": {"number": "8.15.3"}}
            elif "/_search" in self.path:  # the writer's start-up backfill finds nothing to do
                payload = {"hits": {"total": {"value": 0}, "hits": []}}
            elif self.path == "/_bench/sizes":
                payload, sizes[:] = list(sizes), []
            else:
                payload = {"acknowledged": True}
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ready.put(f"http://127.0.0.1:{server.server_address[1]}")
    server.serve_forever()


class NullBulk:
    """In its own process (so it does not share our GIL): answers /, templates, index creation and
    _bulk (every item "created"), and records the documents and bytes of each bulk request."""

    def __init__(self):
        ready = multiprocessing.SimpleQueue()
        self._proc = multiprocessing.Process(target=_serve_null_bulk, args=(ready,), daemon=True)
        self._proc.start()
        self.url = ready.get()

    def take_sizes(self) -> list[tuple[int, int]]:
        return [tuple(pair) for pair in httpx.get(self.url + "/_bench/sizes").json()]

    def close(self) -> None:
        self._proc.terminate()
        self._proc.join()


def search_node() -> str:
    sys.path.insert(0, str(REPO / "deploy" / "engines"))
    import engines

    return engines.start(["opensearch"], use_env=True)["ES_URL"]


def rate(count: int, work) -> tuple[float, float]:
    """(documents per second of wall time, microseconds of this process's CPU per document)."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return count / (time.perf_counter() - wall), 1e6 * (time.process_time() - cpu) / count


def serialise(batch: list[Article]) -> None:
    for article in batch:
        head = {"index": {"_index": index_for(article, "newsmon-articles"), "_id": article.id}}
        (json.dumps(head) + "\n" + json.dumps(to_document(article), ensure_ascii=False) + "\n").encode()


def through_sink(url: str, batch: list[Article], **settings) -> tuple[float, float]:
    index = EsIndex(ElasticsearchSettings(url=url, **settings)).connect()
    try:
        return rate(len(batch), lambda: index.write(batch))
    finally:
        index.close()


def through_stage(sink, batch: list[Article], work: Path, batch_size: int) -> tuple[float, float]:
    """The index stage over the embedded queue, as the pipeline runs it (one batch at a time)."""
    bus = SqliteBus(work / f"queue-{time.monotonic_ns()}.db")
    for article in batch:
        bus.publish(TAGGED, article.id, article.to_json())
    bus.flush()
    stage = Stage("index", TAGGED, sink=sink)
    consumer = bus.consumer("index", [TAGGED])

    def drain():
        done = 0
        while done < len(batch):
            done += process_batch(stage, bus, consumer, max_records=batch_size).consumed

    try:
        return rate(len(batch), drain)
    finally:
        bus.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    args = parser.parse_args()
    batch = articles(args.docs)
    doc_bytes = statistics.mean(len(json.dumps(to_document(a), ensure_ascii=False).encode()) for a in batch[:200])
    print(f"{args.docs} articles, {doc_bytes / 1024:.1f} KB per document on average\n")

    rows = [("serialise only (no I/O)", rate(len(batch), lambda: serialise(batch)))]
    null = NullBulk()
    rows.append(("sink -> null server (our whole overhead)", through_sink(null.url, batch)))
    default_sizes = null.take_sizes()
    node, prefix = search_node(), f"bench-{time.monotonic_ns()}"
    try:
        rows.append(("sink -> OpenSearch (stores, for reference)", through_sink(node, batch, index_prefix=prefix)))
    finally:
        cleanup = EsIndex(ElasticsearchSettings(url=node, index_prefix=prefix))
        cleanup._call("DELETE", f"/{prefix}-*")
        cleanup._call("DELETE", f"/_index_template/{prefix}")
        cleanup.close()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stage_size = 500  # the index stage's batch on Elasticsearch (bulk_docs)
        index = EsIndex(ElasticsearchSettings(url=null.url)).connect()
        rows.append(("index stage -> null server", through_stage(index, batch, work, stage_size)))
        index.close()
        sqlite = SqliteIndex(work / "index.db")
        rows.append(("index stage -> embedded SQLite FTS5 index", through_stage(sqlite, batch, work, 50)))
        sqlite.close()
    null.close()

    base = rows[1][1][0]
    print(f"{'path':<50} {'docs/s':>9} {'x sink':>7} {'our CPU us/doc':>15}")
    for name, (value, cpu) in rows:
        print(f"{name:<50} {value:>9,.0f} {value / base:>7.2f} {cpu:>15.0f}")

    print("\nbulk requests from the default settings (500 docs / 5 MB):")
    docs = [d for d, _ in default_sizes]
    sizes = [b for _, b in default_sizes]
    print(f"  {len(default_sizes)} requests; documents per request min/median/max "
          f"{min(docs)}/{statistics.median(docs):.0f}/{max(docs)}; "
          f"MB per request min/median/max {min(sizes) / 1e6:.2f}/{statistics.median(sizes) / 1e6:.2f}/{max(sizes) / 1e6:.2f}")
    null = NullBulk()
    through_sink(null.url, batch[:2000], bulk_docs=10_000, bulk_bytes=1_000_000)
    capped = null.take_sizes()
    print(f"  with a 1 MB cap: {len(capped)} requests for 2,000 documents, largest {max(b for _, b in capped) / 1e6:.2f} MB, "
          f"median {statistics.median(d for d, _ in capped):.0f} documents")
    null.close()


if __name__ == "__main__":
    main()
