"""The package as it would be published: built, checked, installed into a fresh virtual
environment, and run from there.

``python -m build`` makes the sdist and builds the wheel from it (so the sdist must hold
everything the wheel needs); ``twine check --strict`` checks both as PyPI would; the sdist
holds no tests, CI files or result images; the wheel, installed with pip (dependencies from
PyPI) into a new environment outside the checkout, runs ``fogverse --help`` and the README's
quick example against the real broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest
from test_docs_examples import python_blocks

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900):
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{args[:3]} exited {proc.returncode}\n{proc.stderr[-4000:]}"
    return proc


def _clean_env(**extra: str) -> dict[str, str]:
    # Nothing from the checkout's environment may leak into the installed package's run.
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "CONSUMER_SERVERS", "PRODUCER_SERVERS", "GROUP_ID"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def test_the_built_wheel_installs_and_runs_the_readme_example(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=tmp_path)
    sdists, wheels = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(dist.iterdir())
    _run(sys.executable, "-m", "twine", "check", "--strict", *sdists, *wheels, cwd=tmp_path)

    with tarfile.open(sdists[0]) as sdist:
        names = [n.split("/", 1)[1] for n in sdist.getnames() if "/" in n]
    assert "LICENSE" in names and "README.md" in names and "fogverse/__init__.py" in names
    unwanted = [
        n
        for n in names
        if n.startswith(("tests/", ".ci/", "benchmarks/", "docs/", "examples/"))
        or n.endswith((".png", ".jpg"))
    ]
    assert not unwanted, unwanted

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    _run(bin_dir / "pip", "install", "--quiet", wheels[0], cwd=tmp_path, env=_clean_env())

    # Run from a directory with nothing of the checkout in it.
    work = tmp_path / "user"
    work.mkdir()
    where = _run(
        bin_dir / "python", "-c", "import fogverse; print(fogverse.__file__)", cwd=work
    ).stdout
    assert where.strip().startswith(str(env_dir)), where

    helped = _run(bin_dir / "fogverse", "--help", cwd=work, env=_clean_env()).stdout
    for command in ("run", "broker", "view", "master"):
        assert command in helped, helped

    [(_, quick)] = python_blocks(ROOT / "README.md")
    script = work / "quick.py"
    script.write_text(quick)
    out = _run(
        bin_dir / "python",
        script,
        cwd=work,
        env=_clean_env(FOGVERSE_BOOTSTRAP=kafka_bootstrap),
        timeout=300,
    ).stdout
    lines = out.splitlines()
    assert len(lines) == 30, out
    assert {line.split(":")[0] for line in lines} == {f"frame {i}" for i in range(1, 31)}
    assert "frame 30: mean 30" in lines
