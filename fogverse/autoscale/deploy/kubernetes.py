"""KUBERNETES provider: one more replica of a Deployment, or one more Pod.

Uses the official ``kubernetes`` client (``pip install kubernetes``), imported when the provider
is built. Two modes per service:

- ``scale``: read the Deployment's ``scale`` subresource and patch ``spec.replicas`` to one more;
  the handle's ``stop()`` patches it to one fewer (Kubernetes chooses which pod goes). Instances
  report under their pod's own id, so the master counts them from heartbeats, not by name.
- ``pod``: create a Pod from the service's manifest, named after the instance and given the
  same environment a LOCAL instance gets; the handle's ``stop()`` deletes that Pod.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fogverse.autoscale.deploy import DeployConfig
from fogverse.autoscale.observer import INSTANCE_ID_ENV, SERVERS_ENV, TOPIC_ENV

__all__ = ["KubernetesDeployer", "KubernetesService", "PodHandle", "ScaleHandle"]

logger = logging.getLogger(__name__)

_DNS_BAD = re.compile(r"[^a-z0-9-]")


@dataclass
class KubernetesService:
    mode: Literal["scale", "pod"] = "scale"
    deployment: str | None = None
    """``scale`` mode: the Deployment to scale (defaults to the service name)."""
    pod: Mapping[str, Any] = field(default_factory=dict)
    """``pod`` mode: a Pod manifest (``metadata``/``spec``); names and env are filled in."""
    namespace: str | None = None

    @classmethod
    def coerce(cls, value: KubernetesService | Mapping[str, Any]) -> KubernetesService:
        return value if isinstance(value, KubernetesService) else cls(**value)

    def __post_init__(self) -> None:
        if self.mode not in ("scale", "pod"):
            raise ValueError(f"KubernetesService mode must be 'scale' or 'pod', not {self.mode!r}")
        if self.mode == "pod" and not self.pod.get("spec", {}).get("containers"):
            raise ValueError("a 'pod' service needs a manifest with spec.containers")


def _replicas(scale: Any) -> int:
    spec = getattr(scale, "spec", None)
    return int(getattr(spec, "replicas", 0) or 0)


class ScaleHandle:
    """One replica added to a Deployment; ``stop()`` removes one."""

    anonymous = True
    """The replica's pod reports under its own name, not ``instance_id``: the deployer counts
    it from the stage's heartbeats (the first new instance id settles the deploy)."""

    def __init__(self, apps: Any, name: str, namespace: str, instance_id: str) -> None:
        self.apps, self.name, self.namespace = apps, name, namespace
        self.instance_id = instance_id

    def stop(self) -> None:
        current = _replicas(self.apps.read_namespaced_deployment_scale(self.name, self.namespace))
        self.apps.patch_namespaced_deployment_scale(
            self.name, self.namespace, {"spec": {"replicas": max(0, current - 1)}}
        )

    def __repr__(self) -> str:
        return f"<ScaleHandle deployment/{self.name} in {self.namespace}>"


class PodHandle:
    def __init__(self, core: Any, name: str, namespace: str, instance_id: str) -> None:
        self.core, self.name, self.namespace = core, name, namespace
        self.instance_id = instance_id

    def stop(self) -> None:
        self.core.delete_namespaced_pod(self.name, self.namespace)

    def __repr__(self) -> str:
        return f"<PodHandle pod/{self.name} in {self.namespace}>"


class KubernetesDeployer:
    """``KubernetesDeployer({"slow": {"mode": "scale", "deployment": "slow-stage"}})``.

    Credentials come from ``api_client`` if given, else the in-cluster service account when
    running in a pod, else ``kubeconfig`` (default ``~/.kube/config``); ``host`` overrides the
    API server address of a configuration built here.
    """

    def __init__(
        self,
        services: Mapping[str, KubernetesService | Mapping[str, Any]],
        *,
        namespace: str = "default",
        api_client: Any = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        host: str | None = None,
    ) -> None:
        try:
            from kubernetes import client, config
        except ImportError as exc:
            raise ImportError(
                "the KUBERNETES provider needs the official client: pip install kubernetes"
            ) from exc
        self.services = {name: KubernetesService.coerce(s) for name, s in services.items()}
        self.namespace = namespace
        if api_client is None:
            configuration = client.Configuration()
            if host is None:
                try:
                    config.load_incluster_config(client_configuration=configuration)
                except config.ConfigException:
                    config.load_kube_config(
                        config_file=kubeconfig, context=context, client_configuration=configuration
                    )
            else:
                configuration.host = host
            api_client = client.ApiClient(configuration)
        self.api_client = api_client
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)

    def __call__(self, log: logging.Logger, config: DeployConfig) -> ScaleHandle | PodHandle | None:
        name = config.get("service_name", "")
        service = self.services.get(name)
        if service is None:
            log.error(
                "KUBERNETES: no service %r configured (known: %s)",
                name,
                ", ".join(sorted(self.services)) or "none",
            )
            return None
        namespace = service.namespace or self.namespace
        instance_id = config.get("instance_id", name)
        if service.mode == "scale":
            deployment = service.deployment or name
            current = _replicas(self.apps.read_namespaced_deployment_scale(deployment, namespace))
            self.apps.patch_namespaced_deployment_scale(
                deployment, namespace, {"spec": {"replicas": current + 1}}
            )
            log.info("KUBERNETES: deployment/%s scaled %d -> %d", deployment, current, current + 1)
            return ScaleHandle(self.apps, deployment, namespace, instance_id)
        manifest = self._pod_manifest(service, name, instance_id, config)
        pod_name = manifest["metadata"]["name"]
        # The client takes a manifest dict as well as a V1Pod (its stubs name only the latter).
        self.core.create_namespaced_pod(namespace, manifest)  # type: ignore[arg-type]
        log.info("KUBERNETES: created pod/%s (%s)", pod_name, instance_id)
        return PodHandle(self.core, pod_name, namespace, instance_id)

    @staticmethod
    def _pod_manifest(
        service: KubernetesService, name: str, instance_id: str, config: DeployConfig
    ) -> dict[str, Any]:
        manifest = copy.deepcopy(dict(service.pod))
        manifest.setdefault("apiVersion", "v1")
        manifest.setdefault("kind", "Pod")
        meta = manifest.setdefault("metadata", {})
        meta["name"] = _DNS_BAD.sub("-", instance_id.lower()).strip("-")[:63] or "fogverse"
        meta.setdefault("labels", {}).update(
            {"fogverse.instance": meta["name"], "fogverse.service": _DNS_BAD.sub("-", name.lower())}
        )
        stage_env = {
            "CONSUMER_TOPIC": config.get("source_topic"),
            "PRODUCER_TOPIC": config.get("target_topic"),
            "GROUP_ID": config.get("group_id"),
            TOPIC_ENV: config.get("control_topic"),
            SERVERS_ENV: config.get("control_servers"),
            INSTANCE_ID_ENV: instance_id,
        }
        for container in manifest["spec"]["containers"]:
            # The instance id is always ours; the service's own env wins for the rest.
            env = [e for e in container.get("env", []) if e.get("name") != INSTANCE_ID_ENV]
            present = {e.get("name") for e in env}
            env.extend(
                {"name": k, "value": v} for k, v in stage_env.items() if v and k not in present
            )
            container["env"] = env
        return manifest
