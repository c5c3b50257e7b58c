"""The pipeline, in order, and the runner that drives any selection of its stages.

    feeds ──poll──▶ discovered ──extract──▶ extracted ──language──▶ detected ──tag──▶ tagged ──index──▶ search index
                                     (fetch page, trafilatura)                                     (SQLite FTS5)

Each arrow after ``poll`` is a ``Stage``: a plain function of an article record
(``ingest.pages``, ``enrich.language``, ``enrich.keywords``) or a sink
(``sinks.sqlite_index``), linked by bus topics. On the embedded bus (SQLite in the
data directory) one process runs them all; on Kafka each stage can run as its own
process (``newsmon stage NAME``), and as many instances of it as there are partitions.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import urlsplit

from pebble import ProcessExpired, ProcessPool

from enrich.keywords import KeywordTagger
from enrich.language import detect_language
from ingest.extract import Extractor
from ingest.feeds import (
    FeedState,
    FeedStore,
    Fetched,
    ParsedFeed,
    PollRequest,
    due_feeds,
    fetch_feed,
    parse_feed,
    parse_here,
    plan_poll,
    settle_poll,
)
from ingest.http import AsyncFetcher, Fetcher
from ingest.pages import fetch_and_extract
from ingest.robots import RobotsRules
from newsmon import metrics
from newsmon.bus import DEAD_LETTERS, Bus, SqliteBus
from newsmon.dates import to_epoch
from newsmon.errors import ConfigError, FeedParseError, FetchError, ServiceError, SinkUnavailable
from newsmon.record import Article
from newsmon.runner import Stage, process_batch, worker_context
from newsmon.search import SearchIndex
from newsmon.settings import ConfigWatch, Feed, PollSettings, Settings, unknown_topics
from sinks.alerts import AlertLog
from sinks.sqlite_index import SqliteIndex

log = logging.getLogger(__name__)

DISCOVERED = "articles.discovered"
EXTRACTED = "articles.extracted"
DETECTED = "articles.detected"
TAGGED = "articles.tagged"
FEED_SHARDS = "feed-shards"  # no messages: its partitions split the feeds between poller instances
STAGE_NAMES = ("poll", "extract", "language", "tag", "index", "alert")
CONSUMED = {"extract": DISCOVERED, "language": EXTRACTED, "tag": DETECTED, "index": TAGGED, "alert": TAGGED}
ALL_TOPICS = (DISCOVERED, EXTRACTED, DETECTED, TAGGED, DEAD_LETTERS, FEED_SHARDS)


@dataclass
class Resources:
    """The edges of the pipeline: everything that does I/O. A stage process opens only what it needs."""

    bus: Bus
    feeds: FeedStore | None = None
    fetcher: Fetcher | None = None
    extractor: Extractor | None = None
    index: SearchIndex | None = None
    tagger: KeywordTagger | None = None
    alerts: AlertLog | None = None
    parsers: ProcessPool | None = None  # feed parsing off the poller's event loop, on every core


def build_stages(settings: Settings, res: Resources, names: Iterable[str] = STAGE_NAMES) -> list[Stage]:
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
        return SqliteBus(settings.data_dir / "queue.db")
    from newsmon.kafka_bus import KafkaBus  # kafka-python is only imported when Kafka is used

    return KafkaBus(bus, prefix=p.kafka.prefix, session_timeout_ms=p.kafka.session_timeout_ms,
                    max_poll_interval_ms=int(1000 * max(300, 2 * p.worst_batch_seconds())))


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


@contextmanager
def open_pipeline(settings: Settings, names: Iterable[str] = STAGE_NAMES):
    """Open what the named stages need. On the embedded bus one process owns the data directory."""
    names = set(names)
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if settings.pipeline.bus == "embedded":
            lock = stack.enter_context(open(data / ".lock", "w"))
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"{data}: another newsmon process is running on this data directory") from None
        res = Resources(bus=open_bus(settings))
        stack.callback(res.bus.close)
        if "poll" in names:
            res.feeds = FeedStore(data / "state.db")
            stack.callback(res.feeds.close)
        if names & {"poll", "extract"}:
            res.fetcher = Fetcher(settings.pipeline.fetch)
            stack.callback(res.fetcher.close)
        if "poll" in names and settings.pipeline.poll.parse_workers:
            res.parsers = open_parsers(settings.pipeline.poll.parse_workers)
            stack.callback(close_parsers, res.parsers)
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


@dataclass
class Progress:
    feeds_polled: int = 0
    feed_errors: int = 0
    discovered: int = 0
    done: Counter = field(default_factory=Counter)  # stage -> records it passed on
    failed: Counter = field(default_factory=Counter)  # stage -> records it dead-lettered

    def line(self) -> str:
        stages = " · ".join(f"{name} {self.done[name]}" for name in ("extract", "language", "tag", "index"))
        return (
            f"feeds {self.feeds_polled} ({self.feed_errors} failed) · discovered {self.discovered} · {stages}"
            f" · errors {sum(self.failed.values())}"
        )


def open_parsers(workers: int) -> ProcessPool:
    return ProcessPool(max_workers=workers, max_tasks=2000, context=worker_context())  # recycled: memory stays flat


def close_parsers(pool: ProcessPool) -> None:
    pool.stop()
    pool.join()


def poll_due(feeds: list[Feed], res: Resources, progress: Progress, owns: Callable[[str], bool] = lambda url: True,
             *, force: bool = False, poll_settings: PollSettings | None = None) -> None:
    """Poll the feeds that are due (all but disabled ones with ``force``) among those this instance owns.

    The feeds are fetched on one event loop (``AsyncFetcher``: at most ``poll.concurrency`` requests
    in flight, the per-host budget shared with the article fetches), parsed in the worker processes
    of ``res.parsers``, and settled in batches as they complete: new entries on the bus first, then
    remembered, then the feed's state (a crash in between re-discovers, never loses).
    """
    settings = poll_settings or PollSettings()
    mine = [feed for feed in feeds if owns(feed.url)]
    states = res.feeds.states()
    if force:
        due = [f for f in mine if not getattr(states.get(f.url), "disabled", None)]
    else:
        due = due_feeds(mine, res.feeds, states=states)
    if not due:
        return
    requests = {feed.url: plan_poll(feed, states.get(feed.url) or FeedState(feed.url)) for feed in due}
    asyncio.run(_poll(due, requests, res, progress, settings))
    metrics.FEEDS_BROKEN.set(res.feeds.broken(settings.broken_after))


async def _poll(due: list[Feed], requests: dict[str, PollRequest], res: Resources, progress: Progress,
                settings: PollSettings) -> None:
    fetcher = AsyncFetcher(res.fetcher.settings, concurrency=settings.concurrency, limits=res.fetcher.limits)
    if res.parsers is not None:
        parse = partial(_parse_in_worker, res.parsers, settings)
    else:
        parse = partial(parse_here, max_entries=settings.max_entries)
    # One queue per host, drained by per_host coroutines: a host's feeds wait for that host only,
    # not in front of other hosts' feeds.
    by_host: dict[str, deque[Feed]] = defaultdict(deque)
    for feed in due:
        by_host[urlsplit(requests[feed.url].target).hostname or ""].append(feed)
    done: asyncio.Queue[tuple[Feed, Fetched]] = asyncio.Queue()

    async def drain(queue: deque[Feed]) -> None:
        while queue:
            feed = queue.popleft()
            try:
                fetched = await fetch_feed(feed, requests[feed.url], fetcher, parse)
            except Exception as exc:  # a bug with one feed must not stop the others: recorded as its failure
                log.exception("feed %s: polling failed unexpectedly", feed.url, extra={"feed_url": feed.url})
                fetched = Fetched(error=FetchError(feed.url, f"unexpected error: {type(exc).__name__}: {exc}"))
            done.put_nowait((feed, fetched))

    per_host = res.fetcher.limits.per_host
    drains = [asyncio.create_task(drain(queue)) for queue in by_host.values() for _ in range(min(per_host, len(queue)))]
    try:
        settled = 0
        while settled < len(due):
            batch = [await done.get()]
            while not done.empty():
                batch.append(done.get_nowait())
            # SQLite and the bus block: on a thread, while the loop keeps fetching.
            await asyncio.to_thread(_settle_batch, batch, requests, res, progress, settings)
            settled += len(batch)
    finally:
        for task in drains:
            task.cancel()
        await fetcher.aclose()


async def _parse_in_worker(pool: ProcessPool, settings: PollSettings, content: bytes, feed: Feed, final_url: str,
                           content_type: str) -> ParsedFeed:
    future = pool.schedule(parse_feed, args=(content, feed, final_url, content_type, settings.max_entries),
                           timeout=settings.parse_timeout)
    try:
        return await asyncio.wrap_future(future)
    except FutureTimeout:
        raise FeedParseError(f"parsing took longer than {settings.parse_timeout:g} s and was stopped") from None
    except ProcessExpired as exc:
        raise FeedParseError(f"the parser process died ({exc})") from None


def _settle_batch(batch: list[tuple[Feed, Fetched]], requests: dict[str, PollRequest], res: Resources,
                  progress: Progress, settings: PollSettings) -> None:
    unseen = res.feeds.unseen(a.canonical_url for _, fetched in batch if fetched.parsed for a in fetched.parsed.articles)
    results = [settle_poll(feed, requests[feed.url], fetched, res.feeds, settings, unseen=unseen)
               for feed, fetched in batch]
    emitted: set[str] = set()
    for result in results:
        result.new = [a for a in result.new if a.canonical_url not in emitted]  # two feeds, one story: once
        emitted.update(a.canonical_url for a in result.new)
        result.state.entries_new = len(result.new)
        for article in result.new:
            res.bus.publish(DISCOVERED, article.id, article.to_json(), {"stage": "poll", "attempts": "1"})
    res.bus.flush()  # on the bus first, then remembered: a crash in between re-discovers, never loses
    res.feeds.mark_seen([a for result in results for a in result.new])
    res.feeds.save_many(result.state for result in results)  # validators and body hash last, for the same reason
    progress.feeds_polled += len(results)
    progress.feed_errors += sum(result.error is not None for result in results)
    progress.discovered += len(emitted)


@contextmanager
def stage_executors(stages: list[Stage], settings: Settings):
    """Threads for I/O-bound stages and worker processes for CPU-bound ones, for the whole run."""
    workers = settings.pipeline.runner.processes
    with ExitStack() as stack:
        threads = stack.enter_context(
            ThreadPoolExecutor(max(s.concurrency for s in stages), thread_name_prefix="stage")
        )
        processes = None
        if workers and any(s.cpu_bound for s in stages):
            processes = stack.enter_context(
                ProcessPoolExecutor(workers, mp_context=worker_context(), max_tasks_per_child=1000)
            )
        yield threads, processes


class StageThreads:
    """Every stage in its own thread, as each would be its own process on Kafka.

    Stages overlap: while the extract stage waits for its workers, the language stage
    runs in its own, and tag and index run here, so every core has work.
    """

    def __init__(self, stages: list[Stage], res: Resources, settings: Settings, progress: Progress, executors,
                 report: Callable[[], None]):
        self.stages, self.res, self.settings, self.progress = stages, res, settings, progress
        self.threads_pool, self.processes = executors
        self.report = report
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(s,), name=f"stage-{s.name}", daemon=True) for s in stages]

    def __enter__(self) -> StageThreads:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _loop(self, stage: Stage) -> None:
        runner = self.settings.pipeline.runner
        consumer = self.res.bus.consumer(stage.name, [stage.consumes])
        while not self._stop.is_set():
            try:
                result = process_batch(
                    stage, self.res.bus, consumer, max_records=stage.batch_size or runner.batch_size,
                    timeout=runner.poll_timeout, threads=self.threads_pool, processes=self.processes,
                )
            except Exception as exc:
                wait = 1.0
                if isinstance(exc, SinkUnavailable):  # expected during an outage: the reason, no traceback
                    log.warning("stage %s: sink unavailable, its batch will be retried: %s", stage.name, exc)
                    wait = exc.retry_after or wait
                else:
                    log.exception("stage %s failed; its batch will be retried", stage.name)
                consumer.rewind()
                self._stop.wait(wait)
                continue
            if result.consumed:
                with self._lock:
                    self.progress.done[stage.name] += result.produced
                    self.progress.failed[stage.name] += result.failed
                    self.report()
        consumer.close()

    def alive(self) -> bool:
        """Every stage thread still runs (they only end when asked to)."""
        return all(thread.is_alive() for thread in self._threads) or self._stop.is_set()

    def idle(self) -> bool:
        """True when every message on every stage's topic has been processed and committed."""
        return all(self.res.bus.backlog(s.name, s.consumes) == 0 for s in self.stages)


def run(settings: Settings, feeds: list[Feed], *, names: Iterable[str] = STAGE_NAMES, once: bool,
        stop: threading.Event, report: Callable[[Progress], None] = lambda p: None, force_poll: bool = False,
        watch: ConfigWatch | None = None) -> Progress:
    """Run the named stages until ``stop`` is set, or, with ``once``, until one round is fully processed.

    On ``stop`` every stage finishes the batch in hand and commits before this returns. With
    ``watch``, changed feeds and keywords are picked up without a restart. With
    ``pipeline.metrics_addr`` set, /metrics, /healthz and /readyz are served meanwhile.
    """
    names = list(names)
    progress = Progress()
    with open_pipeline(settings, names) as res, ExitStack() as stack:
        stages = build_stages(settings, res, names)
        executors = stack.enter_context(stage_executors(stages, settings)) if stages else (None, None)
        workers = stack.enter_context(StageThreads(stages, res, settings, progress, executors, lambda: report(progress)))
        bus_problem = _BusProbe(res, stages)
        if settings.pipeline.metrics_addr:
            health = metrics.Health(alive=workers.alive)
            health.add_check("bus", bus_problem)
            if res.index is not None:
                health.add_check("search index", res.index.health)
            stack.callback(metrics.serve(settings.pipeline.metrics_addr, health))
        sharding = res.bus.sharding("poll", FEED_SHARDS) if "poll" in names else None
        if sharding:
            stack.callback(sharding.close)
            poll_due(feeds, res, progress, sharding.owner(), force=force_poll, poll_settings=settings.pipeline.poll)
            report(progress)
        idle_check = 0.1 if settings.pipeline.bus == "embedded" else 1.0
        while not stop.is_set():
            if once and workers.idle():
                break
            stop.wait(idle_check if once else 1.0)
            bus_problem.refresh()
            if watch and (reloaded := watch.poll()):
                feeds = reloaded.feeds
                if res.tagger:
                    res.tagger = KeywordTagger(reloaded.topics)  # the tag stage reads res.tagger per record
            if sharding and not once:
                poll_due(feeds, res, progress, sharding.owner(), poll_settings=settings.pipeline.poll)
    return progress


class _BusProbe:
    """Readiness of the bus, and consumer lag for the metrics, measured every 15 s from the main loop
    (bus clients are not shared across threads; the HTTP thread only reads the last answer). An
    unreachable Elasticsearch is probed again at the same pace."""

    every = 15.0

    def __init__(self, res: Resources, stages: list[Stage]):
        self.res, self.stages = res, stages
        self.problem: str | None = None
        self._next = 0.0

    def __call__(self) -> str | None:
        return self.problem

    def refresh(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.every
        try:
            for stage in self.stages:
                metrics.LAG.labels(stage.name, stage.consumes).set(self.res.bus.backlog(stage.name, stage.consumes))
            if not self.stages:  # a poller: any answer from the brokers will do
                self.res.bus.size(DISCOVERED)
            self.problem = None
            if self.res.index is not None:
                self.res.index.health()  # reconnects an unreachable cluster: ready when it answers, not at a write
        except Exception as exc:  # what /readyz reports; the stages retry by themselves
            self.problem = f"{type(exc).__name__}: {exc}"
