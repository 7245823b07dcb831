"""The broker goes away mid-run and comes back on the same ports with the same data: the
running nodes reconnect by themselves (no restart of their own) and nothing is lost."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import time
import uuid

import pytest
from backends import read_kafka
from rel_harness import Feeder, Nodes, Reader, Tally, id_of, node_env, until

pytestmark = pytest.mark.fault
TASKS_DUMPED = "--- end of asyncio tasks ---"  # rel_nodes' last line on SIGUSR1
logger = logging.getLogger(__name__)


# Two broker outages, each up to a JVM restart on a loaded machine, plus the catch-up.
@pytest.mark.timeout(900)
def test_nodes_ride_out_a_broker_restart_and_a_broker_crash(
    local_kafka, kafka_bootstrap, new_topic, tmp_path
):
    src = new_topic(partitions=2)
    out_serial, out_parallel = new_topic(), new_topic()
    dlq_serial, dlq_parallel = new_topic(), new_topic()
    serial = Tally("broker restarted (SIGTERM) and crashed (SIGKILL): Consumer")
    parallel = Tally("broker restarted (SIGTERM) and crashed (SIGKILL): ParallelConsumer")
    nodes = Nodes(tmp_path)
    per_phase = 300

    async def scenario() -> dict[str, float]:
        outages: dict[str, float] = {}
        targets = {
            out_serial: serial.out,
            out_parallel: parallel.out,
            dlq_serial: serial.dead,
            dlq_parallel: parallel.dead,
        }
        async with Reader(kafka_bootstrap, targets), Feeder(kafka_bootstrap, src, serial, 2) as f:
            await f.send(per_phase)
            a = nodes.start(
                "Echo",
                node_env(
                    kafka_bootstrap,
                    src,
                    out_serial,
                    f"g-{uuid.uuid4().hex[:6]}",
                    DEAD_LETTER_TOPIC=dlq_serial,
                ),
                "echo",
            )
            b = nodes.start(
                "ParallelEcho",
                node_env(
                    kafka_bootstrap,
                    src,
                    out_parallel,
                    f"g-{uuid.uuid4().hex[:6]}",
                    DEAD_LETTER_TOPIC=dlq_parallel,
                ),
                "parallel",
            )
            await until(
                lambda: len(serial.out) >= 50 and len(parallel.out) >= 50, 90, "both nodes to run"
            )
            for kill in (False, True):
                # Mid-stream: the nodes still hold a backlog, and more arrives meanwhile.
                sent_before = len(serial.sent)
                feeding = asyncio.create_task(f.send(per_phase, rate=100))
                # A sixth of the phase sent, however fast or slow the machine: mid-stream.
                await until(
                    lambda goal=sent_before + per_phase // 6: len(serial.sent) >= goal,
                    60,
                    "the feed under way",
                )
                began = time.monotonic()
                # From this thread, never a worker thread: the JVM dies with the thread that
                # started it. The event loop stands still meanwhile; the nodes do not.
                # A loaded machine may take the JVM longer than the launcher's default 60 s
                # to come back (seen at load average 40); the test waits for it.
                start_timeout, local_kafka.start_timeout = local_kafka.start_timeout, 240.0
                try:
                    local_kafka.restart(kill=kill)
                finally:
                    local_kafka.start_timeout = start_timeout
                outages["crash" if kill else "restart"] = time.monotonic() - began
                await feeding
                for proc in (a, b):
                    assert proc.poll() is None, f"a node died with the broker:\n{nodes.log(proc)}"
            await f.send(per_phase)
            parallel.sent = set(serial.sent)
            # A crashed broker re-registers only once its old session expires (~9 s).
            try:
                await until(
                    lambda: (
                        serial.sent <= serial.out.keys() and parallel.sent <= parallel.out.keys()
                    ),
                    120,
                    "every message on both outputs",
                )
            except AssertionError:
                # The outputs as a fresh consumer reads them are the ground truth: the
                # background reader's own consumer has been through both outages too.
                await _from_a_fresh_read(
                    kafka_bootstrap, {out_serial: (serial, a), out_parallel: (parallel, b)}, nodes
                )
            await asyncio.sleep(1.0)  # late duplicates, if any, show up in the count
        for proc in (a, b):
            assert proc.poll() is None, nodes.log(proc)
        return outages

    try:
        outages = asyncio.run(scenario())
    finally:
        nodes.cleanup()
    for tally in (serial, parallel):
        tally.notes = (
            f"broker down {outages['restart']:.1f} s (restart) and {outages['crash']:.1f} s "
            "(crash); the nodes were not restarted"
        )
        tally.report()
        tally.assert_nothing_lost()
        # A broker outage is no reason to give up on a valid message.
        assert not tally.dead, f"{tally.scenario}: dead-lettered {sorted(tally.dead)[:10]}"


async def _from_a_fresh_read(
    bootstrap: str, outputs: dict[str, tuple[Tally, subprocess.Popen[bytes]]], nodes: Nodes
) -> None:
    """The background reader timed out: read each output from its beginning with a new
    consumer. Every id there means the reader lagged, not the nodes (the test goes on, and
    says so); an id missing there too fails the test with what is missing and each node's
    log."""
    problems = []
    for topic, (tally, proc) in outputs.items():
        records = await read_kafka(bootstrap, topic, len(tally.sent), timeout=60)
        for r in records:
            i = id_of(r.value, r.headers)
            if i is not None and i not in tally.out:
                tally.out[i] += 1
        missing = sorted(tally.lost)
        if missing:
            running = proc.poll() is None
            before = nodes.log(proc)
            stacks = await _stacks(proc, nodes, len(before)) if running else ""
            # Without librdkafka's reconnection attempts, which fill the outages.
            lines = [x for x in before.splitlines() if "Connection refused" not in x]
            log = "\n".join(lines[-60:])
            problems.append(
                f"{tally.scenario}: {len(missing)} of {len(tally.sent)} ids missing on a fresh "
                f"read of {topic} (first: {missing[:10]}), {sum(tally.dead.values())} "
                f"dead-lettered; the node is {'running' if running else 'gone'}; "
                f"its log ends:\n{log}\n\nits threads and tasks now:\n{stacks}"
            )
    assert not problems, "\n\n".join(problems)
    logger.warning("the background reader fell behind; a fresh read found every message")


async def _stacks(proc: subprocess.Popen[bytes], nodes: Nodes, logged: int) -> str:
    """Every thread's stack in a node that is still running, then its asyncio tasks': it
    writes them to its log on SIGUSR1 (``rel_nodes``). What the log gained after ``logged``
    characters once the tasks' dump has ended, or after 10 s (a stuck event loop never
    writes that part)."""
    proc.send_signal(signal.SIGUSR1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    gained = ""
    while loop.time() < deadline and TASKS_DUMPED not in gained:
        await asyncio.sleep(0.2)
        gained = nodes.log(proc)[logged:]
    return gained


@pytest.mark.timeout(180)
def test_a_stalled_node_can_be_asked_for_its_threads_stacks(kafka_bootstrap, new_topic, tmp_path):
    """What the scenario above reports of a node that stopped emitting: every thread's stack,
    the ParallelConsumer's consumer thread among them, every asyncio task's stack with the
    window's state, and the node keeps running."""
    src, out = new_topic(partitions=2), new_topic()
    tally = Tally("stacks")
    nodes = Nodes(tmp_path)

    async def scenario() -> str:
        async with (
            Reader(kafka_bootstrap, {out: tally.out}),
            Feeder(kafka_bootstrap, src, tally, 2) as f,
        ):
            node = nodes.start(
                "ParallelEcho",
                node_env(kafka_bootstrap, src, out, f"g-{uuid.uuid4().hex[:6]}"),
                "parallel",
            )
            await f.send(20)
            # Its outputs arrive: the node module (and its SIGUSR1 handler) is loaded.
            await until(lambda: tally.sent <= tally.out.keys(), 90, "the node's outputs")
            stacks = await _stacks(node, nodes, len(nodes.log(node)))
            assert node.poll() is None, nodes.log(node)
            return stacks

    try:
        stacks = asyncio.run(scenario())
    finally:
        nodes.cleanup()
    assert "most recent call first" in stacks, stacks
    assert "fogverse/transport/confluent.py" in stacks, stacks  # the consumer's thread
    assert "_serve" in stacks, stacks
    # And what the event loop waits for: the tasks' stacks, the window and the consumer.
    assert TASKS_DUMPED in stacks, stacks
    assert "_parallel_loop" in stacks, stacks  # the node's admission task
    assert "_emit_loop" in stacks, stacks
    assert "pool: active=" in stacks and "consumer: jobs=" in stacks, stacks
