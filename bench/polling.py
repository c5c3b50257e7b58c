"""One poller keeping many feeds fresh: a full poll cycle's wall time, requests/s and peak memory.

    python bench/polling.py [--feeds 10000] [--hosts 500]

A local server (its own process) serves the feeds from ``--hosts`` loopback addresses
(127.1.x.y: distinct hosts to the fetcher, so per-host politeness applies as on the web):
30 % answer 200 with 20 entries that are new every cycle, 50 % answer 304 once they have
validators, 10 % are slow (1 s), 10 % fail (HTTP 500). The poller is newsmon's own
(``poll_due``: threads for fetching and parsing, the guarded fetcher with its per-host
limits, the feed state in SQLite, every new entry published on the embedded bus).
Cycle 1 is cold (no validators yet: every feed answers 200); cycle 2 is the steady state.
Target (issue #8): a cycle of 10,000 feeds in under 30 s, peak RSS under 300 MB.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ingest.feeds import FeedStore  # noqa: E402
from ingest.http import Fetcher  # noqa: E402
from newsmon.bus import SqliteBus  # noqa: E402
from newsmon.pipeline import Progress, Resources, poll_due  # noqa: E402
from newsmon.settings import Feed, FetchSettings, PollSettings  # noqa: E402


def _feed(n: int, cycle: int, host: str) -> bytes:
    items = "".join(
        f"<item><title>Feed {n} story {cycle}.{k}</title><link>http://{host}/a/{n}/{cycle}/{k}.html</link>"
        f"<guid>{n}-{cycle}-{k}</guid><pubDate>Thu, 12 Feb 2026 10:00:00 GMT</pubDate>"
        f"<description>Story {k} of feed {n}, cycle {cycle}: the council met again.</description></item>"
        for k in range(20))
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>Feed {n}</title>{items}</channel></rss>'.encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    cycle = 1

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        if self.path == "/cycle":  # the benchmark moves the server to the next cycle
            type(self).cycle += 1
            return self._answer(200, b"ok")
        n = int(self.path.rsplit("/", 1)[1])
        kind = n % 10
        if kind == 9:
            return self._answer(500, b"broken")
        if kind == 8:
            time.sleep(1.0)
        etag = f'"{n}-{self.cycle}"'
        if 3 <= kind <= 7 and self.headers.get("If-None-Match"):
            return self._answer(304, b"", {"ETag": self.headers["If-None-Match"]})
        body = _feed(n, self.cycle if kind <= 2 else 1, self.headers.get("Host", "x"))
        self._answer(200, body, {"ETag": etag, "Content-Type": "application/rss+xml"})

    def _answer(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(ready) -> None:
    server = ThreadingHTTPServer(("0.0.0.0", 0), _Handler)
    server.daemon_threads = True
    server.request_queue_size = 1024
    ready.put(server.server_address[1])
    server.serve_forever()


def main() -> None:
    logging.disable(logging.WARNING)  # one line per failing feed would drown the figures
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--feeds", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=PollSettings().concurrency)
    parser.add_argument("--host-delay", type=float, help="seconds between starts per host (default: the fetcher's)")
    args = parser.parse_args()
    ready = multiprocessing.SimpleQueue()
    server = multiprocessing.Process(target=_serve, args=(ready,), daemon=True)
    server.start()
    port = ready.get()
    hosts = [f"127.1.{h // 250}.{h % 250 + 1}" for h in range(args.hosts)]
    feeds = [Feed(name=f"f{n}", url=f"http://{hosts[n % args.hosts]}:{port}/feed/{n}", interval=600)
             for n in range(args.feeds)]
    fetch = FetchSettings(allow_private=["127.0.0.0/8"], read_timeout=10, total_timeout=20, retries=0,
                          **({"host_delay": args.host_delay} if args.host_delay is not None else {}))
    print(f"{args.feeds:,} feeds on {args.hosts} hosts; poll concurrency {args.concurrency}, per host "
          f"{fetch.per_host} in flight and {fetch.host_delay} s between starts")
    with tempfile.TemporaryDirectory() as tmp:
        res = Resources(SqliteBus(Path(tmp) / "queue.db"), FeedStore(Path(tmp) / "state.db"), Fetcher(fetch))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\n{'cycle':<34} {'wall s':>7} {'CPU s':>6} {'requests/s':>11} {'new entries':>12} {'failed':>7} "
              f"{'peak RSS MB':>12}")
        for cycle, label in ((1, "1 (cold: no validators yet)"), (2, "2 (steady: 304s, new entries)")):
            if cycle == 2:
                import httpx
                httpx.get(f"http://127.0.0.1:{port}/cycle")
            progress = Progress()
            started, cpu = time.perf_counter(), time.process_time()
            poll_due(feeds, res, progress, force=True, poll_settings=PollSettings(concurrency=args.concurrency))
            wall = time.perf_counter() - started
            cpu = time.process_time() - cpu
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{label:<34} {wall:>7.1f} {cpu:>6.1f} {progress.feeds_polled / wall:>11.0f} {progress.discovered:>12,} "
                  f"{progress.feed_errors:>7,} {peak:>12.0f}")
        print(f"(RSS before the first cycle: {rss_before:.0f} MB; target: a cycle under 30 s, peak RSS under 300 MB)")
        res.fetcher.close()
        res.feeds.close()
        res.bus.close()
    server.terminate()


if __name__ == "__main__":
    main()
