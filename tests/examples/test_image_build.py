"""deploy/image/build.py's housekeeping, without building: podman's answers are stood in for."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BUILD = Path(__file__).parents[2] / "deploy" / "image" / "build.py"


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fogverse_image_build", BUILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(30)
def test_only_the_newest_builds_of_an_image_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every source change builds a new image of about a gigabyte: without this, a developer's
    # store grew by one per `make test` of changed code.
    build = _build_module()
    repo = "localhost/fogverse-node"
    newest_first = [f"{repo}:latest", *(f"{repo}:{i:012x}" for i in range(6)), "<none>:<none>"]
    removed: list[str] = []

    def podman(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if cmd[:2] == ["podman", "images"]:
            assert "--sort" in cmd and f"reference={repo}" in cmd
            return subprocess.CompletedProcess(cmd, 0, "\n".join(newest_first) + "\n", "")
        assert cmd[:2] == ["podman", "rmi"] and len(cmd) == 3
        removed.append(cmd[2])
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(build.subprocess, "run", podman)
    build.drop_stale(repo, f"{repo}:{4:012x}")  # an older one just rebuilt is kept too
    assert removed == [f"{repo}:{3:012x}", f"{repo}:{5:012x}"]
