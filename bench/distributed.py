"""The Kafka bus beside the embedded one, in one run.

    python bench/distributed.py [--records 4000] [--articles 300]

1. One stage hop: produce 2 KB records (acks=all, flushed) and consume them in a
   consumer group with commits, through each bus.
2. End to end: the same article pages (the demo pages, cycled, served over HTTP on
   127.0.0.1) through extract -> language -> tag -> index, embedded in one process
   versus on Kafka with every stage its own OS process.

The broker is $KAFKA_BOOTSTRAP, else the one `make engines` starts (started or reused here). The
bench creates its topics (the broker does not create them on first use) and deletes them after.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from newsmon import settings as config  # noqa: E402
from newsmon.app.runtime import run  # noqa: E402
from newsmon.app.stages import ALL_TOPICS, DISCOVERED, TAGGED  # noqa: E402
from newsmon.bus import SqliteBus  # noqa: E402
from newsmon.kafka_bus import KafkaBus, create_topics  # noqa: E402
from newsmon.record import Article, article_id  # noqa: E402
from newsmon.settings import parse_bootstrap  # noqa: E402


def start_broker() -> str:
    sys.path.insert(0, str(REPO / "deploy" / "engines"))
    import engines

    return "kafka://" + engines.start(["kafka"], use_env=True)["KAFKA_BOOTSTRAP"].removeprefix("kafka://")


def hop_rate(bus, records: int, topic: str) -> tuple[float, float]:
    """(produced/s, consumed+committed/s) for ``records`` 2 KB messages."""
    value = b"x" * 2048
    started = time.perf_counter()
    for i in range(records):
        bus.publish(topic, f"key-{i}", value, {"stage": "bench"})
    bus.flush()
    produced = records / (time.perf_counter() - started)
    consumer = bus.consumer(f"bench-{uuid.uuid4().hex[:6]}", [topic])
    consumer.poll(1, timeout=10)  # join the group (Kafka) before the clock starts
    consumer.rewind()
    got, started = 0, time.perf_counter()
    while got < records:
        batch = consumer.poll(500, timeout=1.0)
        consumer.commit(batch)
        got += len(batch)
    consumed = records / (time.perf_counter() - started)
    consumer.close()
    return produced, consumed


class _Pages(BaseHTTPRequestHandler):
    pages: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802
        body = self.pages.get(self.path.rsplit("/", 1)[-1])
        if body is None:  # robots.txt: none, so everything may be fetched
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def publish_articles(bus, base_url: str, names: list[str], count: int, tag: str) -> None:
    for i in range(count):
        url = f"{base_url}/{tag}/{i}/{names[i % len(names)]}"
        bus.publish(DISCOVERED, article_id(url), Article(id=article_id(url), url=url, canonical_url=url, feed_url="bench").to_json())
    bus.flush()


def indexed(data: Path) -> int:
    try:
        with sqlite3.connect(data / "index.db") as conn:
            return conn.execute("SELECT COUNT(*) FROM articles").fetchone()[0]
    except sqlite3.Error:
        return 0


def wait_indexed(data: Path, count: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while indexed(data) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {indexed(data)} of {count} indexed")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=4000, help="2 KB records per bus-hop round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--articles", type=int, default=300, help="articles end to end")
    args = parser.parse_args()
    url = start_broker()
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    create_topics(url, [f"{prefix}hop{r}" for r in range(args.rounds)] + [f"{prefix}e2e.{t}" for t in ALL_TOPICS], 8, 1)
    try:
        kafka = KafkaBus(url, prefix=prefix)
        sqlite = SqliteBus(Path(tempfile.mkdtemp()) / "queue.db")
        print(f"bus hop, {args.records} x 2 KB records per round, {args.rounds} rounds (median)", flush=True)
        print(f"{'bus':<10} {'produce/s':>10} {'consume+commit/s':>17}")
        for name, bus in (("embedded", sqlite), ("kafka", kafka)):
            results = sorted(hop_rate(bus, args.records, f"hop{r}") for r in range(args.rounds))
            produced = sorted(r[0] for r in results)[len(results) // 2]
            consumed = sorted(r[1] for r in results)[len(results) // 2]
            print(f"{name:<10} {produced:>10.0f} {consumed:>17.0f}", flush=True)

        site = REPO / "newsmon" / "app" / "demo_site" / "articles"
        _Pages.pages = {p.name: p.read_bytes().replace(b"{{BASE_URL}}", b"http://127.0.0.1") for p in site.glob("*.html")}
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        names = sorted(_Pages.pages)
        n = args.articles

        # Embedded: every stage in this process.
        data = Path(tempfile.mkdtemp())
        settings = config.load(REPO / "config", data, overrides={"fetch.allow_private": ["127.0.0.1/32"]})
        bus = SqliteBus(data / "queue.db")
        publish_articles(bus, base, names, n, "embedded")
        bus.close()
        started = time.perf_counter()
        run(settings, [], names=["extract", "language", "tag", "index"], once=True, stop=threading.Event())
        embedded = n / (time.perf_counter() - started)
        assert indexed(data) == n

        # Kafka: one OS process per stage, warmed up (groups joined, workers started) before the clock.
        data = Path(tempfile.mkdtemp())
        env = {**os.environ, "NEWSMON_BUS": url, "NEWSMON_DATA_DIR": str(data), "NEWSMON_CONFIG_DIR": str(REPO / "config"),
               "NEWSMON_ALLOW_PRIVATE": "127.0.0.1/32"}
        cfg = Path(tempfile.mkdtemp())
        for f in ("feeds.yaml", "keywords.yaml"):
            (cfg / f).write_text((REPO / "config" / f).read_text())
        (cfg / "pipeline.yaml").write_text(f"kafka:\n  prefix: '{prefix}e2e.'\n")
        env["NEWSMON_CONFIG_DIR"] = str(cfg)
        procs = [subprocess.Popen([sys.executable, "-m", "newsmon.app.cli", "stage", s], env=env, stderr=subprocess.DEVNULL)
                 for s in ("extract", "language", "tag", "index")]
        e2e = KafkaBus(url, prefix=f"{prefix}e2e.")
        try:
            publish_articles(e2e, base, names, len(names), "warmup")
            wait_indexed(data, len(names))
            publish_articles(e2e, base, names, n, "kafka")
            started = time.perf_counter()
            wait_indexed(data, len(names) + n)
            on_kafka = n / (time.perf_counter() - started)
            assert e2e.backlog("index", TAGGED) >= 0
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(timeout=60)
            e2e.close()
        print(f"\nend to end, {n} articles (demo pages cycled, fetched over HTTP on 127.0.0.1)")
        print(f"{'pipeline':<44} {'articles/s':>10} {'x embedded':>11}")
        print(f"{'embedded, one process':<44} {embedded:>10.1f} {1.0:>11.2f}")
        print(f"{'kafka, one process per stage':<44} {on_kafka:>10.1f} {on_kafka / embedded:>11.2f}")
        kafka.close()
        server.shutdown()
    finally:
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=parse_bootstrap(url))
        admin.delete_topics([t for t in admin.list_topics() if t.startswith(prefix)])
        admin.close()


if __name__ == "__main__":
    main()
