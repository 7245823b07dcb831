"""The master's configuration: the seed's ``MasterAutoScalerConfig`` and its validation.

:func:`validate` turns the user's dict (or YAML) into complete settings, or raises
:class:`ConfigError` naming every problem: unknown keys (a typo would otherwise be ignored),
values out of range, and worker combinations that cannot work, before anything starts.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, TypedDict

__all__ = [
    "AutoDeployerConfig",
    "ConfigError",
    "DeployerSettings",
    "DistributedWorkerConfig",
    "IOSettings",
    "InputOutputWorkerConfig",
    "LagSettings",
    "LagWorkerConfig",
    "LockSettings",
    "MasterAutoScalerConfig",
    "MasterSettings",
    "StatisticSettings",
    "StatisticWorkerConfig",
    "Worker",
    "validate",
]


class Worker(StrEnum):
    """The master's workers (``included_worker``)."""

    AUTO_DEPLOYER = "AUTO_DEPLOYER"
    DISTRIBUTED_LOCK_WORKER = "DISTRIBUTED_LOCK_WORKER"
    STATISTIC_WORKER = "STATISTIC_WORKER"
    INPUT_OUTPUT_WORKER = "INPUT_OUTPUT_WORKER"
    LAG_WORKER = "LAG_WORKER"


class AutoDeployerConfig(TypedDict, total=False):
    deploy_delay: float
    after_heartbeat_delay: float
    startup_timeout: float
    retry_backoff: float
    retry_backoff_max: float
    scale_in: bool
    stabilisation_window: float
    min_instance: int
    tick: float
    heartbeat_expiry_factor: float
    stop_instances_on_exit: bool


class StatisticWorkerConfig(TypedDict, total=False):
    z_value: float
    refresh_rate: float
    maximum_seconds: float
    min_samples: int


class DistributedWorkerConfig(TypedDict, total=False):
    master_host: str
    master_port: int
    token: str | None
    default_lease: float


class InputOutputWorkerConfig(TypedDict, total=False):
    refresh_rate_second: float
    input_output_ratio_threshold: float
    window_seconds: float
    min_input_rate: float


class LagWorkerConfig(TypedDict, total=False):
    lag_threshold: float
    refresh_rate_second: float
    allow_beyond_partitions: bool
    admin_timeout: float


class MasterAutoScalerConfig(TypedDict, total=False):
    consumer_topic: str
    consumer_server: str
    consumer_group_id: str
    auto_deployer_config: AutoDeployerConfig
    statistic_worker_config: StatisticWorkerConfig
    included_worker: list[Worker | str]
    distributed_worker_config: DistributedWorkerConfig
    input_output_worker_config: InputOutputWorkerConfig
    lag_worker_config: LagWorkerConfig
    lookback_seconds: float
    control_topic_partitions: int


class ConfigError(ValueError):
    """The configuration cannot work; the message lists every problem found."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid auto-scaling configuration:\n  - " + "\n  - ".join(self.problems))


@dataclass(frozen=True)
class DeployerSettings:
    deploy_delay: float = 30.0
    """Seconds between two deploys (or scale-ins) of one stage."""
    after_heartbeat_delay: float = 30.0
    """Seconds to wait after a new instance of the stage first reports before deploying again."""
    startup_timeout: float = 60.0
    """A deployed instance that has not reported after this long counts as a failed deploy."""
    retry_backoff: float = 1.0
    """First wait after a failed deploy; doubles with each further failure."""
    retry_backoff_max: float = 300.0
    scale_in: bool = False
    stabilisation_window: float = 300.0
    """Scale-in only when every recommendation over this many seconds was below the count."""
    min_instance: int = 1
    tick: float = 0.5
    heartbeat_expiry_factor: float = 3.0
    """An instance silent for this many of its heartbeat intervals has gone."""
    stop_instances_on_exit: bool = False


@dataclass(frozen=True)
class StatisticSettings:
    z_value: float = 1.5
    refresh_rate: float = 1.0
    maximum_seconds: float = 600.0
    min_samples: int = 3


@dataclass(frozen=True)
class LockSettings:
    master_host: str = "localhost"
    master_port: int = 4242
    token: str | None = None
    default_lease: float = 10.0


@dataclass(frozen=True)
class IOSettings:
    refresh_rate_second: float = 60.0
    input_output_ratio_threshold: float = 0.7
    window_seconds: float | None = None
    """Rates are compared over this many seconds; defaults to ``refresh_rate_second``."""
    min_input_rate: float = 0.1
    """Below this many input messages/s a stage is idle: no decision either way."""

    @property
    def window(self) -> float:
        return self.window_seconds if self.window_seconds is not None else self.refresh_rate_second


@dataclass(frozen=True)
class LagSettings:
    lag_threshold: float = 100.0
    """Target lag per instance: instances ≈ ceil(total lag / lag_threshold)."""
    refresh_rate_second: float = 5.0
    allow_beyond_partitions: bool = False
    admin_timeout: float = 10.0


@dataclass(frozen=True)
class MasterSettings:
    consumer_topic: str | None
    consumer_server: str | None
    consumer_group_id: str
    workers: frozenset[Worker]
    deployer: DeployerSettings = field(default_factory=DeployerSettings)
    statistics: StatisticSettings = field(default_factory=StatisticSettings)
    lock: LockSettings = field(default_factory=LockSettings)
    io: IOSettings = field(default_factory=IOSettings)
    lag: LagSettings = field(default_factory=LagSettings)
    lookback_seconds: float | None = None
    control_topic_partitions: int = 1

    @property
    def needs_kafka(self) -> bool:
        return bool(self.workers - {Worker.DISTRIBUTED_LOCK_WORKER})

    @property
    def lookback(self) -> float:
        """Seconds of the control topic a starting master re-reads to rebuild its state."""
        if self.lookback_seconds is not None:
            return self.lookback_seconds
        need = [60.0, self.deployer.startup_timeout, self.io.window + 10]
        if Worker.STATISTIC_WORKER in self.workers:
            need.append(self.statistics.maximum_seconds)
        return max(need)


_SECTIONS: dict[str, type[Any]] = {
    "auto_deployer_config": DeployerSettings,
    "statistic_worker_config": StatisticSettings,
    "distributed_worker_config": LockSettings,
    "input_output_worker_config": IOSettings,
    "lag_worker_config": LagSettings,
}
_SECTION_ATTR = {
    "auto_deployer_config": "deployer",
    "statistic_worker_config": "statistics",
    "distributed_worker_config": "lock",
    "input_output_worker_config": "io",
    "lag_worker_config": "lag",
}
_TOP = {
    "consumer_topic",
    "consumer_server",
    "consumer_group_id",
    "included_worker",
    "lookback_seconds",
    "control_topic_partitions",
    *_SECTIONS,
}
_SIGNALS = {Worker.INPUT_OUTPUT_WORKER, Worker.LAG_WORKER}

# (minimum, strictly greater?) for numeric settings; None means "no bound".
_POSITIVE = {
    "refresh_rate",
    "maximum_seconds",
    "refresh_rate_second",
    "z_value",
    "input_output_ratio_threshold",
    "lag_threshold",
    "tick",
    "startup_timeout",
    "retry_backoff",
    "retry_backoff_max",
    "default_lease",
    "admin_timeout",
    "heartbeat_expiry_factor",
    "window_seconds",
    "stabilisation_window",
    "lookback_seconds",
}


def _unknown(keys: Iterable[str], allowed: Iterable[str], where: str) -> list[str]:
    allowed = list(allowed)
    out = []
    for key in keys:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            out.append(
                f"unknown key {where}{key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )
    return out


def _check_value(name: str, value: Any, default: Any, where: str) -> str | None:
    kind = type(default) if default is not None else float
    if name == "token":
        ok = value is None or isinstance(value, str)
        return None if ok else f"{where}{name} must be a string"
    if kind is bool:
        return None if isinstance(value, bool) else f"{where}{name} must be true or false"
    if kind is str:
        return None if isinstance(value, str) and value else f"{where}{name} must be a string"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{where}{name} must be a number, got {value!r}"
    if kind is int and not isinstance(value, int):
        return f"{where}{name} must be an integer, got {value!r}"
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float: a YAML value of 400 digits
        finite = False
    if not finite:
        return f"{where}{name} must be finite"
    if name in _POSITIVE and value <= 0:
        return f"{where}{name} must be greater than 0, got {value}"
    if value < 0:
        return f"{where}{name} must not be negative, got {value}"
    if name == "master_port" and value > 65535:
        return f"{where}{name} must be a TCP port (0-65535)"
    if name in ("min_instance", "min_samples") and value < 1:
        return f"{where}{name} must be at least 1"
    return None


def _section(conf: Mapping[str, Any], key: str, problems: list[str]) -> Any:
    cls = _SECTIONS[key]
    raw = conf.get(key)
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        problems.append(f"{key} must be a mapping")
        return cls()
    defaults = {f.name: f.default for f in fields(cls)}
    problems.extend(_unknown(raw, defaults, f"{key}."))
    values = {}
    for name, value in raw.items():
        if name not in defaults:
            continue
        err = _check_value(name, value, defaults[name], f"{key}.")
        if err:
            problems.append(err)
        else:
            values[name] = float(value) if isinstance(defaults[name], float) else value
    return cls(**values)


def _workers(raw: Any, problems: list[str]) -> frozenset[Worker]:
    if raw is None:
        # The seed's master runs every worker; the lag signal is ours and opt-in.
        return frozenset(set(Worker) - {Worker.LAG_WORKER})
    if isinstance(raw, str | bytes) or not isinstance(raw, Iterable):
        problems.append("included_worker must be a list of Worker names")
        return frozenset()
    out: set[Worker] = set()
    for item in raw:
        name = item.value if isinstance(item, Worker) else str(item).rsplit(".", 1)[-1]
        try:
            out.add(Worker(name))
        except ValueError:
            problems.append(f"unknown worker {item!r}; known: {', '.join(w.value for w in Worker)}")
    return frozenset(out)


def _combination(workers: frozenset[Worker]) -> list[str]:
    problems = []
    if not workers:
        problems.append("included_worker is empty: the master would do nothing")
    if Worker.AUTO_DEPLOYER in workers and not workers & _SIGNALS:
        problems.append(
            "AUTO_DEPLOYER needs a signal that asks for scale-outs: include INPUT_OUTPUT_WORKER "
            "or LAG_WORKER (STATISTIC_WORKER only vetoes scale-outs during spikes)"
        )
    for signal in sorted(workers & _SIGNALS):
        if Worker.AUTO_DEPLOYER not in workers:
            problems.append(
                f"{signal.value} asks AUTO_DEPLOYER for instances; include "
                "AUTO_DEPLOYER too (or remove it)"
            )
    return problems


def validate(conf: Mapping[str, Any]) -> MasterSettings:
    """Check ``conf`` (a :class:`MasterAutoScalerConfig`) and fill in every default."""
    if not isinstance(conf, Mapping):
        raise ConfigError([f"the configuration must be a mapping, not {type(conf).__name__}"])
    problems = _unknown(conf, _TOP, "")
    workers = _workers(conf.get("included_worker"), problems)
    problems.extend(_combination(workers))
    sections = {key: _section(conf, key, problems) for key in _SECTIONS}
    topic, server = conf.get("consumer_topic"), conf.get("consumer_server")
    if workers - {Worker.DISTRIBUTED_LOCK_WORKER}:
        for key, value in (("consumer_topic", topic), ("consumer_server", server)):
            if not isinstance(value, str) or not value:
                users = sorted(w.value for w in workers - {Worker.DISTRIBUTED_LOCK_WORKER})
                problems.append(f"{key} is required by {', '.join(users)}")
    group = conf.get("consumer_group_id", "fogverse-master")
    if not isinstance(group, str) or not group:
        problems.append("consumer_group_id must be a non-empty string")
        group = "fogverse-master"
    lookback = conf.get("lookback_seconds")
    if lookback is not None:
        err = _check_value("lookback_seconds", lookback, 1.0, "")
        if err:
            problems.append(err)
    partitions = conf.get("control_topic_partitions", 1)
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        problems.append("control_topic_partitions must be an integer >= 1")
        partitions = 1
    stats: StatisticSettings = sections["statistic_worker_config"]
    # Samples come a little more than refresh_rate apart (the loop sleeps after each one): a
    # shorter history never holds min_samples of them, and no spike is ever called.
    if stats.maximum_seconds < stats.min_samples * stats.refresh_rate:
        problems.append(
            "statistic_worker_config.maximum_seconds must be at least refresh_rate * "
            f"min_samples ({stats.min_samples * stats.refresh_rate:g}): a shorter history "
            "never holds min_samples samples, so no spike would ever be detected"
        )
    deployer: DeployerSettings = sections["auto_deployer_config"]
    if deployer.retry_backoff_max < deployer.retry_backoff:
        problems.append("auto_deployer_config.retry_backoff_max must be >= retry_backoff")
    if problems:
        raise ConfigError(problems)
    return MasterSettings(
        consumer_topic=topic,
        consumer_server=server,
        consumer_group_id=group,
        workers=workers,
        lookback_seconds=float(lookback) if lookback is not None else None,
        control_topic_partitions=partitions,
        **{_SECTION_ATTR[k]: v for k, v in sections.items()},
    )
