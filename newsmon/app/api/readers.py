"""The search index as the API reads it: per server thread, and a cache of recent answers."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from newsmon.app.stages import open_index
from newsmon.errors import ConfigError, ServiceError, Unavailable
from newsmon.settings import Settings


class Readers:
    """Index readers: one SQLite connection per server thread (a connection serves one request at a
    time), or one Elasticsearch client shared by all (httpx clients are thread-safe)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list = []
        self._shared = bool(settings.pipeline.elasticsearch.url)

    def _new(self):
        try:
            index = open_index(self.settings, writer=False)
        except (ConfigError, ServiceError, Unavailable) as exc:
            raise Unavailable(f"search index unavailable: {exc}") from None
        if index is None:
            raise Unavailable("no index yet: run `newsmon demo` or `newsmon run` first")
        return index

    def get(self):
        holder = self if self._shared else self._local
        index = getattr(holder, "index", None)
        if index is None:
            with self._lock:
                index = getattr(holder, "index", None) or self._new()
                holder.index = index
                self._open.append(index)
        return index

    @contextmanager
    def own(self) -> Iterator:
        """A reader for one long export: its own SQLite connection (its cursor stays open while the
        client downloads), or the shared client."""
        if self._shared:
            yield self.get()
            return
        index = self._new()
        try:
            yield index
        finally:
            index.close()

    def close(self) -> None:
        for index in self._open:
            index.close()


class ResultCache:
    """Recent search answers, each valid while the index's generation is the one it was computed at
    (the embedded index raises it on every write; Elasticsearch keeps its own request cache, so
    nothing is cached for it). Repeated searches and the opening page are answered without counting
    every match again, and never with stale results."""

    def __init__(self, entries: int):
        self.entries = entries
        self._lock = threading.Lock()
        self._answers: OrderedDict[tuple, tuple[int, object]] = OrderedDict()

    def search(self, index, key: tuple, compute):
        generation = index.generation() if self.entries else None
        if generation is None:
            return compute()
        with self._lock:
            cached = self._answers.get(key)
            if cached and cached[0] == generation:
                self._answers.move_to_end(key)
                return cached[1]
        answer = compute()
        with self._lock:
            self._answers[key] = (generation, answer)
            self._answers.move_to_end(key)
            while len(self._answers) > self.entries:
                self._answers.popitem(last=False)
        return answer
