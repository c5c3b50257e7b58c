"""Prometheus metrics and health endpoints of a newsmon process.

Every stage process serves, on ``NEWSMON_METRICS_ADDR`` (e.g. ``0.0.0.0:9100``; off when unset):
``/metrics`` (Prometheus text format), ``/healthz`` (alive: 200 while the process runs its
stages) and ``/readyz`` (200 when the bus and the sink answer, 503 with the reasons otherwise).

The metrics live here, in one place, so their names and labels stay consistent; the code
that does the work increments them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

log = logging.getLogger(__name__)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_AGES = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400)

CONSUMED = Counter("newsmon_stage_consumed_records", "Records a stage took from its input topic", ["stage"])
PRODUCED = Counter("newsmon_stage_produced_records", "Records a stage passed on (or its sink accepted)", ["stage"])
FAILED = Counter("newsmon_stage_failed_records", "Records a stage sent to the dead letters", ["stage"])
BATCH_SECONDS = Histogram("newsmon_stage_batch_seconds", "Time to process one batch, commit included", ["stage"],
                          buckets=_SECONDS)
LAG = Gauge("newsmon_consumer_lag_records", "Records waiting on a stage's input topic (all partitions)",
            ["stage", "topic"])
DISCOVERED_TO_INDEXED = Histogram("newsmon_discovered_to_indexed_seconds",
                                  "From the poller finding an article to the index accepting it", buckets=_AGES)
PUBLISHED_TO_INDEXED = Histogram("newsmon_published_to_indexed_seconds",
                                 "From the article's own publication date to the index accepting it", buckets=_AGES)
BULK_DOCUMENTS = Histogram("newsmon_es_bulk_documents", "Documents per Elasticsearch bulk request",
                           buckets=(1, 10, 50, 100, 250, 500, 1000, 5000))
BULK_BYTES = Histogram("newsmon_es_bulk_bytes", "Bytes per Elasticsearch bulk request",
                       buckets=(1e4, 1e5, 5e5, 1e6, 2.5e6, 5e6, 1e7, 5e7))
ALERTS = Counter("newsmon_alert_deliveries", "Alert delivery attempts by channel kind and outcome",
                 ["channel", "outcome"])  # outcome: sent, retry, failed, duplicate
FEED_POLLS = Counter("newsmon_feed_polls", "Feed polls by feed and HTTP status (0: no answer)", ["feed", "status"])
FEED_LAST_SUCCESS = Gauge("newsmon_feed_last_success_timestamp_seconds", "Last successful poll of a feed", ["feed"])
FEEDS_BROKEN = Gauge("newsmon_feeds_broken", "Feeds disabled (HTTP 410) or failing several polls in a row "
                     "(poll.broken_after)")
FEED_LAST_FAILURE = Gauge("newsmon_feed_last_failure_timestamp_seconds", "Last failed poll of a feed", ["feed"])

Check = Callable[[], str | None]  # None when fine, else what is wrong


class Health:
    """What /healthz and /readyz report: alive while the stages run; ready when every check passes."""

    def __init__(self, alive: Callable[[], bool] = lambda: True) -> None:
        self.alive = alive
        self._checks: dict[str, Check] = {}

    def add_check(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def problems(self) -> dict[str, str]:
        found = {}
        for name, check in list(self._checks.items()):
            try:
                problem = check()
            except Exception as exc:  # a check that fails is itself the answer
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                found[name] = problem
        return found


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # scrapes every 15 s would flood the log
        pass


def _app(health: Health):
    metrics = make_wsgi_app()

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            status, body = ("200 OK", {"alive": True}) if health.alive() else ("503 Service Unavailable", {"alive": False})
        elif path == "/readyz":
            problems = health.problems()
            status = "503 Service Unavailable" if problems else "200 OK"
            body = {"ready": not problems, "problems": problems}
        else:
            return metrics(environ, start_response)
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    return app


def serve(addr: str, health: Health) -> Callable[[], None]:
    """Serve /metrics, /healthz and /readyz on ``host:port`` in a daemon thread; returns a stop function."""
    host, _, port = addr.rpartition(":")
    server = make_server(host or "0.0.0.0", int(port), _app(health), server_class=_Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics and health on http://%s:%d/metrics, /healthz, /readyz", *server.server_address[:2])

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop
