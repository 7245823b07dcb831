"""A local Apache Kafka cluster of N KRaft nodes on 127.0.0.1, for tests, demos and benchmarks.

Every node is a combined broker and controller (``process.roles=broker,controller``) in a
static controller quorum of all N. Combined, because separate controllers would double the
JVMs (six for three brokers) on a machine with two cores, and because a real small fog
cluster runs this way too; the price is that the controller quorum goes with the brokers:
with two of three nodes down there is no quorum, so no leader can move and no ISR can shrink
until one returns (producers with ``acks=all`` then wait, which is what the tests check).

Replication defaults follow N (:func:`replication_defaults`): three nodes give replication
factor 3 and ``min.insync.replicas`` 2, for user topics and for the internal ones (consumer
offsets, transaction state), so any one node may fail without losing an acknowledged record
or blocking writers. Failures are detected in seconds, not Kafka's production defaults:
a node that stops heartbeating is fenced after ``broker.session.timeout.ms`` (3 s here).

Each node is a :class:`~fogverse.broker.launcher.LocalKafka`; the JVMs die with the thread
that started them, as a single broker's do, and :meth:`LocalKafkaCluster.stop` stops all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from fogverse.broker.launcher import (
    _HOST,
    _QUIET,
    DEFAULT_KAFKA_VERSION,
    BrokerError,
    LocalKafka,
    _free_ports,
    _port_open,
    _saved_ports,
    new_cluster_id,
)

__all__ = ["CLUSTER_HEAP", "LocalKafkaCluster", "replication_defaults"]

logger = logging.getLogger(__name__)

#: Heap per node of a cluster: three of them and the suite fit a 2-core, 24 GiB machine with
#: room to spare; replication fetchers need more than a lone broker's 256 MiB.
CLUSTER_HEAP = "384m"


def replication_defaults(brokers: int) -> dict[str, int]:
    """Replication settings that make sense for ``brokers`` nodes.

    Replication factor ``min(3, N)``; ``min.insync.replicas`` one less (at least 1), so an
    ``acks=all`` write survives any one node's loss and still succeeds while one is down.
    """
    rf = max(1, min(3, brokers))
    min_isr = max(1, rf - 1)
    return {
        "default.replication.factor": rf,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": min_isr,
    }


# Failure detection in seconds: a silent node is fenced (and leaves every ISR) after 3 s.
_FAST_FAILOVER = {
    "broker.session.timeout.ms": 3000,
    "broker.heartbeat.interval.ms": 500,
    "replica.lag.time.max.ms": 10000,
    "controller.quorum.election.timeout.ms": 1000,
    "controller.quorum.fetch.timeout.ms": 2000,
    # A restarted node takes its preferred partitions back at once, as in production
    # (every 5 minutes there): rolling restarts then spread leaders again.
    "leader.imbalance.check.interval.seconds": 5,
}


class LocalKafkaCluster:
    """``brokers`` combined broker/controller nodes on 127.0.0.1 with free ports.

    ``bootstrap`` lists every node. :meth:`start` returns once every node serves and all of
    them report the same brokers and controller. ``node(i)`` is node ``i``'s
    :class:`~fogverse.broker.launcher.LocalKafka` (ids 1..N); :meth:`kill`,
    :meth:`freeze`/:meth:`thaw` and :meth:`restart` act on one node, and :meth:`leader`
    names a partition's leader, for fault tests. A ``data_dir`` you pass is kept; a later
    cluster of the same size on it starts on the ports it was made with, data and all.
    """

    def __init__(
        self,
        brokers: int = 3,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        version: str = DEFAULT_KAFKA_VERSION,
        heap: str = CLUSTER_HEAP,
        properties: Mapping[str, Any] | None = None,
        start_timeout: float = 120.0,
        detached: bool = False,
    ) -> None:
        if brokers < 1:
            raise ValueError(f"a cluster needs at least one broker, not {brokers}")
        self.size = brokers
        self.version = version
        self.heap = heap
        self.properties = {
            **replication_defaults(brokers),
            **_FAST_FAILOVER,
            **(properties or {}),
        }
        self.start_timeout = start_timeout
        self.detached = detached
        self._user_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._dir: Path | None = self._user_dir
        self.nodes: list[LocalKafka] = []

    # -- addresses -----------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """Every node's client address, comma-separated."""
        if not self.nodes:
            raise BrokerError("the cluster has not been started yet")
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def data_dir(self) -> Path | None:
        return self._dir

    @property
    def owns_data_dir(self) -> bool:
        return self._dir is not None and self._dir != self._user_dir

    def node(self, node_id: int) -> LocalKafka:
        """Node ``node_id`` (1..N)."""
        if not 1 <= node_id <= len(self.nodes):
            raise BrokerError(f"no node {node_id} in a cluster of {len(self.nodes)}")
        return self.nodes[node_id - 1]

    def __repr__(self) -> str:
        running = sum(node.is_running() for node in self.nodes)
        where = self.bootstrap if self.nodes else "not started"
        return f"<LocalKafkaCluster {running}/{self.size} running {where}>"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> LocalKafkaCluster:
        """Start every node and wait until all serve and agree on the cluster's metadata."""
        if self.nodes and all(node.is_running() for node in self.nodes):
            return self
        started = time.monotonic()
        for attempt in range(3):
            # Ports we chose ourselves may be taken before a JVM binds them (by a client's
            # outgoing connection, say): a cluster formatted afresh can try other ones.
            fresh = not self.nodes and self._make_nodes()
            try:
                self._start_nodes()
            except BrokerError as exc:
                self.stop()
                if fresh and attempt < 2 and "already in use" in str(exc):
                    logger.info("A port the cluster chose was taken; retrying on others")
                    for node in self.nodes:  # left in a data_dir of the caller's
                        if node.data_dir is not None:
                            shutil.rmtree(node.data_dir, ignore_errors=True)
                    self.nodes = []
                    continue
                raise
            except BaseException:
                self.stop()
                raise
            break
        logger.info(
            "Kafka cluster of %d serving at %s after %.1f s",
            self.size,
            self.bootstrap,
            time.monotonic() - started,
        )
        return self

    def _start_nodes(self) -> None:
        # A node serves only once a quorum of controllers runs: spawn all, then wait.
        for node in self.nodes:
            node.start(wait=False)
        # A node that cannot start (a port taken) would leave the others waiting for their
        # quorum until the deadline, reported as theirs: report it as soon as it exits.
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if not node.is_running():
                    node._wait_ready(deadline)  # raises: its exit code and its log
            if all(node.port is not None and _port_open(node.port) for node in self.nodes):
                break
            time.sleep(0.05)
        for node in self.nodes:
            node._wait_ready(deadline)
        self.wait_agreed()

    def _make_nodes(self) -> bool:
        """Make the nodes; whether every one's ports were chosen here (none formatted before)."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="fogverse-kafka-cluster-")).resolve()
        self._dir.mkdir(parents=True, exist_ok=True)
        # A node directory formatted before (a data_dir kept from an earlier cluster) only
        # starts on the ports it was made with; the others get free ones.
        saved = [_saved_ports(self._dir / f"node-{i + 1}") for i in range(self.size)]
        new = saved.count(None)
        free = _free_ports(2 * new)
        free_client, free_controller = iter(free[:new]), iter(free[new:])
        client = [p[0] if p else next(free_client) for p in saved]
        controller = [p[1] if p else next(free_controller) for p in saved]
        voters = ",".join(f"{i + 1}@{_HOST}:{controller[i]}" for i in range(self.size))
        cluster_id = new_cluster_id()
        self.nodes = [
            LocalKafka(
                port=client[i],
                controller_port=controller[i],
                data_dir=self._dir / f"node-{i + 1}",
                version=self.version,
                heap=self.heap,
                properties=self.properties,
                start_timeout=self.start_timeout,
                detached=self.detached,
                node_id=i + 1,
                voters=voters,
                cluster_id=cluster_id,
            )
            for i in range(self.size)
        ]
        return new == self.size

    def wait_agreed(self, timeout: float | None = None) -> None:
        """Wait until every running node lists the same running brokers and controller."""
        from fogverse.admin import admin_client

        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        running = [node for node in self.nodes if node.is_running()]
        if not running:
            raise BrokerError("no node is running")
        expected = {self.nodes.index(node) + 1 for node in running}
        admins = [admin_client(n.bootstrap, _QUIET) for n in running]
        seen: list[Any] = []
        while True:
            seen = []
            for admin in admins:
                try:
                    cluster = admin.describe_cluster(request_timeout=5).result(timeout=6)
                    seen.append(({b.id for b in cluster.nodes}, cluster.controller.id))
                except Exception as exc:
                    seen.append(repr(exc))
            agreed = all(isinstance(s, tuple) and s == seen[0] for s in seen)
            if agreed and seen[0][0] == expected:
                return
            if time.monotonic() >= deadline:
                raise BrokerError(f"the nodes do not agree on the cluster: {seen}")
            time.sleep(0.2)

    def stop(self, timeout: float | None = None) -> None:
        """Stop every node (SIGTERM; SIGKILL after ``timeout`` s, ``0``: at once)."""
        errors = []
        for node in self.nodes:
            try:
                # The data lives in the cluster's directory, removed below if it is ours.
                node.stop(timeout, keep_data=True)
            except Exception as exc:
                errors.append(exc)
        if self.owns_data_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self.nodes = []
        if errors:
            raise BrokerError(f"could not stop every node: {errors}")

    def __enter__(self) -> LocalKafkaCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(0)

    # -- faults --------------------------------------------------------------------------------

    def kill(self, node_id: int) -> None:
        """SIGKILL node ``node_id``: a crash (its data stays for :meth:`restart`)."""
        self.node(node_id).stop(0, keep_data=True)

    def freeze(self, node_id: int) -> None:
        """SIGSTOP node ``node_id``: alive, holding its connections, answering nothing."""
        self._signal(node_id, signal.SIGSTOP)

    def thaw(self, node_id: int) -> None:
        """SIGCONT a node stopped by :meth:`freeze`."""
        self._signal(node_id, signal.SIGCONT)

    def _signal(self, node_id: int, sig: int) -> None:
        pid = self.node(node_id).pid
        if pid is None:
            raise BrokerError(f"node {node_id} is not running")
        os.kill(pid, sig)

    def restart(self, node_id: int, *, kill: bool = False) -> None:
        """Stop node ``node_id`` (SIGTERM, or SIGKILL with ``kill``) and start it again on
        the same ports with the same data; returns once it serves."""
        node = self.node(node_id)
        node.stop(0 if kill else None, keep_data=True)
        node.start()

    def start_node(self, node_id: int) -> None:
        """Start a node stopped by :meth:`kill`; returns once it serves."""
        self.node(node_id).start()

    def wait_in_sync(self, timeout: float = 120.0) -> None:
        """Wait until every partition of every topic has all its replicas in sync (what a
        rolling restart waits for before taking the next node down)."""
        from fogverse.admin import admin_client

        deadline = time.monotonic() + timeout
        behind: list[str] = []
        while True:
            node = next((n for n in self.nodes if n.is_running()), None)
            if node is None:
                raise BrokerError("no node is running")
            admin = admin_client(node.bootstrap, _QUIET)
            try:
                meta = admin.list_topics(timeout=5)
                behind = [
                    f"{name}[{p}]"
                    for name, info in meta.topics.items()
                    for p, part in info.partitions.items()
                    if set(part.isrs) != set(part.replicas) or part.leader < 0
                ]
                if not behind and meta.topics:
                    return
            except Exception as exc:
                behind = [repr(exc)]
            if time.monotonic() >= deadline:
                raise BrokerError(f"replicas still out of sync after {timeout:.0f} s: {behind}")
            time.sleep(0.2)

    def leader(
        self, topic: str, partition: int = 0, *, timeout: float = 30.0, not_on: int | None = None
    ) -> int:
        """The node id leading ``topic[partition]``, as a running node reports it.

        ``not_on``: wait until the leader is another node (after that one was killed, the
        survivors report it until the controller has fenced it)."""
        from fogverse.admin import admin_client

        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if not node.is_running():
                    continue
                admin = admin_client(node.bootstrap, _QUIET)
                with contextlib.suppress(Exception):
                    meta = admin.list_topics(topic=topic, timeout=5)
                    info = meta.topics[topic].partitions.get(partition)
                    if info is not None and info.leader > 0 and info.leader != not_on:
                        return info.leader
            if time.monotonic() >= deadline:
                raise BrokerError(f"no leader known for {topic}[{partition}]")
            time.sleep(0.2)
