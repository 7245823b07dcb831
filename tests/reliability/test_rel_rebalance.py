"""A consumer group rebalances while it processes: a second instance joins, then leaves.

Before a partition is taken away its owner finishes what it holds for it (every output
acknowledged) and commits, so the next owner starts exactly where it stopped: nothing is
lost, nothing is processed twice, and the group's committed offsets end at the topic's end.
"""

from __future__ import annotations

import asyncio
import signal
import uuid

from rel_harness import (
    Feeder,
    Nodes,
    Reader,
    Tally,
    group_offsets,
    node_env,
    until,
)


def test_instance_joins_then_leaves_mid_stream(kafka_bootstrap, new_topic, tmp_path):
    partitions = 4
    src = new_topic(partitions=partitions)
    out_a, out_b, dlq = new_topic(), new_topic(), new_topic()
    group = f"g-{uuid.uuid4().hex[:8]}"
    tally = Tally("rebalance: a ParallelConsumer joins a Consumer's group, then leaves (SIGTERM)")
    nodes = Nodes(tmp_path)
    n = 1200
    b_outputs = {"count": 0}

    def env(out: str) -> dict[str, str]:
        # 20 ms a message: neither instance keeps up alone with the feed, so both hold
        # in-flight work for the partitions that move.
        return node_env(kafka_bootstrap, src, out, group, ECHO_DELAY=0.02, DEAD_LETTER_TOPIC=dlq)

    async def scenario() -> tuple[int, dict[int, int], dict[int, int]]:
        # The two instances write to separate topics: the union is the stage's output.
        seen_b = tally.out.copy()
        targets = {out_a: tally.out, out_b: seen_b, dlq: tally.dead}
        async with Reader(kafka_bootstrap, targets), Feeder(kafka_bootstrap, src, tally, 4) as f:
            feeding = asyncio.create_task(f.send(n, rate=120))
            a = nodes.start("Echo", env(out_a), "a")
            await until(lambda: len(tally.out) >= 100, 90, "the first instance to run")
            b = nodes.start("ParallelEcho", env(out_b), "b")
            await until(lambda: len(seen_b) >= 100, 90, "the joining instance to get work")
            assert len(tally.out) < n, "the feed ended before the join: nothing to hand over"
            code = nodes.kill(b, signal.SIGTERM)
            assert code == 0, nodes.log(b)
            b_outputs["count"] = sum(seen_b.values())
            await feeding
            await until(
                lambda: tally.sent <= (tally.out.keys() | seen_b.keys()), 90, "every message"
            )
            await asyncio.sleep(1.5)  # let a late duplicate show up
            assert a.poll() is None, nodes.log(a)
            tally.out.update(seen_b)
            nodes.kill(a, signal.SIGTERM)
            committed, ends = group_offsets(kafka_bootstrap, group, src)
            return a.returncode, committed, ends

    try:
        code_a, committed, ends = asyncio.run(scenario())
    finally:
        nodes.cleanup()
    tally.notes = (
        f"the joining instance emitted {b_outputs['count']} outputs before it left; "
        "committed offsets = end offsets afterwards"
    )
    tally.report()
    assert code_a == 0
    tally.assert_nothing_lost()
    assert not tally.dead
    assert committed == ends, "the group's offsets do not end at the topic's end"
    # Both handovers were graceful: finish, acknowledge, commit, then give the partition up.
    assert tally.duplicates == 0, f"{tally.duplicates} messages were processed twice"
