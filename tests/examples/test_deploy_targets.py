"""Every node the deploy files start (the Kubernetes stages, the containerised demo) names a
target the node image carries: a script under /app/examples that the image copies from this
tree and that defines the named factory. Pods never start here (no kubelet), so without this
a manifest could name a node that does not exist and no test would see it."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

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
