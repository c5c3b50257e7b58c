"""The bus on Kafka (kafka-python): each stage a consumer group, so stages scale out by adding instances.

Delivery is at-least-once, as in Kafka's consumer documentation: offsets are
committed manually, only after the runner has flushed what it produced for them
(``acks=all``) or its sink has accepted them. A message whose partition moves to
another instance before the commit is processed again there; sinks are
idempotent by article id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError, NoBrokersAvailable
from kafka.partitioner import DefaultPartitioner
from kafka.structs import OffsetAndMetadata

from newsmon.bus import Message
from newsmon.errors import Unavailable
from newsmon.settings import parse_bootstrap

log = logging.getLogger(__name__)


def _unreachable(url: str) -> Unavailable:
    return Unavailable(f"bus {url}: no Kafka broker answered (is it running, and is the address right?)")


class KafkaBus:
    def __init__(self, url: str, *, prefix: str = "newsmon.", client_id: str = "newsmon",
                 max_poll_interval_ms: int = 300_000, session_timeout_ms: int = 10_000):
        self.servers = parse_bootstrap(url)
        self.prefix = prefix
        self.client_id = client_id
        self.session_timeout_ms = session_timeout_ms
        # Group membership of every consumer: heartbeats at most a third of the session apart, as Kafka
        # recommends (kafka-python's fixed 3 s default is too slow for short sessions, and warns).
        self.membership = {"max_poll_interval_ms": max_poll_interval_ms, "session_timeout_ms": session_timeout_ms,
                           "heartbeat_interval_ms": min(3000, session_timeout_ms // 3)}
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=self.servers,
                client_id=client_id,
                acks="all",
                enable_idempotence=True,  # a retried send is neither duplicated nor reordered on its partition
                linger_ms=5,
                batch_size=64 * 1024,
            )
        except NoBrokersAvailable:
            raise _unreachable(url) from None
        self._sent: list[Future] = []
        self._admin_consumer: KafkaConsumer | None = None

    def topic(self, name: str) -> str:
        return self.prefix + name

    def publish(self, topic: str, key: str, value: bytes, headers: dict[str, str] | None = None) -> None:
        self._sent.append(
            self._producer.send(
                self.topic(topic),
                key=key.encode(),
                value=value,
                headers=[(k, v.encode()) for k, v in (headers or {}).items()],
            )
        )

    def flush(self) -> None:
        """Block until the brokers acknowledged every message published so far (acks=all); raise if any failed."""
        self._producer.flush()
        sent, self._sent = self._sent, []
        for future in sent:
            future.get(timeout=0)  # raises the KafkaError of a message that could not be delivered

    def consumer(self, group: str, topics: list[str]) -> KafkaBusConsumer:
        return KafkaBusConsumer(self, group, topics)

    def _reader(self) -> KafkaConsumer:
        if self._admin_consumer is None:
            self._admin_consumer = KafkaConsumer(bootstrap_servers=self.servers, client_id=f"{self.client_id}-admin",
                                                 enable_auto_commit=False)
        return self._admin_consumer

    def partitions(self, topic: str) -> list[TopicPartition]:
        reader = self._reader()
        parts = reader.partitions_for_topic(self.topic(topic)) or set()
        return [TopicPartition(self.topic(topic), p) for p in sorted(parts)]

    def lag(self, group: str, topic: str) -> dict[int, int]:
        """Per partition: messages ``group`` has not committed yet."""
        parts = self.partitions(topic)
        if not parts:
            return {}
        ends = self._reader().end_offsets(parts)
        starts = self._reader().beginning_offsets(parts)
        probe = KafkaConsumer(bootstrap_servers=self.servers, group_id=self.topic(group), enable_auto_commit=False,
                              client_id=f"{self.client_id}-lag")
        try:
            return {tp.partition: ends[tp] - max(probe.committed(tp) or 0, starts[tp]) for tp in parts}
        finally:
            probe.close(autocommit=False)

    def backlog(self, group: str, topic: str) -> int:
        return sum(self.lag(group, topic).values())

    def size(self, topic: str) -> int:
        parts = self.partitions(topic)
        if not parts:
            return 0
        ends, starts = self._reader().end_offsets(parts), self._reader().beginning_offsets(parts)
        return sum(ends[tp] - starts[tp] for tp in parts)

    def recent(self, topic: str, limit: int) -> list[Message]:
        parts = self.partitions(topic)
        if not parts:
            return []
        reader = KafkaConsumer(bootstrap_servers=self.servers, enable_auto_commit=False,
                               client_id=f"{self.client_id}-recent")
        try:
            reader.assign(parts)
            ends, starts = reader.end_offsets(parts), reader.beginning_offsets(parts)
            for tp in parts:
                reader.seek(tp, max(starts[tp], ends[tp] - limit))
            found: list[Message] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(reader.position(tp) < ends[tp] for tp in parts):
                for records in reader.poll(timeout_ms=200).values():
                    found += [_message(self, r) for r in records]
            return sorted(found, key=lambda m: m.timestamp, reverse=True)[:limit]
        finally:
            reader.close(autocommit=False)

    def sharding(self, group: str, topic: str) -> KafkaSharding:
        return KafkaSharding(self, group, topic)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._producer.close()
            if self._admin_consumer is not None:
                self._admin_consumer.close(autocommit=False)


def _message(bus: KafkaBus, record) -> Message:
    headers = {k: v.decode("utf-8", "replace") for k, v in (record.headers or [])}
    return Message(record.topic.removeprefix(bus.prefix), record.partition, record.offset,
                   (record.key or b"").decode("utf-8", "replace"), record.value, headers, record.timestamp / 1000)


class _LogAssignments(ConsumerRebalanceListener):
    """Operators see which partitions each instance holds, and when that changes."""

    def __init__(self, group: str, consumer: KafkaConsumer, topics: list[str]):
        self.group, self.consumer, self.topics = group, consumer, topics

    def on_partitions_revoked(self, revoked) -> None:
        pass

    def on_partitions_assigned(self, assigned) -> None:
        held = sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned)
        if held:
            log.info("%s: this instance consumes %s", self.group, ", ".join(held))
            return
        # Nothing assigned: either every partition went to other instances, or a topic does not exist
        # (a broker that does not auto-create topics waits for `newsmon topics create`).
        missing = [topic for topic in self.topics if not self.consumer.partitions_for_topic(topic)]
        if missing:
            log.warning("%s: topic(s) %s do not exist; create them with `newsmon topics create`",
                        self.group, ", ".join(missing))
        else:
            log.info("%s: this instance consumes nothing (more instances than partitions)", self.group)


class KafkaBusConsumer:
    def __init__(self, bus: KafkaBus, group: str, topics: list[str]):
        self._bus = bus
        self.group = group
        self._topics = [bus.topic(t) for t in topics]
        self._consumer = self._join()

    def _join(self) -> KafkaConsumer:
        consumer = KafkaConsumer(
            bootstrap_servers=self._bus.servers,
            client_id=f"{self._bus.client_id}-{self.group}",
            group_id=self._bus.topic(self.group),
            enable_auto_commit=False,  # commit after processing, never before
            auto_offset_reset="earliest",
            **self._bus.membership,
        )
        consumer.subscribe(self._topics, listener=_LogAssignments(self.group, consumer, self._topics))
        return consumer

    def poll(self, max_records: int, timeout: float = 0.0) -> list[Message]:
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        except KafkaError as exc:
            # A failed group join is no reason to exit. Nothing uncommitted is lost by leaving:
            # a fresh member rejoins cleanly (where a half-joined one can stay stuck) and resumes
            # from the group's last commit.
            log.warning("%s: consumer poll failed, rejoining the group: %r", self.group, exc)
            self._consumer.close(autocommit=False)
            self._consumer = self._join()
            return []
        return [_message(self._bus, r) for records in batches.values() for r in records]

    def commit(self, messages: list[Message]) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for m in messages:
            tp = TopicPartition(self._bus.topic(m.topic), m.partition)
            if tp not in offsets or offsets[tp].offset < m.offset + 1:
                offsets[tp] = OffsetAndMetadata(m.offset + 1, "", -1)
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except CommitFailedError:
            # The group rebalanced while we worked: those partitions are someone else's now and the
            # new owner starts from the last commit, so this batch is processed again (at-least-once).
            log.warning("%s: rebalance before commit; %d message(s) will be redelivered", self.group, len(messages))

    def rewind(self) -> None:
        for tp in self._consumer.assignment():
            committed = self._consumer.committed(tp)
            if committed is None:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    def close(self) -> None:
        self._consumer.close(autocommit=False)  # leaves the group at once, so its partitions move now


class KafkaSharding:
    """Which keys this instance owns: those hashing to the partitions of ``topic`` the group gave it.

    The pollers use it to split the feeds: every poller instance joins one group on a
    (message-less) shards topic, and Kafka's group protocol hands each partition to exactly
    one member and rebalances when members come and go.
    """

    def __init__(self, bus: KafkaBus, group: str, topic: str):
        self._bus, self._group, self._topic = bus, group, bus.topic(topic)
        self._session_s = bus.session_timeout_ms / 1000 + 5
        self._consumer = self._join()
        self._joined = False
        self._owned: tuple[set[int], int] = (set(), 0)

    def _join(self) -> KafkaConsumer:
        bus = self._bus
        return KafkaConsumer(
            self._topic, bootstrap_servers=bus.servers, group_id=bus.topic(self._group),
            client_id=f"{bus.client_id}-{self._group}", enable_auto_commit=False, **bus.membership,
        )

    def owner(self) -> Callable[[str], bool]:
        """Keep the membership alive and return a test for the keys currently owned.

        The first call waits (up to a session timeout) for the group to hand out partitions.
        """
        deadline = time.monotonic() + (0 if self._joined else self._session_s)
        while True:
            try:
                self._consumer.poll(timeout_ms=100)
            except KafkaError as exc:
                # Owning nothing for a round is safe (another member or the next round polls); crashing is
                # not. A fresh member rejoins cleanly where a half-joined one can stay stuck.
                log.warning("feed shards: group membership failed, rejoining: %r", exc)
                self._consumer.close(autocommit=False)
                self._consumer, self._joined = self._join(), False
                return lambda key: False
            if self._consumer.assignment() or time.monotonic() >= deadline:
                break
        self._joined = True
        mine = {tp.partition for tp in self._consumer.assignment()}
        count = len(self._consumer.partitions_for_topic(self._topic) or ())
        if (mine, count) != self._owned:
            log.info("feed shards: this poller owns partitions %s of %d", sorted(mine), count)
            self._owned = (mine, count)
        if not mine or not count:
            return lambda key: False
        # Kafka's own key hash (murmur2): crc32 puts URLs that differ in a digit on the same few partitions.
        partitions = list(range(count))
        return lambda key: DefaultPartitioner()(key.encode(), partitions, partitions) in mine

    def close(self) -> None:
        self._consumer.close(autocommit=False)



def create_topics(url: str, names: list[str], partitions: int, replication: int) -> dict[str, str]:
    """Create topics; returns what happened to each: "created …", "exists", "not created: …" (a broker
    without CreateTopics, which must auto-create them) or "failed: <reason>" (a request the cluster refuses,
    such as more replicas than brokers). Raises Unavailable if no broker answers."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import IncompatibleBrokerVersion, TopicAlreadyExistsError, UnsupportedVersionError

    try:
        admin = KafkaAdminClient(bootstrap_servers=parse_bootstrap(url), client_id="newsmon-admin")
    except NoBrokersAvailable:
        raise _unreachable(url) from None
    outcome = {}
    try:
        for name in names:
            try:
                admin.create_topics([NewTopic(name, partitions, replication)])
                outcome[name] = f"created ({partitions} partitions, replication {replication})"
            except TopicAlreadyExistsError:
                outcome[name] = "exists"
            except (IncompatibleBrokerVersion, UnsupportedVersionError):
                outcome[name] = (
                    "not created: this broker does not support CreateTopics; it must auto-create topics "
                    "(auto.create.topics.enable) with num.partitions >= the instances of any stage"
                )
            except KafkaError as exc:  # the broker's answer, without kafka-python's dump of the whole request
                brokers = len(admin.describe_cluster()["brokers"])
                outcome[name] = (f"failed: {type(exc).__name__}: {exc.description} "
                                 f"({partitions} partitions, replication {replication}, {brokers} broker(s))")
    finally:
        admin.close()
    return outcome
