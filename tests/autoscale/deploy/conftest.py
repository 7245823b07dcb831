"""The Kubernetes tests run last in their pytest process: on a fresh machine they wait for the
API server's build (``make test`` starts it in the background), and every other test can run
meanwhile instead of queueing behind that wait."""

from __future__ import annotations

import pytest

_WAITS_FOR_THE_BUILD = "test_kubernetes_cluster.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    last = [item for item in items if item.path.name == _WAITS_FOR_THE_BUILD]
    if last:
        moved = {id(item) for item in last}
        items[:] = [item for item in items if id(item) not in moved] + last
