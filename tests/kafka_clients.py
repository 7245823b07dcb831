"""Which Kafka transport a node process runs on: the tests that run a scenario on each of
the nodes' two clients (FOGVERSE_KAFKA_CLIENT) prove that the node used the one asked for.

The nodes those tests start log ``transports started: consumer=... producer=...`` once both
clients have started (``pipeline_nodes.SlowEcho``, ``reliability/rel_nodes.TellsTransport``).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest

KAFKA_CLIENTS = ("aiokafka", "confluent")
EACH_CLIENT = pytest.mark.parametrize("client", KAFKA_CLIENTS)
# The classes of the consumer and the producer each client gives a node.
TRANSPORTS = {
    "aiokafka": ("KafkaConsumerTransport", "KafkaProducerTransport"),
    "confluent": ("ConfluentConsumerTransport", "ConfluentProducerTransport"),
}
_STARTED = re.compile(r"transports started: consumer=(\w+) producer=(\w+)")


def librdkafka_clients(pid: int) -> int:
    """How many librdkafka clients live in process ``pid``: each runs one thread named
    ``rdk:main`` (aiokafka runs none)."""
    count = 0
    for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
        with contextlib.suppress(OSError):
            count += comm.read_text().strip() == "rdk:main"
    return count


def assert_started_on(log: str, client: str) -> None:
    """The node's log says its consumer and producer are ``client``'s transport classes."""
    found = _STARTED.search(log)
    assert found, f"the node never said which transport it started:\n{log[-3000:]}"
    assert found.groups() == TRANSPORTS[client], (client, found.groups())


def assert_running_on(pid: int, client: str) -> None:
    """While it runs: on confluent, librdkafka's threads for (at least) the node's consumer
    and producer are in the process."""
    if client == "confluent":
        assert librdkafka_clients(pid) >= 2, f"no librdkafka consumer and producer in {pid}"
