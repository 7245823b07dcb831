"""Is it the code or the machine? The JPEG stage of :mod:`benchmarks.stage` (a 2-partition
backlog of 720p JPEGs through a ``ParallelConsumer`` p=2, m=8) measured for two checkouts
side by side, interleaved, on one broker and one backlog, on each transport.

Each measurement runs in its own process with the checkout's ``fogverse`` and ``benchmarks``
first on ``sys.path`` (its workers too). Per run: frames/s from the first fetched batch until
the output topic holds every frame, and over the same span the parent's CPU per frame (the
benchmark's own watermark client excluded) and the workers' user and system CPU and minor
page faults per frame.

    git worktree add /tmp/old <commit>
    .venv/bin/python -m benchmarks.stage_ab /tmp/old . --rounds 3

Kafka: FOGVERSE_BOOTSTRAP, or a local broker it starts and stops. Standalone (not in the suite).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import make_frames, run_in_checkout

# Runs inside the checkout under test: only names both old and new code have.
_ONE = """
import asyncio, json, os, sys, time, uuid
from benchmarks import kafka as k
from benchmarks.common import run_async
from fogverse.node.parallel import ParallelConsumer

bootstrap, src, n, transports = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def threads():
    pid = os.getpid()
    return {int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid}

TICK = os.sysconf("SC_CLK_TCK")

def stat(path):
    # The fields of a /proc stat file after the command name, or None once it is gone.
    try:
        with open(path) as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None

def cpu_of(tids):
    pid, total = os.getpid(), 0
    for tid in tids:
        fields = stat(f"/proc/{pid}/task/{tid}/stat")
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / TICK

def workers():
    # CPU seconds (user, system) and minor page faults of each process this one started
    # (the pool's workers; the forkserver idles).
    import psutil
    got = {}
    for child in psutil.Process().children(recursive=True):
        fields = stat(f"/proc/{child.pid}/stat")
        if fields is not None:
            got[child.pid] = (int(fields[11]) / TICK, int(fields[12]) / TICK, int(fields[7]))
    return got

def spent(before, after):
    both = before.keys() & after.keys()
    return [sum(after[p][i] - before[p][i] for p in both) for i in range(3)]

async def one(out, transport):
    marks = {}
    class Stage(ParallelConsumer):
        async def _refill(self):
            await super()._refill()
            if self._buffer and "t0" not in marks:
                marks["t0"], marks["cpu0"] = time.perf_counter(), time.process_time()
                marks["bench0"] = cpu_of(bench)
                marks["workers0"] = workers()
    node = Stage(src, bootstrap, f"ab-{uuid.uuid4().hex[:8]}", producer_topic=out,
                 input_codec="bytes")
    k.use_transport(node, transport)
    with k.HighWatermark(bootstrap, out, n, 2) as mark:
        bench = threads()
        task = asyncio.create_task(node.run(2, 8, k._preprocessor(90)))
        try:
            while not mark.done.is_set():
                if task.done():
                    task.result()
                    raise RuntimeError("stopped early")
                await asyncio.sleep(0.01)
            cpu = time.process_time() - marks["cpu0"] - (cpu_of(bench) - marks["bench0"])
            user, system, faults = spent(marks["workers0"], workers())
        finally:
            node.stop()
            await task
    from fogverse.node import parallel
    return {"rate": n / (mark.reached - marks["t0"]), "cpu_ms_per_frame": cpu / n * 1e3,
            "workers_user_ms_per_frame": user / n * 1e3,
            "workers_system_ms_per_frame": system / n * 1e3,
            "workers_faults_per_frame": faults / n, "code": parallel.__file__}

admin = k._admin(bootstrap)
got = {}
with k._own_node_settings():
    for transport in transports.split(","):
        out = k.create_topic(admin, "ab-stage-out", 2)
        try:
            got[transport] = run_async(lambda: one(out, transport))
        finally:
            k.delete_topics(admin, [out])
got["load"] = os.getloadavg()[0]
print(json.dumps(got))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="a checkout (e.g. a git worktree)")
    parser.add_argument("new", type=Path, help="another checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--transport", nargs="+", default=["confluent"])
    args = parser.parse_args(argv)

    from benchmarks.kafka import _admin, broker, create_topic, delete_topics
    from benchmarks.stage import PARTITIONS, fill_frames

    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    loads: list[float] = []
    with broker() as bootstrap:
        admin = _admin(bootstrap)
        src = create_topic(admin, "ab-stage-src", PARTITIONS)
        try:
            fill_frames(bootstrap, src, make_frames(8).jpeg, args.frames)
            for i in range(args.rounds):
                order = list(trees) if i % 2 == 0 else list(trees)[::-1]
                for name in order:
                    transports = ",".join(args.transport)
                    got: Any = run_in_checkout(
                        trees[name], _ONE, bootstrap, src, str(args.frames), transports
                    )
                    loads.append(got.pop("load"))
                    for transport, row in got.items():
                        if not Path(row.pop("code")).resolve().is_relative_to(trees[name]):
                            raise RuntimeError(f"{name} did not run {trees[name]}'s code")
                        rows.setdefault((name, transport), []).append(row)
                    print(name, json.dumps(got), flush=True)
        finally:
            delete_topics(admin, [src])
    print(f"1-min load average after each pair of runs: {loads} (cores: {os.cpu_count()})")
    for transport in args.transport:
        old, new = rows[("old", transport)], rows[("new", transport)]
        rates = [b["rate"] / a["rate"] for a, b in zip(old, new, strict=True)]
        for name, runs in (("old", old), ("new", new)):
            rate = statistics.median(r["rate"] for r in runs)
            cpu = statistics.median(r["cpu_ms_per_frame"] for r in runs)
            user, system, faults = (
                statistics.median(r[f"workers_{what}"] for r in runs)
                for what in ("user_ms_per_frame", "system_ms_per_frame", "faults_per_frame")
            )
            print(
                f"{transport} {name} ({trees[name]}): median {rate:.1f} frames/s, "
                f"parent CPU {cpu:.3f} ms/frame; workers {user:.2f} ms user + "
                f"{system:.2f} ms system, {faults:.0f} page faults per frame"
            )
        print(f"{transport} new/old frames/s per round: {[round(r, 3) for r in rates]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
