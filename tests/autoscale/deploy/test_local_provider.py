"""LOCAL provider: real subprocesses with the stage's environment; handles that stop them."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from polling import wait_until

from fogverse.autoscale.deploy import DeployConfig, build_deploy_scripts
from fogverse.autoscale.deploy.local import LocalDeployer, LocalService

logger = logging.getLogger(__name__)

# Writes its environment, then waits; exits 0 on SIGTERM unless told to ignore it.
CHILD = """
import json, os, signal, sys, time
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
keys = [k for k in os.environ if k.startswith(("FOGVERSE_", "CONSUMER_", "PRODUCER_", "GROUP_"))]
with open(sys.argv[1], "w") as f:
    json.dump({k: os.environ[k] for k in keys}, f)
while True:
    time.sleep(0.05)
"""


def _config(**extra: Any) -> DeployConfig:
    return {
        "provider": "LOCAL",
        "service_name": "child",
        "max_instance": 2,
        "extra_configs": {"command": ["rm", "-rf", "/"]},
        "instance_id": "child-1",
        "source_topic": "in",
        "target_topic": "out",
        "group_id": "g",
        "control_topic": "ctl",
        "control_servers": "127.0.0.1:1",
        **extra,
    }


def _wait_file(path: Path, timeout: float = 20.0) -> dict[str, str]:
    """The environment the child wrote to ``path`` once it started."""
    wait_until(
        lambda: path.exists() and path.stat().st_size > 0,
        timeout,
        "the child to start",
        interval=0.02,
    )
    return json.loads(path.read_text())


@pytest.fixture
def deployer(tmp_path: Path) -> Any:
    made: list[LocalDeployer] = []

    def make(**service: Any) -> LocalDeployer:
        d = LocalDeployer(
            {
                "child": LocalService(
                    [sys.executable, "-c", CHILD, str(tmp_path / "env.json")], **service
                )
            }
        )
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop_all(timeout=5)
        assert not [h for h in d.handles if h.alive()]


def test_starts_the_configured_command_with_the_stage_environment(
    deployer: Any, tmp_path: Path
) -> None:
    d = deployer(env={"GROUP_ID": "pinned", "EXTRA": "1"}, stop_timeout=10)
    handle = d(logger, _config())
    env = _wait_file(tmp_path / "env.json")
    assert env["FOGVERSE_INSTANCE_ID"] == "child-1"
    assert env["CONSUMER_TOPIC"] == "in" and env["PRODUCER_TOPIC"] == "out"
    assert env["GROUP_ID"] == "pinned", "the service's own setting wins"
    assert env["FOGVERSE_OBSERVER_TOPIC"] == "ctl"
    assert env["FOGVERSE_OBSERVER_SERVERS"] == "127.0.0.1:1"
    assert handle.alive()
    assert handle.stop() == 0, "SIGTERM: the child exited cleanly"
    assert not handle.alive()


def test_a_child_that_ignores_sigterm_is_killed_after_stop_timeout(
    deployer: Any, tmp_path: Path
) -> None:
    d = deployer(env={"IGNORE_TERM": "1"}, stop_timeout=0.5)
    handle = d(logger, _config())
    _wait_file(tmp_path / "env.json")
    start = time.monotonic()
    assert handle.stop() == -9
    assert time.monotonic() - start < 5


def test_unknown_service_or_unstartable_command_is_a_failed_deploy(tmp_path: Path) -> None:
    d = LocalDeployer({"child": LocalService(["/nonexistent/binary"])})
    assert d(logger, _config()) is None
    assert d(logger, _config(service_name="rm")) is None
    assert d.handles == []


def test_output_goes_to_the_configured_file(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    d = LocalDeployer(
        {
            "child": LocalService(
                [sys.executable, "-c", "print('hello from child')"], output=str(log)
            )
        }
    )
    handle = d(logger, _config())
    handle.process.wait(20)
    handle.stop()
    assert "hello from child" in log.read_text()


def test_commands_are_argument_lists_and_come_from_the_master_yaml() -> None:
    with pytest.raises(ValueError, match="list of arguments"):
        LocalService("python -m fogverse run x.py:Node")  # type: ignore[arg-type]
    scripts = build_deploy_scripts(
        {
            "LOCAL": {
                "type": "local",
                "services": {"slow": {"command": ["python", "-m", "fogverse"], "env": {"A": 1}}},
            }
        }
    )
    fn = scripts.get_deploy_function("LOCAL")
    assert isinstance(fn, LocalDeployer) and fn.services["slow"].env == {"A": "1"}
    with pytest.raises(ValueError, match="'type' must be"):
        build_deploy_scripts({"X": {"type": "ssh"}})
    scripts = build_deploy_scripts({"MINE": {"function": "json:dumps"}})
    assert scripts.get_deploy_function("MINE") is json.dumps


# A deploy script: starts the real node as a child of its own and waits for it (no exec, no
# signal forwarding), as a shell wrapper does. The grandchild writes its pid, then waits.
WRAPPER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import os, sys, time\\n"
                  "open(sys.argv[1], 'w').write(str(os.getpid()))\\n"
                  "while True: time.sleep(0.05)", sys.argv[1]])
while True:
    time.sleep(0.05)
"""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.timeout(60)
def test_stop_ends_the_children_of_an_instance_in_its_own_session(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    d = LocalDeployer(
        {"child": LocalService([sys.executable, "-c", WRAPPER, str(pid_file)], stop_timeout=5)},
        new_session=True,
    )
    handle = d(logger, _config())
    assert handle is not None
    wait_until(lambda: pid_file.exists() and pid_file.read_text() != "", 20, "the grandchild")
    grandchild = int(pid_file.read_text())
    try:
        handle.stop()
        wait_until(lambda: not _running(grandchild), 10, "the grandchild to end")
    finally:
        if _running(grandchild):
            os.kill(grandchild, signal.SIGKILL)
