"""Every node the deploy files start (the Kubernetes stages, the containerised demo) names a
target the node image carries: a script under /app/examples that the image copies from this
tree and that defines the named factory. Pods never start here (no kubelet), so without this
a manifest could name a node that does not exist and no test would see it."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from backends import read_kafka

from fogverse.autoscale.messages import AutoScaleRequest, parse_message

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]
IMAGE_EXAMPLES = "/app/examples/"


def _kubernetes_targets() -> list[tuple[str, str]]:
    found = []
    for doc in yaml.safe_load_all((ROOT / "deploy/kubernetes/30-stages.yaml").read_text()):
        if doc and doc.get("kind") == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                if "command" not in c:  # the image's ENTRYPOINT: `fogverse run ARGS[0]`
                    found.append((f"kubernetes {c['name']}", c["args"][0]))
    return found


def _compose_targets() -> list[tuple[str, str]]:
    spec: dict[str, Any] = yaml.safe_load((ROOT / "deploy/demo/compose.yaml").read_text())
    return [
        (f"compose {name}", service["command"][0])
        for name, service in spec["services"].items()
        if name != "broker" and "entrypoint" not in service
    ]


TARGETS = _kubernetes_targets() + _compose_targets()


def test_the_deploy_files_start_the_demo_stages() -> None:
    names = {where for where, _ in TARGETS}
    assert {"kubernetes camera", "kubernetes detector", "kubernetes sink"} <= names
    assert {"compose camera", "compose detector", "compose sink"} <= names


def test_the_image_carries_the_examples() -> None:
    containerfile = (ROOT / "deploy/image/Containerfile").read_text()
    assert re.search(r"^COPY examples /app/examples$", containerfile, re.M)


@pytest.mark.parametrize(("where", "target"), TARGETS, ids=[w for w, _ in TARGETS])
def test_each_target_is_a_factory_in_the_examples(where: str, target: str) -> None:
    path, _, name = target.partition(":")
    assert path.startswith(IMAGE_EXAMPLES), f"{where}: {target} is not in the image's examples"
    script = ROOT / "examples" / path.removeprefix(IMAGE_EXAMPLES)
    assert script.is_file(), f"{where}: {script} does not exist"
    tree = ast.parse(script.read_text())
    defined = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    assert name in defined, f"{where}: {script.name} defines no {name!r}"


def _manifests() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for path in sorted((ROOT / "deploy/kubernetes").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    }


def _pod_environment(deployment: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A stage's container and the environment its pod would have: the ConfigMap's, then the
    container's own values (the pod's name stands in for the fieldRefs)."""
    docs = _manifests()
    container = docs[("Deployment", deployment)]["spec"]["template"]["spec"]["containers"][0]
    env = dict(docs[("ConfigMap", "fogverse-env")]["data"])
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value", f"{deployment}-7d9f-x2x")
    return container, env


def _expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion of a container's command and args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), value)


def test_the_kubernetes_view_shows_the_stages_topics() -> None:
    container, env = _pod_environment("view")
    env["DEMO_PREFIX"] = "plant-7"  # what a user edits in the ConfigMap
    args = [_expand(a, env) for a in container["args"]]
    assert "--frames=plant-7.frames" in args and "--detections=plant-7.detections" in args


@pytest.mark.timeout(300)
def test_the_kubernetes_detector_asks_the_manifests_master_to_scale_it(
    kafka_bootstrap: str, new_topic: Any
) -> None:
    """The master scales only stages that sent it an auto-scale request: the detector's pod,
    run with its manifest's environment, must send one that the master's master.yaml can
    serve (its provider, a service scaling the detector's Deployment), on the master's topic."""
    docs = _manifests()
    master = yaml.safe_load(docs[("ConfigMap", "fogverse-master")]["data"]["master.yaml"])
    _, env = _pod_environment("detector")
    assert env["FOGVERSE_OBSERVER_TOPIC"] == master["consumer_topic"]
    control, prefix = new_topic(prefix="k8s-ctl"), f"k8s-{uuid.uuid4().hex[:8]}"
    env |= {
        "FOGVERSE_BOOTSTRAP": kafka_bootstrap,
        "FOGVERSE_OBSERVER_SERVERS": kafka_bootstrap,
        "FOGVERSE_OBSERVER_TOPIC": control,
        "DEMO_PREFIX": prefix,
        "PROCESSES": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "fogverse", "run", "examples/video_nodes.py:detector"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        records = asyncio.run(
            read_kafka(
                kafka_bootstrap,
                control,
                1,
                timeout=180,
                done=lambda rs: any(b'"auto_scale_request"' in (r.value or b"") for r in rs),
            )
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
    requests = [
        m for m in (parse_message(r.value) for r in records) if isinstance(m, AutoScaleRequest)
    ]
    assert requests, f"no auto-scale request; the detector said:\n{err.decode()[-3000:]}"
    request = requests[0]
    assert request.stage == (f"{prefix}.frames", f"{prefix}.detections")
    assert request.group_id == f"{prefix}.detect"
    provider = master["deploy_scripts"].get(request.topic_configs.provider)
    assert provider is not None, f"master.yaml has no provider {request.topic_configs.provider}"
    service = provider["services"].get(request.topic_configs.service_name)
    assert service is not None and service["deployment"] == "detector"
