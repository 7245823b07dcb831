"""FogVerse: multiprocessing-first stream processing for fog and edge video pipelines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fogverse.app import run
from fogverse.node.delivery import Hold
from fogverse.node.io import Consumer, Producer
from fogverse.node.loop import Runnable
from fogverse.processor import Processor
from fogverse.record import Record
from fogverse.transport.memory import MemoryBroker

__all__ = [
    "Consumer",
    "Hold",
    "MemoryBroker",
    "ParallelConsumer",
    "ParallelProducer",
    "ParallelRunnable",
    "Processor",
    "Producer",
    "Record",
    "Runnable",
    "run",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fogverse.node.parallel import ParallelConsumer, ParallelProducer, ParallelRunnable

_PARALLEL = ("ParallelConsumer", "ParallelProducer", "ParallelRunnable")


def __getattr__(name: str) -> Any:
    # The process-pool machinery loads only for nodes that use it.
    if name in _PARALLEL:
        from fogverse.node import parallel

        return getattr(parallel, name)
    raise AttributeError(f"module 'fogverse' has no attribute {name!r}")
