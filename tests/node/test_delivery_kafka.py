"""At-least-once on the real broker: crashes lose nothing, graceful stops redo nothing."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from backends import produce_kafka, read_kafka
from polling import until

NODES = str(Path(__file__).parent.parent / "pipeline_nodes.py")


def _start_node(bootstrap: str, src: str, out: str, group: str, delay: float):
    env = {
        **os.environ,
        "CONSUMER_TOPIC": src,
        "PRODUCER_TOPIC": out,
        "GROUP_ID": group,
        "CONSUMER_SERVERS": bootstrap,
        "PRODUCER_SERVERS": bootstrap,
        "ECHO_DELAY": str(delay),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "fogverse", "run", f"{NODES}:SlowEcho"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def nodes():
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def _stop(node: subprocess.Popen, sig: int) -> tuple[int, str]:
    """Signal the node; returns its exit code and log once it is gone."""
    node.send_signal(sig)
    code = node.wait(60)
    return code, node.stderr.read().decode(errors="replace")


def test_sigkill_mid_stream_then_restart_loses_nothing(kafka_bootstrap, new_topic, nodes):
    src, out = new_topic(partitions=2), new_topic()
    group = f"g-{uuid.uuid4().hex[:8]}"
    n = 600
    asyncio.run(
        produce_kafka(
            kafka_bootstrap, src, [(str(i).encode(), f"m{i}".encode(), []) for i in range(n)]
        )
    )
    for round_ in range(3):
        node = _start_node(kafka_bootstrap, src, out, group, 0.004)
        nodes.append(node)
        target = (round_ + 1) * n // 4

        async def progressed(target=target):
            return len(await read_kafka(kafka_bootstrap, out, target, timeout=1.0)) >= target

        asyncio.run(until(progressed, 90, f"{target} outputs", interval=0.1))
        _stop(node, signal.SIGKILL)
    nodes.append(_start_node(kafka_bootstrap, src, out, group, 0.0))

    async def everything():
        got = await read_kafka(kafka_bootstrap, out, n, timeout=1.0)
        return len({r.value for r in got}) >= n

    asyncio.run(until(everything, 90, "every input in the output", interval=0.1))
    got = asyncio.run(read_kafka(kafka_bootstrap, out, n, timeout=30))
    counts = collections.Counter(r.value for r in got)
    missing = {f"m{i}".encode() for i in range(n)} - set(counts)
    assert not missing, f"lost {len(missing)} messages"
    dups = sum(c - 1 for c in counts.values())
    print(f"\nSIGKILL x3: sent {n}, received {len(got)}, lost 0, duplicates {dups}")


def test_sigterm_drains_commits_and_restart_redoes_nothing(kafka_bootstrap, new_topic, nodes):
    src, out = new_topic(), new_topic()
    group = f"g-{uuid.uuid4().hex[:8]}"
    n = 300
    asyncio.run(
        produce_kafka(
            kafka_bootstrap, src, [(str(i).encode(), f"m{i}".encode(), []) for i in range(n)]
        )
    )
    node = _start_node(kafka_bootstrap, src, out, group, 0.01)
    nodes.append(node)

    async def started():
        return len(await read_kafka(kafka_bootstrap, out, 50, timeout=1.0)) >= 50

    asyncio.run(until(started, 90, "50 outputs", interval=0.1))
    code, log = _stop(node, signal.SIGTERM)
    assert code == 0, log[-3000:]
    before = len(asyncio.run(read_kafka(kafka_bootstrap, out, n, timeout=2.0)))
    assert 50 <= before < n

    nodes.append(_start_node(kafka_bootstrap, src, out, group, 0.0))

    async def everything():
        return len(await read_kafka(kafka_bootstrap, out, n, timeout=1.0)) >= n

    asyncio.run(until(everything, 90, "all outputs", interval=0.1))
    # Give a redelivery the chance to show up before counting.
    got = asyncio.run(read_kafka(kafka_bootstrap, out, n, timeout=30, settle=3.0))
    counts = collections.Counter(r.value for r in got)
    assert set(counts) == {f"m{i}".encode() for i in range(n)}
    assert max(counts.values()) == 1, "a restart after SIGTERM re-processed acknowledged input"
    print(f"\nSIGTERM, restart: sent {n}, received {len(got)}, lost 0, duplicates 0")
