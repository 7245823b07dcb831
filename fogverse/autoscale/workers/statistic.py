"""STATISTIC_WORKER: throughput per topic and a z-score spike test.

Every ``refresh_rate`` seconds it samples each topic's rate (messages/s over the last
``refresh_rate`` seconds) into a history of ``maximum_seconds``. A sample is a spike when it
lies more than ``z_value`` standard deviations above the mean of the history before it. The
test is defined everywhere: with fewer than ``min_samples`` earlier samples nothing is called a
spike (too little evidence), and the deviation used is never below 5 % of the mean or 1 msg/s,
so a flat history (zero variance) neither divides by zero nor calls a 1 % wobble a spike.
Alongside the deployer it vetoes scale-outs while a stage's input is spiking.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fogverse.autoscale.config import StatisticSettings
from fogverse.autoscale.state import Stage
from fogverse.autoscale.workers.periodic import PeriodicWorker

__all__ = ["SpikeResult", "StatisticWorker", "spike_test"]

logger = logging.getLogger(__name__)

MIN_SIGMA_FRACTION = 0.05
MIN_SIGMA_ABS = 1.0


@dataclass(frozen=True)
class SpikeResult:
    spike: bool
    z: float
    mean: float
    sigma: float
    samples: int


def spike_test(
    history: Sequence[float], current: float, z_value: float, min_samples: int = 3
) -> SpikeResult:
    """Is ``current`` an upward spike against ``history`` (the samples before it)?"""
    n = len(history)
    if n == 0:
        return SpikeResult(False, 0.0, current, 0.0, 0)
    mean = math.fsum(history) / n
    var = math.fsum((x - mean) ** 2 for x in history) / n
    sigma = max(math.sqrt(var), MIN_SIGMA_FRACTION * abs(mean), MIN_SIGMA_ABS)
    z = (current - mean) / sigma
    return SpikeResult(n >= min_samples and z > z_value, z, mean, sigma, n)


class StatisticWorker(PeriodicWorker):
    """Per-topic throughput history and spike detection."""

    NAME = "statistic-worker"

    def __init__(self, settings: StatisticSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or StatisticSettings()
        self.history: dict[str, deque[tuple[float, float]]] = {}
        self.last: dict[str, SpikeResult] = {}

    async def start(self, master: Any) -> None:
        deployer = getattr(master, "deployer", None)
        if deployer is not None:
            deployer.add_veto(self.veto)
        await super().start(master)

    def _interval(self) -> float:
        return self.settings.refresh_rate

    async def _tick(self) -> None:
        self.sample()

    def sample(self, current: float | None = None) -> dict[str, SpikeResult]:
        """Take one sample of every topic's rate and test it against the history."""
        assert self.state is not None
        current = self.state.clock() if current is None else current
        end = current - self.state.max_interval()  # the newest counts are still on their way
        topics = set(self.state.rates.topics())
        topics.update(s.source_topic for s in self.state.stages.values())
        results = {}
        for topic in topics:
            rate = self.state.rates.rate(topic, end - self.settings.refresh_rate, end)
            hist = self.history.setdefault(topic, deque())
            result = spike_test(
                [r for _, r in hist], rate, self.settings.z_value, self.settings.min_samples
            )
            if result.spike and not (topic in self.last and self.last[topic].spike):
                logger.info(
                    "throughput spike on %s: %.1f msg/s (mean %.1f, z=%.1f)",
                    topic,
                    rate,
                    result.mean,
                    result.z,
                )
            hist.append((current, rate))
            while hist and current - hist[0][0] > self.settings.maximum_seconds:
                hist.popleft()
            self.last[topic] = result
            results[topic] = result
        return results

    def throughput(self, topic: str, current: float | None = None) -> float:
        """Messages/s sent to ``topic`` over the last ``maximum_seconds`` (or since known)."""
        assert self.state is not None
        current = self.state.clock() if current is None else current
        first = self.state.rates.first_seen(topic)
        if first is None:
            return 0.0
        start = max(current - self.settings.maximum_seconds, first)
        return self.state.rates.rate(topic, start, current)

    def is_spike(self, topic: str) -> bool:
        result = self.last.get(topic)
        return result is not None and result.spike

    def veto(self, stage: Stage) -> str | None:
        result = self.last.get(stage.source_topic)
        if result is not None and result.spike:
            return (
                f"input {stage.source_topic} is spiking (z={result.z:.1f} > "
                f"{self.settings.z_value})"
            )
        return None
