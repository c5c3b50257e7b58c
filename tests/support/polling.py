"""Driving the real poller (``ingest.poller.Poller``) from tests."""

from __future__ import annotations

import time

from ingest.feed_store import FeedStore
from ingest.poller import Poller, PollResult
from newsmon.record import Article
from newsmon.settings import Feed, FetchSettings, PollSettings


def poll_once(feed: Feed, fetch: FetchSettings, store: FeedStore, settings: PollSettings | None = None, *,
              now: float | None = None, published: list[Article] | None = None) -> PollResult:
    """Poll ``feed`` now, as ``newsmon run`` does (published, remembered, saved), but parsing on a thread
    of this process; its result. ``now``: the clock it schedules from."""
    settings = (settings or PollSettings()).model_copy(update={"parse_workers": 0})
    poller = Poller(store, fetch, settings,
                    publish=(published if published is not None else []).extend,
                    clock=time.time if now is None else (lambda: now))
    try:
        (result,) = poller.poll([feed], force=True).results
    finally:
        poller.close()
    return result
