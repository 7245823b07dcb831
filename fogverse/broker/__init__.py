"""A local Apache Kafka broker for tests, demos and benchmarks (``fogverse broker``)."""

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
    "DEFAULT_KAFKA_VERSION",
    "INSTALL_HINT",
    "BrokerError",
    "BrokerUnavailable",
    "LocalKafka",
    "cache_root",
    "pid_alive",
    "resolve_jars",
    "stop_all",
    "terminate_pid",
]
