"""``fogverse master --config master.yaml``: checked before it runs; clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from fogverse.autoscale.cli import load_config, main
from fogverse.autoscale.deploy.local import LocalDeployer

GOOD = {
    "consumer_topic": "ctl",
    "consumer_server": "127.0.0.1:9092",
    "included_worker": ["AUTO_DEPLOYER", "INPUT_OUTPUT_WORKER", "STATISTIC_WORKER"],
    "deploy_scripts": {
        "LOCAL": {
            "type": "local",
            "services": {"slow": {"command": ["python", "-m", "fogverse", "run", "x.py:Slow"]}},
        }
    },
}


def _write(tmp_path: Path, conf: dict) -> Path:
    path = tmp_path / "master.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def test_load_config_builds_the_deploy_scripts(tmp_path: Path) -> None:
    conf, scripts = load_config(_write(tmp_path, GOOD))
    assert "deploy_scripts" not in conf
    assert isinstance(scripts.get_deploy_function("LOCAL"), LocalDeployer)


def test_check_accepts_a_good_file(tmp_path: Path, capsys) -> None:
    assert main(["--config", str(_write(tmp_path, GOOD)), "--check"]) == 0
    assert "configuration OK" in capsys.readouterr().out


def test_invalid_files_exit_2_with_the_reason(tmp_path: Path, capsys) -> None:
    bad = {**GOOD, "included_worker": ["AUTO_DEPLOYER", "STATISTIC_WORKER"]}
    assert main(["--config", str(_write(tmp_path, bad)), "--check"]) == 2
    assert "needs a signal" in capsys.readouterr().err
    no_scripts = {k: v for k, v in GOOD.items() if k != "deploy_scripts"}
    assert main(["--config", str(_write(tmp_path, no_scripts))]) == 2
    assert "needs deploy scripts" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_runs_as_a_module(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fogverse.autoscale.cli",
            "--config",
            str(_write(tmp_path, GOOD)),
            "--check",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
