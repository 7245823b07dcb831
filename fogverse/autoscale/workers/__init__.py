"""The master's workers: deployer, statistics, input/output ratio and consumer-group lag."""

from fogverse.autoscale.workers.deployer import AutoDeployer, DeployRecord
from fogverse.autoscale.workers.io_ratio import InputOutputWorker, RatioSample
from fogverse.autoscale.workers.lag import LagSample, LagWorker, desired_instances
from fogverse.autoscale.workers.statistic import StatisticWorker, spike_test

__all__ = [
    "AutoDeployer",
    "DeployRecord",
    "InputOutputWorker",
    "LagSample",
    "LagWorker",
    "RatioSample",
    "StatisticWorker",
    "desired_instances",
    "spike_test",
]
