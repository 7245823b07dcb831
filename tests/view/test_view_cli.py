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

from fogverse.view import ViewConfig


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


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--max-fps", "-1"], "max_fps must be"),  # turned sampling off: every frame read
        (["--max-fps", "nan"], "max_fps must be"),
        (["--token", ""], "token is empty"),  # served without a token
        (["--port", "70000"], "port must be 0-65535"),  # failed only after Kafka was reached
        (["--stage", "group:,"], "names no input topic"),
    ],
)
def test_bad_settings_are_refused_before_anything_starts(args: list[str], says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fogverse", "view", "--bootstrap", "127.0.0.1:1", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and says in done.stderr, done.stderr[-2000:]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "option",
    [
        {"poll_interval": float("nan")},  # "cannot convert float NaN to integer" in View()
        {"poll_interval": 0.0},
        {"history_seconds": float("inf")},  # OverflowError in View()
        {"max_frame_bytes": 0},
    ],
)
def test_view_config_refuses_what_the_view_cannot_run_with(option: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=f"{next(iter(option))} must be"):
        ViewConfig("127.0.0.1:1", **option)


@pytest.mark.timeout(120)
def test_an_unreachable_broker_is_an_error_message_not_a_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fogverse", "view", "--bootstrap", "127.0.0.1:1", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "fogverse view: " in done.stderr and "Unable to bootstrap" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
