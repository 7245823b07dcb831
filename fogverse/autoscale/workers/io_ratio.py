"""INPUT_OUTPUT_WORKER: for each stage, output rate / input rate over a common window.

The input rate is what the stage's upstream reports sending to ``source_topic``; the output
rate is what the stage's instances report sending to ``target_topic``. Below
``input_output_ratio_threshold`` the stage is falling behind and the worker asks the deployer
for one instance more than it has; a stalled stage (input, no output) has ratio 0, which is
the strongest case for a scale-out, never a reason to stop. Without input (below
``min_input_rate``) there is nothing to judge. Both rates use the same window, ending one
heartbeat interval ago so that counts still on their way do not bias the output side.
Stages that filter or multiply messages need a threshold to match their output/input ratio.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fogverse.autoscale.config import IOSettings
from fogverse.autoscale.state import StageKey
from fogverse.autoscale.workers.periodic import PeriodicWorker

__all__ = ["InputOutputWorker", "RatioSample"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RatioSample:
    ts: float
    input_rate: float
    output_rate: float
    ratio: float | None
    """``None`` when the stage had no input to judge by."""
    instances: int
    wanted: int | None


class InputOutputWorker(PeriodicWorker):
    """Asks the deployer to scale stages whose output lags their input."""

    SOURCE = "input_output"
    NAME = "io-ratio-worker"

    def __init__(self, settings: IOSettings | None = None, deployer: Any = None) -> None:
        super().__init__()
        self.settings = settings or IOSettings()
        self.deployer = deployer
        self.last: dict[StageKey, RatioSample] = {}
        self._warned: set[StageKey] = set()

    async def start(self, master: Any) -> None:
        if self.deployer is None:
            self.deployer = getattr(master, "deployer", None)
        await super().start(master)

    def _interval(self) -> float:
        return self.settings.refresh_rate_second

    async def _tick(self) -> None:
        self.evaluate()

    def evaluate(self, current: float | None = None) -> dict[StageKey, RatioSample]:
        assert self.state is not None
        current = self.state.clock() if current is None else current
        end = current - self.state.max_interval()
        start = end - self.settings.window
        out = {}
        for key, stage in list(self.state.stages.items()):
            in_rate = self.state.rates.rate(stage.source_topic, start, end)
            out_rate = self.state.rates.rate(stage.target_topic, start, end)
            instances = len(self.state.instances_of(key, current))
            ratio: float | None = None
            wanted: int | None = None
            # in_rate > 0 too: min_input_rate may be 0, and no input is nothing to judge.
            if in_rate > 0 and in_rate >= self.settings.min_input_rate:
                ratio = out_rate / in_rate
                behind = ratio < self.settings.input_output_ratio_threshold
                wanted = instances + 1 if behind else instances
                if behind:
                    logger.info(
                        "stage %s -> %s behind: %.1f msg/s out / %.1f in = %.2f < %.2f "
                        "with %d instance(s)",
                        key[0],
                        key[1],
                        out_rate,
                        in_rate,
                        ratio,
                        self.settings.input_output_ratio_threshold,
                        instances,
                    )
                if self.deployer is not None:
                    self.deployer.recommend(
                        key, wanted, self.SOURCE, ttl=2 * self.settings.refresh_rate_second + 1
                    )
            elif (
                key not in self._warned
                and out_rate == 0
                and self.state.rates.first_seen(stage.source_topic) is None
            ):
                self._warned.add(key)
                logger.warning(
                    "stage %s -> %s: nobody reports sending to %s, so its input "
                    "rate is unknown; let the upstream node send heartbeats or use "
                    "LAG_WORKER",
                    key[0],
                    key[1],
                    stage.source_topic,
                )
            sample = RatioSample(current, in_rate, out_rate, ratio, instances, wanted)
            self.last[key] = sample
            out[key] = sample
        return out
