"""The feed poller: which feeds are due, one event loop fetching them, parsing off the loop, and
settling each result in the order that never loses an entry.

A poll of one feed is three steps: ``plan_poll`` (what to ask, from the feed's state),
``fetch_feed`` (the request on the asyncio fetcher, the parsing in a worker process) and
``settle_poll`` (the new state and the new entries). ``Poller.poll`` runs them for every due
feed among those this instance owns and settles them in batches as they complete: the new
entries are published first (the ``publish`` callable returns once they are durable), then
remembered as seen, then each feed's state is saved; a crash in between re-discovers, never
loses. It returns a ``PollReport``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from functools import partial
from urllib.parse import urlsplit

from pebble import ProcessExpired, ProcessPool

from ingest.feed_store import FeedState, FeedStore
from ingest.feeds import ParsedFeed, parse_feed
from ingest.http import AsyncFetcher, FetchResult, HostLimits
from newsmon import metrics
from newsmon.dates import utc_now
from newsmon.errors import FeedParseError, FetchError
from newsmon.record import Article
from newsmon.runner import worker_context
from newsmon.settings import Feed, FetchSettings, PollSettings

log = logging.getLogger(__name__)


@dataclass
class PollResult:
    feed: Feed
    new: list[Article] = field(default_factory=list)
    not_modified: bool = False  # 304, or the same body as last time (not parsed again)
    error: str | None = None
    state: FeedState | None = None  # to save once ``new`` is safely on the bus


def _max_age(cache_control: str) -> int | None:
    for directive in cache_control.split(","):
        name, _, value = directive.strip().partition("=")
        if name.lower() == "max-age" and value.strip().isdigit():
            return int(value)
    return None


@dataclass(frozen=True)
class PollRequest:
    """What to ask for: read from the feed's state before fetching."""

    target: str  # the configured URL, or where it moved
    headers: dict[str, str]
    body_hash: str | None
    state: FeedState  # as read when planning: settle_poll derives the new state from it


@dataclass
class Fetched:
    """What came back: a response (parsed unless unchanged), or the failure."""

    response: FetchResult | None = None
    parsed: ParsedFeed | None = None
    digest: str | None = None
    error: FetchError | FeedParseError | None = None


def plan_poll(feed: Feed, state: FeedState) -> PollRequest:
    headers = {}
    if feed.conditional and state.etag:
        headers["If-None-Match"] = state.etag
    if feed.conditional and state.last_modified:
        headers["If-Modified-Since"] = state.last_modified
    return PollRequest(state.moved_to or feed.url, headers, state.body_hash, state)


Parse = Callable[[bytes, Feed, str, str], Awaitable[ParsedFeed]]


async def parse_here(content: bytes, feed: Feed, final_url: str, content_type: str,
                     max_entries: int = 1000) -> ParsedFeed:
    """Parse on a thread of this process (tests, tools); the poller parses in worker processes."""
    return await asyncio.to_thread(parse_feed, content, feed, final_url, content_type, max_entries)


async def fetch_feed(feed: Feed, request: PollRequest, fetcher: AsyncFetcher, parse: Parse = parse_here) -> Fetched:
    """Fetch and parse one feed. Touches no store, so thousands run at once."""
    response = None
    try:
        response = await fetcher.get(request.target, headers=request.headers)
        if response.status == 304:
            return Fetched(response, digest=request.body_hash)
        digest = hashlib.sha256(response.content).hexdigest()
        if digest == request.body_hash:  # the same bytes as last time: nothing to parse
            return Fetched(response, digest=digest)
        parsed = await parse(response.content, feed, response.final_url, response.headers.get("content-type", ""))
        return Fetched(response, parsed, digest)
    except (FetchError, FeedParseError) as exc:
        return Fetched(response, error=exc)


def settle_poll(feed: Feed, request: PollRequest, fetched: Fetched, store: FeedStore,
                settings: PollSettings | None = None, now: float | None = None, *,
                unseen: set[str] | None = None) -> PollResult:
    """The feed's new state (next poll scheduled) and its new entries; the caller saves the state
    (``store.save(result.state)``) only after publishing the entries, so that a crash in between
    cannot leave validators or a body hash that would hide them on the next poll.

    ``unseen``: the canonical URLs not discovered before, if the caller looked them up for a batch.

    The next poll: the feed's interval, or later if the server's max-age or Retry-After
    asks for it; after failures, exponentially later up to ``backoff_max`` (a failing
    feed is never dropped silently: it stays scheduled, counted and shown).
    """
    settings = settings or PollSettings()
    state = replace(request.state)
    state.name, state.last_polled = feed.name, time.time() if now is None else now
    result = PollResult(feed)
    response, exc = fetched.response, fetched.error
    if response is not None:
        state.last_status = response.status
    if exc is None:
        if response.moved_permanently and response.final_url != request.target:
            state.moved_to = response.final_url
            log.info("feed %s moved permanently to %s: polled there from now on (update feeds.yaml)", feed.url,
                     response.final_url, extra={"feed_url": feed.url})
        if fetched.parsed is None:
            result.not_modified = True
            state.entries_new = 0
        else:
            parsed = fetched.parsed
            for reason in parsed.skipped:
                log.warning("feed %s: skipped %s", feed.url, reason, extra={"feed_url": feed.url})
            if parsed.warning:
                log.warning("feed %s: %s", feed.url, parsed.warning, extra={"feed_url": feed.url})
            if not parsed.articles and not parsed.skipped:
                log.info("feed %s: feed has no entries", feed.url, extra={"feed_url": feed.url})
            urls = [a.canonical_url for a in parsed.articles]
            fresh = store.unseen(urls) if unseen is None else unseen.intersection(urls)
            result.new = [a for a in parsed.articles if a.canonical_url in fresh]
            state.etag = response.headers.get("etag")
            state.last_modified = response.headers.get("last-modified")
            state.entries_new = len(result.new)
            state.body_hash = fetched.digest
        state.last_success, state.last_error, state.failures = state.last_polled, None, 0
        state.interval = adapt_interval(feed, state.interval, bool(result.new), settings)
        wait = max(state.interval, min(_max_age(response.headers.get("cache-control", "")) or 0, settings.max_age_cap))
    else:
        if isinstance(exc, FetchError):
            result.error, state.last_status = exc.reason, exc.status
        else:  # the server answered (last_status is set), the document is not a usable feed
            result.error = str(exc)
        state.last_error = result.error
        state.failures += 1
        backoff = min(settings.backoff_max, feed.interval * 2 ** (state.failures - 1))
        wait = max(feed.interval, backoff, getattr(exc, "retry_after", None) or 0)
        if state.last_status == 410:
            state.disabled = f"HTTP 410 Gone on {utc_now()}: no longer polled (newsmon feeds enable URL to retry)"
            log.error("feed %s: %s", feed.url, state.disabled, extra={"feed_url": feed.url})
        else:
            log.warning("feed %s: %s (failure %d in a row, next try in %.0f s)", feed.url, result.error,
                        state.failures, wait, extra={"feed_url": feed.url})
    state.next_poll = state.last_polled + wait
    result.state = state
    metrics.FEED_POLLS.labels(feed.url, str(state.last_status or 0)).inc()
    (metrics.FEED_LAST_FAILURE if result.error else metrics.FEED_LAST_SUCCESS).labels(feed.url).set(state.last_polled)
    return result


def adapt_interval(feed: Feed, current: float | None, found_new: bool, settings: PollSettings) -> float:
    """The next interval: a quarter shorter after a poll with new entries, a quarter longer after one
    without, kept within the feed's interval divided and multiplied by ``adapt_factor`` (and never
    below ``min_interval``), so a busy feed is followed closely and a dormant one costs little."""
    current = current or feed.interval
    # The configured interval is always allowed, even below min_interval: the operator asked for it.
    low = min(feed.interval, max(settings.min_interval, feed.interval / settings.adapt_factor))
    high = feed.interval * settings.adapt_factor
    return min(high, max(low, current * (0.75 if found_new else 1.25)))


def due_feeds(feeds: Iterable[Feed], store: FeedStore, now: float | None = None, *,
              states: dict[str, FeedState] | None = None) -> list[Feed]:
    """The feeds whose next poll has come (disabled ones never), from one read of the store
    (or ``states``, if the caller has it already)."""
    now = time.time() if now is None else now
    states = store.states() if states is None else states
    due = []
    for feed in feeds:
        state = states.get(feed.url)
        if state is None or state.last_polled is None:
            due.append(feed)
            continue
        if state.disabled:
            continue
        next_poll = state.next_poll if state.next_poll is not None else state.last_polled + feed.interval
        if now >= next_poll:
            due.append(feed)
    return due


@dataclass
class PollReport:
    """What one round of polling did."""

    polled: int = 0  # feeds polled
    failed: int = 0  # of them, failed (the reason is in each result and in the feed's state)
    discovered: int = 0  # new articles published
    results: list[PollResult] = field(default_factory=list)


Publish = Callable[[list[Article]], None]  # puts new articles on the bus; returns once they are durable


class Poller:
    """Polls feeds with explicit dependencies: the state store, the fetch and poll settings, the
    per-host budget shared with the article fetcher (``limits``), and ``publish`` for new entries.

    With ``poll.parse_workers`` > 0, documents are parsed in that many worker processes (recycled,
    each parse stopped after ``poll.parse_timeout``); with 0, on a thread of this process.
    ``clock``: the time scheduling is computed from (tests pass a fixed one).
    """

    def __init__(self, store: FeedStore, fetch: FetchSettings, settings: PollSettings, *, publish: Publish,
                 limits: HostLimits | None = None, clock: Callable[[], float] = time.time):
        self.store, self.fetch, self.settings, self.publish, self.clock = store, fetch, settings, publish, clock
        self.limits = limits or HostLimits(fetch.per_host, fetch.host_delay)
        self._parsers = (ProcessPool(max_workers=settings.parse_workers, max_tasks=2000, context=worker_context())
                         if settings.parse_workers else None)  # recycled: memory stays flat

    def close(self) -> None:
        if self._parsers is not None:
            self._parsers.stop()
            self._parsers.join()

    def poll(self, feeds: Iterable[Feed], owns: Callable[[str], bool] = lambda url: True, *,
             force: bool = False) -> PollReport:
        """Poll the feeds that are due (all but disabled ones with ``force``) among those this instance
        owns: fetched on one event loop (at most ``poll.concurrency`` requests in flight, each host's
        budget shared with the article fetches), parsed off the loop, settled in batches."""
        mine = [feed for feed in feeds if owns(feed.url)]
        states = self.store.states()
        if force:
            due = [f for f in mine if not (f.url in states and states[f.url].disabled)]
        else:
            due = due_feeds(mine, self.store, self.clock(), states=states)
        report = PollReport()
        if due:
            requests = {feed.url: plan_poll(feed, states.get(feed.url) or FeedState(feed.url)) for feed in due}
            asyncio.run(self._poll(due, requests, report))
        metrics.FEEDS_BROKEN.set(self.store.broken(self.settings.broken_after))
        return report

    async def _poll(self, due: list[Feed], requests: dict[str, PollRequest], report: PollReport) -> None:
        fetcher = AsyncFetcher(self.fetch, concurrency=self.settings.concurrency, limits=self.limits)
        if self._parsers is not None:
            parse = self._parse_in_worker
        else:
            parse = partial(parse_here, max_entries=self.settings.max_entries)
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

        per_host = self.limits.per_host
        drains = [asyncio.create_task(drain(queue)) for queue in by_host.values()
                  for _ in range(min(per_host, len(queue)))]
        try:
            settled = 0
            while settled < len(due):
                batch = [await done.get()]
                while not done.empty():
                    batch.append(done.get_nowait())
                # SQLite and the bus block: on a thread, while the loop keeps fetching.
                await asyncio.to_thread(self._settle, batch, requests, report)
                settled += len(batch)
        finally:
            for task in drains:
                task.cancel()
            await fetcher.aclose()

    async def _parse_in_worker(self, content: bytes, feed: Feed, final_url: str, content_type: str) -> ParsedFeed:
        timeout = self.settings.parse_timeout
        future = self._parsers.schedule(parse_feed, args=(content, feed, final_url, content_type,
                                                          self.settings.max_entries), timeout=timeout)
        try:
            return await asyncio.wrap_future(future)
        except FutureTimeout:
            raise FeedParseError(f"parsing took longer than {timeout:g} s and was stopped") from None
        except ProcessExpired as exc:
            raise FeedParseError(f"the parser process died ({exc})") from None

    def _settle(self, batch: list[tuple[Feed, Fetched]], requests: dict[str, PollRequest], report: PollReport) -> None:
        store, now = self.store, self.clock()
        unseen = store.unseen(a.canonical_url for _, fetched in batch if fetched.parsed for a in fetched.parsed.articles)
        results = [settle_poll(feed, requests[feed.url], fetched, store, self.settings, now, unseen=unseen)
                   for feed, fetched in batch]
        emitted: set[str] = set()
        for result in results:
            result.new = [a for a in result.new if a.canonical_url not in emitted]  # two feeds, one story: once
            emitted.update(a.canonical_url for a in result.new)
            result.state.entries_new = len(result.new)
        self.publish([a for result in results for a in result.new])  # durable first, then remembered:
        store.mark_seen([a for result in results for a in result.new])  # a crash in between re-discovers
        store.save_many(result.state for result in results)  # validators and body hash last, for the same reason
        report.polled += len(results)
        report.failed += sum(result.error is not None for result in results)
        report.discovered += len(emitted)
        report.results += results
