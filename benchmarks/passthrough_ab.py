"""Is it the code or the machine? The 1 KiB pass-through (the plain confluent-kafka loop and
the FogVerse node) measured for two checkouts side by side, interleaved, on one broker.

Each measurement runs in its own process with the checkout's ``fogverse`` and ``benchmarks``
first on ``sys.path``, so an older commit is measured with its own code. If the older
checkout's node costs what today's does, a change in the figures came from the machine.

    git worktree add /tmp/old <commit>
    .venv/bin/python benchmarks/passthrough_ab.py /tmp/old . --pairs 4

Kafka: FOGVERSE_BOOTSTRAP, or a local broker it starts and stops. Standalone (not in the suite).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.common import checkouts_side_by_side, run_in_checkout

# Runs inside the checkout under test: only names both old and new benchmarks/kafka.py have.
_ONE = """
import json, sys
from benchmarks import kafka as k
from benchmarks.common import run_async
bootstrap, n, transport = sys.argv[1], int(sys.argv[2]), sys.argv[3]
admin = k._admin(bootstrap)
src = k.create_topic(admin, "ab-src")
k.fill(bootstrap, src, n, 1024)
out = {}
try:
    with k._own_node_settings():
        for label in ("loop", "node"):
            dst = k.create_topic(admin, "ab-out")
            try:
                if label == "loop":
                    out[label] = k.plain_loop(bootstrap, src, dst, n)
                else:
                    out[label] = run_async(
                        lambda: k.run_node_passthrough(bootstrap, src, dst, n, transport)
                    )
            finally:
                k.delete_topics(admin, [dst])
finally:
    k.delete_topics(admin, [src])
print(json.dumps({a: {"rate": b["rate"], "cpu_us_per_msg": b["cpu_us_per_msg"]}
                  for a, b in out.items()}))
"""


def measure(tree: Path, bootstrap: str, messages: int, transport: str) -> dict[str, Any]:
    return run_in_checkout(tree, _ONE, bootstrap, str(messages), transport)  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="a checkout (e.g. a git worktree)")
    parser.add_argument("new", type=Path, help="another checkout")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--transport", default="confluent", choices=("aiokafka", "confluent"))
    args = parser.parse_args(argv)

    from benchmarks.kafka import broker

    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    with broker() as bootstrap:
        rows = checkouts_side_by_side(
            trees, args.pairs, lambda tree: measure(tree, bootstrap, args.messages, args.transport)
        )
    for name, runs in rows.items():
        node = [r["node"]["cpu_us_per_msg"] for r in runs]
        loop = [r["loop"]["cpu_us_per_msg"] for r in runs]
        ratio = [r["node"]["rate"] / r["loop"]["rate"] for r in runs]
        print(
            f"{name} ({trees[name]}): node CPU {min(node):.1f}-{max(node):.1f} us/msg, "
            f"loop CPU {min(loop):.1f}-{max(loop):.1f} us/msg, "
            f"node/loop {min(ratio):.2f}-{max(ratio):.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
