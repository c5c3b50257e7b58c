"""Alerts: rules, the durable delivery log, retries, digests, rate limits, near-duplicates, the CLI."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import feedparser
import pytest
import yaml

from enrich.keywords import KeywordTagger
from enrich.language import detect_language
from ingest.extract import decode_html, extract_html
from newsmon.app.stages import open_alerts
from newsmon.dates import to_epoch
from newsmon.errors import ConfigError
from newsmon.record import Article, TagHit, article_id
from newsmon.settings import AlertSettings, DigestSchedule, LanguageSettings, Subscriber, load
from sinks.alert_rules import RuleIndex
from sinks.alerts import AlertLog, next_digest
from sinks.stories import resemblance, sketch
from tests.support.harness import EURONEWS_SLUG, NEWSMON, REPO, demo_page, wait_for
from tests.support.receivers import WebhookReceiver

FAST = AlertSettings(backoff_initial=0.05, backoff_max=0.2, request_timeout=5)
STORY = ("The harbour council approved the budget for the new bridge on Monday after a long debate about costs, "
         "tolls and the timetable of the works, which should start in spring and last two years.")


def _article(n: int, *, text: str = STORY, title: str | None = None, source: str = "Wire", language: str = "en",
             tags: dict[str, dict[str, int]] | None = None) -> Article:
    url = f"https://news{n % 7}.example.org/story/{n}"
    return Article(id=article_id(url), url=url, canonical_url=url, feed_url="https://x.example.org/feed",
                   source=source, title=title or f"Story {n}", text=text, language=language,
                   published="2026-02-12T16:45:00Z",
                   tags=[TagHit(topic, terms, []) for topic, terms in (tags or {}).items()])


def _subscriber(name: str, channel: str, **fields) -> Subscriber:
    fields.setdefault("rules", [{"tags": ["bridges"]}])
    return Subscriber(name=name, channel=channel, **fields)


class Clock:
    """A hand-moved clock for schedules (digests, rate-limit windows)."""

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def open_log(tmp_path):
    opened = []

    def open_(subscribers, settings=FAST, start=True, **kwargs) -> AlertLog:
        kwargs.setdefault("env", {"HOOK_SECRET": "s3cret"})
        log = AlertLog(tmp_path / "alerts.db", subscribers, settings, data_dir=tmp_path, **kwargs)
        opened.append(log)
        return log.start() if start else log

    yield open_
    for log in opened:
        try:
            log.close(drain=0)
        except Exception:
            pass  # closed by the test already


def _euronews() -> Article:
    extracted = extract_html(decode_html(demo_page(EURONEWS_SLUG))[0], url="https://www.euronews.com/x")
    url = "https://fr.euronews.com/2026/02/12/otan-ukraine-aide"
    article = Article(id=article_id(url), url=url, canonical_url=url, feed_url="https://fr.euronews.com/rss",
                      source="Euronews", title=extracted.title, text=extracted.text)
    article = detect_language(article, LanguageSettings())
    return KeywordTagger(load(config_dir=REPO / "config").topics).tag(article)


def test_euronews_article_alerts_the_nato_fr_subscriber_but_not_the_one_excluding_rutte():
    article = _euronews()
    assert article.language == "fr" and "nato" in article.tag_names and "Rutte" in article.text
    rules = RuleIndex([
        _subscriber("desk-fr", "file://a.jsonl", rules=[{"tags": ["nato"], "languages": ["fr"]}]),
        _subscriber("no-rutte", "file://b.jsonl", rules=[{"tags": ["nato"], "query": "-Rutte"}]),
        _subscriber("desk-de", "file://c.jsonl", rules=[{"tags": ["nato"], "languages": ["de"]}]),
    ])
    [match] = rules.match(article)
    assert match.subscriber == "desk-fr" and match.rule_id == "desk-fr/1"
    assert "OTAN" in match.terms and match.hits >= 2


def test_rule_syntax_phrases_or_prefix_exclusion_filters_and_min_hits():
    article = _article(1, text="Le conseil a voté le budget du pont. La sécurité du chantier inquiète.", language="fr",
                       source="Le Quotidien", tags={"security": {"sécurité": 1}})
    def matches(**rule):
        return bool(RuleIndex([_subscriber("s", "file://x", rules=[rule])]).match(article))
    assert matches(query="securite")  # accents and case ignored
    assert matches(query='"budget du pont"') and not matches(query='"pont du budget"')
    assert matches(query="tunnel OR pont") and not matches(query="tunnel OR viaduc")
    assert matches(query="chanti*") and not matches(query="chantix*")
    assert matches(query="conseil -tunnel") and not matches(query="conseil -budget")
    assert matches(tags=["security"], sources=["le quotidien"]) and not matches(tags=["security"], sources=["Wire"])
    assert matches(tags=["security"], languages=["fr"]) and not matches(tags=["security"], languages=["en"])
    assert not matches(tags=["security"], min_hits=2) and matches(tags=["security"], query="pont", min_hits=2)


def test_rules_are_indexed_so_an_article_is_checked_only_against_rules_it_could_match():
    subscribers = [_subscriber(f"s{i}", "file://x", rules=[{"query": f"word{i} budget"}]) for i in range(10_000)]
    subscribers.append(_subscriber("bridge", "file://x", rules=[{"query": "bridge budget"}]))
    rules = RuleIndex(subscribers)
    article = _article(1)
    assert len(rules.candidates(article)) == 1
    assert [m.subscriber for m in rules.match(article)] == ["bridge"]


def test_channels_and_webhook_secrets_are_checked_at_start_up(tmp_path):
    with pytest.raises(ConfigError) as err:
        AlertLog(tmp_path / "a.db", [_subscriber("a", "ftp://x.org/"), _subscriber("b", "https://hooks.example.org/x"),
                                    _subscriber("c", "https://h.example.org/y", secret_env="EMPTY")],
                 FAST, data_dir=tmp_path, env={})
    message = str(err.value)
    assert "subscriber a:" in message and "subscriber b: webhooks are signed" in message and "EMPTY is empty" in message


def test_signed_webhook_alert_explains_itself_and_arrives_once_despite_two_500s(open_log):
    with WebhookReceiver(["s3cret"], statuses=[500, 500]) as hook:
        log = open_log([_subscriber("ops", hook.url, secret_env="HOOK_SECRET",
                                    rules=[{"tags": ["bridges"], "query": "council"}])])
        article = _article(1, tags={"bridges": {"bridge": 1}})
        log.write([article])
        log.write([article])  # redelivered by the bus
        wait_for(lambda: hook.accepted, 10, "the alert delivered")
        assert log.settle(5)
        assert hook.answers == [500, 500, 200]
        [alert] = hook.accepted
        item = alert["items"][0]
        assert alert["subscriber"] == "ops" and alert["kind"] == "alert" and alert["delivery_id"]
        assert item["rule_id"] == "ops/1" and item["matched_terms"] == ["bridge", "council"]
        assert (item["id"], item["url"], item["title"], item["source"], item["language"], item["published"]) == (
            article.id, article.url, "Story 1", "Wire", "en", "2026-02-12T16:45:00Z")
        assert "<mark>council</mark>" in item["snippet"]
        assert log.status()["subscribers"]["ops"] == {"sent": 1}


def test_client_errors_are_not_retried_failures_are_visible_and_replayable(open_log):
    with WebhookReceiver(["s3cret"], statuses=[404]) as hook:
        log = open_log([_subscriber("ops", hook.url, secret_env="HOOK_SECRET")])
        log.write([_article(1, tags={"bridges": {"bridge": 1}})])
        wait_for(lambda: log.status()["failed"], 10, "the delivery marked failed")
        [failed] = log.status()["failed"]
        assert "404" in failed["error"] and failed["attempts"] == 1
        assert hook.answers == [404]
        assert log.replay() == 1
        wait_for(lambda: hook.accepted, 10, "the replayed alert delivered")
        assert log.settle(5)  # the receiver has it; now its answer is recorded too
        assert log.status()["subscribers"]["ops"] == {"sent": 1}


def test_retry_after_is_honoured(open_log):
    with WebhookReceiver(["s3cret"], statuses=[429], retry_after="30") as hook:
        log = open_log([_subscriber("ops", hook.url, secret_env="HOOK_SECRET")])
        log.write([_article(1, tags={"bridges": {"bridge": 1}})])
        wait_for(lambda: log.status()["retrying"], 10, "the first attempt refused")
        wait = to_epoch(log.status()["next_retry"]) - time.time()
        assert 24 < wait <= 30  # the receiver's 30 s, not this configuration's 0.05 s backoff


def test_a_hanging_receiver_does_not_hold_up_other_subscribers(open_log):
    with WebhookReceiver(["s3cret"], delay=3) as slow, WebhookReceiver(["s3cret"]) as fast:
        log = open_log([_subscriber("slow", slow.url, secret_env="HOOK_SECRET"),
                        _subscriber("fast", fast.url, secret_env="HOOK_SECRET", rules=[{"query": "bridge"}])])
        log.write([_article(n, tags={"bridges": {"bridge": 1}}, text=f"Item {n} on the bridge: " + " ".join(
            f"w{n}x{k}" for k in range(40))) for n in range(6)])  # six stories, not one
        started = time.monotonic()
        wait_for(lambda: len(fast.accepted) >= 1, 2, "the fast subscriber's first alert")
        assert time.monotonic() - started < 2
        wait_for(lambda: len(slow.accepted) >= 4, 15, "the slow subscriber's alerts, two at a time")
    assert slow.max_in_flight == 2  # at most two sends per subscriber in flight: a hang holds two threads, not eight


def test_a_pending_retry_survives_a_restart(open_log):
    with WebhookReceiver(["s3cret"], statuses=[503]) as hook:
        subscriber = _subscriber("ops", hook.url, secret_env="HOOK_SECRET")
        log = open_log([subscriber], settings=AlertSettings(backoff_initial=1, backoff_max=1))
        log.write([_article(1, tags={"bridges": {"bridge": 1}})])
        wait_for(lambda: log.status()["retrying"], 10, "a failed first attempt")
        log.close(drain=0)  # stopped before the retry is due
        again = open_log([subscriber])
        wait_for(lambda: hook.accepted, 10, "the retry, made by the restarted process")
        assert again.settle(5) and hook.answers == [503, 200]


def test_the_same_story_under_two_urls_alerts_once(open_log, tmp_path):
    """Wire copy republished by a second source: new headline, a dateline, the last paragraph cut."""
    log = open_log([_subscriber("desk", "file://alerts.jsonl", rules=[{"tags": ["nato"]}]),
                    _subscriber("wire-desk", "file://wire.jsonl", rules=[{"tags": ["nato"], "sources": ["Wire B"]}])])
    first = _euronews()
    retold = _article(2, source="Wire B", title="Ukraine : 35 milliards promis par les alliés", language="fr",
                      text="BRUXELLES (Wire B) - " + first.text.rsplit("\n", 1)[0], tags={"nato": {"OTAN": 3}})
    other = _article(3, language="fr", tags={"nato": {"OTAN": 1}}, text=extract_html(decode_html(
        demo_page("intelligence-artificielle-hopitaux-securite"))[0]).text + " L'OTAN n'est pas concernée.")
    assert resemblance(sketch(first.text), sketch(retold.text)) >= 0.4 > resemblance(sketch(first.text), sketch(other.text))
    log.write([first])
    log.write([retold, other])
    assert log.settle(5)
    lines = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert sorted(a["items"][0]["id"] for a in lines) == sorted([first.id, other.id])
    assert log.status()["subscribers"]["desk"] == {"sent": 2, "duplicate": 1}
    # Another subscriber who never had the story gets the republished article.
    assert log.status()["subscribers"]["wire-desk"] == {"sent": 1}
    wire = [json.loads(line) for line in (tmp_path / "wire.jsonl").read_text().splitlines()]
    assert [a["items"][0]["id"] for a in wire] == [retold.id]


def test_a_burst_beyond_the_rate_limit_goes_into_one_digest(open_log, tmp_path):
    clock = Clock(datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc).timestamp())
    log = open_log([_subscriber("desk", "file://alerts.jsonl", rate_limit=10,
                                digest={"every": "hourly", "at": "00:00", "max_items": 25})], clock=clock)
    burst = [_article(n, tags={"bridges": {"bridge": 1}}, text=f"Dispatch number {n}: " + " ".join(
        f"w{n}x{k}" for k in range(30))) for n in range(500)]
    for start in range(0, 500, 50):
        log.write(burst[start:start + 50])
    assert log.settle(10)
    out = tmp_path / "alerts.jsonl"
    immediate = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(immediate) == 10 and {a["kind"] for a in immediate} == {"alert"}
    clock.now += 1800  # 10:00: the hourly digest slot
    log.dispatch()
    assert log.settle(10)
    sent = [json.loads(line) for line in out.read_text().splitlines()]
    [digest] = [a for a in sent if a["kind"] == "digest"]
    assert len(digest["items"]) == 25 and digest["more"] == 465
    assert log.status()["subscribers"]["desk"] == {"sent": 500}
    clock.now += 3600
    log.dispatch()
    assert log.settle(5) and len(out.read_text().splitlines()) == 11  # nothing held: no empty digest


def test_a_restart_in_the_middle_of_a_digest_loses_nothing_and_sends_nothing_twice(open_log, tmp_path):
    clock = Clock(datetime(2026, 3, 2, 7, 0, tzinfo=timezone.utc).timestamp())
    with WebhookReceiver(["s3cret"], statuses=[503]) as hook:
        subscriber = _subscriber("morning", hook.url, secret_env="HOOK_SECRET", mode="digest",
                                 digest={"every": "daily", "at": "08:00", "timezone": "UTC"})
        log = open_log([subscriber], clock=clock, start=False)
        log.write([_article(n, tags={"bridges": {"bridge": 1}}, text=f"Item {n}: " + " ".join(
            f"v{n}y{k}" for k in range(30))) for n in range(5)])
        clock.now += 3600  # 08:00
        log.dispatch()  # the digest is made, its first send gets 503 ...
        assert log.settle(5) and hook.answers == [503]
        log.close(drain=0)  # ... and the process stops before the retry

        again = open_log([subscriber], clock=clock, start=False)
        again.write([_article(9, tags={"bridges": {"bridge": 1}}, text="Late item: " + " ".join(
            f"z{k}" for k in range(30)))])  # after the digest was made: the next one
        clock.now += 60
        again.dispatch()
        assert again.settle(5)
        [digest] = hook.accepted
        assert digest["kind"] == "digest" and len(digest["items"]) == 5
        clock.now += 86400
        again.dispatch()
        assert again.settle(5)
        assert len(hook.accepted) == 2 and [i["title"] for i in hook.accepted[1]["items"]] == ["Story 9"]
        assert len({a["delivery_id"] for a in hook.accepted}) == 2


def test_digest_slots_follow_the_subscribers_time_zone_across_dst():
    paris = DigestSchedule(every="daily", at="08:00", timezone="Europe/Paris")
    before = datetime(2026, 3, 28, 12, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()  # DST starts on the 29th
    first = next_digest(paris, before)
    second = next_digest(paris, first)
    assert [datetime.fromtimestamp(t, ZoneInfo("Europe/Paris")).strftime("%m-%d %H:%M") for t in (first, second)] == [
        "03-29 08:00", "03-30 08:00"]
    assert first - before == 19 * 3600  # 12:00 CET to 08:00 CEST: the night is an hour shorter
    weekly = DigestSchedule(every="weekly", at="07:30", weekday="fri")
    slot = datetime.fromtimestamp(next_digest(weekly, datetime(2026, 3, 2, tzinfo=timezone.utc).timestamp()), timezone.utc)
    assert slot.strftime("%a %H:%M") == "Fri 07:30"


def test_a_rule_on_an_unknown_topic_is_a_configuration_error(config_dir, make_settings):
    (config_dir / "subscribers.yaml").write_text(
        "subscribers:\n  - name: desk\n    channel: file://a.jsonl\n    rules: [{tags: [natto]}]\n")
    with pytest.raises(ConfigError, match=r"subscribers.yaml: rule desk/1: no topic 'natto' in keywords.yaml"):
        open_alerts(make_settings())


def test_cli_add_list_test_status_remove(config_dir, tmp_path):
    env = {"NEWSMON_CONFIG_DIR": str(config_dir), "NEWSMON_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    (config_dir / "subscribers.yaml").write_text("subscribers: []\n")

    def cli(*args):
        return subprocess.run(NEWSMON + ["alerts", *args], env=env, capture_output=True, text=True, timeout=60)

    added = cli("add", "desk", "--tag", "nato", "--lang", "fr", "--channel", "file://out.jsonl", "--mode", "digest",
                "--every", "hourly", "--timezone", "Europe/Paris")
    assert added.returncode == 0, added.stderr
    assert cli("add", "desk", "--query", '"Arctic Sentry"', "--channel", "file://out.jsonl").returncode == 0
    refused = cli("add", "hook", "--tag", "nato", "--channel", "https://hooks.example.org/x")
    assert refused.returncode == 1 and "--secret-env" in refused.stderr
    bad = cli("add", "tz", "--tag", "nato", "--channel", "file://x", "--timezone", "Mars/Olympus")
    assert bad.returncode == 1 and "Mars/Olympus" in bad.stderr
    saved = yaml.safe_load((config_dir / "subscribers.yaml").read_text())["subscribers"]
    assert [s["name"] for s in saved] == ["desk"] and len(saved[0]["rules"]) == 2
    listed = [json.loads(line) for line in cli("list", "--json").stdout.splitlines()]
    assert listed[0]["digest"]["timezone"] == "Europe/Paris" and listed[0]["rules"][1]["query"] == '"Arctic Sentry"'
    tested = cli("test", "desk")
    assert tested.returncode == 0, tested.stderr
    assert json.loads((tmp_path / "data" / "out.jsonl").read_text())["items"][0]["title"] == "newsmon test alert"
    status = json.loads(cli("status", "--json").stdout)
    assert status["subscribers"] == {"desk": {}} and status["failed"] == []
    assert cli("remove", "desk").returncode == 0
    assert cli("remove", "desk").returncode == 1
    assert yaml.safe_load((config_dir / "subscribers.yaml").read_text())["subscribers"] == []


def test_cli_edits_keep_the_operators_comments_order_and_quoting(config_dir, tmp_path):
    """subscribers.yaml as shipped (comments, flow mappings, quoted times): add then remove gives it back
    byte for byte, and the added entry sits after the others."""
    env = {"NEWSMON_CONFIG_DIR": str(config_dir), "NEWSMON_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    path = config_dir / "subscribers.yaml"
    shipped = path.read_text()
    assert "# Alert subscribers" in shipped and 'at: "00:00"' in shipped  # what must survive

    def cli(*args):
        return subprocess.run(NEWSMON + ["alerts", *args], env=env, capture_output=True, text=True, timeout=60)

    assert cli("add", "night-desk", "--tag", "nato", "--channel", "file://night.jsonl").returncode == 0
    edited = path.read_text()
    assert edited.startswith(shipped.rstrip("\n")) and "  - name: night-desk" in edited
    assert [s["name"] for s in yaml.safe_load(edited)["subscribers"]] == ["demo-desk", "night-desk"]
    assert cli("add", "demo-desk", "--query", "Rutte", "--channel", "file://alerts.jsonl").returncode == 0
    assert "# the demo's subscriber: NATO news in French" in path.read_text()  # a rule added under a comment
    assert cli("remove", "night-desk").returncode == 0
    lines = path.read_text().splitlines()
    assert lines[:len(shipped.splitlines())] == shipped.splitlines() and lines[-1].strip() == "- query: Rutte"


def test_under_load_every_alert_is_sent_exactly_once(open_log):
    """The dispatcher never claims a delivery whose send is finishing (the receiver refuses replays)."""
    with WebhookReceiver(["s3cret"]) as hook:
        log = open_log([_subscriber("ops", hook.url, secret_env="HOOK_SECRET", rate_limit=1000)])
        articles = [_article(n, tags={"bridges": {"bridge": 1}}, text=f"Story {n}: " + " ".join(
            f"u{n}q{k}" for k in range(30))) for n in range(200)]
        for start in range(0, 200, 10):
            log.write(articles[start:start + 10])
        wait_for(lambda: len(hook.accepted) >= 200, 30, "200 alerts")
        assert log.settle(5)
        assert sorted(a["items"][0]["id"] for a in hook.accepted) == sorted(a.id for a in articles)
        assert set(hook.answers) == {200} and len(hook.answers) == 200


def test_atom_feed_per_subscriber_reads_in_a_feed_reader(open_log):
    log = open_log([_subscriber("desk", "file://alerts.jsonl")])
    articles = [_article(n, tags={"bridges": {"bridge": 1}}, title=f"Bridge <{n}> & co", text=f"Story {n}: " + " ".join(
        f"a{n}b{k}" for k in range(30)) + " bridge") for n in range(3)]
    log.write(articles)
    raw = log.atom("desk")
    parsed = feedparser.parse(raw)
    assert not parsed.bozo and parsed.feed.title == "newsmon alerts for desk"
    assert sorted(e.title for e in parsed.entries) == [f"Bridge <{n}> & co" for n in range(3)]
    assert {e.link for e in parsed.entries} == {a.url for a in articles}
    assert parsed.entries[0].tags[0].term == "bridges" and "matched: bridge (rule desk/1)" in parsed.entries[0].summary
    assert b"&lt;mark&gt;bridge&lt;/mark&gt;" in raw  # the highlight (feed readers may strip <mark>)
