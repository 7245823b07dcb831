"""Compose: order, short-circuit on None, and the setup/teardown of every step."""

from __future__ import annotations

from typing import Any

import pytest

from fogverse.processor import Processor
from processors import Compose, ToFloat


class Recorder(Processor):
    """Appends (name, event) to a shared log; optionally fails or returns None."""

    def __init__(self, name: str, log: list, *, fail_on: str = "", returns_none: bool = False):
        self.name, self.log, self.fail_on, self.returns_none = name, log, fail_on, returns_none

    def _event(self, event: str) -> None:
        self.log.append((self.name, event))
        if event == self.fail_on:
            raise RuntimeError(f"{self.name} {event} failed")

    def setup(self) -> None:
        self._event("setup")

    def process(self, data: Any) -> Any:
        self._event("process")
        return None if self.returns_none else [*data, self.name]

    def teardown(self) -> None:
        self._event("teardown")


def test_runs_steps_in_order() -> None:
    log: list = []
    chain = Compose(Recorder("a", log), Recorder("b", log), Recorder("c", log))
    assert chain.process([]) == ["a", "b", "c"]
    assert log == [("a", "process"), ("b", "process"), ("c", "process")]
    assert len(chain) == 3 and [s.name for s in chain] == ["a", "b", "c"]


def test_none_short_circuits() -> None:
    log: list = []
    chain = Compose(Recorder("a", log), Recorder("b", log, returns_none=True), Recorder("c", log))
    assert chain.process([]) is None
    assert ("c", "process") not in log


def test_setup_in_order_teardown_in_reverse() -> None:
    log: list = []
    chain = Compose(Recorder("a", log), Recorder("b", log))
    chain.setup()
    chain.teardown()
    assert log == [("a", "setup"), ("b", "setup"), ("b", "teardown"), ("a", "teardown")]


def test_teardown_reaches_every_step_and_reraises_first_error() -> None:
    log: list = []
    chain = Compose(
        Recorder("a", log, fail_on="teardown"),
        Recorder("b", log, fail_on="teardown"),
        Recorder("c", log),
    )
    with pytest.raises(RuntimeError, match="b teardown"):
        chain.teardown()
    assert log == [("c", "teardown"), ("b", "teardown"), ("a", "teardown")]


def test_failed_setup_tears_down_the_steps_already_set_up() -> None:
    log: list = []
    chain = Compose(Recorder("a", log), Recorder("b", log, fail_on="setup"), Recorder("c", log))
    with pytest.raises(RuntimeError, match="b setup"):
        chain.setup()
    assert log == [("a", "setup"), ("b", "setup"), ("a", "teardown")]


def test_plain_functions_and_nesting() -> None:
    log: list = []
    inner = Compose(Recorder("a", log), lambda d: [*d, "f"])
    chain = Compose(inner, Recorder("b", log))
    chain.setup()
    assert chain.process([]) == ["a", "f", "b"]
    chain.teardown()
    assert ("a", "setup") in log and ("a", "teardown") in log
    assert Compose().process(5) == 5


def test_rejects_non_callables() -> None:
    with pytest.raises(TypeError):
        Compose(42)  # type: ignore[arg-type]


def test_rejects_a_processor_class_for_its_instance() -> None:
    # ToFloat without () would turn each frame into ToFloat(scale=frame), sent on as the result.
    with pytest.raises(TypeError, match="ToFloat is a class: pass an instance"):
        Compose(Recorder("a", []), ToFloat)


def test_repr_names_the_steps() -> None:
    from processors import BGRToRGB, ToFloat

    assert repr(Compose(BGRToRGB(), ToFloat())) == (
        "Compose(BGRToRGB(layout='HWC'), ToFloat(scale=0.00392156862745098))"
    )
