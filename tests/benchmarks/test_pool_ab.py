"""The stand-alone pool A/B study measures each checkout with its own code and reports both.
Never the speed: figures from a shared CI machine mean nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_the_study_reports_both_checkouts(tmp_path: Path) -> None:
    # A copy of the package: the study refuses to report a side that ran the other's pool.
    other = tmp_path / "other"
    shutil.copytree(ROOT / "fogverse", other / "fogverse")
    args = ["--rounds", "1", "--tasks", "300", "--samples", "2", "-m", "4"]
    done = subprocess.run(
        [sys.executable, "benchmarks/pool_ab.py", str(other), str(ROOT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = [line for line in done.stdout.splitlines() if "samples: median" in line]
    assert [line.split()[0] for line in summary] == ["old", "new"]
    assert f"({other})" in summary[0] and f"({ROOT})" in summary[1]
    assert all("p=2 m=4, 2 samples" in line and "parent" in line for line in summary)
