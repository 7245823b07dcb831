"""Exceptions raised by the worker pool."""

from __future__ import annotations

__all__ = [
    "ParallelError",
    "PoolClosed",
    "ProcessorPickleError",
    "TaskFailed",
    "WorkerCrashed",
    "WorkerSetupError",
]


class ParallelError(Exception):
    """Base class of the worker pool's errors."""


class ProcessorPickleError(ParallelError):
    """The processor cannot be pickled; ``path`` names the attribute that failed."""

    def __init__(self, path: str, type_name: str, cause: BaseException) -> None:
        self.path = path
        self.type_name = type_name
        super().__init__(
            f"processor attribute {path!r} ({type_name}) cannot be pickled: {cause!r}. "
            "Everything stored on a Processor in __init__ is shipped to the worker processes; "
            "create unpicklable resources (models, sessions, locks, sockets) in setup() instead."
        )


class WorkerSetupError(ParallelError):
    """A worker could not start: its ``setup()`` raised or the process died before it was ready."""

    def __init__(self, message: str, traceback_text: str = "") -> None:
        self.traceback_text = traceback_text
        super().__init__(f"{message}\n{traceback_text}" if traceback_text else message)


class TaskFailed(ParallelError):
    """``Processor.process()`` raised for this task; the worker carried on."""

    def __init__(self, exc_type: str, message: str, traceback_text: str) -> None:
        self.exc_type = exc_type
        self.message = message
        self.traceback_text = traceback_text
        super().__init__(f"{exc_type}: {message}")

    def __reduce__(self) -> tuple[type[TaskFailed], tuple[str, str, str]]:
        return (type(self), (self.exc_type, self.message, self.traceback_text))


class WorkerCrashed(ParallelError):
    """Worker processes died while running this task more times than ``max_retries`` allows."""

    def __init__(self, exitcode: int | None, attempts: int) -> None:
        self.exitcode = exitcode
        self.attempts = attempts
        super().__init__(
            f"worker process died (exit code {exitcode}) on each of {attempts} attempts"
        )

    def __reduce__(self) -> tuple[type[WorkerCrashed], tuple[int | None, int]]:
        return (type(self), (self.exitcode, self.attempts))


class PoolClosed(ParallelError):
    """The pool is closed (or was closed before this task finished)."""
