"""``AutoScaleComponent``: the seed's one-call way to build a master or an observer."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from fogverse.autoscale.config import ConfigError, MasterAutoScalerConfig, MasterSettings, Worker
from fogverse.autoscale.config import validate as validate_config
from fogverse.autoscale.deploy import DeployScripts
from fogverse.autoscale.master import Master
from fogverse.autoscale.observer import Observer, ObserverConfig
from fogverse.autoscale.workers import (
    AutoDeployer,
    InputOutputWorker,
    LagWorker,
    StatisticWorker,
)

__all__ = ["AutoScaleComponent", "AutoScaleMaster"]

logger = logging.getLogger(__name__)


class AutoScaleMaster(Master):
    """A :class:`Master` with the workers ``included_worker`` asked for (``None`` if not)."""

    settings: MasterSettings
    deployer: AutoDeployer | None = None
    statistics: StatisticWorker | None = None
    io_worker: InputOutputWorker | None = None
    lag_worker: LagWorker | None = None
    lock_server: Any = None


class AutoScaleComponent:
    def master_auto_scaler(
        self,
        conf: MasterAutoScalerConfig | Mapping[str, Any],
        deploy_scripts: DeployScripts | None = None,
    ) -> AutoScaleMaster:
        """Build a master from the seed's configuration; raises :class:`ConfigError` at once
        if the configuration cannot work.

        The deployer looks a provider's function up in ``deploy_scripts`` when it deploys, so
        functions registered after this call (the seed's README builds the master first and
        registers them later) are used. A master with ``AUTO_DEPLOYER`` and an empty
        ``DeployScripts`` starts with a warning; ``None`` is refused."""
        settings = validate_config(conf)
        workers = settings.workers
        if Worker.AUTO_DEPLOYER in workers:
            if deploy_scripts is None:
                raise ConfigError(
                    [
                        "AUTO_DEPLOYER needs deploy scripts: pass a DeployScripts with at "
                        "least one set_deploy_functions(provider, fn)"
                    ]
                )
            if not deploy_scripts:
                logger.warning(
                    "AUTO_DEPLOYER has no deploy function yet: every scale-out fails (and is "
                    "retried) until set_deploy_functions(provider, fn) registers one"
                )
        services: list[Any] = []
        lock_server = None
        if Worker.DISTRIBUTED_LOCK_WORKER in workers:
            from fogverse.autoscale.lock import LockServer
            from fogverse.autoscale.lock.server import TOKEN_ENV

            lock = settings.lock
            lock_server = LockServer(
                lock.master_host,
                lock.master_port,
                token=lock.token or os.environ.get(TOKEN_ENV) or None,
                default_lease=lock.default_lease,
            )
            services.append(lock_server)
        deployer = statistics = io_worker = lag_worker = None
        observers: list[Any] = []
        if Worker.AUTO_DEPLOYER in workers:
            assert deploy_scripts is not None
            deployer = AutoDeployer(deploy_scripts, settings.deployer)
            observers.append(deployer)
        if Worker.STATISTIC_WORKER in workers:
            statistics = StatisticWorker(settings.statistics)
            observers.append(statistics)
        if Worker.INPUT_OUTPUT_WORKER in workers:
            io_worker = InputOutputWorker(settings.io, deployer)
            observers.append(io_worker)
        if Worker.LAG_WORKER in workers:
            lag_worker = LagWorker(settings.lag, deployer, settings.consumer_server)
            observers.append(lag_worker)
        master = AutoScaleMaster(
            settings.consumer_topic if settings.needs_kafka else None,
            settings.consumer_group_id,
            settings.consumer_server,
            observers,
            services=services,
            lookback_seconds=settings.lookback,
            expiry_factor=settings.deployer.heartbeat_expiry_factor,
            control_topic_partitions=settings.control_topic_partitions,
            publish=deployer is not None,
        )
        master.settings = settings
        master.deployer = deployer
        master.statistics = statistics
        master.io_worker = io_worker
        master.lag_worker = lag_worker
        master.lock_server = lock_server
        return master

    def observer(self, config: ObserverConfig | None = None) -> Observer:
        """A node-side :class:`Observer` (``producer_topic`` = the master's topic)."""
        return Observer(config)
