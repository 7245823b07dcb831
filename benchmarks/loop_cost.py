"""FogVerse's own CPU per message in a Consumer node's loop, with Kafka taken out.

``python -m benchmarks.loop_cost [CHECKOUT ...] [--messages 200000] [--rounds 3]``

A pass-through ``Consumer`` (bytes codecs, ``cam``/``frame``/``timestamp`` headers on every
record) reads pre-built 500-record batches from a stand-in consumer transport and writes to a
stand-in producer that acknowledges every 500 records at once, so what is left is the node's
own work per message: receive, bookkeeping, decode, process, encode, send, ack, offsets.
Each measurement runs in its own interpreter with the checkout first on ``sys.path`` (as
``passthrough_ab.py`` does), the checkouts interleaved; prints the CPU µs per message of
each round. Standalone (not in the suite).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks.common import run_in_checkout

_ONE = """
import asyncio, json, sys, time
from fogverse import Consumer, Record

N = int(sys.argv[1])
HEADERS = [("cam", b"1"), ("frame", b"2"), ("timestamp", b"3")]

class Batches:
    on_assign = on_revoke = None
    def __init__(self, n):
        self.batches = [
            [Record(b"x" * 1024, b"k", list(HEADERS), "t", 0, i * 500 + j) for j in range(500)]
            for i in range(n // 500)
        ]
    async def start(self): pass
    async def stop(self): pass
    async def getmany(self, timeout, max_records):
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(0.001)
        return []
    async def commit(self, offsets): pass
    async def seek_to_end(self, partitions): pass
    def assignment(self): return set()

class Acks:
    def __init__(self): self.acks, self.sent = [], 0
    async def start(self): pass
    async def stop(self): pass
    async def flush(self): self.settle()
    def settle(self):
        acks, self.acks = self.acks, []
        for ack in acks: ack(None)
    async def send(self, topic, value, key=None, headers=None):
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        self.sent += 1
        return fut
    def send_nowait(self, topic, value, key, headers, on_ack):
        self.acks.append(on_ack)
        self.sent += 1
        if len(self.acks) >= 500: self.settle()
        return True

class Forward(Consumer):
    def process(self, data): return data

async def main():
    node = Forward("t", "127.0.0.1:9", "g", producer_topic="o", input_codec="bytes",
                   output_codec="bytes")
    node.consumer, node.producer = Batches(N), Acks()
    async def stop_when_done():
        while node.producer.sent < N: await asyncio.sleep(0.001)
        node.stop()
    cpu = time.process_time()
    await asyncio.gather(node.run(), stop_when_done())
    print(json.dumps({"cpu_us_per_msg": (time.process_time() - cpu) / N * 1e6}))

import uvloop
uvloop.run(main())
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="*", type=Path, default=[Path(".")])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    trees = [t.resolve() for t in args.checkouts]
    runs: dict[Path, list[float]] = {t: [] for t in trees}
    for i in range(args.rounds):
        for tree in trees[i % len(trees) :] + trees[: i % len(trees)]:
            runs[tree].append(run_in_checkout(tree, _ONE, str(args.messages))["cpu_us_per_msg"])
    for tree, values in runs.items():
        print(
            f"{tree}: {statistics.median(values):.2f} µs CPU per message "
            f"(rounds: {', '.join(f'{v:.2f}' for v in values)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
