"""Faults inside a parallel node's process tree beyond a worker's death (which
tests/node/test_parallel.py covers): the forkserver that starts the workers."""

from __future__ import annotations

import asyncio
import signal
import uuid

import psutil
from rel_harness import Feeder, Nodes, Reader, Tally, node_env, until

ROUNDS = 10


def _forkserver(pid: int) -> psutil.Process:
    found = [p for p in psutil.Process(pid).children() if "forkserver" in " ".join(p.cmdline())]
    assert len(found) == 1, found
    return found[0]


def _workers(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in _forkserver(pid).children() if p.status() != psutil.STATUS_ZOMBIE]
    except (psutil.Error, AssertionError):
        return []


def test_a_killed_forkserver_does_not_stop_a_parallel_node(kafka_bootstrap, new_topic, tmp_path):
    """Workers are forked by multiprocessing's forkserver, a child of the node. When it dies
    (the OOM killer, a stray kill), its workers go too; a restart that asks for new workers
    before the dead forkserver is reaped fails (multiprocessing starts a new forkserver only
    once the old one is reaped). The pool must try again shortly instead of breaking and
    taking the node down."""
    src, out, dlq = new_topic(partitions=2), new_topic(), new_topic()
    tally = Tally(f"ParallelConsumer's forkserver SIGKILLed with its workers, {ROUNDS} times")
    nodes = Nodes(tmp_path)

    async def scenario() -> None:
        async with (
            Reader(kafka_bootstrap, {out: tally.out, dlq: tally.dead}),
            Feeder(kafka_bootstrap, src, tally, 2) as feeder,
        ):
            env = node_env(kafka_bootstrap, src, out, f"g-{uuid.uuid4().hex[:6]}")
            node = nodes.start("ParallelEcho", {**env, "DEAD_LETTER_TOPIC": dlq}, "node")
            await feeder.send(200)
            await until(lambda: len(tally.out) >= 100, 90, "the node to run")
            # The race below goes wrong only now and then: try it a number of times.
            for round_ in range(ROUNDS):
                await until(
                    lambda: node.poll() is not None or len(_workers(node.pid)) == 2,
                    60,
                    "two workers",
                )
                assert node.poll() is None, f"the node stopped:\n{nodes.log(node)[-3000:]}"
                server = _forkserver(node.pid)
                nodes.remember_children(node)
                # The forkserver and its workers at once, as an OOM kill of the group would:
                # their deaths are noticed, and the workers restarted, while the dead
                # forkserver may not be reaped yet.
                for p in [server, *server.children()]:
                    p.kill()
                await feeder.send(10)
                await until(
                    lambda: node.poll() is not None or tally.sent <= tally.out.keys(),
                    60,
                    f"the messages after fault {round_ + 1}",
                )
                assert node.poll() is None, f"the node stopped:\n{nodes.log(node)[-3000:]}"
            await feeder.send(100)
            await until(
                lambda: node.poll() is not None or tally.sent <= tally.out.keys(),
                90,
                "every message",
            )
            assert node.poll() is None, f"the node stopped:\n{nodes.log(node)[-3000:]}"
            assert nodes.kill(node, signal.SIGTERM) == 0, nodes.log(node)[-3000:]

    try:
        asyncio.run(scenario())
    finally:
        nodes.cleanup()
    tally.notes = "the pool started a new forkserver and new workers each time"
    tally.report()
    tally.assert_nothing_lost()
