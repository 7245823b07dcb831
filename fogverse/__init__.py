"""FogVerse: multiprocessing-first stream processing for fog and edge video pipelines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fogverse.app import run
from fogverse.delivery import Hold
from fogverse.nodes import Consumer, Producer
from fogverse.processor import Processor
from fogverse.record import Record
from fogverse.runnable import Runnable
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
    from fogverse.parallel.runnable import ParallelConsumer, ParallelProducer, ParallelRunnable

_PARALLEL = ("ParallelConsumer", "ParallelProducer", "ParallelRunnable")


def __getattr__(name: str) -> Any:
    # The process-pool machinery loads only for nodes that use it.
    if name in _PARALLEL:
        from fogverse.parallel import runnable

        return getattr(runnable, name)
    raise AttributeError(f"module 'fogverse' has no attribute {name!r}")
