"""What the Kafka clients' errors mean to a node, whichever client raised them."""

from __future__ import annotations

from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

__all__ = ["refused_for_size"]

_AIOKAFKA_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)


def refused_for_size(exc: BaseException) -> bool:
    """Whether the client, or the broker through it, refused a record or batch for its size."""
    if isinstance(exc, _AIOKAFKA_TOO_LARGE):
        return True
    from confluent_kafka import KafkaError, KafkaException

    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(err, KafkaError) and err.code() in (
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
    )
