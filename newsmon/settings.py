"""Settings: the YAML files in the config directory, with environment overrides.

Files (all in ``NEWSMON_CONFIG_DIR``, default ``./config``):
- ``pipeline.yaml``: bus, fetch limits, extraction, language, runner (optional; defaults below);
- ``feeds.yaml``: the feeds to poll;
- ``keywords.yaml``: the topics the tagger marks;
- ``subscribers.yaml``: who gets alerts for what, and how (optional).

Environment overrides: ``NEWSMON_DATA_DIR`` (default ``./data``), ``NEWSMON_CONFIG_DIR``,
``NEWSMON_BUS``, ``NEWSMON_ES_URL`` (search index on Elasticsearch instead of SQLite),
``NEWSMON_ALLOW_PRIVATE`` (comma-separated CIDRs the fetcher may reach), ``NEWSMON_USER_AGENT``.

Every validation error names the file, the key and what is wrong.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from newsmon.errors import ConfigError
from newsmon.query import parse

log = logging.getLogger(__name__)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not silently ignored


class FetchSettings(_Model):
    user_agent: str = ""
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(10.0, gt=0)
    total_timeout: float = Field(30.0, gt=0)  # whole request including redirects and body
    max_redirects: int = Field(5, ge=0, le=20)
    max_bytes: int = Field(10_000_000, gt=0)  # decompressed body size cap
    retries: int = Field(2, ge=0, le=10)  # for transient article fetch failures
    concurrency: int = Field(8, ge=1, le=256)  # article fetches in flight
    robots: bool = True  # honour robots.txt for article pages (feeds are meant to be polled)
    per_host: int = Field(2, ge=1, le=64)  # requests in flight to one host, feeds and pages together
    host_delay: float = Field(0.2, ge=0)  # seconds between the starts of two requests to one host
    allow_private: list[str] = []  # CIDRs that may be fetched although not public, e.g. ["127.0.0.1/32"]

    @field_validator("allow_private")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not an IP network: {exc}") from None
        return value


class PollSettings(_Model):
    concurrency: int = Field(200, ge=1, le=4096)  # feed requests in flight at once (per-host limits still apply)
    parse_workers: int = Field(2, ge=0, le=64)  # processes parsing feeds; 0 = a thread of the poller (tests)
    parse_timeout: float = Field(20.0, gt=0)  # a feed whose parsing takes longer is stopped, with the reason
    max_entries: int = Field(1000, ge=1)  # entries read per feed document; the rest are skipped, logged
    # Adaptive intervals: a feed with new entries is polled more often, a quiet one less, between
    # its configured interval divided and multiplied by this factor (1: always the configured interval).
    adapt_factor: float = Field(4.0, ge=1.0, le=100.0)
    min_interval: int = Field(60, ge=10)  # never more often than this, whatever the adaptation
    backoff_max: int = Field(6 * 3600, ge=10)  # longest wait between polls of a failing feed
    max_age_cap: int = Field(86400, ge=10)  # a Cache-Control max-age above this is read as this
    broken_after: int = Field(3, ge=1)  # failures in a row from which a feed counts as broken


class ExtractSettings(_Model):
    timeout: float = Field(20.0, gt=0)  # a page whose extraction takes longer is cut off
    workers: int = Field(2, ge=0, le=64)  # extraction processes; 0 = in-process, no time limit
    max_tasks_per_worker: int = Field(500, ge=1)  # recycle workers so memory cannot creep up
    fallback_below_chars: int = Field(200, ge=0)  # shorter extractions fall back to the page's JSON-LD articleBody
    min_text_chars: int = Field(50, ge=1)  # shorter final text: "no extractable text"


class LanguageSettings(_Model):
    prefix_chars: int = Field(600, ge=100)  # detect on a bounded prefix: same answer, bounded cost
    min_chars: int = Field(40, ge=1)  # fewer letters than this: "und"
    trials: int = Field(3, ge=1, le=20)  # langdetect random walks averaged (its own default: 7)


class RunnerSettings(_Model):
    batch_size: int = Field(50, ge=1, le=10_000)
    processes: int = Field(2, ge=0, le=64)  # worker processes for CPU-bound pure stages (language); 0 = in-process
    poll_timeout: float = Field(0.5, gt=0)


def parse_bootstrap(url: str) -> list[str]:
    """``kafka://h1:9092,h2:9092`` -> ["h1:9092", "h2:9092"]; [] if it names no HOST:PORT."""
    servers = [s.strip() for s in url.removeprefix("kafka://").split(",") if s.strip()]
    return servers if servers and all(":" in s for s in servers) else []


class KafkaSettings(_Model):
    prefix: str = "newsmon."  # topic and consumer-group names start with it
    partitions: int = Field(8, ge=1)  # per topic, for `newsmon topics create`: the most instances a stage can use
    replication: int = Field(1, ge=1)  # 3 on a production cluster
    session_timeout_ms: int = Field(10_000, ge=1000)


class ElasticsearchSettings(_Model):
    """The search index on Elasticsearch/OpenSearch, used instead of the embedded one when ``url`` is set.

    Credentials are not set here: NEWSMON_ES_API_KEY, or NEWSMON_ES_USERNAME and NEWSMON_ES_PASSWORD.
    """

    url: str = ""  # e.g. https://es.example.org:9200
    ca_file: str | None = None  # CA bundle for a cluster with its own certificate authority
    index_prefix: str = Field("newsmon-articles", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    bulk_docs: int = Field(500, ge=1, le=10_000)  # documents per bulk request, at most
    bulk_bytes: int = Field(5_000_000, ge=10_000)  # bytes per bulk request, at most
    flush_seconds: float = Field(1.0, gt=0)  # wait this long to fill a batch before sending a smaller one
    request_timeout: float = Field(30.0, gt=0)
    backoff_max: float = Field(30.0, gt=0)  # longest wait between retries
    give_up_after: float = Field(60.0, gt=0)  # then the batch goes back to the queue, to be retried later

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value


class SmtpSettings(_Model):
    """The mail server for ``mailto:`` channels. Credentials come from the environment only:
    NEWSMON_SMTP_USERNAME and NEWSMON_SMTP_PASSWORD."""

    host: str = "localhost"
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    sender: str = "newsmon@localhost"  # the From: address


class AlertSettings(_Model):
    max_attempts: int = Field(8, ge=1, le=100)  # then the delivery is marked failed (replayable)
    backoff_initial: float = Field(5.0, gt=0)  # seconds before the first retry; doubled each time, with jitter
    backoff_max: float = Field(3600.0, gt=0)
    request_timeout: float = Field(10.0, gt=0)  # per webhook request or SMTP session
    duplicate_window_days: float = Field(7.0, gt=0)  # a near-identical story within this window alerts once
    smtp: SmtpSettings = SmtpSettings()


class ServeSettings(_Model):
    """``newsmon serve``: the analysts' HTTP API and web page. The optional bearer token comes from
    the environment only: NEWSMON_API_TOKEN."""

    host: str = "127.0.0.1"  # 0.0.0.0 to serve other machines (set a token then)
    port: int = Field(8080, ge=0, le=65535)
    cache_entries: int = Field(256, ge=0, le=100_000)  # search answers kept while the index is unchanged; 0: none


class PipelineSettings(_Model):
    bus: str = "embedded"  # or kafka://HOST:PORT[,HOST:PORT...]
    metrics_addr: str = Field("", pattern=r"^(|[^:]*:\d{1,5})$")  # HOST:PORT for /metrics, /healthz, /readyz; empty: off
    elasticsearch: ElasticsearchSettings = ElasticsearchSettings()
    kafka: KafkaSettings = KafkaSettings()
    fetch: FetchSettings = FetchSettings()
    poll: PollSettings = PollSettings()
    extract: ExtractSettings = ExtractSettings()
    language: LanguageSettings = LanguageSettings()
    runner: RunnerSettings = RunnerSettings()
    alerts: AlertSettings = AlertSettings()
    serve: ServeSettings = ServeSettings()

    @field_validator("bus")
    @classmethod
    def _bus(cls, value: str) -> str:
        if value != "embedded" and not (value.startswith("kafka://") and parse_bootstrap(value)):
            raise ValueError(f"{value!r}: expected 'embedded' or kafka://HOST:PORT[,HOST:PORT...]")
        return value

    def worst_batch_seconds(self) -> float:
        """The longest one batch of the slowest stage (fetch+extract) can take, from the limits set here.

        Kafka's max.poll.interval must be longer, or a slow batch makes the group rebalance.
        """
        per_page = (self.fetch.retries + 1) * self.fetch.total_timeout + 8.0 * self.fetch.retries + self.extract.timeout
        rounds = -(-self.runner.batch_size // self.fetch.concurrency)
        return rounds * per_page


class Feed(_Model):
    name: str = Field(min_length=1)
    url: str
    interval: int = Field(900, ge=10)  # seconds between polls
    language: str | None = None  # hint, used when the text is too short to tell
    conditional: bool = True  # send If-None-Match/If-Modified-Since (off for servers that answer 304 wrongly)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value


class FeedsFile(_Model):
    feeds: list[Feed] = []


class Topic(_Model):
    keywords: list[str] = []  # any language
    languages: dict[str, list[str]] = {}  # keywords that count only in articles of that language


class KeywordsFile(_Model):
    topics: dict[str, Topic] = {}


class DigestSchedule(_Model):
    every: Literal["hourly", "daily", "weekly"] = "daily"
    at: str = Field("08:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")  # local time; hourly digests use the minute
    weekday: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = "mon"  # for weekly digests
    timezone: str = "UTC"  # IANA name, e.g. Europe/Paris
    max_items: int = Field(50, ge=1, le=1000)  # listed in one digest; the rest are counted

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Paris)") from None
        return value


class Rule(_Model):
    """Matches an article when every part given matches: one of ``tags``, the ``query``, the filters."""

    id: str = ""  # defaults to SUBSCRIBER/N
    tags: list[str] = []  # topic names from keywords.yaml; any of them
    query: str = ""  # words, "phrases", a OR b, -excluded, prefix*; case and accents ignored
    languages: list[str] = []
    sources: list[str] = []
    min_hits: int = Field(1, ge=1)  # matched keyword occurrences, at least

    @field_validator("query")
    @classmethod
    def _parses(cls, value: str) -> str:
        if value.strip() and parse(value).empty:  # every string parses; one of punctuation only is empty
            raise ValueError(f"{value!r} has no words to match")
        return value


class Subscriber(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
    channel: str  # https://… webhook, mailto:…, smtp://…, slack://…, file://… (see sinks/channels.py)
    rules: list[Rule] = Field(min_length=1)
    mode: Literal["immediate", "digest"] = "immediate"
    digest: DigestSchedule = DigestSchedule()  # for digest mode, and for what the rate limit holds back
    rate_limit: int = Field(20, ge=1)  # immediate alerts per hour; the rest go into the next digest
    secret_env: str | None = None  # environment variable with the webhook secret ("new,old" while rotating)

    def model_post_init(self, _context) -> None:
        for n, rule in enumerate(self.rules, 1):
            if not rule.id:
                rule.id = f"{self.name}/{n}"
            if not rule.tags and not rule.query.strip():
                raise ValueError(f"rule {rule.id}: give tags, a query, or both")


class SubscribersFile(_Model):
    subscribers: list[Subscriber] = []

    @field_validator("subscribers")
    @classmethod
    def _unique(cls, value: list[Subscriber]) -> list[Subscriber]:
        names = [s.name for s in value]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"subscriber names must be unique: {', '.join(dupes)}")
        return value


class Settings(BaseModel):
    config_dir: Path
    data_dir: Path
    pipeline: PipelineSettings
    feeds: list[Feed]
    topics: dict[str, Topic]
    subscribers: list[Subscriber] = []


def unknown_topics(subscribers: list[Subscriber], topics: dict[str, Topic], path: Path) -> list[str]:
    """Rules on a topic keywords.yaml does not define: they could never match."""
    return [f"{path}: rule {rule.id}: no topic {tag!r} in keywords.yaml"
            for sub in subscribers for rule in sub.rules for tag in rule.tags if tag not in topics]


def read_yaml(path: Path, model: type[_Model], required: bool) -> _Model:
    if not path.exists():
        if required:
            raise ConfigError(f"{path}: file not found (set NEWSMON_CONFIG_DIR to the config directory)")
        return model()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(path, exc)) from None


def describe(path: Path, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        lines.append(f"{path}: {key or '(top level)'}: {err['msg']}")
    return "\n".join(lines)


def load(config_dir: Path | None = None, data_dir: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    env = os.environ
    config_dir = Path(config_dir or env.get("NEWSMON_CONFIG_DIR") or "config")
    data_dir = Path(data_dir or env.get("NEWSMON_DATA_DIR") or "data")
    if not config_dir.is_dir():
        raise ConfigError(f"{config_dir}: config directory not found (set NEWSMON_CONFIG_DIR)")
    pipeline = read_yaml(config_dir / "pipeline.yaml", PipelineSettings, required=False)
    feeds = read_yaml(config_dir / "feeds.yaml", FeedsFile, required=True)
    keywords = read_yaml(config_dir / "keywords.yaml", KeywordsFile, required=True)
    subscribers = read_yaml(config_dir / "subscribers.yaml", SubscribersFile, required=False)

    raw = pipeline.model_dump()
    if env.get("NEWSMON_BUS"):
        raw["bus"] = env["NEWSMON_BUS"]
    if env.get("NEWSMON_METRICS_ADDR") is not None:
        raw["metrics_addr"] = env["NEWSMON_METRICS_ADDR"]
    if env.get("NEWSMON_ES_URL") is not None:
        raw["elasticsearch"]["url"] = env["NEWSMON_ES_URL"]
    if env.get("NEWSMON_USER_AGENT"):
        raw["fetch"]["user_agent"] = env["NEWSMON_USER_AGENT"]
    if env.get("NEWSMON_ALLOW_PRIVATE") is not None:
        raw["fetch"]["allow_private"] = [c.strip() for c in env["NEWSMON_ALLOW_PRIVATE"].split(",") if c.strip()]
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.rpartition(".")
        (raw[section] if section else raw)[key] = value
    try:
        pipeline = PipelineSettings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe(config_dir / "pipeline.yaml (with environment overrides)", exc)) from None
    return Settings(
        config_dir=config_dir, data_dir=data_dir, pipeline=pipeline, feeds=feeds.feeds, topics=keywords.topics,
        subscribers=subscribers.subscribers,
    )


class ConfigWatch:
    """Re-reads the configuration when feeds.yaml or keywords.yaml change, or when asked (SIGHUP).

    A file that no longer validates is reported and the running configuration stays.
    """

    FILES = ("feeds.yaml", "keywords.yaml")

    def __init__(self, settings: Settings, overrides: dict[str, Any] | None = None):
        self.config_dir, self.data_dir, self.overrides = settings.config_dir, settings.data_dir, overrides
        self.requested = threading.Event()
        self._stamps = self._read_stamps()

    def _read_stamps(self) -> dict[str, tuple[int, int] | None]:
        stamps = {}
        for name in self.FILES:
            try:
                info = (self.config_dir / name).stat()
                stamps[name] = (info.st_mtime_ns, info.st_size)
            except OSError:
                stamps[name] = None
        return stamps

    def poll(self) -> Settings | None:
        """New settings if a file changed (or a reload was asked for) and they validate, else None."""
        stamps = self._read_stamps()
        if stamps == self._stamps and not self.requested.is_set():
            return None
        self.requested.clear()
        self._stamps = stamps
        try:
            settings = load(self.config_dir, self.data_dir, self.overrides)
        except ConfigError as exc:
            log.error("configuration not reloaded, the running one stays:\n%s", exc)
            return None
        log.info("configuration reloaded: %d feeds, %d topics", len(settings.feeds), len(settings.topics))
        return settings
