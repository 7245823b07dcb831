"""deploy/kubernetes/ on a real API server (etcd + kube-apiserver, RBAC on, no nodes): every
manifest is accepted, and the master's KUBERNETES provider, signed in as the manifests' own
ServiceAccount with the master.yaml of their ConfigMap, scales the detector's Deployment out
and in, while the server refuses it everything outside its Role.

The API server is built from the Go module proxy on first use (minutes; `make test` starts
that build in the background) and cached under ~/.cache/fogverse. No kubelet runs, so the
Deployments' pods are never created: what is proven is the API side (objects, RBAC, scale).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("kubernetes")

from kube_cluster import KubeCluster, build_apiserver
from kubernetes import client, utils
from kubernetes.client.rest import ApiException

from fogverse.autoscale.cli import load_config
from fogverse.autoscale.config import validate
from fogverse.autoscale.deploy import (
    DeployConfig,
    build_deploy_scripts,
    call_deploy_function,
    stop_handle,
)

# The first run builds the API server (3.5 min on an idle 2-core machine, more beside the suite).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

logger = logging.getLogger(__name__)
MANIFESTS = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"
NS = "fogverse"
STAGES = ("camera", "detector", "sink", "view")


def _documents() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(MANIFESTS.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


@pytest.fixture(scope="module")
def cluster() -> Iterator[KubeCluster]:
    with KubeCluster(build_apiserver()) as running:
        yield running


@pytest.fixture(scope="module")
def applied(cluster: KubeCluster) -> KubeCluster:
    """Every manifest, created in file order by an administrator (what `kubectl apply -f
    deploy/kubernetes/` does on an empty cluster)."""
    admin = cluster.api_client()
    for path in sorted(MANIFESTS.glob("*.yaml")):
        utils.create_from_yaml(admin, str(path))
    return cluster


def _master_token(cluster: KubeCluster) -> str:
    """A token for the fogverse-master ServiceAccount, issued by the server (TokenRequest)."""
    core = client.CoreV1Api(cluster.api_client())
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    reply = core.create_namespaced_service_account_token("fogverse-master", NS, request)
    return str(reply.status.token)


def _master_yaml(cluster: KubeCluster, tmp_path: Path) -> Path:
    """The master.yaml the master's pod mounts, read back from the API server, signed in as the
    master's ServiceAccount: outside a pod, a kubeconfig holding a token of that account
    replaces the in-cluster credentials (the only change made to it)."""
    core = client.CoreV1Api(cluster.api_client())
    conf = yaml.safe_load(
        core.read_namespaced_config_map("fogverse-master", NS).data["master.yaml"]
    )
    kubeconfig = cluster.kubeconfig(_master_token(cluster), tmp_path / "kubeconfig")
    conf["deploy_scripts"]["K8S"]["kubeconfig"] = str(kubeconfig)
    path = tmp_path / "master.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def _replicas(cluster: KubeCluster, name: str) -> int:
    apps = client.AppsV1Api(cluster.api_client())
    return int(apps.read_namespaced_deployment(name, NS).spec.replicas)


def _deploy_config(instance: str) -> DeployConfig:
    return {
        "provider": "K8S",
        "service_name": "detector",
        "max_instance": 4,
        "extra_configs": {},
        "instance_id": instance,
        "source_topic": "frames",
        "target_topic": "detections",
        "group_id": "detector",
        "control_topic": "fogverse-autoscale",
        "control_servers": "kafka.fogverse.svc:9092",
    }


def test_every_manifest_is_accepted_by_the_api_server(applied: KubeCluster) -> None:
    apps = client.AppsV1Api(applied.api_client())
    stored = {d.metadata.name for d in apps.list_namespaced_deployment(NS).items}
    assert stored == {*STAGES, "fogverse-master"}
    documents = _documents()
    kinds = sorted({d["kind"] for d in documents})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Namespace",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    master = apps.read_namespaced_deployment("fogverse-master", NS)
    assert master.spec.template.spec.service_account_name == "fogverse-master"
    assert master.spec.replicas == 1 and master.spec.strategy.type == "Recreate"
    rules = client.RbacAuthorizationV1Api(applied.api_client()).read_namespaced_role(
        "fogverse-master", NS
    )
    assert [(r.resources, r.verbs) for r in rules.rules] == [
        (["deployments/scale"], ["get", "patch"])
    ]


def test_the_masters_configmap_is_a_valid_master_yaml(applied: KubeCluster, tmp_path: Path) -> None:
    conf, scripts = load_config(_master_yaml(applied, tmp_path))
    settings = validate(conf)
    assert scripts.providers == ["K8S"]
    assert settings.deployer.scale_in
    role = client.RbacAuthorizationV1Api(applied.api_client()).read_namespaced_role(
        "fogverse-master", NS
    )
    scaled = {
        s["deployment"]
        for s in yaml.safe_load((tmp_path / "master.yaml").read_text())["deploy_scripts"]["K8S"][
            "services"
        ].values()
    }
    assert scaled == set(role.rules[0].resource_names), "the Role names what the master scales"


def _deploy_scripts_as_master(cluster: KubeCluster, tmp_path: Path) -> Any:
    _, scripts = load_config(_master_yaml(cluster, tmp_path))
    return scripts


def test_the_master_scales_the_detector_out_and_in_as_its_service_account(
    applied: KubeCluster, tmp_path: Path
) -> None:
    deploy = _deploy_scripts_as_master(applied, tmp_path).get_deploy_function("K8S")
    before = _replicas(applied, "detector")

    async def scale() -> list[int]:
        seen = []
        handles = []
        for n in range(2):
            handles.append(await call_deploy_function(deploy, logger, _deploy_config(f"d-{n}")))
            seen.append(_replicas(applied, "detector"))
        for handle in reversed(handles):
            await stop_handle(handle)
            seen.append(_replicas(applied, "detector"))
        return seen

    assert asyncio.run(scale()) == [before + 1, before + 2, before + 1, before]
    assert {_replicas(applied, s) for s in STAGES if s != "detector"} == {1}


def test_reapplying_the_manifests_keeps_the_replicas_the_master_set(
    applied: KubeCluster, tmp_path: Path
) -> None:
    """A user rolls out a change with `kubectl apply --server-side --force-conflicts -f
    deploy/kubernetes/` while the master has scaled the detector out: the pods the master
    started must stay (a manifest that names `replicas` takes them back to its own count)."""
    (manifest,) = [
        d for d in _documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "detector"
    ]
    apps = client.AppsV1Api(applied.api_client())

    def apply() -> None:
        apps.patch_namespaced_deployment(
            "detector",
            NS,
            manifest,
            field_manager="kubectl",
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    apply()
    deploy = _deploy_scripts_as_master(applied, tmp_path).get_deploy_function("K8S")

    async def scale_out() -> None:
        for n in range(2):
            await call_deploy_function(deploy, logger, _deploy_config(f"r-{n}"))

    before = _replicas(applied, "detector")
    asyncio.run(scale_out())
    try:
        apply()
        assert _replicas(applied, "detector") == before + 2
    finally:
        apps.patch_namespaced_deployment_scale("detector", NS, {"spec": {"replicas": before}})


def test_requests_outside_the_masters_role_are_refused_by_the_server(
    applied: KubeCluster, tmp_path: Path
) -> None:
    master = applied.api_client(_master_token(applied))
    apps, core = client.AppsV1Api(master), client.CoreV1Api(master)
    scale = {"spec": {"replicas": 3}}
    refused = {
        "scale another stage": lambda: apps.patch_namespaced_deployment_scale("camera", NS, scale),
        "read another stage's scale": lambda: apps.read_namespaced_deployment_scale("sink", NS),
        "change the detector's spec": lambda: apps.patch_namespaced_deployment(
            "detector", NS, {"spec": {"replicas": 3}}
        ),
        "delete the detector": lambda: apps.delete_namespaced_deployment("detector", NS),
        "create a pod": lambda: core.create_namespaced_pod(
            NS, {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "x", "image": "x"}]}}
        ),
        "read secrets": lambda: core.list_namespaced_secret(NS),
        "scale a deployment elsewhere": lambda: apps.read_namespaced_deployment_scale(
            "detector", "default"
        ),
    }
    for what, call in refused.items():
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403, f"{what}: {err.value.status} {err.value.reason}"
    # The same token may do what its Role allows, and an administrator may do the rest: the
    # refusals above are RBAC's, not missing objects.
    assert apps.read_namespaced_deployment_scale("detector", NS).spec.replicas >= 1
    admin = client.AppsV1Api(applied.api_client())
    assert admin.read_namespaced_deployment_scale("camera", NS).spec.replicas == 1

    # The provider itself, configured for a stage outside the Role, fails with the server's 403.
    section = yaml.safe_load(_master_yaml(applied, tmp_path).read_text())["deploy_scripts"]
    section["K8S"]["services"]["camera"] = {"mode": "scale", "deployment": "camera"}
    deploy = build_deploy_scripts(section).get_deploy_function("K8S")
    with pytest.raises(ApiException) as err:
        deploy(logger, {**_deploy_config("c-1"), "service_name": "camera"})
    assert err.value.status == 403
    assert _replicas(applied, "camera") == 1


def test_a_stopped_cluster_leaves_no_process(tmp_path: Path) -> None:
    import psutil

    with KubeCluster(build_apiserver()) as cluster:
        pids = cluster.pids
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    assert not [p for p in pids if psutil.pid_exists(p)]
