"""The control topic's messages: versioned JSON, parsed strictly.

Every message carries the schema version ``v``, a ``type``, the sender's ``instance_id`` and
``ts``, a UTC epoch timestamp in seconds. Nodes send ``announce`` once, ``heartbeat`` every
interval (``total_messages`` counts the outputs since the previous heartbeat, which was sent at
``since``) and ``auto_scale_request`` (re-sent periodically, so a restarted master relearns its
stages without anyone re-announcing); the master records its own ``deploy`` decisions there, so
that its successor knows about instances that are still starting.

:func:`parse_message` accepts only well-formed messages; anything else raises
:class:`InvalidMessage`, which the master logs and skips.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

__all__ = [
    "MAX_MESSAGE_BYTES",
    "SCHEMA_VERSION",
    "Announce",
    "AutoScaleRequest",
    "ControlMessage",
    "DeployEvent",
    "DeploySpec",
    "Heartbeat",
    "InvalidMessage",
    "encode_message",
    "now",
    "parse_message",
    "stage_topic",
]

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
_MAX_STR = 512
# Timestamps outside this range are garbage, not clock skew (2001 .. 2286).
_MIN_TS, _MAX_TS = 1e9, 1e10


class InvalidMessage(ValueError):
    """A control-topic message that is not one of ours (bad JSON, version, type or field)."""


def now() -> float:
    """Seconds since the Unix epoch (which is UTC by definition)."""
    return time.time()


def _str(d: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = d.get(key)
    if value is None:
        if optional:
            return None
        raise InvalidMessage(f"missing field {key!r}")
    if not isinstance(value, str) or not value or len(value) > _MAX_STR:
        raise InvalidMessage(f"field {key!r} must be a non-empty string of at most {_MAX_STR}")
    return value


def _num(
    d: dict[str, Any], key: str, *, lo: float, hi: float, default: float | None = None
) -> float:
    value = d.get(key, default)
    # bool is an int subclass; "true" is not a number of anything.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidMessage(f"field {key!r} must be a number")
    try:
        value = float(value)
    except OverflowError:  # a JSON integer of hundreds of digits
        value = math.inf
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidMessage(f"field {key!r} out of range [{lo}, {hi}]: {value}")
    return value


def _int(d: dict[str, Any], key: str, *, lo: int, hi: int) -> int:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMessage(f"field {key!r} must be an integer")
    if not lo <= value <= hi:
        raise InvalidMessage(f"field {key!r} out of range [{lo}, {hi}]: {value}")
    return value


@dataclass(frozen=True)
class ControlMessage:
    """Fields common to every message."""

    TYPE: ClassVar[str] = ""

    instance_id: str
    ts: float

    def to_dict(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, "type": self.TYPE, **asdict(self)}


@dataclass(frozen=True)
class Announce(ControlMessage):
    """A node instance started (informational: heartbeats alone rebuild every state)."""

    TYPE: ClassVar[str] = "announce"

    source_topic: str | None = None
    target_topic: str | None = None
    group_id: str | None = None
    interval: float = 1.0
    host: str | None = None
    pid: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], instance_id: str, ts: float) -> Announce:
        pid = d.get("pid")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid < 0):
            raise InvalidMessage("field 'pid' must be a non-negative integer")
        return cls(
            instance_id,
            ts,
            _str(d, "source_topic", optional=True),
            _str(d, "target_topic", optional=True),
            _str(d, "group_id", optional=True),
            _num(d, "interval", lo=0.001, hi=3600, default=1.0),
            _str(d, "host", optional=True),
            pid,
        )


@dataclass(frozen=True)
class Heartbeat(ControlMessage):
    """``total_messages`` sent to ``target_topic`` between ``since`` and ``ts``.

    ``interval`` is the sender's heartbeat period (the master expires an instance after a few
    missed ones); ``final`` marks the last heartbeat of an instance that is shutting down.
    ``target_topic`` is ``None`` for a liveness-only heartbeat of a node with no output yet.
    """

    TYPE: ClassVar[str] = "heartbeat"

    target_topic: str | None = None
    total_messages: int = 0
    since: float = 0.0
    interval: float = 1.0
    source_topic: str | None = None
    group_id: str | None = None
    final: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any], instance_id: str, ts: float) -> Heartbeat:
        since = _num(d, "since", lo=_MIN_TS, hi=_MAX_TS, default=ts)
        if since > ts:
            raise InvalidMessage("field 'since' is after 'ts'")
        final = d.get("final", False)
        if not isinstance(final, bool):
            raise InvalidMessage("field 'final' must be a boolean")
        return cls(
            instance_id,
            ts,
            _str(d, "target_topic", optional=True),
            _int(d, "total_messages", lo=0, hi=2**53),
            since,
            _num(d, "interval", lo=0.001, hi=3600, default=1.0),
            _str(d, "source_topic", optional=True),
            _str(d, "group_id", optional=True),
            final,
        )


@dataclass(frozen=True)
class DeploySpec:
    """How to start one more instance of a stage (the seed's ``topic_configs``)."""

    provider: str
    service_name: str
    max_instance: int
    extra_configs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> DeploySpec:
        if not isinstance(d, dict):
            raise InvalidMessage("field 'topic_configs' must be an object")
        extra = d.get("extra_configs", {})
        if extra is None:
            extra = {}
        if not isinstance(extra, dict):
            raise InvalidMessage("field 'extra_configs' must be an object")
        provider = _str(d, "provider")
        service = _str(d, "service_name")
        assert provider is not None and service is not None
        return cls(provider, service, _int(d, "max_instance", lo=1, hi=100_000), extra)


@dataclass(frozen=True)
class AutoScaleRequest(ControlMessage):
    """The stage reading ``source_topic`` (as ``group_id``) and writing ``target_topic`` may be
    scaled with ``topic_configs``."""

    TYPE: ClassVar[str] = "auto_scale_request"

    source_topic: str = ""
    target_topic: str = ""
    topic_configs: DeploySpec = field(default_factory=lambda: DeploySpec("", "", 1))
    group_id: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], instance_id: str, ts: float) -> AutoScaleRequest:
        source, target = _str(d, "source_topic"), _str(d, "target_topic")
        assert source is not None and target is not None
        return cls(
            instance_id,
            ts,
            source,
            target,
            DeploySpec.from_dict(d.get("topic_configs")),
            _str(d, "group_id", optional=True),
        )

    @property
    def stage(self) -> tuple[str, str]:
        return (self.source_topic, self.target_topic)


def stage_topic(topics: str | Iterable[str], role: str = "source_topic") -> str:
    """The one topic a stage is named by, from a topic or a list of topics.

    A node keeps ``consumer_topic`` as a list (it may read several), and the seed's code hands
    it on as it is (``source_topic=self.consumer_topic``): a list of one topic names that
    topic; a list of several raises ``ValueError`` naming them, as a stage is scaled on one
    input topic and nothing here can tell which one was meant.
    """
    if isinstance(topics, str):
        return topics
    names = list(topics)
    if len(names) == 1 and isinstance(names[0], str):
        return names[0]
    if not names:
        raise ValueError(f"{role} is an empty list: a stage is named by one topic")
    listed = ", ".join(repr(n) for n in names)
    raise ValueError(
        f"{role} lists {len(names)} topics ({listed}): a stage is named by one topic; "
        f"pass the one this stage should be scaled on"
    )


@dataclass(frozen=True)
class DeployEvent(ControlMessage):
    """The master started (``action="deploy"``) or stopped (``"stop"``) ``instance_id``;
    ``reason`` says why, for people and dashboards (``fogverse view``)."""

    TYPE: ClassVar[str] = "deploy"

    source_topic: str = ""
    target_topic: str = ""
    action: str = "deploy"
    provider: str | None = None
    service_name: str | None = None
    reason: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], instance_id: str, ts: float) -> DeployEvent:
        action = d.get("action")
        if action not in ("deploy", "stop"):
            raise InvalidMessage("field 'action' must be 'deploy' or 'stop'")
        source, target = _str(d, "source_topic"), _str(d, "target_topic")
        assert source is not None and target is not None
        return cls(
            instance_id,
            ts,
            source,
            target,
            action,
            _str(d, "provider", optional=True),
            _str(d, "service_name", optional=True),
            _str(d, "reason", optional=True),
        )

    @property
    def stage(self) -> tuple[str, str]:
        return (self.source_topic, self.target_topic)


_TYPES: dict[str, type[Any]] = {
    t.TYPE: t for t in (Announce, Heartbeat, AutoScaleRequest, DeployEvent)
}


def encode_message(message: ControlMessage) -> bytes:
    return json.dumps(message.to_dict(), separators=(",", ":")).encode()


def parse_message(raw: bytes | str | None) -> ControlMessage:
    """Decode one control-topic value, or raise :class:`InvalidMessage` saying why not."""
    if raw is None:
        raise InvalidMessage("empty message")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        d = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting too
        raise InvalidMessage(f"not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise InvalidMessage("not a JSON object")
    version = d.get("v")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise InvalidMessage(f"unsupported schema version {version!r} (expected {SCHEMA_VERSION})")
    kind = d.get("type")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InvalidMessage(f"unknown message type {kind!r}")
    instance_id = _str(d, "instance_id")
    ts = _num(d, "ts", lo=_MIN_TS, hi=_MAX_TS)
    message: ControlMessage = cls.from_dict(d, instance_id, ts)
    return message
