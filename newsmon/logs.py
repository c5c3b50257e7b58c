"""Logging: JSON lines for containers and log shippers, readable lines in a terminal.

``NEWSMON_LOG_FORMAT=json|text`` chooses; by default JSON when stderr is not a terminal.
Each JSON line has ``timestamp``, ``level``, ``logger``, ``message``, the ``stage`` that
logged it, and ``article_id`` / ``feed_url`` where the log call names one. Logs go to
stderr: stdout carries what commands print (``newsmon search --json``), and container
runtimes collect both.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from pythonjsonlogger.json import JsonFormatter

_NOISY = ("httpx", "httpcore", "trafilatura", "htmldate", "charset_normalizer", "pebble", "kafka")
process_stage = ""  # the stage a single-stage process runs (newsmon stage NAME), for lines of other threads


class _StageFilter(logging.Filter):
    """Adds ``stage``: the stage thread's name (``stage-index`` -> ``index``), else the process's stage."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "stage", None):
            name = threading.current_thread().name
            record.stage = name.removeprefix("stage-") if name.startswith("stage-") else process_stage
        return True


def setup(verbose: bool = False, fmt: str | None = None) -> None:
    fmt = fmt or os.environ.get("NEWSMON_LOG_FORMAT") or ("text" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_StageFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter(
            "{asctime}{levelname}{name}{message}{stage}", style="{",
            rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        ))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # kafka-python logs each dropped connection and protocol probe at ERROR and then retries by itself;
    # failures that matter reach us as exceptions.
    logging.getLogger("kafka.conn").setLevel(logging.CRITICAL)
