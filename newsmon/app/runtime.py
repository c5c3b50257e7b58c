"""The runtime loop: the named parts of the pipeline in one process, until stopped or, with ``once``,
until one round is processed.

Each stage runs in its own thread (as each would be its own process on Kafka), its I/O-bound
records on a shared thread pool and its CPU-bound ones in worker processes; the poller runs on
the main thread between checks of the configuration and the bus.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from enrich.keywords import KeywordTagger
from ingest.poller import PollReport
from newsmon import metrics
from newsmon.app.stages import DISCOVERED, FEED_SHARDS, PARTS, SOURCE, Resources, build_stages, open_pipeline
from newsmon.errors import SinkUnavailable
from newsmon.runner import Stage, process_batch, worker_context
from newsmon.settings import ConfigWatch, Feed, Settings

log = logging.getLogger(__name__)


@dataclass
class Progress:
    feeds_polled: int = 0
    feed_errors: int = 0
    discovered: int = 0
    done: Counter = field(default_factory=Counter)  # stage -> records it passed on
    failed: Counter = field(default_factory=Counter)  # stage -> records it dead-lettered

    def add(self, report: PollReport) -> None:
        self.feeds_polled += report.polled
        self.feed_errors += report.failed
        self.discovered += report.discovered

    def line(self) -> str:
        stages = " · ".join(f"{name} {self.done[name]}" for name in ("extract", "language", "tag", "index"))
        return (
            f"feeds {self.feeds_polled} ({self.feed_errors} failed) · discovered {self.discovered} · {stages}"
            f" · errors {sum(self.failed.values())}"
        )


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


def run(settings: Settings, feeds: list[Feed], *, names: Iterable[str] = PARTS, once: bool,
        stop: threading.Event, report: Callable[[Progress], None] = lambda p: None, force_poll: bool = False,
        watch: ConfigWatch | None = None) -> Progress:
    """Run the named parts until ``stop`` is set, or, with ``once``, until one round is fully processed.

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
        bus_problem = BusProbe(res, stages)
        if settings.pipeline.metrics_addr:
            health = metrics.Health(alive=workers.alive)
            health.add_check("bus", bus_problem)
            if res.index is not None:
                health.add_check("search index", res.index.health)
            stack.callback(metrics.serve(settings.pipeline.metrics_addr, health))
        sharding = res.bus.sharding(SOURCE, FEED_SHARDS) if res.poller else None
        if sharding:
            stack.callback(sharding.close)
            progress.add(res.poller.poll(feeds, sharding.owner(), force=force_poll))
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
                progress.add(res.poller.poll(feeds, sharding.owner()))
    return progress


class BusProbe:
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
