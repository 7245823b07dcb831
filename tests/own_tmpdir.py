"""A pytest plugin: every process the suite starts keeps its temporary files in one directory
of this run, deleted when the run ends.

Python's multiprocessing gives each process that starts a forkserver a ``pymp-*`` directory
under ``$TMPDIR`` for the server's socket, and removes it only at a clean exit. The fault
tests SIGKILL nodes on purpose, so each of those left a directory behind in ``/tmp``: nine per
run of the suite. Their ``TMPDIR`` now points here instead. The pytest process itself keeps
the system's temporary directory (its own ``tmp_path`` directories stay where pytest keeps
them for inspection).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_saved: dict[str, str | None] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    tempfile.gettempdir()  # fixed for this process before the environment changes
    _saved["TMPDIR"] = os.environ.get("TMPDIR")
    _saved["dir"] = os.environ["TMPDIR"] = tempfile.mkdtemp(prefix="fogverse-suite-")


def pytest_unconfigure(config: pytest.Config) -> None:
    run_dir = _saved.pop("dir", None)
    if run_dir is None:
        return
    previous = _saved.pop("TMPDIR")
    if previous is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = previous
    shutil.rmtree(run_dir, ignore_errors=True)
