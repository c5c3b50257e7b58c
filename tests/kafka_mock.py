"""A real Kafka-protocol broker for the tests: librdkafka's mock cluster (3 brokers) on 127.0.0.1.

Run as a process: prints ``bootstrap.servers`` on its first stdout line, then serves
until its stdin closes (so it never outlives the test session that started it).
"""

import logging
import re
import sys
import threading

import confluent_kafka


class _Announce(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.done = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        match = re.search(r"bootstrap\.servers=(\S+)", record.getMessage())
        if match and not self.done.is_set():
            print(match.group(1), flush=True)
            self.done.set()


def main() -> None:
    announce = _Announce()
    logger = logging.getLogger("kafka-mock")
    logger.addHandler(announce)
    logger.setLevel(logging.DEBUG)
    # The mock cluster lives inside this client instance; "mock" debug logging announces its address.
    client = confluent_kafka.Producer({"test.mock.num.brokers": 3, "debug": "mock", "logger": logger})
    while not announce.done.is_set():
        client.poll(0.1)
    logger.setLevel(logging.ERROR)
    stdin_closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stdin_closed.set()), daemon=True).start()
    while not stdin_closed.is_set():
        client.poll(0.5)


if __name__ == "__main__":
    main()
