"""Distributed lock service of the auto-scaling Master (DISTRIBUTED_LOCK_WORKER).

Named locks with leases, FIFO waiters and fencing tokens over length-prefixed JSON on TCP;
dynamic partitioning (``fogverse.partitions``) takes ``partition:<topic>:<group>`` while it grows
a topic's partitions.
"""

from fogverse.autoscale.lock.client import (
    LockClient,
    LockError,
    LockGrant,
    LockLost,
    LockServiceError,
    LockTimeout,
    SyncLockClient,
)
from fogverse.autoscale.lock.server import LockServer

__all__ = [
    "LockClient",
    "LockError",
    "LockGrant",
    "LockLost",
    "LockServer",
    "LockServiceError",
    "LockTimeout",
    "SyncLockClient",
]
