"""KUBERNETES provider through the official client, against a recording HTTP server standing
in for the API server (these machines have no cluster)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from recording_server import RecordingServer, Request

from fogverse.autoscale.deploy import DeployConfig, build_deploy_scripts, stop_handle

pytest.importorskip("kubernetes")

from fogverse.autoscale.deploy.kubernetes import KubernetesDeployer

logger = logging.getLogger(__name__)
SCALE = r"/apis/apps/v1/namespaces/(?P<ns>[\w-]+)/deployments/(?P<name>[\w-]+)/scale"


@pytest.fixture
def cluster() -> Any:
    replicas = {"slow-stage": 2}
    pods: dict[str, Any] = {}

    def scale_body(ns: str, name: str) -> dict[str, Any]:
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": replicas[name]},
            "status": {"replicas": replicas[name]},
        }

    def read_scale(req: Request, m: Any) -> tuple[int, Any]:
        if m["name"] not in replicas:
            return 404, {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "NotFound",
                "code": 404,
                "message": "not found",
            }
        return 200, scale_body(m["ns"], m["name"])

    def patch_scale(req: Request, m: Any) -> tuple[int, Any]:
        replicas[m["name"]] = req.json()["spec"]["replicas"]
        return 200, scale_body(m["ns"], m["name"])

    def create_pod(req: Request, m: Any) -> tuple[int, Any]:
        pod = req.json()
        pods[pod["metadata"]["name"]] = pod
        return 201, {**pod, "status": {"phase": "Pending"}}

    def delete_pod(req: Request, m: Any) -> tuple[int, Any]:
        pod = pods.pop(m["name"])
        return 200, pod

    with RecordingServer() as server:
        server.route("GET", SCALE, read_scale)
        server.route("PATCH", SCALE, patch_scale)
        server.route("POST", r"/api/v1/namespaces/(?P<ns>[\w-]+)/pods", create_pod)
        server.route(
            "DELETE", r"/api/v1/namespaces/(?P<ns>[\w-]+)/pods/(?P<name>[\w.-]+)", delete_pod
        )
        server.replicas = replicas  # type: ignore[attr-defined]
        server.pods = pods  # type: ignore[attr-defined]
        yield server


def _config(**extra: Any) -> DeployConfig:
    return {
        "provider": "K8S",
        "service_name": "slow",
        "max_instance": 5,
        "extra_configs": {},
        "instance_id": "Slow_ABC.123",
        "source_topic": "frames",
        "target_topic": "boxes",
        "group_id": "detector",
        "control_topic": "ctl",
        "control_servers": "kafka:9092",
        **extra,
    }


def test_scale_mode_patches_the_deployments_scale_subresource(cluster: RecordingServer) -> None:
    deployer = KubernetesDeployer(
        {"slow": {"mode": "scale", "deployment": "slow-stage"}},
        namespace="vision",
        host=cluster.url,
    )
    handle = deployer(logger, _config())
    assert handle is not None and handle.anonymous, "its pod does not report as instance_id"
    path = "/apis/apps/v1/namespaces/vision/deployments/slow-stage/scale"
    assert cluster.calls() == [("GET", path), ("PATCH", path)]
    patch = cluster.requests[1]
    assert patch.json() == {"spec": {"replicas": 3}}
    assert "patch" in patch.headers["content-type"]
    assert cluster.replicas["slow-stage"] == 3  # type: ignore[attr-defined]
    asyncio.run(stop_handle(handle))
    assert cluster.requests[-1].json() == {"spec": {"replicas": 2}}
    assert cluster.replicas["slow-stage"] == 2  # type: ignore[attr-defined]


def test_pod_mode_creates_a_named_pod_with_the_instance_env_and_deletes_it(
    cluster: RecordingServer,
) -> None:
    manifest = {
        "metadata": {"labels": {"app": "slow"}},
        "spec": {
            "containers": [
                {
                    "name": "stage",
                    "image": "fogverse/slow:1",
                    "env": [
                        {"name": "GROUP_ID", "value": "pinned"},
                        {"name": "FOGVERSE_INSTANCE_ID", "value": "forged"},
                    ],
                }
            ]
        },
    }
    deployer = KubernetesDeployer({"slow": {"mode": "pod", "pod": manifest}}, host=cluster.url)
    handle = deployer(logger, _config())
    create = cluster.requests[0]
    assert (create.method, create.path) == ("POST", "/api/v1/namespaces/default/pods")
    pod = create.json()
    assert pod["kind"] == "Pod" and pod["metadata"]["name"] == "slow-abc-123"
    assert pod["metadata"]["labels"]["app"] == "slow"
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["FOGVERSE_INSTANCE_ID"] == "Slow_ABC.123"
    assert env["GROUP_ID"] == "pinned", "the service's own env wins"
    assert env["CONSUMER_TOPIC"] == "frames" and env["FOGVERSE_OBSERVER_TOPIC"] == "ctl"
    assert manifest["spec"]["containers"][0]["env"][1]["value"] == "forged", "template untouched"
    asyncio.run(stop_handle(handle))
    assert cluster.calls()[-1] == ("DELETE", "/api/v1/namespaces/default/pods/slow-abc-123")
    assert not cluster.pods  # type: ignore[attr-defined]


def test_api_errors_propagate_so_the_master_backs_off(cluster: RecordingServer) -> None:
    deployer = KubernetesDeployer({"slow": {"deployment": "missing"}}, host=cluster.url)
    with pytest.raises(Exception, match=r"404|Not ?Found"):
        deployer(logger, _config())


def test_built_from_master_yaml_settings(cluster: RecordingServer) -> None:
    scripts = build_deploy_scripts(
        {
            "K8S": {
                "type": "kubernetes",
                "host": cluster.url,
                "namespace": "vision",
                "services": {"slow": {"deployment": "slow-stage"}},
            }
        }
    )
    assert scripts.get_deploy_function("K8S")(logger, _config()) is not None
    with pytest.raises(ValueError, match=r"spec\.containers"):
        KubernetesDeployer({"bad": {"mode": "pod", "pod": {}}}, host=cluster.url)
