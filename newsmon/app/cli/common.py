"""What every command group shares: loading the settings, the --bus option, progress lines,
signals, the search index for reading, dates and hits as the terminal shows them.

Commands import the pipeline's heavy modules (trafilatura, the stages, the API) inside their
functions: ``newsmon --help`` and the quick commands start in a third of the time.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from contextlib import contextmanager

import click

from newsmon import settings as config
from newsmon.dates import parse_iso, to_iso
from newsmon.errors import NewsmonError, ServiceError, Unavailable
from newsmon.search import Hit, SearchIndex

log = logging.getLogger("newsmon")


def bus_option(command):
    return click.option(
        "--bus", help="embedded (default) or kafka://HOST:PORT[,HOST:PORT]; also $NEWSMON_BUS."
    )(command)


def load(bus: str | None = None, **overrides) -> config.Settings:
    if bus:
        overrides["bus"] = bus
    return config.load(overrides=overrides)


class Reporter:
    """Progress on stderr: one updating line on a terminal, a line every few seconds otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_line, self.last_time = "", 0.0

    def __call__(self, progress) -> None:
        line = progress.line()
        now = time.monotonic()
        if line == self.last_line or (not self.tty and now - self.last_time < 2.0):
            return
        self.last_line, self.last_time = line, now
        click.echo(("\r\033[K" if self.tty else "") + line, err=True, nl=not self.tty)

    def finish(self, progress) -> None:
        self.last_time = 0.0
        self.last_line = ""
        self(progress)
        if self.tty:
            click.echo("", err=True)


def watch_config(settings: config.Settings, bus: str | None) -> config.ConfigWatch:
    """Feeds and keywords are read again when their files change, and on SIGHUP."""
    watch = config.ConfigWatch(settings, {"bus": bus} if bus else None)
    signal.signal(signal.SIGHUP, lambda signum, frame: watch.requested.set())
    return watch


def stop_on_signals() -> threading.Event:
    """First Ctrl-C or SIGTERM: finish the batch in hand, commit, and exit cleanly."""
    stop = threading.Event()

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("stopping after the current batch (press Ctrl-C again to abort)")
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


@contextmanager
def reader(settings: config.Settings, required: bool = True):
    """The search index for reading: Elasticsearch if configured, else the embedded one (None if absent)."""
    from newsmon.app.stages import open_index

    index: SearchIndex | None = None
    try:
        try:
            index = open_index(settings, writer=False)
        except (ServiceError, Unavailable) as exc:  # the cluster is unreachable or refuses: say which and why
            raise type(exc)(f"search index: {exc}") from None
        if index is None and required:
            raise click.ClickException(f"{settings.data_dir / 'index.db'}: no index yet "
                                       "(run `newsmon demo` or `newsmon run` first)")
        yield index
    finally:
        if index is not None:
            index.close()


def parse_date(value: str | None, option: str) -> str | None:
    if not value:
        return None
    try:
        return to_iso(parse_iso(value))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD or ISO 8601)", param_hint=option) from None


def print_hits(hits: list[Hit], start: int = 1) -> None:
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("[", "]")
    for number, hit in enumerate(hits, start):
        a = hit.article
        meta = " · ".join(x for x in (a.source, a.language, (a.published or "")[:10], ", ".join(a.tag_names)) if x)
        click.echo(f"{number}. {a.title}\n   {meta}\n   {a.url}\n   {hit.snippet_marked(bold, plain)}")


def fail(exc: NewsmonError) -> click.ClickException:
    """The one place a newsmon error becomes what the user reads: its one-line message, exit status 1."""
    return click.ClickException(str(exc))
