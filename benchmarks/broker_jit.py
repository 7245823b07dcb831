"""What the local broker's JIT compiler costs the clients that share its machine: brokers with
C1 only (how :class:`~fogverse.broker.LocalKafka` runs one) and with the JVM's default tiered
compilation (C1 then C2), each fresh, interleaved, under the same work.

``python -m benchmarks.broker_jit [--rounds 3] [--frames 1200] [--messages 150000]``

Each round starts one broker of each kind in turn (alternating which goes first), fills it with
the JPEG stage's backlog (:mod:`benchmarks.stage`, 2 partitions) and a 1 KiB pass-through
backlog, then runs, each into a fresh output topic: a warm-up FogVerse p=2 stage run, the
stage's hand-written loop, Quix Streams (when installed), FogVerse p=2, the tuned pass-through
loop and the pass-through node. Prints each run's rate and the broker's CPU per record split
between its JIT compiler threads and the rest, the broker's total at the end, then per variant
the medians and the paired ratios (C1 over tiered). Standalone (not in the suite).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks import kafka as k
from benchmarks import stage
from benchmarks.common import make_frames, proc_cpu_seconds
from fogverse.broker import LocalKafka

__all__ = ["main"]

C1, TIERED = "C1 only", "tiered"


class _TieredBroker(LocalKafka):
    """A local broker with the JVM's default compilers (what LocalKafka ran before)."""

    def _jvm_args(self, data_dir: Path) -> list[str]:
        return [a for a in super()._jvm_args(data_dir) if not a.startswith("-XX:TieredStopAt")]


class _JvmCpu:
    """Seconds of CPU a JVM has used in its JIT compiler threads and in the rest. The JVM
    starts and ends compiler threads as the work comes and goes, and an ended thread leaves
    /proc: each one counts with the last figure seen of it, the process's total keeps all."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.compilers: dict[str, float] = {}

    def read(self) -> tuple[float, float]:
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                if "CompilerThre" in (task / "comm").read_text():
                    self.compilers[task.name] = proc_cpu_seconds(task / "stat")
            except OSError:  # the thread ended
                continue
        compiler = sum(self.compilers.values())
        return compiler, proc_cpu_seconds(f"/proc/{self.pid}/stat") - compiler


def _plan(quix: bool) -> list[tuple[str, str, str]]:
    plan = [("warm-up (p=2)", "stage", "fogverse p=2"), ("stage: loop", "stage", stage.LOOP)]
    if quix:
        plan.append(("stage: Quix Streams", "stage", stage.QUIX))
    plan += [
        ("stage: FogVerse p=2", "stage", "fogverse p=2"),
        ("1 KiB: tuned loop", "pass", k.LOOP),
        ("1 KiB: node", "pass", "node[confluent]"),
    ]
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--messages", type=int, default=150_000)
    args = parser.parse_args(argv)
    plan = _plan(k.quix_available())
    kinds: dict[str, type[LocalKafka]] = {C1: LocalKafka, TIERED: _TieredBroker}
    runs: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for r in range(args.rounds):
        for kind in list(kinds) if r % 2 == 0 else list(kinds)[::-1]:
            with kinds[kind]() as kafka, k._own_node_settings():
                assert kafka.pid is not None
                jvm = _JvmCpu(kafka.pid)
                admin = k._admin(kafka.bootstrap)
                stage_src = k.create_topic(admin, "jit-stage", stage.PARTITIONS)
                stage.fill_frames(kafka.bootstrap, stage_src, make_frames(8).jpeg, args.frames)
                pass_src = k.create_topic(admin, "jit-pass")
                k.fill(kafka.bootstrap, pass_src, args.messages, 1024)
                for label, workload, variant in plan:
                    staged = workload == "stage"
                    n = args.frames if staged else args.messages
                    out = k.create_topic(admin, "jit-out", stage.PARTITIONS if staged else 1)
                    before = jvm.read()
                    if staged:
                        got = stage._run(kafka.bootstrap, stage_src, out, n, variant)
                    else:
                        transport = None if variant == k.LOOP else "confluent"
                        got = k._passthrough_run(
                            kafka.bootstrap, pass_src, out, n, variant, transport, False
                        )
                    after = jvm.read()
                    k.delete_topics(admin, [out])
                    compiler = (after[0] - before[0]) / n * 1e6
                    other = (after[1] - before[1]) / n * 1e6
                    runs.setdefault((label, kind), []).append((got["rate"], compiler, other))
                    print(
                        f"round {r} [{kind}] {label}: {got['rate']:.1f} records/s; broker µs "
                        f"CPU/record: compiler {compiler:.1f}, the rest {other:.1f}",
                        flush=True,
                    )
                compiler, other = jvm.read()
                print(
                    f"round {r} [{kind}] broker CPU since start: compiler {compiler:.1f} s, "
                    f"the rest {other:.1f} s ({time.strftime('%H:%M:%S')})",
                    flush=True,
                )

    def med(xs: list[tuple[float, float, float]], i: int) -> float:
        return statistics.median(x[i] for x in xs)

    for label, _, _ in plan:
        c1, tiered = runs[(label, C1)], runs[(label, TIERED)]
        ratios = [a[0] / b[0] for a, b in zip(c1, tiered, strict=True)]
        print(
            f"{label}: records/s C1 {med(c1, 0):.1f}, tiered {med(tiered, 0):.1f}; C1 over "
            f"tiered, paired: {[round(x, 2) for x in ratios]} (median "
            f"{statistics.median(ratios):.2f}); broker µs/record (compiler + rest): C1 "
            f"{med(c1, 1):.1f} + {med(c1, 2):.1f}, tiered {med(tiered, 1):.1f} + "
            f"{med(tiered, 2):.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
