from newsmon.bus import SqliteBus


def test_publish_consume_commit_and_resume_after_reopen(tmp_path):
    bus = SqliteBus(tmp_path / "q.db")
    for i in range(5):
        bus.publish("t", f"k{i}", f"v{i}".encode(), {"n": str(i)})
    consumer = bus.consumer("g", ["t"])
    assert consumer.poll(10) == []  # nothing is visible before flush
    bus.flush()
    first = consumer.poll(3)
    assert [m.key for m in first] == ["k0", "k1", "k2"]
    assert first[0].headers == {"n": "0"}
    consumer.commit(first[:2])
    assert bus.backlog("g", "t") == 3
    bus.close()

    # Reopened (as after kill -9): the group resumes after its last commit, not after its last poll.
    bus = SqliteBus(tmp_path / "q.db")
    again = bus.consumer("g", ["t"]).poll(10)
    assert [m.key for m in again] == ["k2", "k3", "k4"]
    assert [m.key for m in bus.consumer("other", ["t"]).poll(10)] == [f"k{i}" for i in range(5)]


def test_rewind_goes_back_to_the_committed_offset(tmp_path):
    bus = SqliteBus(tmp_path / "q.db")
    for i in range(3):
        bus.publish("t", str(i), b"x")
    bus.flush()
    consumer = bus.consumer("g", ["t"])
    consumer.commit(consumer.poll(1))
    assert [m.key for m in consumer.poll(5)] == ["1", "2"]
    consumer.rewind()
    assert [m.key for m in consumer.poll(5)] == ["1", "2"]


def test_poll_waits_up_to_the_timeout(tmp_path):
    bus = SqliteBus(tmp_path / "q.db")
    import time
    started = time.monotonic()
    assert bus.consumer("g", ["t"]).poll(5, timeout=0.2) == []
    assert time.monotonic() - started >= 0.2


def test_consumed_messages_are_deleted_after_retention(tmp_path):
    bus = SqliteBus(tmp_path / "q.db", retention_s=0)
    for i in range(4):
        bus.publish("t", str(i), b"x")
    bus.flush()
    consumer = bus.consumer("g", ["t"])
    consumer.commit(consumer.poll(2))
    assert bus.size("t") == 2
    assert bus.recent("t", 10)[0].key == "3"
