"""The stand-alone profiling-overhead study runs on the real broker and reports each variant.
Never the speed: figures from a shared CI machine mean nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_the_study_reports_every_variant_against_off(kafka_bootstrap: str) -> None:
    env = {**os.environ, "FOGVERSE_BOOTSTRAP": kafka_bootstrap}
    args = ["--reps", "1", "--messages", "2000", "--sample", "16", "--sample", "1"]
    done = subprocess.run(
        [sys.executable, "benchmarks/profiling_overhead.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("node[") and "2000 x 1 KiB, 1 pairs" in lines[0]
    names = [line.split(":")[0].strip() for line in lines[1:]]
    assert names == ["off", "sample 16", "sample 1"], done.stdout
    assert all("paired median" in line and "us/msg" in line for line in lines[1:])
