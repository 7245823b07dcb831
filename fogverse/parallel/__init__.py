"""Process pool that runs a :class:`~fogverse.Processor` in worker processes.

Frames cross between processes through shared memory, never pickled through a pipe; see
:class:`WorkerPool`.
"""

from __future__ import annotations

from fogverse.parallel.errors import (
    ParallelError,
    PoolClosed,
    ProcessorPickleError,
    TaskFailed,
    WorkerCrashed,
    WorkerSetupError,
)
from fogverse.parallel.pool import StartMethod, TaskHandle, WorkerPool
from fogverse.parallel.worker import output_array

__all__ = [
    "ParallelError",
    "PoolClosed",
    "ProcessorPickleError",
    "StartMethod",
    "TaskFailed",
    "TaskHandle",
    "WorkerCrashed",
    "WorkerPool",
    "WorkerSetupError",
    "output_array",
]
