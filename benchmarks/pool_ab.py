"""Is it the code or the machine? The trivial task's cost per task (identity on a small int,
``await pool.submit`` as the suite drives it) for two checkouts side by side, interleaved.

Each measurement runs in its own process with the checkout's ``fogverse`` first on
``sys.path`` (its workers too), so an older commit is measured with its own pool.

    git worktree add /tmp/old <commit>
    .venv/bin/python benchmarks/pool_ab.py /tmp/old . --rounds 6 -m 8

Prints the median wall time per task and the parent's and workers' CPU per task of each.
Standalone (not in the suite).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import run_in_checkout

# Runs inside the checkout under test: only names both old and new code have.
_ONE = """
import asyncio, json, os, sys, time
from fogverse import Processor
from fogverse.parallel import WorkerPool
from fogverse.parallel import pool as pool_module

class Identity(Processor):
    def process(self, data):
        if data == "where":
            from fogverse.parallel import worker
            return worker.__file__
        return data

def cpu(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")

async def drive(pool, n):
    done = asyncio.get_running_loop().create_future()
    left = n
    def on_done(handle):
        nonlocal left
        handle.result()
        handle.release()
        left -= 1
        if left == 0:
            done.set_result(None)
    for i in range(n):
        (await pool.submit(i % 64)).add_done_callback(on_done)
    await done

async def main(p, m, n, samples):
    out = []
    async with WorkerPool(Identity(), p, m) as pool:
        probe = await pool.submit("where")
        worker_file = await probe
        probe.release()
        await drive(pool, 2000)
        for _ in range(samples):
            t0, c0, w0 = time.perf_counter(), time.process_time(), cpu(pool.worker_pids)
            await drive(pool, n)
            out.append([(time.perf_counter() - t0) / n * 1e6,
                        (time.process_time() - c0) / n * 1e6,
                        (cpu(pool.worker_pids) - w0) / n * 1e6])
    print(json.dumps({"code": [pool_module.__file__, worker_file], "samples": out}))

if __name__ == "__main__":
    import uvloop
    uvloop.run(main(*(int(a) for a in sys.argv[1:5])))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="a checkout (e.g. a git worktree)")
    parser.add_argument("new", type=Path, help="another checkout")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("-p", "--process-number", type=int, default=2)
    parser.add_argument("-m", "--max-running-task", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=50_000, help="tasks per sample")
    parser.add_argument("--samples", type=int, default=5, help="samples per process")
    args = parser.parse_args(argv)

    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    rows: dict[str, list[list[float]]] = {name: [] for name in trees}
    params = [args.process_number, args.max_running_task, args.tasks, args.samples]
    for i in range(args.rounds):
        order = list(trees) if i % 2 == 0 else list(trees)[::-1]
        for name in order:
            got: Any = run_in_checkout(trees[name], _ONE, *map(str, params))
            # Parent and workers alike must have run this checkout's pool.
            for path in got["code"]:
                if not Path(path).resolve().is_relative_to(trees[name]):
                    raise RuntimeError(f"{name}: ran {path}, not {trees[name]}'s code")
            rows[name] += got["samples"]
            samples = [[round(x, 1) for x in row] for row in got["samples"]]
            print(name, json.dumps(samples), flush=True)
    for name, runs in rows.items():
        wall, parent, workers = (statistics.median(col) for col in zip(*runs, strict=True))
        print(
            f"{name} ({trees[name]}): p={args.process_number} m={args.max_running_task}, "
            f"{len(runs)} samples: median {wall:.1f} us/task; CPU per task: parent "
            f"{parent:.1f} us, workers {workers:.1f} us"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
