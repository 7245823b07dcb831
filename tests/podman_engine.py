"""A real container engine for the tests: podman's Docker-compatible API and the node image.

``node_image`` builds the image with deploy/image/build.py (what ``make image`` runs: podman
from Debian, a base built from Debian's packages, once per content; a build already done is a
tag lookup). ``engine`` starts ``podman system service`` (deploy/podman/podman_service.py) on
a socket of its own and yields a ``docker.DockerClient`` for it; every container the tests
start carries the session's label (``session_label``), and the fixtures remove them all and
stop the service, pass or fail. Test modules import the fixtures they use
(``from podman_engine import engine, node_image, session_label``).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "deploy" / "image" / "build.py"
sys.path.insert(0, str(ROOT / "deploy" / "podman"))

from podman_service import PodmanService  # noqa: E402

LABEL = "fogverse.test-session"
SESSION = uuid.uuid4().hex[:12]
# The first build on a fresh machine (base and image) took about 8 minutes on a loaded one.
BUILD_TIMEOUT = 1500.0


def build_image(*extra: str) -> list[str]:
    """The images' names (node, then broker with ``--broker``), built first if needed; waits
    for a build already under way."""
    proc = subprocess.run(
        [sys.executable, str(BUILD), *extra],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        pytest.fail(f"building the image failed:\n{proc.stderr[-6000:]}")
    return proc.stdout.split()


def session_containers(client: Any) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{LABEL}={SESSION}"})


@pytest.fixture(scope="session")
def node_image() -> str:
    return build_image()[0]


@pytest.fixture(scope="session")
def engine(node_image: str) -> Iterator[Any]:
    """A docker SDK client of a podman service of this session's own."""
    service = PodmanService((LABEL, SESSION))
    try:
        yield service.start()
    finally:
        service.stop()


@pytest.fixture
def session_label(engine: Any) -> Iterator[dict[str, str]]:
    """Labels for a test's containers; all of them are gone when the test ends."""
    yield {LABEL: SESSION}
    for container in session_containers(engine):
        with contextlib.suppress(Exception):
            container.remove(force=True)
    assert not session_containers(engine)
