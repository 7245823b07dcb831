"""The wire format the pool's parent and its workers speak.

Wire protocol (one Unix stream socketpair per worker; every frame is a little-endian ``u32``
length followed by a type byte and its fields). Descriptors travel with ``SCM_RIGHTS`` on the
frame that first needs them: the pickled processor's region with ``HELLO``, a slot's region
with the first ``TASK`` that uses that slot (or that slot's new generation after it grew).

parent -> worker: ``HELLO`` (blob size) | ``TASK`` (task id, slot, generation, flags: 1 = a
descriptor comes with it, 2 = short task: its reply may wait for the next queued task's, 4 = the
input is not in the slot but pickled after these fields) | ``STOP``
worker -> parent: ``READY`` (pid) | ``SETUP_FAILED`` (traceback text) | ``RESULT`` (task id,
offset of the result in the slot) | ``VALUE`` (task id, the small result pickled) | ``INBAND``
(task id, size needed, payload laid out as in a slot) | ``ERROR`` (task id, pickled ``(type,
message, traceback)``)

Small values (:data:`~fogverse.parallel.shm.INLINE_MAX`) travel pickled inside ``TASK`` and
``VALUE`` frames; everything else goes through the task's slot.
"""

from __future__ import annotations

import struct

__all__ = [
    "ERROR",
    "HELLO",
    "INBAND",
    "LEN",
    "MSG_ERROR",
    "MSG_HELLO",
    "MSG_INBAND",
    "MSG_READY",
    "MSG_RESULT",
    "MSG_SETUP_FAILED",
    "MSG_STOP",
    "MSG_TASK",
    "MSG_VALUE",
    "READY",
    "RESULT",
    "SETUP_FAILED",
    "STOP",
    "TASK",
    "TASK_FD",
    "TASK_INLINE",
    "TASK_SHORT",
    "VALUE",
]

LEN = struct.Struct("<I")
HELLO = struct.Struct("<IBQ")
TASK = struct.Struct("<IBIIIB")
STOP = struct.Struct("<IB")
READY = struct.Struct("<IBI")
RESULT = struct.Struct("<IBIQ")
INBAND = struct.Struct("<IBIQ")
ERROR = struct.Struct("<IBI")
VALUE = struct.Struct("<IBI")
SETUP_FAILED = struct.Struct("<IB")

TASK_FD = 1
TASK_SHORT = 2
TASK_INLINE = 4

MSG_HELLO = 1
MSG_TASK = 2
MSG_STOP = 3
MSG_READY = 10
MSG_SETUP_FAILED = 11
MSG_RESULT = 12
MSG_INBAND = 13
MSG_ERROR = 14
MSG_VALUE = 15
