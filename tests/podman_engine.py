"""A real container engine for the tests: podman's Docker-compatible API and the node image.

``node_image`` builds the image with deploy/image/build.py (what ``make image`` runs: podman
from Debian, a base built from Debian's packages, once per content; a build already done is a
tag lookup). ``engine`` starts ``podman system service`` on a socket of its own and yields a
``docker.DockerClient`` for it; every container the tests start carries the session's label,
and the fixture removes them all and stops the service, pass or fail. Test modules import
both fixtures (``from podman_engine import engine, node_image``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "deploy" / "image" / "build.py"
CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
LABEL = "fogverse.test-session"
SESSION = uuid.uuid4().hex[:12]
# The first build on a fresh machine (base and image) took about 8 minutes on a loaded one.
BUILD_TIMEOUT = 1500.0


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def build_image() -> str:
    """The node image's name, built first if needed (waits for a build already under way)."""
    proc = subprocess.run(
        [sys.executable, str(BUILD)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        pytest.fail(f"building the node image failed:\n{proc.stderr[-6000:]}")
    return proc.stdout.strip().splitlines()[-1]


class PodmanService:
    """``podman system service`` on a private socket, and a docker SDK client for it."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="fogverse-podman-"))
        self.socket = self.directory / "podman.sock"
        self.url = f"unix://{self.socket}"
        self.log = self.directory / "service.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.client: Any = None

    def start(self, timeout: float = 60.0) -> Any:
        import docker

        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["podman", "system", "service", "--time=0", self.url],
                env=podman_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"podman system service exited:\n{self.log.read_text()}")
            if self.socket.exists():
                client = docker.DockerClient(base_url=self.url, version="auto", timeout=120)
                with contextlib.suppress(Exception):
                    if client.ping():
                        self.client = client
                        return client
                client.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"podman system service did not answer within {timeout} s")
            time.sleep(0.1)

    def remove_containers(self) -> list[str]:
        """Remove (force: SIGKILL first) every container of this test session."""
        out = subprocess.run(
            ["podman", "ps", "--all", "--quiet", "--filter", f"label={LABEL}={SESSION}"],
            env=podman_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        ids = out.stdout.split()
        if ids:
            subprocess.run(
                ["podman", "rm", "--force", "--time", "0", *ids],
                env=podman_env(),
                capture_output=True,
                check=False,
            )
        return ids

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.remove_containers()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def session_containers(client: Any) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{LABEL}={SESSION}"})


@pytest.fixture(scope="session")
def node_image() -> str:
    return build_image()


@pytest.fixture(scope="session")
def engine(node_image: str) -> Iterator[Any]:
    """A docker SDK client of a podman service of this session's own."""
    service = PodmanService()
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
