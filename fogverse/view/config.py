"""What a live view shows and how it is served: :class:`ViewConfig` and :class:`StageSpec`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from fogverse.config import default_servers
from fogverse.metrics import Profiler
from fogverse.plugins import Plugin

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ProfileTap",
    "StageSpec",
    "ViewConfig",
    "stage_of_node",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


class ProfileTap(Plugin):
    """The view's plugin on an in-process node: holds the profiler the node has (when it runs
    with ``profile=True``), taking the new one each time the node starts."""

    def __init__(self, node: Any) -> None:
        self.profiler: Profiler | None = getattr(node, "profiler", None)
        node.plugins.append(self)

    async def on_start(self, node: Any) -> None:
        self.profiler = node.profiler


@dataclass(frozen=True)
class StageSpec:
    """One stage of the pipeline: the consumer group ``group`` reading ``inputs`` and writing
    ``output`` (``None`` for a sink). ``tap`` rides on an in-process node, whose profiler gives
    the stage's time split."""

    group: str
    inputs: tuple[str, ...]
    output: str | None = None
    name: str | None = None
    tap: ProfileTap | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        return self.name or self.group

    @classmethod
    def parse(cls, text: str) -> StageSpec:
        """``GROUP:IN[,IN2][:OUT]`` (the command line's ``--stage``)."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]):
            raise ValueError(f"stage {text!r} is not GROUP:INPUT[,INPUT...][:OUTPUT]")
        inputs = tuple(t for t in parts[1].split(",") if t)
        if not inputs:
            raise ValueError(f"stage {text!r} names no input topic")
        output = parts[2] if len(parts) == 3 and parts[2] else None
        return cls(parts[0], inputs, output)


def stage_of_node(node: Any, name: str | None = None) -> StageSpec | None:
    """The stage a FogVerse node is (``None`` for a node that reads no topic: a source).

    Reads the node's ``group_id``, ``consumer_topic`` and ``producer_topic``; a source's
    output still gets charted as a topic (see :meth:`ViewConfig.watch`)."""
    topics = getattr(node, "consumer_topic", None)
    group = getattr(node, "group_id", None)
    if not topics or not group:
        return None
    inputs = (topics,) if isinstance(topics, str) else tuple(topics)
    return StageSpec(
        str(group), inputs, getattr(node, "producer_topic", None), name or type(node).__name__
    )


@dataclass
class ViewConfig:
    """Everything ``fogverse view`` needs; the defaults are the safe ones.

    - ``frames``: image topics shown live (JPEG, PNG, or FogVerse ndarray frames);
      ``detections``: a topic of JSON detections (``boxes``, ``scores``, ``class_ids``,
      ``names``) keyed like the frames, drawn over them.
    - ``topics``: more topics whose rates are charted; ``stages``: consumer groups whose
      rates, lag and (in-process nodes) profiles are charted.
    - ``control_topic``: the auto-scaling master's topic, read to show its view.
    - ``host``/``port``: 127.0.0.1 unless told otherwise (port 0: any free port);
      ``token``: required on every request when set.
    - ``max_fps``: frames per second sent to each browser, per topic (newer frames replace
      unsent ones: a slow browser gets fewer frames, never a queue); 0: no limit.
    """

    servers: str = field(default_factory=default_servers)
    frames: list[str] = field(default_factory=list)
    detections: str | None = None
    topics: list[str] = field(default_factory=list)
    stages: list[StageSpec] = field(default_factory=list)
    control_topic: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    max_fps: float = 15.0
    poll_interval: float = 1.0
    """Seconds between two reads of offsets and lag (admin requests)."""
    history_seconds: float = 300.0
    """How much of each chart's past the server keeps (and a new page shows)."""
    max_frame_bytes: int = 16 * 1024 * 1024
    consumer_conf: dict[str, Any] = field(default_factory=dict)
    """Extra aiokafka keywords for the view's clients (SASL/SSL settings go here)."""

    def __post_init__(self) -> None:
        # Refused here rather than met later: a negative or NaN max_fps turned sampling off (every
        # frame read), an empty token served without one, a NaN poll_interval or an infinite
        # history failed deep inside View(), a port out of range only once Kafka was connected.
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, not {self.port}")
        if self.token == "":
            raise ValueError("the token is empty; pass None for no token")
        if not (math.isfinite(self.max_fps) and self.max_fps >= 0):
            raise ValueError(
                f"max_fps must be a finite number >= 0 (0: no limit), not {self.max_fps}"
            )
        for name in ("poll_interval", "history_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, not {value}")
        if self.max_frame_bytes <= 0:
            raise ValueError(f"max_frame_bytes must be more than 0, not {self.max_frame_bytes}")

    def watch(self, *nodes: Any) -> ViewConfig:
        """Add each node's stage (consumers, with a :class:`ProfileTap` on the node) and output
        topic (every node); returns self."""
        for node in nodes:
            stage = stage_of_node(node)
            if stage is not None and stage not in self.stages:
                tap = ProfileTap(node) if hasattr(node, "plugins") else None
                self.stages.append(replace(stage, tap=tap))
            out = getattr(node, "producer_topic", None)
            if out and out not in self.topics:
                self.topics.append(out)
        return self

    def all_topics(self) -> list[str]:
        """Every topic charted: frames, detections, stages' inputs and outputs, ``topics``."""
        names: list[str] = [*self.frames, *([self.detections] if self.detections else [])]
        for stage in self.stages:
            names += [*stage.inputs, *([stage.output] if stage.output else [])]
        names += self.topics
        return list(dict.fromkeys(names))
