"""The pipeline, in order, and the embedded runner that drives it in one process.

    feeds ──poll──▶ discovered ──extract──▶ extracted ──language──▶ detected ──tag──▶ tagged ──index──▶ search index
                                     (fetch page, trafilatura)                                     (SQLite FTS5)

Each arrow after ``poll`` is a ``Stage``: a plain function of an article record
(``ingest.pages``, ``enrich.language``, ``enrich.keywords``) or a sink
(``sinks.sqlite_index``), linked by bus topics. Embedded, the bus is SQLite in
the data directory and all stages take turns in this process.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial

from enrich.keywords import KeywordTagger
from enrich.language import detect_language
from ingest.extract import Extractor
from ingest.feeds import FeedStore, due_feeds, poll_feed
from ingest.http import Fetcher
from ingest.pages import fetch_and_extract
from newsmon.bus import Bus, SqliteBus
from newsmon.runner import Stage, process_batch, worker_context
from newsmon.settings import ConfigError, Feed, Settings
from sinks.sqlite_index import SqliteIndex

log = logging.getLogger(__name__)

DISCOVERED = "articles.discovered"
EXTRACTED = "articles.extracted"
DETECTED = "articles.detected"
TAGGED = "articles.tagged"


@dataclass
class Resources:
    """The edges of the pipeline: everything that does I/O."""

    bus: Bus
    feeds: FeedStore
    fetcher: Fetcher
    extractor: Extractor
    index: SqliteIndex
    tagger: KeywordTagger


def build_stages(settings: Settings, res: Resources) -> list[Stage]:
    p = settings.pipeline
    return [
        Stage(
            "extract",
            DISCOVERED,
            EXTRACTED,
            partial(fetch_and_extract, fetcher=res.fetcher, extractor=res.extractor, retries=p.fetch.retries),
            concurrency=p.fetch.concurrency,
        ),
        Stage("language", EXTRACTED, DETECTED, partial(detect_language, settings=p.language), cpu_bound=True),
        Stage("tag", DETECTED, TAGGED, res.tagger.tag),
        Stage("index", TAGGED, deliver=res.index.upsert_many),
    ]


@contextmanager
def open_embedded(settings: Settings):
    """Open every resource of the embedded pipeline; one process at a time per data directory."""
    if not settings.pipeline.bus.startswith("embedded"):
        raise ConfigError(f"bus {settings.pipeline.bus!r}: only the embedded bus is available in this version")
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        lock = stack.enter_context(open(data / ".lock", "w"))
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{data}: another newsmon process is running on this data directory") from None
        res = Resources(
            bus=SqliteBus(data / "queue.db"),
            feeds=FeedStore(data / "state.db"),
            fetcher=Fetcher(settings.pipeline.fetch),
            extractor=Extractor(settings.pipeline.extract),
            index=SqliteIndex(data / "index.db"),
            tagger=KeywordTagger(settings.topics),
        )
        for closer in (res.bus.close, res.feeds.close, res.fetcher.close, res.extractor.close, res.index.close):
            stack.callback(closer)
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


def poll_due(feeds: list[Feed], res: Resources, progress: Progress, *, force: bool = False) -> None:
    for feed in feeds if force else due_feeds(feeds, res.feeds):
        result = poll_feed(feed, res.fetcher, res.feeds)
        progress.feeds_polled += 1
        progress.feed_errors += result.error is not None
        for article in result.new:
            res.bus.publish(DISCOVERED, article.id, article.to_json(), {"stage": "poll", "attempts": "1"})
        res.bus.flush()  # on the bus first, then remembered as seen: a crash in between re-discovers, never loses
        res.feeds.mark_seen(result.new)
        progress.discovered += len(result.new)


@contextmanager
def stage_executors(stages: list[Stage], settings: Settings):
    """Threads for I/O-bound stages and worker processes for CPU-bound ones, for the whole run."""
    workers = settings.pipeline.runner.processes
    with ExitStack() as stack:
        threads = stack.enter_context(ThreadPoolExecutor(max(s.concurrency for s in stages), thread_name_prefix="stage"))
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
                    stage, self.res.bus, consumer, max_records=runner.batch_size, timeout=runner.poll_timeout,
                    threads=self.threads_pool, processes=self.processes,
                )
            except Exception:
                log.exception("stage %s failed; its batch will be retried", stage.name)
                consumer.rewind()
                self._stop.wait(1.0)
                continue
            if result.consumed:
                with self._lock:
                    self.progress.done[stage.name] += result.produced
                    self.progress.failed[stage.name] += result.failed
                    self.report()
        consumer.close()

    def idle(self) -> bool:
        """True when every message on every stage's topic has been processed and committed."""
        return all(self.res.bus.backlog(s.name, s.consumes) == 0 for s in self.stages)


def run(settings: Settings, feeds: list[Feed], *, once: bool, stop: threading.Event,
        report: Callable[[Progress], None] = lambda p: None, force_poll: bool = False) -> Progress:
    """Poll and process until ``stop`` is set, or, with ``once``, until one round is fully processed.

    On ``stop`` every stage finishes the batch in hand and commits before this returns.
    """
    progress = Progress()
    with open_embedded(settings) as res:
        stages = build_stages(settings, res)
        with stage_executors(stages, settings) as executors, \
                StageThreads(stages, res, settings, progress, executors, lambda: report(progress)) as workers:
            poll_due(feeds, res, progress, force=force_poll)
            report(progress)
            while not stop.is_set():
                if once and workers.idle():
                    break
                stop.wait(0.1 if once else min(1.0, _seconds_to_next_poll(feeds, res)))
                if not once:
                    poll_due(feeds, res, progress)
    return progress


def _seconds_to_next_poll(feeds: list[Feed], res: Resources) -> float:
    now, waits = time.time(), [5.0]
    for feed in feeds:
        last = res.feeds.get(feed.url).last_polled or 0
        waits.append(last + feed.interval - now)
    return max(0.2, min(waits))
