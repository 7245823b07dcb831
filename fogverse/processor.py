"""The unit of user work that runs in a worker process."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

__all__ = ["Processor"]


class Processor(ABC):
    """A picklable object whose :meth:`process` turns one input into one result.

    In a :class:`~fogverse.ParallelRunnable` the processor is shipped to each worker
    process once (with cloudpickle, so closures and locally defined classes work), then
    :meth:`setup` runs in that worker before its first task and :meth:`teardown` after its
    last. Load models or open files in :meth:`setup`, not in ``__init__``: ``__init__`` runs
    in the parent and everything it stores must be pickled.
    """

    def setup(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Runs once in each worker process before its first task."""

    @abstractmethod
    def process(self, data: Any) -> Any:
        """Return the result for one input. ``None`` means: send nothing for this input."""

    def teardown(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Runs once in each worker process after its last task."""
