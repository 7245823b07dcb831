"""A pytest plugin: a test run stopped with SIGTERM unwinds as Ctrl-C does.

Without it SIGTERM (a CI job's timeout, ``kill``) ends pytest at once: no test's ``finally`` or
fixture teardown runs, and the nodes, workers and brokers that tests started outlive the run.
Raising ``KeyboardInterrupt`` instead lets pytest stop the session and tear everything down.
The suite's conftest loads it; ``pytest -p stop_on_sigterm`` loads it elsewhere.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

import pytest

_runner_pid = os.getpid()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _runner_pid:
        # A forked child inherited this handler: it dies of SIGTERM as it would have.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise KeyboardInterrupt("SIGTERM")


def _install() -> None:
    if signal.getsignal(signal.SIGTERM) is not _interrupt:
        signal.signal(signal.SIGTERM, _interrupt)


def pytest_configure(config: pytest.Config) -> None:
    global _runner_pid
    _runner_pid = os.getpid()
    _install()


# A node run in-process installs its own SIGTERM handler and, on its way out, leaves the
# default one: put ours back before each test's fixtures and before its body.
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _install()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    _install()
