"""The short soak (``python -m benchmarks.soak --short``): the video pipeline under steady
load for 45 s with a worker kill, a node SIGKILL and a node SIGTERM, on the session's broker.
The long soak is the same command without ``--short`` (see docs/reliability.md)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rel_harness import report_row

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_short_soak_loses_nothing_and_writes_its_record(kafka_bootstrap, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.soak",
            "--short",
            "--bootstrap",
            kafka_bootstrap,
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=220,
    )
    log = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, log[-4000:] + (tmp_path / "node.log").read_text()[-3000:]
    summary = json.loads((tmp_path / "soak.json").read_text())
    settings = summary["settings"]
    expected = settings["rate"] * settings["minutes"] * 60
    assert summary["lost"] == 0
    assert summary["dead_lettered"] == 0, summary["dead_lettered_ids"]
    assert summary["sent"] >= 0.8 * expected, "the source could not keep its rate"
    assert {"worker-kill", "node-kill", "node-term"} <= set(summary["fault_counts"])
    assert summary["node_starts"] >= 3
    rows = list(csv.DictReader((tmp_path / "soak.csv").open()))
    assert len(rows) >= settings["minutes"] * 60 * 0.8 / settings["sample_every"]
    assert int(rows[-1]["pending"]) == 0
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    assert summary["machine"].get("cpus"), summary["machine"]
    faults = ", ".join(f"{k} x{v}" for k, v in sorted(summary["fault_counts"].items()))
    report_row(
        {
            "scenario": "short soak: Producer -> ParallelConsumer -> sink, 20 frames/s, 45 s",
            "sent": summary["sent"],
            "received": summary["received"],
            "lost": summary["lost"],
            "duplicated": summary["duplicates"],
            "dead_lettered": summary["dead_lettered"],
            "notes": f"faults: {faults}; latency p50 {summary['latency_ms']['p50']:.0f} ms",
        }
    )
