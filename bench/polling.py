"""One poller keeping many feeds fresh: a full poll cycle's wall time, requests/s and peak memory.

    python bench/polling.py [--feeds 10000] [--hosts 500] [--concurrency N] [--parse-workers N]

A local server (its own process) serves the feeds from ``--hosts`` loopback addresses
(127.1.x.y: distinct hosts to the fetcher, so per-host politeness applies as on the web):
30 % answer 200 with 20 entries that are new every cycle, 50 % answer 304 once they have
validators, 10 % are slow (1 s), 10 % fail (HTTP 500). The poller is newsmon's own
(``ingest.poller.Poller``: the asyncio fetcher with its per-host limits, parsing in worker processes,
the feed state in SQLite, every new entry published on the embedded bus).
Cycle 1 is cold (no validators yet: every feed answers 200); cycle 2 is the steady state.
Target (issue #8): a cycle of 10,000 feeds in under 30 s, peak RSS under 300 MB.

The server is a small asyncio HTTP/1.1 server (keep-alive, bodies built once per feed and
cycle) so that it costs the shared cores as little as possible; its CPU time is shown apart.
Peak RSS is the sum over the poller and all its descendants (parse workers, forkserver),
sampled every 0.1 s from /proc; pages shared after fork are counted once per process, so
the figure errs high.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ingest.feed_store import FeedStore  # noqa: E402
from ingest.poller import Poller  # noqa: E402
from newsmon.app.stages import publisher  # noqa: E402
from newsmon.bus import SqliteBus  # noqa: E402
from newsmon.settings import Feed, FetchSettings, PollSettings  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _feed(n: int, cycle: int, host: str) -> bytes:
    items = "".join(
        f"<item><title>Feed {n} story {cycle}.{k}</title><link>http://{host}/a/{n}/{cycle}/{k}.html</link>"
        f"<guid>{n}-{cycle}-{k}</guid><pubDate>Thu, 12 Feb 2026 10:00:00 GMT</pubDate>"
        f"<description>Story {k} of feed {n}, cycle {cycle}: the council met again.</description></item>"
        for k in range(20))
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>Feed {n}</title>{items}</channel></rss>'.encode()


def _response(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    reason = {200: "OK", 304: "Not Modified", 500: "Internal Server Error"}[status]
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    if status != 304:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body if status != 304 else b"")


class _FeedServer(asyncio.Protocol):
    cycle = 1

    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            asyncio.get_running_loop().create_task(self._answer(path, headers))

    async def _answer(self, path: str, headers: dict[str, str]) -> None:
        if path == "/cycle":  # the benchmark moves the server to the next cycle
            type(self).cycle += 1
            return self._send(_response(200, b"ok"))
        n = int(path.rsplit("/", 1)[1])
        kind = n % 10
        if kind == 9:
            return self._send(_response(500, b"broken"))
        if kind == 8:
            await asyncio.sleep(1.0)
        if 3 <= kind <= 7 and headers.get("if-none-match"):
            return self._send(_response(304, b"", {"ETag": headers["if-none-match"]}))
        cycle = self.cycle if kind <= 2 else 1
        body = _feed(n, cycle, headers.get("host", "x"))
        self._send(_response(200, body, {"ETag": f'"{n}-{cycle}"', "Content-Type": "application/rss+xml"}))

    def _send(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)


def _serve(ready) -> None:
    async def main():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", 0))
        server = await asyncio.get_running_loop().create_server(_FeedServer, sock=sock, backlog=4096)
        ready.put(sock.getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def _proc_stat(pid: int) -> tuple[int, float, int] | None:
    """(parent pid, CPU seconds, RSS KB) of a process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS, int(fields[21]) * PAGE_KB


def _tree(root: int, exclude: int) -> dict[int, tuple[float, int]]:
    """CPU seconds and RSS KB of ``root`` and all its descendants but ``exclude``."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))):
            stats[int(entry)] = stat
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid != exclude:
            tree[pid] = stats[pid][1:]
            todo.extend(child for child, (parent, *_) in stats.items() if parent == pid)
    return tree


def _pss_kb(pid: int) -> int:
    """Proportional set size: pages shared with other processes counted by share, not once per process."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class _Sampler:
    """Peak summed RSS of the poller's process tree, sampled every 0.1 s, and the CPU time of every
    process of the tree ever seen (parse workers are replaced every max_tasks feeds)."""

    def __init__(self, exclude: int):
        self.exclude, self.peak_kb, self._stop = exclude, 0, threading.Event()
        self.peak_own_kb = self.peak_pss_kb = 0
        self._cpu: dict[int, float] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        tree = _tree(os.getpid(), self.exclude)
        with self._lock:
            self._cpu.update((pid, cpu) for pid, (cpu, _) in tree.items())
            total = sum(rss for _, rss in tree.values())
            if total > self.peak_kb:
                self.peak_kb, self.peak_own_kb = total, tree[os.getpid()][1]
                self.peak_pss_kb = sum(_pss_kb(pid) for pid in tree)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def cpu(self) -> tuple[float, float]:
        """CPU seconds of the poller process, and of its descendants (parse workers, forkserver)."""
        self._sample()
        with self._lock:
            return self._cpu[os.getpid()], sum(cpu for pid, cpu in self._cpu.items() if pid != os.getpid())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    logging.disable(logging.WARNING)  # one line per failing feed would drown the figures
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--feeds", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=PollSettings().concurrency)
    parser.add_argument("--parse-workers", type=int, default=PollSettings().parse_workers)
    parser.add_argument("--host-delay", type=float, help="seconds between starts per host (default: the fetcher's)")
    args = parser.parse_args()
    ready = multiprocessing.get_context("fork").SimpleQueue()
    server = multiprocessing.get_context("fork").Process(target=_serve, args=(ready,), daemon=True)
    server.start()
    port = ready.get()
    hosts = [f"127.1.{h // 250}.{h % 250 + 1}" for h in range(args.hosts)]
    feeds = [Feed(name=f"f{n}", url=f"http://{hosts[n % args.hosts]}:{port}/feed/{n}", interval=600)
             for n in range(args.feeds)]
    fetch = FetchSettings(allow_private=["127.0.0.0/8"], read_timeout=10, total_timeout=20, retries=0,
                          **({"host_delay": args.host_delay} if args.host_delay is not None else {}))
    poll = PollSettings(concurrency=args.concurrency, parse_workers=args.parse_workers)
    print(f"{args.feeds:,} feeds on {args.hosts} hosts; {os.cpu_count()} cores; poll concurrency {poll.concurrency}, "
          f"{poll.parse_workers} parse workers; per host {fetch.per_host} in flight and {fetch.host_delay} s between "
          f"starts")
    print("server: one asyncio process (keep-alive, no thread per request) on the same cores; its CPU is shown "
          "apart, and stays small next to the poller's")
    sampler = _Sampler(exclude=server.pid)
    with tempfile.TemporaryDirectory() as tmp:
        bus, store = SqliteBus(Path(tmp) / "queue.db"), FeedStore(Path(tmp) / "state.db")
        poller = Poller(store, fetch, poll, publish=publisher(bus))
        print(f"\n{'cycle':<32} {'wall s':>7} {'CPU s: poller':>14} {'parsers':>8} {'server':>7} {'requests/s':>11} "
              f"{'new entries':>12} {'failed':>7} {'peak RSS MB':>12}")
        for cycle, label in ((1, "1 (cold: no validators yet)"), (2, "2 (steady: 304s, new entries)")):
            if cycle == 2:
                import httpx
                httpx.get(f"http://127.0.0.1:{port}/cycle")
            (own, workers), server_cpu = sampler.cpu(), _proc_stat(server.pid)[1]
            started = time.perf_counter()
            report = poller.poll(feeds, force=True)
            wall = time.perf_counter() - started
            (own_after, workers_after), server_after = sampler.cpu(), _proc_stat(server.pid)[1]
            print(f"{label:<32} {wall:>7.1f} {own_after - own:>14.1f} {workers_after - workers:>8.1f} "
                  f"{server_after - server_cpu:>7.1f} {report.polled / wall:>11.0f} "
                  f"{report.discovered:>12,} {report.failed:>7,} {sampler.peak_kb / 1024:>12.0f}")
        sampler.stop()
        print(f"peak: RSS {sampler.peak_kb / 1024:.0f} MB summed over the poller ({sampler.peak_own_kb / 1024:.0f} MB) "
              f"and its descendants; PSS {sampler.peak_pss_kb / 1024:.0f} MB (shared pages counted once)")
        print("target: a cycle under 30 s, peak RSS under 300 MB (poller and its worker processes)")
        poller.close()
        store.close()
        bus.close()
    server.terminate()


if __name__ == "__main__":
    main()
