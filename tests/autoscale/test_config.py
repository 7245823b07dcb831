"""The master's configuration: the seed's dict works as written; mistakes are refused early."""

from __future__ import annotations

import logging

import pytest

from fogverse.autoscale import (
    AutoScaleComponent,
    ConfigError,
    DeployScripts,
    MasterAutoScalerConfig,
    Worker,
)
from fogverse.autoscale.config import validate

SEED: MasterAutoScalerConfig = {
    "consumer_topic": "test",
    "consumer_server": "localhost:9092",
    "consumer_group_id": "test",
    "auto_deployer_config": {"deploy_delay": 30, "after_heartbeat_delay": 30},
    "statistic_worker_config": {"z_value": 1.5, "refresh_rate": 1, "maximum_seconds": 600},
    "included_worker": [
        Worker.AUTO_DEPLOYER,
        Worker.DISTRIBUTED_LOCK_WORKER,
        Worker.STATISTIC_WORKER,
        Worker.INPUT_OUTPUT_WORKER,
    ],
    "distributed_worker_config": {"master_host": "localhost", "master_port": 4242},
    "input_output_worker_config": {"refresh_rate_second": 60, "input_output_ratio_threshold": 0.7},
}


def test_the_seed_readme_configuration_is_accepted_verbatim() -> None:
    s = validate(SEED)
    assert s.workers == frozenset(SEED["included_worker"])
    assert s.deployer.deploy_delay == 30.0 and s.deployer.after_heartbeat_delay == 30.0
    assert s.statistics.maximum_seconds == 600.0 and s.statistics.z_value == 1.5
    assert (s.lock.master_host, s.lock.master_port) == ("localhost", 4242)
    assert s.io.input_output_ratio_threshold == 0.7 and s.io.window == 60.0
    assert s.deployer.scale_in is False, "scale-in is off by default"
    assert s.lookback >= 600.0, "a restarted master re-reads the statistics window"


def test_worker_names_may_be_strings_as_in_yaml() -> None:
    s = validate({**SEED, "included_worker": ["AUTO_DEPLOYER", "Worker.LAG_WORKER"]})
    assert s.workers == {Worker.AUTO_DEPLOYER, Worker.LAG_WORKER}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"consumer_topik": "x"}, "unknown key 'consumer_topik' (did you mean 'consumer_topic'?)"),
        ({"auto_deployer_config": {"deploy_dely": 3}}, "did you mean 'deploy_delay'"),
        ({"auto_deployer_config": {"deploy_delay": -1}}, "deploy_delay must not be negative"),
        ({"auto_deployer_config": {"deploy_delay": "30"}}, "deploy_delay must be a number"),
        ({"auto_deployer_config": {"scale_in": "yes"}}, "scale_in must be true or false"),
        ({"auto_deployer_config": {"min_instance": 0}}, "min_instance must be at least 1"),
        ({"auto_deployer_config": {"min_instance": 1.5}}, "min_instance must be an integer"),
        ({"statistic_worker_config": {"z_value": 0}}, "z_value must be greater than 0"),
        (
            {"statistic_worker_config": {"refresh_rate": 10, "maximum_seconds": 5}},
            "maximum_seconds must be at least refresh_rate",
        ),
        (
            # Its history holds 2 samples: min_samples (3) is never reached, no spike ever.
            {"statistic_worker_config": {"refresh_rate": 1, "maximum_seconds": 2}},
            "maximum_seconds must be at least refresh_rate * min_samples (3)",
        ),
        (
            {"input_output_worker_config": {"input_output_ratio_threshold": float("nan")}},
            "must be finite",
        ),
        ({"distributed_worker_config": {"master_port": 70000}}, "must be a TCP port"),
        # An int too large for a float: a ConfigError, not isfinite's OverflowError.
        ({"auto_deployer_config": {"deploy_delay": 10**400}}, "deploy_delay must be finite"),
        ({"lookback_seconds": 10**400}, "lookback_seconds must be finite"),
        ({"included_worker": ["AUTO_SCALER"]}, "unknown worker 'AUTO_SCALER'"),
        ({"included_worker": "AUTO_DEPLOYER"}, "must be a list"),
        ({"consumer_topic": None}, "consumer_topic is required"),
        ({"statistic_worker_config": [1]}, "must be a mapping"),
    ],
)
def test_mistakes_are_refused_with_a_clear_message(change: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate({**SEED, **change})
    assert needle in str(err.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        validate(
            {
                **SEED,
                "included_worker": [Worker.AUTO_DEPLOYER],
                "bogus": 1,
                "auto_deployer_config": {"tick": 0},
            }
        )
    assert len(err.value.problems) == 3


def test_a_lock_only_master_needs_no_kafka_settings() -> None:
    s = validate({"included_worker": [Worker.DISTRIBUTED_LOCK_WORKER]})
    assert not s.needs_kafka


def test_the_seed_builds_its_master_first_and_registers_deploy_functions_later(caplog) -> None:
    """The seed's README makes ``DeployScripts()`` empty, builds the master, and shows
    ``set_deploy_functions`` only later: the deployer must see functions registered then."""
    scripts = DeployScripts()
    with caplog.at_level(logging.WARNING, logger="fogverse.autoscale"):
        master = AutoScaleComponent().master_auto_scaler(SEED, scripts)
    assert "no deploy function yet" in caplog.text
    assert master.deployer is not None

    def local(logger, config):
        return None

    scripts.set_deploy_functions("LOCAL", local)
    assert master.deployer.scripts.get_deploy_function("LOCAL") is local
    with pytest.raises(ConfigError, match="needs deploy scripts"):
        AutoScaleComponent().master_auto_scaler(SEED, None)
