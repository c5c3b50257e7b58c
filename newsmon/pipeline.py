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
from concurrent.futures import ThreadPoolExecutor
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
from newsmon.runner import Stage, process_batch
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
        Stage("language", EXTRACTED, DETECTED, partial(detect_language, settings=p.language)),
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


def drain(stages: list[Stage], res: Resources, settings: Settings, progress: Progress, report: Callable[[], None],
          stop: threading.Event) -> None:
    """Run every stage until no stage has anything left to do (or ``stop`` is set)."""
    batch = settings.pipeline.runner.batch_size
    with ThreadPoolExecutor(max_workers=max(s.concurrency for s in stages), thread_name_prefix="stage") as pool:
        consumers = {s.name: res.bus.consumer(s.name, [s.consumes]) for s in stages}
        while not stop.is_set():
            busy = False
            for stage in stages:
                try:
                    result = process_batch(stage, res.bus, consumers[stage.name], max_records=batch, executor=pool)
                except Exception:
                    log.exception("stage %s failed; its batch will be retried", stage.name)
                    consumers[stage.name].rewind()
                    time.sleep(1.0)
                    busy = True
                    continue
                busy |= result.consumed > 0
                progress.done[stage.name] += result.produced
                progress.failed[stage.name] += result.failed
                if result.consumed:
                    report()
            if not busy:
                return


def run(settings: Settings, feeds: list[Feed], *, once: bool, stop: threading.Event,
        report: Callable[[Progress], None] = lambda p: None, force_poll: bool = False) -> Progress:
    """Poll and process until ``stop`` is set, or, with ``once``, until one round is fully processed."""
    progress = Progress()
    with open_embedded(settings) as res:
        stages = build_stages(settings, res)
        while not stop.is_set():
            poll_due(feeds, res, progress, force=force_poll)
            report(progress)
            drain(stages, res, settings, progress, lambda: report(progress), stop)
            if once:
                break
            stop.wait(_seconds_to_next_poll(feeds, res))
    return progress


def _seconds_to_next_poll(feeds: list[Feed], res: Resources) -> float:
    now, waits = time.time(), [5.0]
    for feed in feeds:
        last = res.feeds.get(feed.url).last_polled or 0
        waits.append(last + feed.interval - now)
    return max(0.2, min(waits))
