"""Kafka brokers of the tests' own, for what the shared broker must not go through: a restart, and a
cluster of three that loses one broker mid-stream.

Each test starts its broker JVMs (the jars `make engines` fetched) in its temporary directory on free
ports, and stops them afterwards whatever happens.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid

import pytest

from newsmon.app.stages import TAGGED
from newsmon.bus import DEAD_LETTERS
from newsmon.kafka_bus import KafkaBus
from tests.support.engines import engines
from tests.support.harness import free_port, write_feeds
from tests.test_kafka import (
    _bus,
    _indexed,
    _newsmon,
    _site,
    _start,
    _stop,
    _wait_for,
    create,
    env_config,
    write_pipeline_config,
)

pytestmark = pytest.mark.slow

HEAP = ["-Xms128m", "-Xmx512m"]


class Cluster:
    """Brokers started by one test: ``start(n)`` makes a cluster of ``n`` combined brokers and controllers
    (one with a dynamic quorum of itself; several with a static quorum of them all)."""

    def __init__(self, root, lib):
        self.root, self.lib = root, lib
        self.procs: dict[int, subprocess.Popen] = {}
        self.nodes: list[engines.KafkaNode] = []
        self.cluster_id = engines.new_cluster_id()

    def start(self, count: int) -> list[engines.KafkaNode]:
        self.nodes = [engines.KafkaNode(self.root / f"broker{n}", n, free_port(), free_port())
                      for n in range(1, count + 1)]
        for node in self.nodes:  # together: the controllers elect a leader once a majority is up
            self._launch(node)
        self.wait_ready()
        return self.nodes

    @property
    def url(self) -> str:
        return "kafka://" + ",".join(node.bootstrap for node in self.nodes)

    def _launch(self, node) -> None:
        voters = self.nodes if len(self.nodes) > 1 else None
        self.procs[node.node_id] = engines.start_kafka_node(node, self.lib, self.cluster_id, voters, heap=HEAP)

    def wait_ready(self, brokers: int | None = None) -> None:
        brokers = brokers or len(self.nodes)
        bootstrap = ",".join(node.bootstrap for node in self.nodes)
        _wait_for(lambda: all(p.poll() is None for p in self.procs.values())
                  and engines.kafka_ready(bootstrap, brokers), 180, f"{brokers} broker(s) ready")

    def kill(self, node) -> None:
        os.killpg(self.procs[node.node_id].pid, signal.SIGKILL)
        self.procs[node.node_id].wait()

    def restart(self, node) -> None:
        """A clean stop (SIGTERM: controlled shutdown), then the same node started again on its data."""
        engines.stop_process(self.procs[node.node_id].pid, f"broker {node.node_id}")
        self.procs[node.node_id].wait()
        self._launch(node)
        self.wait_ready()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def cluster(tmp_path):
    missing = [tool for tool in ("java", "mvn") if not shutil.which(tool)]
    if missing and os.environ.get("CI") != "true":
        pytest.skip(f"{', '.join(missing)} not installed: no Kafka brokers of our own to start")
    lib = engines.fetch("kafka", engines.engines_dir() / "kafka")
    started = Cluster(tmp_path / "kafka", lib)
    yield started
    started.stop()


def test_commits_survive_a_broker_restart(cluster):
    [node] = cluster.start(1)
    bus = KafkaBus(cluster.url, prefix="r.", session_timeout_ms=6000)
    create(cluster.url, "r.", ["t"], partitions=2)
    for i in range(20):
        bus.publish("t", f"k{i}", f"v{i}".encode())
    bus.flush()
    consumer = bus.consumer("g", ["t"])
    got = []
    _wait_for(lambda: got.extend(consumer.poll(100, timeout=0.5)) or len(got) >= 20, 60, "20 messages")
    done = [m for m in got if m.offset < 4]  # the first four of each partition
    consumer.commit(done)
    consumer.close()
    bus.close()

    cluster.restart(node)
    again = KafkaBus(cluster.url, prefix="r.", session_timeout_ms=6000)
    assert again.backlog("g", "t") == 20 - len(done)
    consumer = again.consumer("g", ["t"])
    rest = []
    _wait_for(lambda: rest.extend(consumer.poll(100, timeout=0.5)) or len(rest) >= 20 - len(done), 60,
              "the uncommitted messages")
    time.sleep(1)  # nothing else may follow: the committed ones are not delivered again
    rest += consumer.poll(100, timeout=0.5)
    assert sorted(m.key for m in rest) == sorted(m.key for m in got if m.offset >= 4)
    consumer.close()
    again.close()


def test_three_brokers_one_killed_mid_stream_nothing_lost(cluster, config_dir, tmp_path):
    """Replication 3, min.insync.replicas 2: with one broker gone every write still has two copies, so
    the stages go on (producers and consumers move to the new leaders) and every article is indexed once."""
    nodes = cluster.start(3)
    prefix = f"c{uuid.uuid4().hex[:6]}."
    write_pipeline_config(config_dir, prefix, replication=3)
    env = {**os.environ, "NEWSMON_CONFIG_DIR": str(config_dir), "NEWSMON_DATA_DIR": str(tmp_path / "data"),
           "NEWSMON_ALLOW_PRIVATE": "127.0.0.1/32", "NEWSMON_BUS": cluster.url}
    created = _newsmon(env, "topics", "create")
    assert created.returncode == 0 and "replication 3" in created.stdout, created.stdout + created.stderr
    count = 40
    with _site(count, delay=0.2) as site:
        write_feeds(env_config(env), [{"name": "t", "url": site.url("/feed.xml"), "interval": 3600}])
        stages = [_start(env, "stage", name) for name in ("poll", "extract", "language", "tag", "index")]
        _wait_for(lambda: len(_indexed(env)) >= 5, 180, "the first articles indexed")
        cluster.kill(nodes[0])
        assert len(_indexed(env)) < count, "killed too late to test anything"
        _wait_for(lambda: len(_indexed(env)) == count, 240, f"{count} articles indexed with a broker down")
        bus = _bus(env)
        _wait_for(lambda: bus.backlog("index", TAGGED) == 0, 60, "index committed")
        assert _stop(*stages) == [0] * 5
    with sqlite3.connect(os.path.join(env["NEWSMON_DATA_DIR"], "index.db")) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM articles")]
    assert len(ids) == len(set(ids)) == count
    assert bus.size(DEAD_LETTERS) == 0
    bus.close()
