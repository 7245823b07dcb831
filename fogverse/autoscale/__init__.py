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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from fogverse.autoscale.deploy.docker import DockerDeployer
    from fogverse.autoscale.deploy.kubernetes import KubernetesDeployer
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

# Each name loads its module on first use: a node that only looks for its heartbeat plugin
# (see fogverse.plugins) does not pay for the master, its workers and the deploy providers,
# and docker and kubernetes stay optional.
_WHERE = {
    name: f"fogverse.autoscale.{module}"
    for module, names in {
        "component": ("AutoScaleComponent", "AutoScaleMaster"),
        "config": (
            "AutoDeployerConfig",
            "ConfigError",
            "DistributedWorkerConfig",
            "InputOutputWorkerConfig",
            "LagWorkerConfig",
            "MasterAutoScalerConfig",
            "StatisticWorkerConfig",
            "Worker",
        ),
        "deploy": ("DeployConfig", "DeployFunction", "DeployScripts"),
        "deploy.docker": ("DockerDeployer",),
        "deploy.kubernetes": ("KubernetesDeployer",),
        "deploy.local": ("LocalDeployer", "LocalHandle", "LocalService"),
        "master": ("Master", "MasterObserver"),
        "messages": (
            "Announce",
            "AutoScaleRequest",
            "ControlMessage",
            "DeployEvent",
            "Heartbeat",
            "InvalidMessage",
        ),
        "observer": ("Observer", "ObserverConfig", "enable_heartbeats"),
        "state": ("ControlState",),
        "workers": ("AutoDeployer", "InputOutputWorker", "LagWorker", "StatisticWorker"),
    }.items()
    for name in names
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
