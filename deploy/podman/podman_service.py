"""``podman system service`` on a private socket: the Docker-compatible API that the docker
SDK (and FogVerse's DOCKER provider) drives, started and stopped by its user.

Podman runs with this folder's containers.conf (see it for why) unless ``CONTAINERS_CONF``
names another. :meth:`PodmanService.stop` removes every container carrying ``label`` and ends
the service, so neither outlives its user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["CONTAINERS_CONF", "PodmanService", "podman_env"]

CONTAINERS_CONF = Path(__file__).resolve().with_name("containers.conf")


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


class PodmanService:
    """``with PodmanService(("fogverse.demo", run_id)) as client: ...``"""

    def __init__(self, label: tuple[str, str]) -> None:
        self.label = label
        self.directory = Path(tempfile.mkdtemp(prefix="fogverse-podman-"))
        self.socket = self.directory / "podman.sock"
        self.url = f"unix://{self.socket}"
        self.log = self.directory / "service.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.client: Any = None

    def start(self, timeout: float = 60.0) -> Any:
        """Start the service; return a ``docker.DockerClient`` once it answers ``ping``."""
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
                self.stop()
                raise RuntimeError(f"podman system service did not answer within {timeout} s")
            time.sleep(0.1)

    def labelled(self) -> list[str]:
        """Ids of the containers (any state) carrying this service's label."""
        key, value = self.label
        out = subprocess.run(
            ["podman", "ps", "--all", "--quiet", "--filter", f"label={key}={value}"],
            env=podman_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.split()

    def remove_containers(self) -> list[str]:
        """Remove (SIGKILL first if running) every container carrying the label."""
        ids = self.labelled()
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
            self.client = None
        self.remove_containers()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
