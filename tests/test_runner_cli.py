"""``fogverse run`` as a user runs it: a target it cannot run, or options it would ignore,
end the command with one line naming the problem (status 1; bad option values: 2), before
any node starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
from fogverse import Consumer

class Seq(Consumer):
    def __init__(self):
        super().__init__("in", "memory://runner-cli", "g")

class NotANode:
    pass

def main():
    print("built nothing")

async def hello():
    print("hello ran")
"""


def _fogverse_run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fogverse", "run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "nodes.py"
    path.write_text(SCRIPT)
    return path


def test_a_coroutine_target_runs(script: Path) -> None:
    done = _fogverse_run(script.parent, f"{script}:hello")
    assert (done.returncode, done.stdout) == (0, "hello ran\n"), done.stderr


@pytest.mark.parametrize("option", ["--process-number", "--max-running-task"])
@pytest.mark.parametrize("target", ["Seq", "hello"])
def test_parallel_options_for_a_target_that_is_not_parallel_are_refused(
    script: Path, option: str, target: str
) -> None:
    done = _fogverse_run(script.parent, f"{script}:{target}", option, "4")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"fogverse run: --process-number and --max-running-task are for parallel nodes; "
        f"{script}:{target} is a {'Seq' if target == 'Seq' else 'coroutine'}"
    ]


@pytest.mark.parametrize(("target", "got"), [("NotANode", "NotANode"), ("main", "NoneType")])
def test_a_target_that_gives_no_node_is_named(script: Path, target: str, got: str) -> None:
    done = _fogverse_run(script.parent, f"{script}:{target}")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"fogverse run: {script}:{target} gave {got}, not a node or a coroutine"
    ]


@pytest.mark.parametrize("value", ["0", "-2", "two"])
@pytest.mark.parametrize("option", ["--process-number", "--max-running-task"])
def test_bad_counts_are_usage_errors(script: Path, option: str, value: str) -> None:
    done = _fogverse_run(script.parent, f"{script}:Seq", option, value)
    assert done.returncode == 2
    assert f"argument {option}: " in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_module_is_one_line(tmp_path: Path) -> None:
    done = _fogverse_run(tmp_path, "no_such_pipeline.nodes:Seq")
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["fogverse run: no module named 'no_such_pipeline'"]


def test_a_missing_import_inside_the_target_keeps_its_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken_nodes.py").write_text("import no_such_dependency\n")
    done = _fogverse_run(tmp_path, "broken_nodes:Seq")
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert "No module named 'no_such_dependency'" in done.stderr


def test_a_file_that_is_not_a_python_script_is_named(tmp_path: Path) -> None:
    (tmp_path / "nodes").mkdir()
    done = _fogverse_run(tmp_path, "./nodes:Seq")
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["fogverse run: not a Python script: ./nodes"]


_SLOW_IMPORT = """
import sys, time
print("importing", flush=True)
time.sleep(60)  # a target's heavy imports (cv2, onnxruntime)
"""


@pytest.mark.timeout(60)
def test_sigterm_as_pid_1_while_the_target_imports_ends_the_command(tmp_path: Path) -> None:
    # A container's PID 1 ignores a SIGTERM it has no handler for: a pod stopped during the
    # target's imports waited for its grace period's SIGKILL.
    import os
    import shutil
    import signal

    import psutil
    from polling import wait_until

    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root for a PID namespace")
    (tmp_path / "slow.py").write_text(_SLOW_IMPORT)
    outer = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            sys.executable,
            "-m",
            "fogverse",
            "run",
            "slow:Node",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        assert outer.stdout is not None and outer.stdout.readline() == "importing\n"
        (pid_1,) = psutil.Process(outer.pid).children()
        pid_1.send_signal(signal.SIGTERM)
        wait_until(lambda: outer.poll() is not None, 10, "the command to end on SIGTERM")
        assert outer.returncode == 128 + signal.SIGTERM, outer.stderr.read() if outer.stderr else ""
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait(10)
