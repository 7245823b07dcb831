"""Shared fixtures: the session's Kafka broker and topic helpers.

Tests that need Kafka request ``kafka_bootstrap`` (or ``kafka_admin``/``new_topic``/
``local_kafka``); the broker starts lazily the first time one of them is requested and such
tests get the ``kafka`` marker automatically, so ``-m "not kafka"`` deselects them. Set
``FOGVERSE_BOOTSTRAP=host:port`` to run against an existing cluster instead.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis
import pytest
from backends import backend  # noqa: F401  (the memory/kafka parametrized fixture)
from stop_on_sigterm import (  # noqa: F401  (SIGTERM tears the run down)
    pytest_configure,
    pytest_runtest_call,
    pytest_runtest_setup,
)

from fogverse.broker import BrokerUnavailable, LocalKafka, LocalKafkaCluster, stop_all

# Temporary files of the processes the suite starts stay in one directory of the run.
pytest_plugins = ("own_tmpdir",)

logger = logging.getLogger(__name__)

# An example's time is the machine's, not the code's: on a loaded machine one example can
# outlast hypothesis's default 200 ms deadline and fail its test (every test has its own
# timeout instead).
hypothesis.settings.register_profile("fogverse", deadline=None)
hypothesis.settings.load_profile("fogverse")

_KAFKA_FIXTURES = frozenset(
    {"kafka_bootstrap", "kafka_admin", "local_kafka", "new_topic", "kafka_cluster"}
)
_TOPIC_READY_TIMEOUT = 30.0


def _external_bootstrap() -> str | None:
    return os.environ.get("FOGVERSE_BOOTSTRAP") or None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _KAFKA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)
    # On a fresh machine `make test` builds the container images and the Kubernetes API server
    # in the background while the suite runs; the tests that need them wait for those builds.
    # They run last in their process (the images' before the API server's, the longer build),
    # so every other test runs meanwhile instead of queueing behind a wait.
    items.sort(key=_waits_for_a_build)  # stable: the rest keep their order


_WAIT_FOR_A_BUILD = {
    "test_rel_containers.py": 1,  # the node image
    "test_demo_containers.py": 1,  # the node and broker images
    "test_kubernetes_cluster.py": 2,  # the API server
}


def _waits_for_a_build(item: pytest.Item) -> int:
    return _WAIT_FOR_A_BUILD.get(item.path.name, 0)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Safety net behind the fixtures' own teardown (the launcher also stops brokers at exit and
    # the kernel kills them if this process dies): no JVM outlives the run.
    stopped = stop_all()
    if stopped:
        logger.warning("Stopped %d Kafka broker(s) left running by tests", stopped)


@pytest.fixture(scope="session")
def _session_kafka() -> Iterator[LocalKafka | None]:
    """The session's own broker, or None when FOGVERSE_BOOTSTRAP names an external cluster."""
    if _external_bootstrap():
        yield None
        return
    broker = LocalKafka()
    try:
        broker.start()
    except BrokerUnavailable as exc:
        # Our Kafka behaviour is only ever tested on a real broker: no broker is a failure.
        pytest.fail(f"no local Kafka: {exc}")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(_session_kafka: LocalKafka | None) -> str:
    """``host:port`` of the Kafka cluster the tests use."""
    if _session_kafka is None:
        external = _external_bootstrap()
        assert external is not None
        return external
    return _session_kafka.bootstrap


@pytest.fixture(scope="session")
def local_kafka(_session_kafka: LocalKafka | None) -> LocalKafka:
    """The session's :class:`LocalKafka`, for tests that restart or stop the broker.

    A test that stops it must start it again (``restart()`` keeps ports and data).
    """
    if _session_kafka is None:
        pytest.skip("FOGVERSE_BOOTSTRAP points at an external cluster; it cannot be restarted")
    return _session_kafka


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[LocalKafkaCluster]:
    """A 3-node replicated KRaft cluster (RF 3, min ISR 2) shared by one test module.

    Module-scoped: its three JVMs live only while that module's tests run. A test that
    kills, freezes or stops a node must bring it back (``start_node``/``thaw``) before it
    ends; the fixture checks that every node runs again and stops them all at the end.
    """
    if _external_bootstrap():
        pytest.skip("FOGVERSE_BOOTSTRAP points at an external cluster; the cluster tests start one")
    cluster = LocalKafkaCluster(3)
    try:
        cluster.start()
    except BrokerUnavailable as exc:
        pytest.fail(f"no local Kafka: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop(0)


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Any:
    """A ``confluent_kafka.admin.AdminClient`` for the session's cluster."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": kafka_bootstrap})


def _wait_for_leaders(admin: Any, topic: str, partitions: int, deadline: float) -> None:
    while True:
        remaining = deadline - time.monotonic()
        try:
            metadata = admin.list_topics(topic=topic, timeout=max(0.5, min(5.0, remaining)))
            info = metadata.topics.get(topic)
            if (
                info is not None
                and info.error is None
                and len(info.partitions) == partitions
                and all(p.leader >= 0 and p.error is None for p in info.partitions.values())
            ):
                return
        except Exception as exc:
            logger.debug("Metadata for %s not ready: %s", topic, exc)
        if remaining <= 0:
            raise TimeoutError(f"topic {topic} has no leader for all {partitions} partitions")
        time.sleep(0.05)


@pytest.fixture
def new_topic(kafka_admin: Any) -> Iterator[Callable[..., str]]:
    """``new_topic(partitions=1, prefix="t", config=None) -> name``: a fresh topic, ready to use.

    Topics created through it are deleted (best effort) after the test.
    """
    from confluent_kafka.admin import NewTopic

    created: list[str] = []

    def make(partitions: int = 1, prefix: str = "t", config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        spec = NewTopic(
            name, num_partitions=partitions, config={k: str(v) for k, v in (config or {}).items()}
        )
        kafka_admin.create_topics([spec], operation_timeout=_TOPIC_READY_TIMEOUT)[name].result(
            timeout=_TOPIC_READY_TIMEOUT
        )
        created.append(name)
        _wait_for_leaders(kafka_admin, name, partitions, time.monotonic() + _TOPIC_READY_TIMEOUT)
        return name

    yield make
    if created:
        futures = kafka_admin.delete_topics(created, operation_timeout=10)
        for name, future in futures.items():
            try:
                future.result(timeout=10)
            except Exception as exc:
                logger.warning("Could not delete test topic %s: %s", name, exc)
