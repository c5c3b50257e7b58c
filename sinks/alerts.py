"""Alerts: matched articles become deliveries in a durable log, and a dispatcher sends them.

``AlertLog.write`` is the alert stage's sink. For each tagged article it runs the
rules (``sinks/alert_rules.py``) and records one delivery per (subscriber, article)
in SQLite, in one transaction per batch; only then does the runner commit the bus
offset. A redelivered article meets the UNIQUE (subscriber, article) constraint. A
story republished under another URL is recognised by its text (``sinks/stories.py``:
MinHash sketches in the same SQLite file and transaction as the deliveries); a
subscriber who had the story within ``duplicate_window_days`` gets a "duplicate"
record instead of a second alert.

The dispatcher (a thread of the alert stage's process) sends what is due on a small
thread pool, so a slow or failing receiver never holds up other subscribers. Failed
attempts are retried with exponential backoff and jitter (Retry-After honoured),
durably: the next attempt time is in the log, so a restart resumes the schedule. A
delivery is marked sent only after the channel accepted it, and never sent again
after that; after ``max_attempts`` or a permanent refusal it is marked failed with
the reason (``newsmon alerts status``) and can be replayed (``newsmon alerts replay``).

Digests: digest-mode subscribers, and immediate ones beyond their hourly rate limit,
collect deliveries until their schedule is due; then one digest row takes them all
(in one transaction) and is sent, retried and marked like a single alert. A crash
between those steps resends the same digest (same delivery id), never a second one.
"""

from __future__ import annotations

import html
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from newsmon import metrics, sqlite
from newsmon.dates import from_epoch
from newsmon.errors import ChannelError, ConfigError, DeliveryError
from newsmon.record import Article
from newsmon.retry import backoff
from newsmon.settings import AlertSettings, DigestSchedule, Subscriber
from newsmon.text import snippet_html
from sinks.alert_rules import Match, RuleIndex, snippet
from sinks.channels import Channel, parse_channel, send
from sinks.stories import StoryIndex

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,                -- the delivery id receivers see (X-Newsmon-Delivery)
    subscriber TEXT NOT NULL,
    article_id TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    item TEXT NOT NULL,                 -- JSON: what the alert says about the article
    story TEXT NOT NULL,                -- the first article of its near-duplicate cluster
    route TEXT NOT NULL,                -- immediate | digest (digest mode, or beyond the rate limit)
    state TEXT NOT NULL,                -- pending | sent | failed | duplicate | in_digest
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT,
    created REAL NOT NULL,
    sent_at REAL,
    digest_id TEXT,
    UNIQUE (subscriber, article_id)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, route, next_at);
CREATE INDEX IF NOT EXISTS deliveries_rate ON deliveries (subscriber, route, created);
CREATE INDEX IF NOT EXISTS deliveries_story ON deliveries (subscriber, story);
CREATE TABLE IF NOT EXISTS digests (
    id TEXT PRIMARY KEY,
    subscriber TEXT NOT NULL,
    due REAL NOT NULL,                  -- the schedule slot it was made for
    more INTEGER NOT NULL,              -- items beyond max_items, counted not listed
    state TEXT NOT NULL,                -- pending | sent | failed | replayed (its deliveries went back)
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT,
    created REAL NOT NULL,
    sent_at REAL
);
CREATE TABLE IF NOT EXISTS digest_clock (subscriber TEXT PRIMARY KEY, last_due REAL NOT NULL);
"""

_WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def next_digest(schedule: DigestSchedule, after: float) -> float:
    """The first slot of ``schedule`` strictly after ``after`` (unix time), in the schedule's time zone."""
    zone = ZoneInfo(schedule.timezone)
    local = datetime.fromtimestamp(after, zone)
    hour, minute = (int(x) for x in schedule.at.split(":"))
    if schedule.every == "hourly":
        slot = local.replace(minute=minute, second=0, microsecond=0)
        step = timedelta(hours=1)
    else:
        slot = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if schedule.every == "weekly":
            slot += timedelta(days=(_WEEKDAYS.index(schedule.weekday) - slot.weekday()) % 7)
        step = timedelta(days=7 if schedule.every == "weekly" else 1)
    while slot.timestamp() <= after:
        # Wall-clock arithmetic, then re-resolved in the zone: 08:00 stays 08:00 across DST changes.
        slot = (slot.replace(tzinfo=None) + step).replace(tzinfo=zone)
    return slot.timestamp()


def _iso(moment: float | None) -> str | None:
    return from_epoch(moment) if moment else None


def alert_item(article: Article, match: Match, marked: str) -> dict:
    """What an alert says about one article: enough to explain itself (``marked``: its snippet)."""
    return {
        "rule_id": match.rule_id, "matched_terms": match.terms, "hits": match.hits,
        "snippet": marked,
        "id": article.id, "url": article.canonical_url or article.url, "title": article.title,
        "source": article.source, "language": article.language, "published": article.published,
        "tags": article.tag_names,
    }


def secrets_for(subscriber: Subscriber, env=os.environ) -> list[str]:
    """The webhook secrets: the variable holds one, or "new,old" while rotating."""
    if not subscriber.secret_env:
        return []
    return [s.strip() for s in env.get(subscriber.secret_env, "").split(",") if s.strip()][:2]


def check_subscribers(subscribers: Iterable[Subscriber], data_dir: Path, env=os.environ) -> dict[str, Channel]:
    """Every channel parsed and every webhook secret present, or a ConfigError naming who and why."""
    channels, problems = {}, []
    for sub in subscribers:
        try:
            channels[sub.name] = parse_channel(sub.channel, data_dir=data_dir)
        except ChannelError as exc:
            problems.append(f"subscriber {sub.name}: {exc}")
            continue
        if channels[sub.name].kind == "webhook" and not secrets_for(sub, env):
            problems.append(f"subscriber {sub.name}: webhooks are signed; set secret_env to an environment "
                            f"variable holding the secret" + (f" ({sub.secret_env} is empty)" if sub.secret_env else ""))
    if problems:
        raise ConfigError("\n".join(problems))
    return channels


def atom_feed(subscriber: str, entries: list[tuple[str, dict, float]], now: float) -> bytes:
    """Atom 1.0 (RFC 4287): one entry per (delivery id, alert item, time it matched)."""
    atom = "http://www.w3.org/2005/Atom"
    feed = ET.Element("feed", xmlns=atom)
    ET.SubElement(feed, "id").text = f"urn:newsmon:alerts:{subscriber}"
    ET.SubElement(feed, "title").text = f"newsmon alerts for {subscriber}"
    ET.SubElement(feed, "updated").text = _iso(entries[0][2] if entries else now)
    ET.SubElement(ET.SubElement(feed, "author"), "name").text = "newsmon"
    for delivery_id, item, created in entries:
        entry = ET.SubElement(feed, "entry")
        ET.SubElement(entry, "id").text = f"urn:newsmon:delivery:{delivery_id}"
        ET.SubElement(entry, "title").text = item["title"] or item["url"]
        ET.SubElement(entry, "link", href=item["url"])
        ET.SubElement(entry, "updated").text = _iso(created)
        if item.get("published"):
            ET.SubElement(entry, "published").text = item["published"]
        summary = snippet_html(item["snippet"])
        terms = ", ".join(item["matched_terms"])
        ET.SubElement(entry, "summary", type="html").text = (
            f"<p>{summary}</p><p>{html.escape(item['source'] or '')} · {html.escape(item['language'] or '')} · "
            f"matched: {html.escape(terms)} (rule {html.escape(item['rule_id'])})</p>")
        for tag in item.get("tags", []):
            ET.SubElement(entry, "category", term=tag)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(feed, encoding="utf-8")


class AlertLog:
    """The durable delivery log, the alert stage's sink, and (``start()``) its dispatcher."""

    def __init__(self, path: Path, subscribers: list[Subscriber], settings: AlertSettings, *, data_dir: Path,
                 clock: Callable[[], float] = time.time, env=os.environ, workers: int = 8,
                 check_channels: bool = True):
        self.settings = settings
        self.subscribers = {s.name: s for s in subscribers}
        self.channels = check_subscribers(subscribers, data_dir, env) if check_channels else {}
        self.rules = RuleIndex(subscribers)
        self.clock = clock
        self._env = env
        self._db = sqlite.connect(path, synchronous="FULL")  # accepted means on disk: the bus commits after this
        self._db.row_factory = sqlite3.Row
        self._db.executescript(_SCHEMA)
        self.stories = StoryIndex(self._db)
        # A digest schedule starts when the subscriber first appears (or first has something held).
        self._db.executemany("INSERT OR IGNORE INTO digest_clock VALUES (?, ?)",
                             [(s.name, clock()) for s in subscribers if s.mode == "digest"])
        self._lock = threading.RLock()  # one connection, several threads
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._in_flight: dict[str, str] = {}  # delivery or digest id -> subscriber, while being sent
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="alert-send")
        self._thread: threading.Thread | None = None
        self._pruned_at = 0.0

    # -- the stage's sink ------------------------------------------------------------------------

    def write(self, articles: list[Article]) -> list[tuple[Article, str]]:
        """Record the deliveries these articles make; durable when this returns."""
        now = self.clock()
        matched = [(article, self.rules.match(article)) for article in articles]
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for article, matches in matched:
                if matches:
                    self._record(article, matches, now)
        self._wake.set()
        return []

    def _record(self, article: Article, matches: list[Match], now: float) -> None:
        window = now - self.settings.duplicate_window_days * 86400
        story = self.stories.story_of(article, now, window)
        snippets: dict[tuple[str, ...], str] = {}  # many subscribers match the same terms: one snippet each
        for match in matches:
            sub = self.subscribers[match.subscriber]
            if self._db.execute("SELECT 1 FROM deliveries WHERE subscriber = ? AND article_id = ?",
                                (sub.name, article.id)).fetchone():
                continue  # a redelivery from the bus
            state, error = "pending", None
            same = self._db.execute("SELECT article_id FROM deliveries WHERE subscriber = ? AND story = ?"
                                    " AND created >= ?", (sub.name, story, window)).fetchone()
            if same:
                state, error = "duplicate", f"same story as article {same[0]}"
                metrics.ALERTS.labels(self._kind(sub.name), "duplicate").inc()
            route = "digest" if sub.mode == "digest" else "immediate"
            if route == "immediate" and state == "pending" and self._sent_last_hour(sub.name, now) >= sub.rate_limit:
                route = "digest"  # over the rate limit: into the next digest
            if route == "digest":
                self._db.execute("INSERT OR IGNORE INTO digest_clock VALUES (?, ?)", (sub.name, now))
            terms = tuple(match.terms)
            marked = snippets[terms] = snippets.get(terms) or snippet(article, match.terms)
            self._db.execute(
                "INSERT INTO deliveries (id, subscriber, article_id, rule_id, item, story, route, state, next_at,"
                " last_error, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (uuid.uuid4().hex, sub.name, article.id, match.rule_id,
                 json.dumps(alert_item(article, match, marked), ensure_ascii=False), story, route, state, now, error,
                 now),
            )

    def _kind(self, subscriber: str) -> str:
        """The subscriber's channel kind, for metric labels ("none" when channels were not checked)."""
        return self.channels[subscriber].kind if subscriber in self.channels else "none"

    def _forget_old_sketches(self, before: float) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self.stories.forget_before(before)

    def _sent_last_hour(self, subscriber: str, now: float) -> int:
        return self._db.execute(
            "SELECT COUNT(*) FROM deliveries WHERE subscriber = ? AND route = 'immediate' AND state != 'duplicate'"
            " AND created > ?",
            (subscriber, now - 3600)).fetchone()[0]

    # -- the dispatcher --------------------------------------------------------------------------

    def start(self) -> AlertLog:
        self._thread = threading.Thread(target=self._loop, name="alert-dispatcher", daemon=True)
        self._thread.start()
        return self

    def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until nothing is being sent and no new delivery is due now."""
        deadline = time.monotonic() + timeout
        while self._in_flight or (self._thread and self._due_now()):
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.02)
        return True

    def close(self, drain: float = 5.0) -> None:
        """Stop; first give deliveries that are due now up to ``drain`` seconds to go out."""
        if self._thread:
            self.settle(drain)
            self._stop.set()
            self._wake.set()
            self._thread.join()
        self._pool.shutdown(wait=True)
        self._db.close()

    def _due_now(self) -> bool:
        with self._lock:
            now = self.clock()
            return bool(self._db.execute(
                "SELECT 1 FROM deliveries WHERE state = 'pending' AND route = 'immediate' AND next_at <= ? AND attempts = 0"
                " LIMIT 1", (now,)).fetchone())

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.dispatch()
            except Exception:  # a broken log must not kill the thread silently
                log.exception("alert dispatcher failed; retrying")
                wait = 5.0
            self._wake.wait(wait)
            self._wake.clear()

    def dispatch(self) -> float:
        """Start sending everything due; returns how long until something else may be due."""
        now = self.clock()
        if now - self._pruned_at > 3600:
            self._forget_old_sketches(now - self.settings.duplicate_window_days * 86400)
            self._pruned_at = now
        self.make_digests(now)
        with self._lock:  # selecting and claiming at once: a send finishing meanwhile cannot be claimed again
            digests = self._claim(self._db.execute(
                "SELECT * FROM digests WHERE state = 'pending' AND next_at <= ? ORDER BY next_at", (now,)))
            rows = self._claim(self._db.execute(
                "SELECT * FROM deliveries WHERE state = 'pending' AND route = 'immediate' AND next_at <= ?"
                " ORDER BY next_at LIMIT 500", (now,)))
        for row in digests:
            self._submit(row, self._digest)
        for row in rows:
            self._submit(row, self._single)
        with self._lock:
            upcoming = [self._db.execute(sql).fetchone()[0] for sql in (
                "SELECT MIN(next_at) FROM deliveries WHERE state = 'pending' AND route = 'immediate'",
                "SELECT MIN(next_at) FROM digests WHERE state = 'pending'")]
        upcoming += [self._next_digest_due(name) for name in self._digest_subscribers()]
        return max(0.05, min([u - self.clock() for u in upcoming if u is not None] + [1.0]))

    def _claim(self, rows: Iterable[sqlite3.Row]) -> list[sqlite3.Row]:
        """The rows not being sent already, at most two per subscriber in flight (so a hanging
        receiver occupies two workers and every other subscriber's alerts still go out)."""
        claimed = []
        for row in rows:
            busy = sum(1 for s in self._in_flight.values() if s == row["subscriber"])
            if row["id"] not in self._in_flight and busy < 2:
                self._in_flight[row["id"]] = row["subscriber"]
                claimed.append(row)
        return claimed

    def _submit(self, row: sqlite3.Row, send_one: Callable[[sqlite3.Row], None]) -> None:
        """Send a claimed row on the pool."""
        key = row["id"]

        def run():
            try:
                send_one(row)
            except Exception:
                log.exception("alert %s: unexpected failure", key)
            finally:
                with self._lock:
                    del self._in_flight[key]
                self._wake.set()

        self._pool.submit(run)

    def _payload(self, delivery_id: str, sub: Subscriber, kind: str, items: list[dict], more: int = 0) -> dict:
        rule = next((r for r in sub.rules if items and r.id == items[0]["rule_id"]), sub.rules[0])
        return {
            "delivery_id": delivery_id, "subscriber": sub.name, "kind": kind,
            "topic": rule.tags[0] if rule.tags else rule.query,  # for e-mail subjects
            "items": items, "more": more, "created": _iso(self.clock()),
        }

    def _attempt(self, sub: Subscriber, alert: dict) -> DeliveryError | None:
        try:
            send(self.channels[sub.name], alert, secrets=secrets_for(sub, self._env), smtp=self.settings.smtp,
                 timeout=self.settings.request_timeout, env=self._env)  # signatures carry the real time
        except DeliveryError as exc:
            return exc
        return None

    def _single(self, row: sqlite3.Row) -> None:
        sub = self.subscribers.get(row["subscriber"])
        if sub is None:  # removed from the configuration since
            self._finish("deliveries", row, DeliveryError("no such subscriber any more", transient=False))
            return
        item = json.loads(row["item"])
        error = self._attempt(sub, self._payload(row["id"], sub, "alert", [item]))
        self._finish("deliveries", row, error)

    def _finish(self, table: str, row: sqlite3.Row, error: DeliveryError | None) -> None:
        now = self.clock()
        attempts = row["attempts"] + 1
        final = error is not None and (not error.transient or attempts >= self.settings.max_attempts)
        metrics.ALERTS.labels(self._kind(row["subscriber"]), "sent" if error is None else "failed" if final else "retry").inc()
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if error is None:
                self._db.execute(f"UPDATE {table} SET state = 'sent', attempts = ?, sent_at = ?, last_error = NULL"
                                 " WHERE id = ?", (attempts, now, row["id"]))
                if table == "digests":
                    self._db.execute("UPDATE deliveries SET state = 'sent', sent_at = ? WHERE digest_id = ?",
                                     (now, row["id"]))
                return
            state = "failed" if final else "pending"
            next_at = now + max(error.retry_after or 0.0,
                                backoff(attempts - 1, self.settings.backoff_initial, self.settings.backoff_max))
            self._db.execute(f"UPDATE {table} SET state = ?, attempts = ?, next_at = ?, last_error = ? WHERE id = ?",
                             (state, attempts, next_at, error.reason, row["id"]))
            if table == "digests" and final:
                self._db.execute("UPDATE deliveries SET state = 'failed', last_error = ? WHERE digest_id = ?",
                                 (f"digest {row['id']}: {error.reason}", row["id"]))
        level = logging.ERROR if final else logging.WARNING
        log.log(level, "alert %s to %s: %s (attempt %d%s)", row["id"], row["subscriber"], error.reason, attempts,
                ", giving up" if final else f", next in {next_at - now:.0f}s")

    # -- digests ---------------------------------------------------------------------------------

    def _digest_subscribers(self) -> list[str]:
        with self._lock:
            held = {r[0] for r in self._db.execute(
                "SELECT DISTINCT subscriber FROM deliveries WHERE state = 'pending' AND route = 'digest'")}
        return sorted(n for n in held | {s.name for s in self.subscribers.values() if s.mode == "digest"}
                      if n in self.subscribers)

    def _next_digest_due(self, name: str) -> float:
        with self._lock:
            row = self._db.execute("SELECT last_due FROM digest_clock WHERE subscriber = ?", (name,)).fetchone()
        return next_digest(self.subscribers[name].digest, row[0] if row else self.clock())

    def make_digests(self, now: float) -> None:
        """For each subscriber whose digest slot has come: one digest row taking every held delivery."""
        for name in self._digest_subscribers():
            due = self._next_digest_due(name)
            if due > now:
                continue
            with self._lock, self._db:
                self._db.execute("BEGIN IMMEDIATE")
                held = self._db.execute("SELECT COUNT(*) FROM deliveries WHERE subscriber = ? AND state = 'pending'"
                                        " AND route = 'digest'", (name,)).fetchone()[0]
                if held:
                    digest_id = uuid.uuid4().hex
                    more = max(0, held - self.subscribers[name].digest.max_items)
                    self._db.execute("INSERT INTO digests (id, subscriber, due, more, state, next_at, created)"
                                     " VALUES (?, ?, ?, ?, 'pending', ?, ?)", (digest_id, name, due, more, now, now))
                    self._db.execute("UPDATE deliveries SET state = 'in_digest', digest_id = ? WHERE subscriber = ?"
                                     " AND state = 'pending' AND route = 'digest'", (digest_id, name))
                # Slots missed while down collapse into this one digest.
                latest = due
                while (following := next_digest(self.subscribers[name].digest, latest)) <= now:
                    latest = following
                self._db.execute("UPDATE digest_clock SET last_due = ? WHERE subscriber = ?", (latest, name))

    def _digest(self, row: sqlite3.Row) -> None:
        sub = self.subscribers.get(row["subscriber"])
        if sub is None:
            self._finish("digests", row, DeliveryError("no such subscriber any more", transient=False))
            return
        with self._lock:
            items = [json.loads(r[0]) for r in self._db.execute(
                "SELECT item FROM deliveries WHERE digest_id = ? ORDER BY created LIMIT ?",
                (row["id"], sub.digest.max_items))]
        error = self._attempt(sub, self._payload(row["id"], sub, "digest", items, row["more"]))
        self._finish("digests", row, error)

    # -- operators -------------------------------------------------------------------------------

    def status(self) -> dict:
        """Per subscriber: deliveries by state, and the failed ones with their reasons."""
        with self._lock:
            counts: dict[str, dict[str, int]] = {name: {} for name in self.subscribers}
            for name, state, n in self._db.execute(
                    "SELECT subscriber, state, COUNT(*) FROM deliveries GROUP BY subscriber, state"):
                counts.setdefault(name, {})[state] = n
            failed = [{"subscriber": r["subscriber"], "delivery_id": r["id"], "article_id": r["article_id"],
                       "attempts": r["attempts"], "error": r["last_error"], "created": _iso(r["created"])}
                      for r in self._db.execute("SELECT * FROM deliveries WHERE state = 'failed' ORDER BY created")]
            retrying, next_retry = self._db.execute(
                "SELECT COUNT(*), MIN(next_at) FROM deliveries WHERE state = 'pending' AND attempts > 0").fetchone()
        return {"subscribers": counts, "failed": failed, "retrying": retrying, "next_retry": _iso(next_retry)}

    def replay(self, subscriber: str | None = None) -> int:
        """Failed deliveries go back to pending with a fresh attempt count; returns how many."""
        now = self.clock()
        where, params = ("AND subscriber = ?", (subscriber,)) if subscriber else ("", ())
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(f"UPDATE digests SET state = 'replayed' WHERE state = 'failed' {where}", params)
            count = self._db.execute(
                f"UPDATE deliveries SET state = 'pending', attempts = 0, next_at = ?, digest_id = NULL,"
                f" route = CASE WHEN digest_id IS NULL THEN route ELSE 'digest' END"
                f" WHERE state = 'failed' {where}", (now, *params)).rowcount
        self._wake.set()
        return count

    def atom(self, name: str, limit: int = 50) -> bytes:
        """The subscriber's matches as an Atom feed, newest first, so any feed reader can follow them."""
        with self._lock:
            rows = self._db.execute("SELECT id, item, created FROM deliveries WHERE subscriber = ? AND state != 'duplicate'"
                                    " ORDER BY created DESC LIMIT ?", (name, limit)).fetchall()
        return atom_feed(name, [(r["id"], json.loads(r["item"]), r["created"]) for r in rows], self.clock())

    def send_test(self, name: str) -> None:
        """Send a sample alert to one subscriber now; raises DeliveryError if the channel refuses it."""
        sub = self.subscribers[name]
        item = {"rule_id": sub.rules[0].id, "matched_terms": ["test"], "hits": 1,
                "snippet": "This is a test alert from newsmon: your channel works.", "id": "test",
                "url": "https://example.org/newsmon-test", "title": "newsmon test alert", "source": "newsmon",
                "language": "en", "published": _iso(self.clock()), "tags": []}
        if error := self._attempt(sub, self._payload(f"test-{uuid.uuid4().hex}", sub, "alert", [item])):
            raise error
