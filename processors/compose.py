"""Composition: run several processors as one."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from fogverse.processor import Processor

__all__ = ["Compose", "Step"]

logger = logging.getLogger(__name__)

Step = Processor | Callable[[Any], Any]
"""A step of a :class:`Compose`: a Processor, or a plain function of one argument."""


class Compose(Processor):
    """Processor that feeds each step's result to the next, in order.

    A step returning ``None`` stops the chain and :meth:`process` returns ``None`` (the
    framework then sends nothing for this input). :meth:`setup` sets the steps up in order;
    :meth:`teardown` tears them down in reverse order, every one of them even when one fails
    (the first error is re-raised at the end). Plain functions are accepted as steps and have
    no setup or teardown.
    """

    def __init__(self, *steps: Step) -> None:
        for step in steps:
            if isinstance(step, type) and issubclass(step, Processor):
                # Callable, but calling it makes a processor out of the data (ToFloat(frame)).
                raise TypeError(f"Compose step {step.__name__} is a class: pass an instance")
            if not isinstance(step, Processor) and not callable(step):
                raise TypeError(f"Compose step must be a Processor or callable, got {step!r}")
        self.steps: tuple[Step, ...] = steps

    def __repr__(self) -> str:
        return f"Compose({', '.join(repr(s) for s in self.steps)})"

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def setup(self) -> None:
        done: list[Processor] = []
        try:
            for step in self.steps:
                if isinstance(step, Processor):
                    step.setup()
                    done.append(step)
        except BaseException:
            # Undo the steps already set up so a failed setup leaks nothing.
            self._teardown_all(reversed(done), reraise=False)
            raise

    def process(self, data: Any) -> Any:
        for step in self.steps:
            data = step.process(data) if isinstance(step, Processor) else step(data)
            if data is None:
                return None
        return data

    def teardown(self) -> None:
        self._teardown_all(reversed(self.steps), reraise=True)

    @staticmethod
    def _teardown_all(steps: Iterator[Step], *, reraise: bool) -> None:
        first: BaseException | None = None
        for step in steps:
            if not isinstance(step, Processor):
                continue
            try:
                step.teardown()
            except Exception as exc:
                logger.exception("teardown of %r failed", step)
                if first is None:
                    first = exc
        if first is not None and reraise:
            raise first
