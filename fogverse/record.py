"""The message a node receives, as every transport delivers it."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Headers", "Record", "TopicPartition", "UnreadableRecord", "UnreadableRecordError"]

Headers = list[tuple[str, bytes]]
TopicPartition = tuple[str, int]


@dataclass(slots=True)
class Record:
    """One input message with the context its outputs inherit.

    ``partition`` and ``offset`` are ``None`` for data that did not come from a topic
    (a :class:`~fogverse.Producer` reading a camera), which has no offset to commit.
    """

    value: bytes | None
    key: bytes | None = None
    headers: Headers = field(default_factory=list)
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    timestamp: int | None = None
    """Broker timestamp in milliseconds since the epoch, when known."""

    @property
    def tp(self) -> TopicPartition | None:
        if self.topic is None or self.partition is None:
            return None
        return (self.topic, self.partition)

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or ``None``."""
        for k, v in reversed(self.headers):
            if k == name:
                return v
        return None


@dataclass(slots=True)
class UnreadableRecord(Record):
    """A record the Kafka client could not parse (typically a header key that is not UTF-8),
    in its place: the coordinates, whatever could be read, and why. Nodes dead-letter it
    without decoding or processing it; nothing a producer writes can pass for one."""

    reason: str = ""

    def error(self) -> UnreadableRecordError:
        """What a node raises for it where decoding would start (and dead-letters it for)."""
        return UnreadableRecordError(
            f"the Kafka client could not parse this record ({self.reason}); "
            "its coordinates are in these headers"
        )


class UnreadableRecordError(ValueError):
    """Raised for an :class:`UnreadableRecord` where decoding would start: the node
    dead-letters the record and goes on."""
