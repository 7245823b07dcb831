"""A local Apache Kafka broker or cluster for tests, demos and benchmarks (``fogverse broker``)."""

from fogverse.broker.cluster import CLUSTER_HEAP, LocalKafkaCluster, replication_defaults
from fogverse.broker.launcher import (
    DEFAULT_KAFKA_VERSION,
    INSTALL_HINT,
    BrokerError,
    BrokerUnavailable,
    LocalKafka,
    cache_root,
    pid_alive,
    resolve_jars,
    stop_all,
    terminate_pid,
)

__all__ = [
    "CLUSTER_HEAP",
    "DEFAULT_KAFKA_VERSION",
    "INSTALL_HINT",
    "BrokerError",
    "BrokerUnavailable",
    "LocalKafka",
    "LocalKafkaCluster",
    "cache_root",
    "pid_alive",
    "replication_defaults",
    "resolve_jars",
    "stop_all",
    "terminate_pid",
]
