"""LOCAL provider: a new instance is a subprocess of the master's machine.

Each service names an argument vector (no shell) and extra environment. The child also gets
``FOGVERSE_INSTANCE_ID`` and the master's control topic and servers, so it reports under the id
the master expects, and the stage's ``CONSUMER_TOPIC``/``PRODUCER_TOPIC``/``GROUP_ID`` unless the
service sets them itself. :meth:`LocalHandle.stop` sends SIGTERM (a FogVerse node then drains,
commits and exits 0) and SIGKILL after ``stop_timeout`` seconds.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fogverse.autoscale.deploy import DeployConfig
from fogverse.autoscale.observer import INSTANCE_ID_ENV, SERVERS_ENV, TOPIC_ENV

__all__ = ["LocalDeployer", "LocalHandle", "LocalService"]

logger = logging.getLogger(__name__)


@dataclass
class LocalService:
    """How to start one instance of a service."""

    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    inherit_env: bool = True
    stop_timeout: float = 30.0
    output: str | None = None
    """``None``: the master's stdout/stderr; ``"devnull"``; or a file to append to."""

    @classmethod
    def coerce(cls, value: LocalService | Mapping[str, Any] | Sequence[str]) -> LocalService:
        if isinstance(value, LocalService):
            return value
        if isinstance(value, Mapping):
            return cls(**value)
        return cls(command=list(value))

    def __post_init__(self) -> None:
        if isinstance(self.command, str) or not self.command:
            raise ValueError("a LocalService command is a non-empty list of arguments")
        self.command = [str(c) for c in self.command]
        self.env = {str(k): str(v) for k, v in self.env.items()}


class LocalHandle:
    """A running instance; ``stop()`` ends it and returns its exit status."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        instance_id: str,
        service: str,
        stop_timeout: float,
        output: IO[bytes] | None,
        group: bool = False,
    ) -> None:
        self.process = process
        self.group = group
        """The instance leads a process group of its own (``new_session``): stop() signals
        the whole group, so the children of a deploy script end with it."""
        self.instance_id = instance_id
        self.service = service
        self.stop_timeout = stop_timeout
        self._output = output
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def _signal(self, sig: int) -> bool:
        """Signal the instance (its whole group if it leads one); False: nothing left."""
        if not self.group:
            self.process.send_signal(sig)
            return self.process.returncode is None
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def _group_gone(self) -> bool:
        return not self.group or not self._signal(0)

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM, wait up to ``timeout`` (default ``stop_timeout``) seconds, then SIGKILL
        (to its whole process group with ``new_session``)."""
        timeout = self.stop_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._lock:
            if self.process.poll() is None or not self._group_gone():
                logger.info("stopping instance %s (pid %d)", self.instance_id, self.pid)
                self._signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                    # The script's children may still be draining: the group gets the rest.
                    while not self._group_gone() and time.monotonic() < deadline:
                        time.sleep(0.05)
                except subprocess.TimeoutExpired:
                    pass
                if self.process.poll() is None or not self._group_gone():
                    logger.warning(
                        "instance %s ignored SIGTERM for %.0f s; killing it",
                        self.instance_id,
                        timeout,
                    )
                    self._signal(signal.SIGKILL)
                    self.process.wait()
            if self._output is not None:
                self._output.close()
                self._output = None
            return self.process.returncode

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited {self.process.returncode}"
        return f"<LocalHandle {self.instance_id} pid={self.pid} {state}>"


class LocalDeployer:
    """The LOCAL deploy function: ``LocalDeployer({"slow": LocalService([...])})``.

    ``new_session=True`` puts each instance in its own session, so a Ctrl-C aimed at the master
    does not reach it; by default instances share the master's process group.
    """

    def __init__(
        self,
        services: Mapping[str, LocalService | Mapping[str, Any] | Sequence[str]],
        *,
        new_session: bool = False,
    ) -> None:
        self.services = {name: LocalService.coerce(s) for name, s in services.items()}
        self.new_session = new_session
        self.handles: list[LocalHandle] = []
        self._lock = threading.Lock()

    def __call__(self, log: logging.Logger, config: DeployConfig) -> LocalHandle | None:
        name = config.get("service_name", "")
        service = self.services.get(name)
        if service is None:
            log.error(
                "LOCAL: no service %r configured (known: %s)",
                name,
                ", ".join(sorted(self.services)) or "none",
            )
            return None
        instance_id = config.get("instance_id") or f"{name}-{os.getpid()}"
        env = dict(os.environ) if service.inherit_env else {}
        stage_env = {
            "CONSUMER_TOPIC": config.get("source_topic"),
            "PRODUCER_TOPIC": config.get("target_topic"),
            "GROUP_ID": config.get("group_id"),
            TOPIC_ENV: config.get("control_topic"),
            SERVERS_ENV: config.get("control_servers"),
        }
        env.update({k: v for k, v in stage_env.items() if v and k not in service.env})
        env.update(service.env)
        env[INSTANCE_ID_ENV] = instance_id
        output: IO[bytes] | None = None
        stdout: Any = None
        if service.output == "devnull":
            stdout = subprocess.DEVNULL
        elif service.output:
            output = Path(service.output).open("ab")  # noqa: SIM115 - the handle closes it
            stdout = output
        try:
            process = subprocess.Popen(
                list(service.command),
                env=env,
                cwd=service.cwd,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT if stdout is not None else None,
                start_new_session=self.new_session,
            )
        except OSError as exc:
            if output is not None:
                output.close()
            log.error("LOCAL: cannot start %s: %s", service.command[0], exc)
            return None
        handle = LocalHandle(
            process, instance_id, name, service.stop_timeout, output, group=self.new_session
        )
        with self._lock:
            self.handles = [h for h in self.handles if h.alive()] + [handle]
        log.info("LOCAL: started %s as pid %d (%s)", name, process.pid, instance_id)
        return handle

    def stop_all(self, timeout: float | None = None) -> None:
        """Stop every instance this deployer started (concurrently)."""
        with self._lock:
            handles, self.handles = self.handles, []
        threads = [threading.Thread(target=h.stop, args=(timeout,)) for h in handles]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
