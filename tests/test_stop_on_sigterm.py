"""A test run stopped with SIGTERM tears down what its tests started (tests/stop_on_sigterm.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from polling import wait_until

TESTS = Path(__file__).resolve().parent

# A test that starts a long-running child and stops it in ``finally``, as the suite's node and
# worker tests do; it writes the child's pid once it is running, then waits to be stopped.
_INNER = """
import subprocess, sys, time
from pathlib import Path

def test_holds_a_child():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        Path({pidfile!r}).write_text(str(child.pid))
        time.sleep(600)
    finally:
        child.kill()
        child.wait()
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _run_and_terminate(tmp_path: Path, *plugin: str) -> tuple[subprocess.Popen[bytes], int]:
    pidfile = tmp_path / "child.pid"
    (tmp_path / "test_inner.py").write_text(_INNER.format(pidfile=str(pidfile)))
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    runner = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, "test_inner.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: pidfile.exists() and pidfile.read_text(), 60, "the inner test's child")
        runner.send_signal(signal.SIGTERM)
        runner.wait(30)
    finally:
        runner.kill()
        runner.wait()
    return runner, int(pidfile.read_text())


@pytest.mark.timeout(120)
def test_sigterm_runs_the_tests_teardown(tmp_path: Path) -> None:
    runner, child = _run_and_terminate(tmp_path, "-p", "stop_on_sigterm")
    wait_until(lambda: _gone(child), 10, f"child {child} to be stopped by the test's finally")
    # pytest's exit status for an interrupted session, not death by the signal.
    assert runner.returncode == pytest.ExitCode.INTERRUPTED


@pytest.mark.timeout(120)
def test_without_the_plugin_the_child_is_orphaned(tmp_path: Path) -> None:
    # The failure the plugin exists for: plain pytest dies of SIGTERM and its test's child lives.
    runner, child = _run_and_terminate(tmp_path)
    try:
        assert runner.returncode == -signal.SIGTERM
        assert not _gone(child)
    finally:
        if not _gone(child):
            os.kill(child, signal.SIGKILL)
