"""The pipeline on a real Kafka broker: stages as separate OS processes.

The broker is the one `make engines` starts (the ``kafka_bootstrap`` fixture), or $KAFKA_BOOTSTRAP.
It does not create topics on first use (as in production): every test creates its own, under its
own prefix, so tests never see each other's messages or groups, and deletes them after.
"""

import json
import logging
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from newsmon.app.stages import ALL_TOPICS, DETECTED, DISCOVERED, TAGGED
from newsmon.bus import DEAD_LETTERS
from newsmon.kafka_bus import KafkaBus, create_topics
from newsmon.record import Article, article_id
from newsmon.settings import parse_bootstrap
from tests.support.harness import EURONEWS_SLUG, NEWSMON, free_port, wait_for, write_feeds
from tests.support.sites import Page, TestSite, article_html, rss

pytestmark = pytest.mark.slow


PARTITIONS = 4


def create(bootstrap: str, prefix: str, names=ALL_TOPICS, partitions: int = PARTITIONS) -> None:
    outcome = create_topics(bootstrap, [prefix + name for name in names], partitions, 1)
    assert all(what.startswith("created") for what in outcome.values()), outcome


def delete_topics(bootstrap: str, prefix: str) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=parse_bootstrap(bootstrap), client_id="newsmon-tests")
    try:
        if mine := [name for name in admin.list_topics() if name.startswith(prefix)]:
            admin.delete_topics(mine)
    finally:
        admin.close()


@pytest.fixture
def prefix(kafka_bootstrap):
    """A fresh topic and group prefix; its topics are deleted afterwards."""
    name = f"t{uuid.uuid4().hex[:8]}."
    yield name
    delete_topics(kafka_bootstrap, name)


def write_pipeline_config(config_dir: Path, prefix: str, **kafka) -> None:
    settings = {"prefix": prefix, "partitions": PARTITIONS, "session_timeout_ms": 6000, **kafka}
    (config_dir / "pipeline.yaml").write_text(
        "kafka:\n" + "".join(f"  {key}: {value!r}\n" for key, value in settings.items())
        + "extract:\n  workers: 1\nrunner:\n  batch_size: 10\n  processes: 0\n"
        # On two loaded cores (other suites, the broker, five stage processes starting) a poller's loopback
        # connect to the demo site has been seen to take over the default 5 s: these tests are about Kafka.
        "fetch:\n  concurrency: 4\n  connect_timeout: 30\n"
        "poll:\n  adapt_factor: 1\n"  # fixed intervals: the poller tests count polling rounds
    )


@pytest.fixture
def bare_env(config_dir, tmp_path, kafka_bootstrap, prefix):
    """The environment of newsmon commands on the broker under the test's prefix; no topic exists yet."""
    write_pipeline_config(config_dir, prefix)
    return {**os.environ, "NEWSMON_CONFIG_DIR": str(config_dir), "NEWSMON_DATA_DIR": str(tmp_path / "data"),
            "NEWSMON_ALLOW_PRIVATE": "127.0.0.1/32", "NEWSMON_BUS": kafka_bootstrap}


@pytest.fixture
def env(bare_env, kafka_bootstrap, prefix):
    """bare_env with the pipeline's topics created."""
    create(kafka_bootstrap, prefix)
    return bare_env


def env_config(env) -> Path:
    return Path(env["NEWSMON_CONFIG_DIR"])


def _bus(env) -> KafkaBus:
    prefix = [line.split("'")[1] for line in open(os.path.join(env["NEWSMON_CONFIG_DIR"], "pipeline.yaml")) if "prefix" in line][0]
    return KafkaBus(env["NEWSMON_BUS"], prefix=prefix, session_timeout_ms=6000)


def _start(env, *args, data_dir=None, log=None):
    """Start a newsmon process; its log goes to ``log`` (default: a file beside its data directory),
    whose tail ``_wait_for`` shows when it times out."""
    data_dir = data_dir or env["NEWSMON_DATA_DIR"]
    log = log or f"{data_dir}-{'-'.join(args)}-{uuid.uuid4().hex[:4]}.log"
    with open(log, "a") as stderr:
        proc = subprocess.Popen(NEWSMON + list(args), env=dict(env, NEWSMON_DATA_DIR=data_dir), stderr=stderr,
                                start_new_session=True)
    proc.log = log
    _started.append(proc)
    return proc


_started: list[subprocess.Popen] = []  # this test's processes, whose logs a timeout shows


@pytest.fixture(autouse=True)
def _forget_processes():
    yield
    _started.clear()


def _log_tails(lines: int = 15) -> str:
    tails = []
    for proc in _started:
        with open(proc.log, errors="replace") as log:
            tail = log.readlines()[-lines:]
        tails.append(f"--- {' '.join(proc.args[-2:])} (exit {proc.poll()}), {proc.log}:\n{''.join(tail)}")
    return "\n".join(tails)


def _indexed(env):
    path = os.path.join(env["NEWSMON_DATA_DIR"], "index.db")
    if not os.path.exists(path):
        return []
    with sqlite3.connect(path) as conn:
        try:
            return [json.loads(r[0]) for r in conn.execute("SELECT record FROM articles")]
        except sqlite3.OperationalError:
            return []



def _wait_for(predicate, timeout, what):
    return wait_for(predicate, timeout, what, every=0.2, detail=_log_tails)  # timeouts show the stages' logs


def _stop(*procs):
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    return [proc.wait(timeout=60) for proc in procs]


def _site(count, delay=0.0):
    routes, items = {}, []
    for i in range(count):
        text = f"Dispatch {i}: the council met on Monday to discuss the harbour plan and its budget in detail. " * 3
        routes[f"/a{i}.html"] = Page(article_html(f"Story {i}", [text, text.replace("Monday", "Tuesday")]), delay=delay)
        items.append((f"Story {i}", "{{BASE_URL}}/a%d.html" % i))
    routes["/feed.xml"] = Page(rss(items), headers={"Content-Type": "application/rss+xml"})
    return TestSite(routes)


def test_bus_round_trip_commit_lag_and_rewind(env, prefix):
    create(env["NEWSMON_BUS"], prefix, ["t"])
    bus = _bus(env)
    for i in range(20):
        bus.publish("t", f"k{i}", f"v{i}".encode(), {"stage": "test"})
    bus.flush()
    consumer = bus.consumer("g", ["t"])
    got = []
    _wait_for(lambda: got.extend(consumer.poll(100, timeout=0.5)) or len(got) >= 20, 30, "20 messages")
    assert sorted(m.key for m in got) == sorted(f"k{i}" for i in range(20))
    assert got[0].headers == {"stage": "test"}
    # Keys stay on one partition: each key's partition is stable.
    assert len({m.partition for m in got}) > 1
    assert bus.backlog("g", "t") == 20
    consumer.commit(got[:5])  # commit covers what was processed on each partition up to these
    committed = bus.backlog("g", "t")
    assert committed < 20
    consumer.rewind()
    again = []
    _wait_for(lambda: again.extend(consumer.poll(100, timeout=0.5)) or len(again) >= committed, 30, "redelivery")
    assert len(again) == committed
    consumer.commit(again)
    assert bus.backlog("g", "t") == 0
    assert bus.size("t") == 20 and len(bus.recent("t", 5)) == 5
    consumer.close()
    bus.close()


def test_demo_over_kafka_with_stages_as_processes(bare_env, tmp_path):
    """The demo creates the topics it needs (the broker does not create them on first use)."""
    env, port = bare_env, str(free_port())
    result = subprocess.run(NEWSMON + ["demo", "--port", port], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "14 new articles discovered, 14 indexed, 0 failed" in result.stdout
    # Again on the same site: nothing new, and the stages, stopped while still starting, stop cleanly.
    again = subprocess.run(NEWSMON + ["demo", "--port", port], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 new articles discovered, 0 indexed, 0 failed" in again.stdout
    records = _indexed(env)
    assert len(records) == 14
    for record in records:
        assert [p["stage"] for p in record["provenance"]] == ["extract", "language", "tag", "index"]
    euronews = next(r for r in records if EURONEWS_SLUG in r["url"])
    assert {"nato", "ukraine"} <= {t["topic"] for t in euronews["tags"]} and euronews["language"] == "fr"
    search = subprocess.run(NEWSMON + ["search", "securite", "--lang", "fr", "--json"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert EURONEWS_SLUG in search.stdout


def test_kill_9_of_extract_and_index_loses_and_duplicates_nothing(env):
    count = 30
    with _site(count, delay=0.15) as site:
        write_feeds(env_config(env), [{"name": "t", "url": site.url("/feed.xml"), "interval": 3600}])
        stages = {name: _start(env, "stage", name) for name in ("poll", "extract", "language", "tag", "index")}
        _wait_for(lambda: len(_indexed(env)) >= 5, 120, "the first articles indexed")
        for name in ("extract", "index"):
            os.killpg(stages[name].pid, signal.SIGKILL)  # with its extraction workers
            stages[name].wait()
        assert len(_indexed(env)) < count, "killed too late to test anything"
        for name in ("extract", "index"):
            stages[name] = _start(env, "stage", name)
        _wait_for(lambda: len(_indexed(env)) == count, 180, f"{count} articles indexed")
        bus = _bus(env)
        _wait_for(lambda: bus.backlog("index", TAGGED) == 0, 60, "index committed")
        assert _stop(*stages.values()) == [0] * 5
    with sqlite3.connect(os.path.join(env["NEWSMON_DATA_DIR"], "index.db")) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM articles")]
        fts_rows = conn.execute("SELECT COUNT(*) FROM articles_fts_docsize").fetchone()[0]
    assert len(ids) == len(set(ids)) == fts_rows == count
    assert bus.size(DEAD_LETTERS) == 0
    stats = json.loads(subprocess.run(NEWSMON + ["stats", "--json"], env=env, capture_output=True, text=True,
                                      timeout=60).stdout)
    assert stats["index"]["articles"] == count
    for stage in ("extract", "language", "tag", "index"):
        lag = stats["stages"][stage]["lag_per_partition"]
        assert len(lag) > 1 and set(lag.values()) == {0}, (stage, lag)


def _holds(log: Path) -> list[str]:
    """The partitions a stage instance said it consumes last (its log)."""
    lines = [line for line in log.read_text().splitlines() if "this instance consumes" in line]
    if not lines or "nothing" in lines[-1]:
        return []
    return json.loads(lines[-1])["message"].split(" consumes ")[1].split(", ")


def test_two_tag_instances_share_the_partitions(env, tmp_path):
    count = 24
    with _site(count) as site:
        write_feeds(env_config(env), [{"name": "t", "url": site.url("/feed.xml"), "interval": 3600}])
        logs = [tmp_path / "tag1.log", tmp_path / "tag2.log"]
        tags = [_start(env, "stage", "tag", log=path) for path in logs]

        # Work starts once both are in the group, or the first may take it all before the second joins.
        _wait_for(lambda: all(_holds(path) for path in logs), 60, "both tag instances assigned")
        others = [_start(env, "stage", name) for name in ("poll", "extract", "language", "index")]
        _wait_for(lambda: len(_indexed(env)) == count, 180, f"{count} articles indexed")
        assert _stop(*tags, *others) == [0] * 6
    workers = {}
    for record in _indexed(env):
        tag_steps = [p for p in record["provenance"] if p["stage"] == "tag"]
        assert len(tag_steps) == 1
        workers.setdefault(tag_steps[0]["worker"], []).append(record["id"])
    assert len(workers) == 2, f"one tag instance did all the work: {[len(v) for v in workers.values()]}"


def test_poison_message_goes_to_dead_letters_and_the_stream_continues(env):
    bus = _bus(env)
    good = article_html("A good one", ["The harbour council approved the budget on Monday after a long debate. " * 4])
    with TestSite({"/good.html": Page(good)}) as site:
        url = site.url("/good.html")
        bus.publish(DISCOVERED, "poison", b"\xff not json at all")
        bus.publish(DISCOVERED, "bad-schema", json.dumps({"id": "x", "url": 5}).encode())
        bus.publish(DISCOVERED, article_id(url), Article(id=article_id(url), url=url, canonical_url=url, feed_url="t").to_json())
        bus.flush()
        stages = [_start(env, "stage", name) for name in ("extract", "language", "tag", "index")]
        _wait_for(lambda: len(_indexed(env)) == 1, 120, "the good article indexed")
        assert _stop(*stages) == [0] * 4
    letters = {m.key: m.headers for m in bus.recent(DEAD_LETTERS, 10)}
    assert set(letters) == {"poison", "bad-schema"}
    assert "undecodable record: message is not JSON" in letters["poison"]["error"]
    assert "lacks required field" in letters["bad-schema"]["error"]
    assert letters["poison"]["topic"] == DISCOVERED and letters["poison"]["stage"] == "extract"
    listed = subprocess.run(NEWSMON + ["dlq", "list", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert {json.loads(line)["item"] for line in listed.stdout.splitlines()} == {"poison", "bad-schema"}
    replay = subprocess.run(NEWSMON + ["dlq", "replay"], env=env, capture_output=True, text=True, timeout=60)
    assert "replayed 2 dead letter(s)" in replay.stdout
    assert bus.size(DISCOVERED) == 5


def test_sigterm_commits_leaves_the_group_and_exits_0(env):
    bus = _bus(env)
    for i in range(10):
        bus.publish("articles.detected", f"k{i}", Article(id=f"k{i}", url="u", canonical_url="u", feed_url="f",
                                                           title=f"NATO {i}").to_json())
    bus.flush()
    stage = _start(env, "stage", "tag")
    _wait_for(lambda: bus.size(TAGGED) >= 10, 60, "10 records tagged")
    started = time.monotonic()
    assert _stop(stage) == [0]
    assert time.monotonic() - started < 30
    assert bus.backlog("tag", "articles.detected") == 0


def test_two_pollers_split_the_feeds(env, tmp_path):
    """Each feed is polled by one poller once both are in the group (the first may poll all before the second joins)."""
    feeds = {f"/feed{i}.xml": Page(rss([]), headers={"Content-Type": "application/rss+xml"}) for i in range(12)}
    with TestSite(feeds) as site:
        write_feeds(env_config(env), [{"name": p, "url": site.url(p), "interval": 10} for p in feeds])
        pollers = [
            _start(dict(env, NEWSMON_USER_AGENT=name), "stage", "poll", data_dir=str(tmp_path / name))
            for name in ("poller-1", "poller-2")
        ]

        def polls():
            return [(path, headers.get("User-Agent")) for path, headers in site.requests]

        _wait_for(lambda: len({agent for _, agent in polls()}) == 2, 60, "both pollers polling")
        both_joined = len(polls())
        # Three more rounds: the first may still come from a poller that has not yet seen the rebalance.
        _wait_for(lambda: all(sum(p == path for p, _ in polls()[both_joined:]) >= 3 for path in feeds), 90,
                  "three more rounds of every feed")
        assert _stop(*pollers) == [0, 0]
    settled = {}
    for path in feeds:
        agents = [agent for p, agent in polls()[both_joined:] if p == path][1:]
        assert len(set(agents)) == 1, f"{path} polled by both pollers: {agents}"
        settled[path] = agents[0]
    assert set(settled.values()) == {"poller-1", "poller-2"}, f"one poller polls everything: {settled}"


def _newsmon(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(NEWSMON + list(args), env=env, capture_output=True, text=True, timeout=timeout)


def test_topics_create_makes_the_configured_partitions_once(bare_env, prefix, kafka_bootstrap):
    from kafka.admin import KafkaAdminClient

    first = _newsmon(bare_env, "topics", "create")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"{prefix}{t}: created ({PARTITIONS} partitions, replication 1)"
                                         for t in ALL_TOPICS]
    admin = KafkaAdminClient(bootstrap_servers=parse_bootstrap(kafka_bootstrap), client_id="newsmon-tests")
    try:
        described = admin.describe_topics([prefix + t for t in ALL_TOPICS])
    finally:
        admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == {prefix + t: PARTITIONS for t in ALL_TOPICS}
    again = _newsmon(bare_env, "topics", "create")
    assert again.returncode == 0 and again.stdout.splitlines() == [f"{prefix}{t}: exists" for t in ALL_TOPICS]

    # More replicas than brokers: the broker's reason, one line per topic, exit 1, no traceback.
    write_pipeline_config(env_config(bare_env), prefix + "r3.", replication=3)
    refused = _newsmon(bare_env, "topics", "create")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"Error: {len(ALL_TOPICS)} topic(s) not created" in refused.stderr
    assert all(line.endswith("failed: InvalidReplicationFactorError: Replication-factor is invalid. "
                             f"({PARTITIONS} partitions, replication 3, 1 broker(s))")
               for line in refused.stdout.splitlines()), refused.stdout


def test_no_broker_answering_is_one_line_not_a_traceback(bare_env):
    malformed = _newsmon(bare_env, "stats", "--bus", "kafka://")
    assert malformed.returncode == 1 and "Traceback" not in malformed.stderr, malformed.stderr
    assert "bus: Value error, 'kafka://': expected 'embedded' or kafka://HOST:PORT" in malformed.stderr
    nobody = f"kafka://127.0.0.1:{free_port()}"
    for command in (["stats"], ["topics", "create"], ["dlq", "list"]):
        result = _newsmon(bare_env, *command, "--bus", nobody)
        assert result.returncode == 1 and "Traceback" not in result.stderr, (command, result.stderr)
        assert result.stderr.splitlines()[-1] == (f"Error: bus {nobody}: no Kafka broker answered "
                                                  "(is it running, and is the address right?)"), (command, result.stderr)


def test_a_consumer_names_missing_topics_and_heartbeats_a_third_of_the_session(bare_env, caplog):
    bus = _bus(bare_env)
    consumer = bus.consumer("g", ["nowhere"])
    with caplog.at_level(logging.INFO):
        _wait_for(lambda: consumer.poll(10, timeout=0.5) or "do not exist" in caplog.text, 60, "the warning")
    consumer.close()
    bus.close()
    topic = bus.topic("nowhere")
    assert f"g: topic(s) {topic} do not exist; create them with `newsmon topics create`" in caplog.text
    assert "more instances than partitions" not in caplog.text
    assert "heartbeat_interval_ms is high" not in caplog.text  # kafka-python warns when over a third of the session


def test_partitions_of_a_killed_instance_move_to_the_survivor(env, tmp_path):
    bus = _bus(env)
    logs = [tmp_path / "tag1.log", tmp_path / "tag2.log"]
    tags = [_start(env, "stage", "tag", log=path) for path in logs]
    _wait_for(lambda: all(_holds(path) for path in logs), 60, "both tag instances assigned")
    os.killpg(tags[0].pid, signal.SIGKILL)  # no goodbye: the group notices when its session times out
    tags[0].wait()
    keys = [f"k{i}" for i in range(24)]
    for key in keys:
        bus.publish(DETECTED, key, Article(id=key, url="u", canonical_url="u", feed_url="f", title="NATO").to_json())
    bus.flush()
    _wait_for(lambda: len(_holds(logs[1])) == PARTITIONS, 60, "the survivor holding every partition")
    _wait_for(lambda: bus.backlog("tag", DETECTED) == 0, 60, "everything tagged and committed")
    assert _stop(tags[1]) == [0]
    assert sorted(m.key for m in bus.recent(TAGGED, 100)) == sorted(keys)
    bus.close()


def test_the_broker_keeps_what_the_mock_cluster_dropped(env, prefix):
    """librdkafka's mock cluster kept about 5 MB per partition; a broker keeps what its retention says."""
    create(env["NEWSMON_BUS"], prefix, ["big"], partitions=1)
    bus = _bus(env)
    values = [os.urandom(100_000) for _ in range(80)]  # 8 MB on one partition
    for value in values:
        bus.publish("big", "one-key", value)
    bus.flush()
    assert bus.size("big") == 80
    consumer = bus.consumer("g", ["big"])
    got = []
    _wait_for(lambda: got.extend(consumer.poll(20, timeout=0.5)) or len(got) >= 80, 60, "8 MB read back")
    assert [m.value for m in got] == values
    consumer.close()
    bus.close()
