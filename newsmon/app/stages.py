"""The pipeline's parts, in order, and the resources each needs: the application's wiring.

    feeds ──poll──▶ discovered ──extract──▶ extracted ──language──▶ detected ──tag──▶ tagged ─┬─index──▶ search index
                                  (fetch page, trafilatura)                                    └─alert──▶ subscribers

``poll`` is the source: it reads feeds, not a topic (``ingest.poller``), and publishes what it
discovers. Every arrow after it is a ``Stage``: a plain function of an article record
(``ingest.pages``, ``enrich.language``, ``enrich.keywords``) or a sink (the search index, the
alert log), linked by bus topics. On the embedded bus (SQLite in the data directory) one
process runs them all; on Kafka each can run as its own process (``newsmon stage NAME``), and as
many instances of a stage as its topic has partitions.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial

from enrich.keywords import KeywordTagger
from enrich.language import detect_language
from ingest.extract import Extractor
from ingest.feed_store import FeedStore
from ingest.http import Fetcher
from ingest.pages import fetch_and_extract
from ingest.poller import Poller
from ingest.robots import RobotsRules
from newsmon import metrics
from newsmon.bus import DEAD_LETTERS, Bus
from newsmon.dates import to_epoch
from newsmon.errors import ConfigError, ServiceError
from newsmon.record import Article
from newsmon.runner import Stage, preload_in_workers
from newsmon.search import SearchIndex
from newsmon.settings import Settings, unknown_topics
from sinks.alerts import AlertLog

DISCOVERED = "articles.discovered"
EXTRACTED = "articles.extracted"
DETECTED = "articles.detected"
TAGGED = "articles.tagged"
FEED_SHARDS = "feed-shards"  # no messages: its partitions split the feeds between poller instances
SOURCE = "poll"  # not a Stage: it reads feeds and publishes to DISCOVERED
STAGES = {"extract": DISCOVERED, "language": EXTRACTED, "tag": DETECTED, "index": TAGGED, "alert": TAGGED}  # -> input
PARTS = (SOURCE, *STAGES)  # what `newsmon run` runs, and what `newsmon stage NAME` can run alone
ALL_TOPICS = (DISCOVERED, EXTRACTED, DETECTED, TAGGED, DEAD_LETTERS, FEED_SHARDS)
# What worker processes import once, before they are forked (extraction, language detection).
WORKER_MODULES = ("ingest.extract", "enrich.language", "enrich.keywords")


@dataclass
class Resources:
    """The edges of the pipeline: everything that does I/O. A process opens only what its parts need."""

    bus: Bus
    poller: Poller | None = None
    fetcher: Fetcher | None = None
    extractor: Extractor | None = None
    index: SearchIndex | None = None
    tagger: KeywordTagger | None = None
    alerts: AlertLog | None = None


def build_stages(settings: Settings, res: Resources, names: Iterable[str] = PARTS) -> list[Stage]:
    p = settings.pipeline
    stages = []
    if "extract" in names:
        robots = RobotsRules(res.fetcher) if p.fetch.robots else None
        fetch = partial(fetch_and_extract, fetcher=res.fetcher, extractor=res.extractor, retries=p.fetch.retries,
                        robots=robots)
        stages.append(Stage("extract", DISCOVERED, EXTRACTED, fetch, concurrency=p.fetch.concurrency))
    if "language" in names:
        stages.append(Stage("language", EXTRACTED, DETECTED, partial(detect_language, settings=p.language), cpu_bound=True))
    if "tag" in names:
        stages.append(Stage("tag", DETECTED, TAGGED, partial(_tag, res)))
    if "index" in names:
        es = p.elasticsearch
        batching = {"batch_size": es.bulk_docs, "linger": es.flush_seconds} if es.url else {}
        stages.append(Stage("index", TAGGED, sink=MeasuredIndex(res.index), **batching))
    if "alert" in names:
        stages.append(Stage("alert", TAGGED, sink=res.alerts))
    return stages


def _tag(res: Resources, article: Article) -> Article:
    return res.tagger.tag(article)  # looked up per record: a keywords reload swaps the tagger


@dataclass
class MeasuredIndex:
    """The index stage's sink: the search index, measuring how long articles took to become searchable."""

    index: SearchIndex

    def write(self, articles: list[Article]) -> list[tuple[Article, str]]:
        rejected = self.index.write(articles)
        refused = {article.id for article, _ in rejected}
        now = time.time()
        for article in articles:
            if article.id in refused:
                continue
            for moment, histogram in ((article.discovered, metrics.DISCOVERED_TO_INDEXED),
                                      (article.published, metrics.PUBLISHED_TO_INDEXED)):
                if not moment:
                    continue
                try:
                    histogram.observe(max(0.0, now - to_epoch(moment)))
                except ValueError:
                    pass  # a date the feed gave in another form: no measurement, no harm
        return rejected


def open_bus(settings: Settings) -> Bus:
    bus, p = settings.pipeline.bus, settings.pipeline
    if bus == "embedded":
        from newsmon.bus import SqliteBus

        return SqliteBus(settings.data_dir / "queue.db")
    from newsmon.kafka_bus import KafkaBus  # kafka-python is only imported when Kafka is used

    return KafkaBus(bus, prefix=p.kafka.prefix, session_timeout_ms=p.kafka.session_timeout_ms,
                    max_poll_interval_ms=int(1000 * max(300, 2 * p.worst_batch_seconds())))


def create_topics(settings: Settings) -> dict[str, str]:
    """The pipeline's topics on Kafka, created where missing: what happened to each
    (``kafka_bus.create_topics``: "created …", "exists", "not created: …" or "failed: …")."""
    from newsmon.kafka_bus import create_topics as create

    k = settings.pipeline.kafka
    return create(settings.pipeline.bus, [k.prefix + t for t in ALL_TOPICS], k.partitions, k.replication)


def open_index(settings: Settings, *, writer: bool = True) -> SearchIndex | None:
    """The search index: Elasticsearch when configured, else SQLite in the data directory.

    The writer (the index stage) starts even while Elasticsearch is down and reports itself
    unhealthy until it is back; a reader fails at once with the reason. A reader gets None
    when there is no embedded index yet.
    """
    es = settings.pipeline.elasticsearch
    if es.url:
        from sinks.elasticsearch import EsIndex  # only imported when configured

        # The writer assigns stories from the sketches in stories.db; readers only read them from the documents.
        index = EsIndex(es, stories=settings.data_dir / "stories.db" if writer else None)
        try:
            return index.try_connect() if writer else index.connect(install=False)
        except ServiceError as exc:  # unsupported version, bad credentials: the operator must act
            index.close()
            raise ConfigError(f"search index: {exc}") from None
    from sinks.sqlite_index import SqliteIndex

    path = settings.data_dir / "index.db"
    if not writer and not path.exists():
        return None
    return SqliteIndex(path)


def open_alerts(settings: Settings, *, channels: bool = True) -> AlertLog:
    """The delivery log in the data directory. To send, every subscriber's channel is checked
    first (``channels``); reading the status or replaying needs no channel."""
    unknown = unknown_topics(settings.subscribers, settings.topics, settings.config_dir / "subscribers.yaml")
    if unknown and channels:  # such a rule could never match: say so rather than stay silent
        raise ConfigError("\n".join(unknown))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return AlertLog(settings.data_dir / "alerts.db", settings.subscribers, settings.pipeline.alerts,
                    data_dir=settings.data_dir, check_channels=channels)


def publisher(bus: Bus):
    """The poller's ``publish``: new articles onto the discovered topic, durable on return."""

    def publish(articles: list[Article]) -> None:
        for article in articles:
            bus.publish(DISCOVERED, article.id, article.to_json(), {"stage": SOURCE, "attempts": "1"})
        bus.flush()

    return publish


@contextmanager
def open_pipeline(settings: Settings, names: Iterable[str] = PARTS):
    """Open what the named parts need. On the embedded bus one process owns the data directory."""
    names = set(names)
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    preload_in_workers(WORKER_MODULES)
    with ExitStack() as stack:
        if settings.pipeline.bus == "embedded":
            lock = stack.enter_context(open(data / ".lock", "w"))
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"{data}: another newsmon process is running on this data directory") from None
        res = Resources(bus=open_bus(settings))
        stack.callback(res.bus.close)
        if names & {SOURCE, "extract"}:
            res.fetcher = Fetcher(settings.pipeline.fetch)
            stack.callback(res.fetcher.close)
        if SOURCE in names:
            store = FeedStore(data / "state.db")
            stack.callback(store.close)
            res.poller = Poller(store, settings.pipeline.fetch, settings.pipeline.poll, publish=publisher(res.bus),
                                limits=res.fetcher.limits)  # feeds and pages of a host share one budget
            stack.callback(res.poller.close)
        if "extract" in names:
            res.extractor = Extractor(settings.pipeline.extract)
            stack.callback(res.extractor.close)
        if "tag" in names:
            res.tagger = KeywordTagger(settings.topics)
        if "index" in names:
            res.index = open_index(settings)
            stack.callback(res.index.close)
        if "alert" in names:
            res.alerts = open_alerts(settings).start()
            stack.callback(res.alerts.close)
        yield res
