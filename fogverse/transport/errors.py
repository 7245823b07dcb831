"""What the Kafka client's errors mean to a node."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

__all__ = ["refused_for_size"]

_TOO_LARGE = (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE)


def refused_for_size(exc: BaseException) -> bool:
    """Whether librdkafka, or the broker through it, refused a record or batch for its size."""
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(err, KafkaError) and err.code() in _TOO_LARGE
