"""Is it the code or the machine? The video pipeline's top rate (``max-rate-1cam``: a camera
source sending as fast as it can, a ParallelConsumer preprocessing, a sink) for two checkouts
side by side, interleaved, on one broker.

Each measurement runs in its own process with the checkout's ``fogverse`` and ``benchmarks``
first on ``sys.path`` (its workers too), so an older commit is measured with its own code and
its own default transport.

    git worktree add /tmp/old <commit>
    .venv/bin/python -m benchmarks.pipeline_ab /tmp/old . --pairs 4

Prints each run's delivered frames/s and the median ratio new/old of the paired runs.
Kafka: FOGVERSE_BOOTSTRAP, or a local broker it starts and stops. Standalone (not in the suite).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import checkouts_side_by_side, run_in_checkout

# Runs inside the checkout under test: only names both old and new benchmarks/kafka.py have.
_ONE = """
import json, sys
from benchmarks import kafka as k
from benchmarks.common import make_frames, run_async
bootstrap, frames, reduced = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
settings = k.settings_for(False)
name = "max-rate-1cam" if reduced else "max-rate-1cam-fullsize"
scenario = k.Scenario(name, 1, None, frames, reduced)
video = make_frames(8)
with k._own_node_settings():
    out = run_async(lambda: k.run_scenario(bootstrap, scenario, settings, video))
print(json.dumps({key: out[key] for key in ("delivered_fps", "frames_arrived", "lost")}))
"""


def measure(tree: Path, bootstrap: str, frames: int, *, reduced: bool) -> dict[str, Any]:
    return run_in_checkout(tree, _ONE, bootstrap, str(frames), "1" if reduced else "0")  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="a checkout (e.g. a git worktree)")
    parser.add_argument("new", type=Path, help="another checkout")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--full-size", action="store_true", help="the full-size decode path")
    args = parser.parse_args(argv)

    from benchmarks.kafka import broker

    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    with broker() as bootstrap:
        rows = checkouts_side_by_side(
            trees,
            args.pairs,
            lambda tree: measure(tree, bootstrap, args.frames, reduced=not args.full_size),
        )
    ratios = [
        n["delivered_fps"] / o["delivered_fps"]
        for o, n in zip(rows["old"], rows["new"], strict=True)
    ]
    for name, runs in rows.items():
        fps = [r["delivered_fps"] for r in runs]
        print(f"{name} ({trees[name]}): {statistics.median(fps):.0f} frames/s (runs {fps})")
    print(
        f"new/old: median {statistics.median(ratios):.2f} of {len(ratios)} pairs "
        f"({min(ratios):.2f}-{max(ratios):.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
