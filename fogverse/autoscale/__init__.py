"""Auto-scaling add-on: a Master that watches every stage of a pipeline and starts more
instances of a stage that falls behind, through deploy scripts you register.

Seed-compatible usage::

    from fogverse.autoscale import AutoScaleComponent, DeployScripts, MasterAutoScalerConfig, Worker

    master = AutoScaleComponent().master_auto_scaler(conf, deploy_scripts)
    await master.run()

Nodes report with ``AutoScaleComponent().observer(ObserverConfig)`` (``send_heartbeat``,
``send_auto_scale_request``) or ``Observer(...).attach(node)``. See ``docs/autoscale.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fogverse.autoscale.component import AutoScaleComponent, AutoScaleMaster
from fogverse.autoscale.config import (
    AutoDeployerConfig,
    ConfigError,
    DistributedWorkerConfig,
    InputOutputWorkerConfig,
    LagWorkerConfig,
    MasterAutoScalerConfig,
    StatisticWorkerConfig,
    Worker,
)
from fogverse.autoscale.deploy import DeployConfig, DeployFunction, DeployScripts
from fogverse.autoscale.deploy.local import LocalDeployer, LocalHandle, LocalService
from fogverse.autoscale.master import Master, MasterObserver
from fogverse.autoscale.messages import (
    Announce,
    AutoScaleRequest,
    ControlMessage,
    DeployEvent,
    Heartbeat,
    InvalidMessage,
)
from fogverse.autoscale.observer import Observer, ObserverConfig, enable_heartbeats
from fogverse.autoscale.state import ControlState
from fogverse.autoscale.workers import (
    AutoDeployer,
    InputOutputWorker,
    LagWorker,
    StatisticWorker,
)

if TYPE_CHECKING:
    from fogverse.autoscale.deploy.docker import DockerDeployer
    from fogverse.autoscale.deploy.kubernetes import KubernetesDeployer

__all__ = [
    "Announce",
    "AutoDeployer",
    "AutoDeployerConfig",
    "AutoScaleComponent",
    "AutoScaleMaster",
    "AutoScaleRequest",
    "ConfigError",
    "ControlMessage",
    "ControlState",
    "DeployConfig",
    "DeployEvent",
    "DeployFunction",
    "DeployScripts",
    "DistributedWorkerConfig",
    "DockerDeployer",
    "Heartbeat",
    "InputOutputWorker",
    "InputOutputWorkerConfig",
    "InvalidMessage",
    "KubernetesDeployer",
    "LagWorker",
    "LagWorkerConfig",
    "LocalDeployer",
    "LocalHandle",
    "LocalService",
    "Master",
    "MasterAutoScalerConfig",
    "MasterObserver",
    "Observer",
    "ObserverConfig",
    "StatisticWorker",
    "StatisticWorkerConfig",
    "Worker",
    "enable_heartbeats",
]


def __getattr__(name: str) -> Any:
    # docker and kubernetes are optional: their providers load on first use.
    if name == "DockerDeployer":
        from fogverse.autoscale.deploy.docker import DockerDeployer

        return DockerDeployer
    if name == "KubernetesDeployer":
        from fogverse.autoscale.deploy.kubernetes import KubernetesDeployer

        return KubernetesDeployer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
