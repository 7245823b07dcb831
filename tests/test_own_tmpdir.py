"""What a SIGKILLed process leaves in the temporary directory is gone when the run ends
(tests/own_tmpdir.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# A process that starts a forkserver (multiprocessing then makes its pymp-* directory), says
# where that directory is, and waits to be SIGKILLed, as the fault tests do to nodes.
_CHILD = """
import multiprocessing, time
if __name__ == "__main__":
    ctx = multiprocessing.get_context("forkserver")
    p = ctx.Process(target=time.sleep, args=(0,))
    p.start()
    p.join()
    print(multiprocessing.util.get_temp_dir(), flush=True)
    time.sleep(600)
"""

_INNER = """
import subprocess, sys
from pathlib import Path

def test_kills_a_process_with_a_forkserver():
    child = subprocess.Popen([sys.executable, "-c", {child!r}], stdout=subprocess.PIPE, text=True)
    try:
        Path({record!r}).write_text(child.stdout.readline().strip())
    finally:
        child.kill()
        child.wait()
"""


@pytest.fixture
def system_tmp() -> Iterator[Path]:
    # Short, as the system's own: a forkserver's socket path must fit in 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="fv-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run_inner(tmp_path: Path, system_tmp: Path, *plugin: str) -> Path:
    """Where the inner run's child had its pymp-* directory."""
    record = tmp_path / "pymp-dir"
    (tmp_path / "test_inner.py").write_text(_INNER.format(child=_CHILD, record=str(record)))
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, "test_inner.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path, "TMPDIR": str(system_tmp)},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert inner.returncode == 0, inner.stdout + inner.stderr
    return Path(record.read_text())


@pytest.mark.timeout(120)
def test_a_killed_processs_multiprocessing_directory_is_gone_after_the_run(tmp_path, system_tmp):
    pymp = _run_inner(tmp_path, system_tmp, "-p", "own_tmpdir")
    assert pymp.name.startswith("pymp-")
    assert pymp.parent.name.startswith("fogverse-suite-")
    assert pymp.parent.parent == system_tmp
    assert not pymp.parent.exists()
    assert list(system_tmp.iterdir()) == []


@pytest.mark.timeout(120)
def test_without_the_plugin_the_directory_outlives_the_run(tmp_path, system_tmp):
    # The control: what the plugin is for.
    pymp = _run_inner(tmp_path, system_tmp)
    assert pymp.parent == system_tmp
    assert pymp.is_dir()
