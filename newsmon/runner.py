"""The stage runner: wires a stage (a plain function of an article record) to the bus.

For each batch: decode, transform (in threads when the stage does I/O), publish
the outputs or hand them to the sink, wait until the bus or sink has them
durably, and only then commit the input offsets. A crash anywhere before the
commit means the batch is delivered again: at-least-once, with idempotent sinks
so that nothing is indexed twice. A message that cannot be processed goes to the
dead-letter topic with the reason, and the stage moves on.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from newsmon import metrics
from newsmon.bus import DEAD_LETTERS, Bus, Consumer, Message
from newsmon.dates import utc_now
from newsmon.errors import RecordError
from newsmon.record import Article

log = logging.getLogger(__name__)
_HOST = socket.gethostname()


Transform = Callable[[Article], Article]


class Sink(Protocol):
    """Where a stage's records end: the search index, the alert log.

    ``write`` returns once the batch is durable there, with the records it refused for good, each
    with the reason (they go to the dead letters). When it cannot take the batch now it raises
    ``SinkUnavailable`` (with ``retry_after`` if it knows how long): nothing of the batch is
    committed and the runner delivers it again.
    """

    def write(self, articles: list[Article]) -> list[tuple[Article, str]]: ...


def worker_context() -> multiprocessing.context.BaseContext:
    """How worker processes start: forked from a clean server process (``preload_in_workers`` says
    what it imports first). Never a plain fork of the runner, whose threads may hold locks at fork time.
    """
    return multiprocessing.get_context("forkserver")


def preload_in_workers(modules: Iterable[str]) -> None:
    """Modules the worker server imports once, before it forks any worker, so that each worker starts
    with them loaded (the application names its stages' modules). Effective until the server starts."""
    worker_context().set_forkserver_preload(list(modules))


@dataclass(frozen=True)
class Stage:
    name: str
    consumes: str
    produces: str | None = None
    transform: Transform | None = None
    sink: Sink | None = None
    concurrency: int = 1  # threads for I/O-bound transforms (fetching)
    cpu_bound: bool = False  # pure and CPU-heavy: run in worker processes when the runner has them
    batch_size: int | None = None  # records per batch, if not the runner's default (a sink's bulk size)
    linger: float = 0.0  # wait up to this long for a full batch (sinks that prefer few large writes)


@dataclass
class BatchResult:
    consumed: int = 0
    produced: int = 0
    failed: int = 0


def dead_letter(bus: Bus, stage: str, message: Message, reason: str) -> None:
    log.warning("%s: %s -> dead letters: %s", stage, message.key, reason,
                extra={"stage": stage, "article_id": message.key})
    bus.publish(
        DEAD_LETTERS,
        message.key,
        message.value,
        {
            **message.headers,
            "error": reason,
            "stage": stage,
            "topic": message.topic,
            "partition": str(message.partition),
            "offset": str(message.offset),
            "failed_at": utc_now(),
        },
    )


def _run_one(stage: Stage, article: Article) -> Article | Exception:
    started = time.perf_counter()
    try:
        result = stage.transform(article) if stage.transform else article
    except Exception as exc:  # one bad record must never stop the stage
        return exc
    result.provenance = article.provenance + [
        {"stage": stage.name, "at": utc_now(), "ms": round((time.perf_counter() - started) * 1000, 2), "worker": f"{_HOST}:{os.getpid()}"}
    ]
    return result


def process_batch(
    stage: Stage,
    bus: Bus,
    consumer: Consumer,
    *,
    max_records: int = 50,
    timeout: float = 0.0,
    threads: ThreadPoolExecutor | None = None,
    processes: Executor | None = None,
) -> BatchResult:
    """Process one batch of ``stage``. Raises if the sink fails; nothing is committed then.

    I/O-bound stages (``concurrency`` > 1) run their records in ``threads``; ``cpu_bound``
    stages in ``processes``, so they use every core despite the GIL.
    """
    messages = consumer.poll(max_records, timeout)
    if stage.linger and messages:
        deadline = time.monotonic() + stage.linger
        while len(messages) < max_records and (left := deadline - time.monotonic()) > 0:
            messages += consumer.poll(max_records - len(messages), min(left, timeout))
    stats = BatchResult(consumed=len(messages))
    if not messages:
        return stats
    started = time.perf_counter()
    decoded: list[tuple[Message, Article]] = []
    for message in messages:
        try:
            decoded.append((message, Article.from_json(message.value)))
        except RecordError as exc:
            dead_letter(bus, stage.name, message, f"undecodable record: {exc}")
            stats.failed += 1
    articles = [article for _, article in decoded]
    if stage.cpu_bound and processes is not None and len(articles) > 1:
        results = list(processes.map(_run_one, [stage] * len(articles), articles, chunksize=8))
    elif stage.concurrency > 1 and threads is not None:
        results = list(threads.map(_run_one, [stage] * len(articles), articles))
    else:
        results = [_run_one(stage, article) for _, article in decoded]
    done: list[tuple[Message, Article]] = []
    for (message, _), result in zip(decoded, results):
        if isinstance(result, Exception):
            dead_letter(bus, stage.name, message, f"{type(result).__name__}: {result}")
            stats.failed += 1
        else:
            done.append((message, result))
    if stage.produces:
        for message, article in done:
            headers = {"stage": stage.name, "attempts": message.headers.get("attempts", "1")}
            bus.publish(stage.produces, article.id, article.to_json(), headers)
        stats.produced = len(done)
    if stage.sink and done:
        by_id = {article.id: message for message, article in done}
        rejected = stage.sink.write([article for _, article in done])
        for article, reason in rejected:
            dead_letter(bus, stage.name, by_id[article.id], reason)
        stats.failed += len(rejected)
        stats.produced = len(done) - len(rejected)
    bus.flush()  # outputs and dead letters are durable before the inputs are marked done
    consumer.commit(messages)
    metrics.CONSUMED.labels(stage.name).inc(stats.consumed)
    metrics.PRODUCED.labels(stage.name).inc(stats.produced)
    metrics.FAILED.labels(stage.name).inc(stats.failed)
    metrics.BATCH_SECONDS.labels(stage.name).observe(time.perf_counter() - started)
    return stats
