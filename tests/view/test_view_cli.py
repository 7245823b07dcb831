"""``fogverse view`` as a user runs it: it prints the page's address, serves the figures, and
exits 0 on SIGINT; bad arguments exit 2."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest


def test_the_command_serves_until_interrupted(kafka_bootstrap: str, new_topic: Any) -> None:
    frames = new_topic(prefix="view-cli")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fogverse",
            "view",
            "--bootstrap",
            kafka_bootstrap,
            "--frames",
            frames,
            "--stage",
            f"some-group:{frames}",
            "--port",
            "0",
            "--token",
            "auto",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=(\S+)", line)
        assert found, line
        base, token = found.groups()
        with urllib.request.urlopen(f"{base}api/figures?token={token}", timeout=10) as r:
            snap = json.load(r)
        assert frames in snap["topics"] and snap["stages"][0]["group"] == "some-group"
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"{base}api/figures", timeout=10)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_malformed_stage_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fogverse", "view", "--stage", "no-topics-here"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "GROUP:INPUT" in done.stderr
