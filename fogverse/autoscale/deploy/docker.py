"""DOCKER provider: a new instance is a container started through the Docker Engine API.

Uses the ``docker`` SDK (``pip install docker``), imported when the provider is built. Each
container gets the same environment a LOCAL instance gets (``FOGVERSE_INSTANCE_ID``, the
control topic, the stage's topics) plus the service's own, and ``fogverse.*`` labels.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fogverse.autoscale.deploy import DeployConfig
from fogverse.autoscale.observer import INSTANCE_ID_ENV, SERVERS_ENV, TOPIC_ENV

__all__ = ["DockerDeployer", "DockerHandle", "DockerService"]

logger = logging.getLogger(__name__)

_NAME_OK = re.compile(r"[^a-zA-Z0-9_.-]")
_RUNNING = frozenset({"created", "running", "restarting", "paused"})


@dataclass
class DockerService:
    image: str
    command: str | list[str] | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    network: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    run_options: Mapping[str, Any] = field(default_factory=dict)
    """Further keyword arguments for ``containers.run`` (volumes, cpu limits, ...)."""
    stop_timeout: int = 30
    remove_on_stop: bool = True

    @classmethod
    def coerce(cls, value: DockerService | Mapping[str, Any]) -> DockerService:
        return value if isinstance(value, DockerService) else cls(**value)


class DockerHandle:
    """A started container: ``alive()`` asks the engine, ``stop()`` stops and removes it."""

    def __init__(self, container: Any, service: DockerService, instance_id: str) -> None:
        self.container = container
        self.service = service
        self.instance_id = instance_id
        self.exit_code: int | None = None
        """The container's exit status once :meth:`stop` returned (0: it drained)."""
        self.status_interval = 1.0
        self._alive: bool | None = None
        self._checked_at = 0.0

    @property
    def id(self) -> str:
        return str(self.container.id)

    def alive(self) -> bool:
        """Whether the container still runs. The master asks on every tick, from its event
        loop: the engine is asked at most once per ``status_interval`` seconds."""
        now = time.monotonic()
        if self._alive is None or now - self._checked_at >= self.status_interval:
            try:
                self.container.reload()
                self._alive = self.container.status in _RUNNING
            except Exception as exc:
                if type(exc).__name__ != "NotFound":
                    raise
                self._alive = False  # removed by someone else
            self._checked_at = now
        return self._alive

    def stop(self) -> int | None:
        """SIGTERM (a FogVerse node drains, commits and exits 0), SIGKILL after
        ``stop_timeout`` seconds; remove it unless ``remove_on_stop`` is off. Returns the
        container's exit status."""
        self.container.stop(timeout=self.service.stop_timeout)
        self.exit_code = int(
            self.container.wait(timeout=self.service.stop_timeout + 30)["StatusCode"]
        )
        self._alive = False
        if self.exit_code != 0:
            logger.warning(
                "container %s of %s exited with status %d after SIGTERM (137: killed after %d s)",
                self.id[:12],
                self.instance_id,
                self.exit_code,
                self.service.stop_timeout,
            )
        if self.service.remove_on_stop:
            self.container.remove()
        return self.exit_code

    def __repr__(self) -> str:
        return f"<DockerHandle {self.instance_id} container={self.id[:12]}>"


class DockerDeployer:
    """``DockerDeployer({"slow": {"image": "me/slow-stage:1"}}, base_url=...)``.

    ``base_url`` defaults to the environment (``DOCKER_HOST``), as ``docker.from_env()`` does;
    ``client`` may be a ready ``docker.DockerClient``.
    """

    def __init__(
        self,
        services: Mapping[str, DockerService | Mapping[str, Any]],
        *,
        base_url: str | None = None,
        api_version: str = "auto",
        timeout: int = 60,
        client: Any = None,
    ) -> None:
        try:
            import docker
        except ImportError as exc:
            raise ImportError(
                "the DOCKER provider needs the docker SDK: pip install docker"
            ) from exc
        self.services = {name: DockerService.coerce(s) for name, s in services.items()}
        if client is None:
            if base_url is None:
                client = docker.from_env(version=api_version, timeout=timeout)
            else:
                client = docker.DockerClient(
                    base_url=base_url, version=api_version, timeout=timeout
                )
        self.client = client
        self.handles: list[DockerHandle] = []
        """Every container this deployer started, in order."""

    def __call__(self, log: logging.Logger, config: DeployConfig) -> DockerHandle | None:
        name = config.get("service_name", "")
        service = self.services.get(name)
        if service is None:
            log.error(
                "DOCKER: no service %r configured (known: %s)",
                name,
                ", ".join(sorted(self.services)) or "none",
            )
            return None
        instance_id = config.get("instance_id", name)
        env = {
            k: v
            for k, v in {
                "CONSUMER_TOPIC": config.get("source_topic"),
                "PRODUCER_TOPIC": config.get("target_topic"),
                "GROUP_ID": config.get("group_id"),
                TOPIC_ENV: config.get("control_topic"),
                SERVERS_ENV: config.get("control_servers"),
            }.items()
            if v
        }
        env.update(service.environment)
        env[INSTANCE_ID_ENV] = instance_id
        labels = {
            "fogverse.instance": instance_id,
            "fogverse.service": name,
            "fogverse.source_topic": config.get("source_topic", ""),
            **service.labels,
        }
        container = self.client.containers.run(
            service.image,
            service.command,
            detach=True,
            environment=env,
            labels=labels,
            name=_NAME_OK.sub("-", instance_id),
            network=service.network,
            **dict(service.run_options),
        )
        log.info(
            "DOCKER: started %s as container %s (%s)", name, str(container.id)[:12], instance_id
        )
        handle = DockerHandle(container, service, instance_id)
        self.handles.append(handle)
        return handle
