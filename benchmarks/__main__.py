"""``python -m benchmarks [--quick]``: run the suite, write JSON, PNG and Markdown results.

Full mode (the default) takes about 10-15 minutes on a 2-core machine and writes to
``benchmarks/results/``; ``--quick`` (under 2 minutes, for CI) writes to
``benchmarks/results/tmp/`` (git-ignored). Kafka benchmarks use ``--bootstrap``, else
FOGVERSE_BOOTSTRAP, else a local broker started for the run (after the pool benchmarks,
so that its JVM is not competing with them).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    machine_info,
    now_iso,
    result,
    validate,
    validate_summary,
    write_json,
    write_text_atomic,
)

logger = logging.getLogger("benchmarks")

RESULTS = Path(__file__).resolve().parent / "results"
SUITES = ("pool", "detect", "kafka")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0].strip("`")
    )
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run (< 2 min)")
    p.add_argument(
        "--only",
        default=",".join(SUITES),
        help="comma-separated suites to run: pool, detect, kafka (default: all)",
    )
    p.add_argument("--out", type=Path, help="results directory (default: benchmarks/results/)")
    p.add_argument("--bootstrap", help="Kafka host:port (default: FOGVERSE_BOOTSTRAP or local)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--replot",
        action="store_true",
        help="run nothing: redo the targets, latest.md and plots from the JSON in --out",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default="auto",
        help="progress bars on stderr (auto: only on a terminal)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log FogVerse and Kafka too")
    return p


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logger.setLevel(logging.INFO)
    logging.getLogger("benchmarks").setLevel(logging.INFO)


def run(
    *,
    quick: bool,
    out: Path,
    suites: tuple[str, ...] = SUITES,
    bootstrap: str | None = None,
    plots: bool = True,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Run ``suites`` and write every result into ``out``; returns the summary document."""
    started, t0 = now_iso(), time.perf_counter()
    machine = machine_info()  # before the run: its load average is the one that matters
    out.mkdir(parents=True, exist_ok=True)
    docs: list[dict[str, Any]] = []

    def keep(doc: dict[str, Any]) -> None:
        docs.append(doc)
        write_json(out / f"{doc['benchmark']}.json", doc)
        logger.info("wrote %s.json (%.0f s)", doc["benchmark"], doc["duration_s"])

    if "pool" in suites:
        from benchmarks.pool import bench_pool

        for doc in bench_pool(quick, show_progress=show_progress):
            keep(doc)
    if "detect" in suites:
        from benchmarks.detect import bench_detect

        for doc in bench_detect(quick, show_progress=show_progress):
            keep(doc)
    if "kafka" in suites:
        from benchmarks.kafka import bench_passthrough, bench_pipeline, bench_scaling, broker
        from benchmarks.stage import bench_stage

        with broker(bootstrap) as servers:
            keep(bench_pipeline(servers, quick, show_progress=show_progress))
            keep(bench_scaling(servers, quick, show_progress=show_progress))
            keep(bench_passthrough(servers, quick, show_progress=show_progress))
            keep(bench_stage(servers, quick, show_progress=show_progress))

    summary = _summarize(docs, quick, suites, machine, started, time.perf_counter() - t0)
    _publish(summary, docs, out, plots)
    return summary


def _summarize(
    docs: list[dict[str, Any]],
    quick: bool,
    suites: tuple[str, ...],
    machine: dict[str, Any],
    started: str,
    duration: float,
    command: str | None = None,
) -> dict[str, Any]:
    from benchmarks.report import targets

    checked = targets(docs)
    summary = result(
        "summary",
        mode="quick" if quick else "full",
        description="the suite's targets and the result files of this run",
        params={
            "suites": list(suites),
            "command": command or " ".join(["python -m benchmarks", *sys.argv[1:]]),
        },
        metrics={
            "targets_met": sum(1 for t in checked if t["met"]),
            "targets_missed": sum(1 for t in checked if t["met"] is False),
            "targets_not_run": sum(1 for t in checked if t["met"] is None),
        },
        baselines={},
        machine=machine,
        started=started,
        duration_s=duration,
    )
    summary["targets"] = checked
    summary["results"] = [f"{d['benchmark']}.json" for d in docs]
    return summary


def _publish(summary: dict[str, Any], docs: list[dict[str, Any]], out: Path, plots: bool) -> None:
    """Write the plots, summary.json and latest.md."""
    from benchmarks.report import markdown

    if plots:
        from benchmarks.plots import plot_all

        summary["plots"] = [p.name for p in plot_all(docs, out)]
    problems = validate_summary(summary)
    if problems:
        raise ValueError(f"malformed summary: {problems}")
    write_json(out / "summary.json", summary)
    write_text_atomic(out / "latest.md", markdown(summary, docs))


def replot(out: Path, plots: bool = True) -> dict[str, Any]:
    """Redo the targets, plots and latest.md of a finished run from its JSON files."""
    old = json.loads((out / "summary.json").read_text())
    docs = []
    for name in old["results"]:
        doc = json.loads((out / name).read_text())
        problems = validate(doc)
        if problems:
            raise ValueError(f"{name} is malformed: {problems}")
        docs.append(doc)
    summary = _summarize(
        docs,
        old["mode"] == "quick",
        tuple(old["params"]["suites"]),
        old["machine"],
        old["started"],
        old["duration_s"],
        command=old["params"]["command"],
    )
    _publish(summary, docs, out, plots)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    suites = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(suites) - set(SUITES)
    if unknown or not suites:
        _parser().error(f"--only takes {', '.join(SUITES)}; got {args.only!r}")
    out = args.out or (RESULTS / "tmp" if args.quick else RESULTS)
    show = {"auto": None, "on": True, "off": False}[args.progress]
    if args.replot:
        summary = replot(out, plots=not args.no_plots)
        print((out / "latest.md").read_text())
        return 0
    summary = run(
        quick=args.quick,
        out=out,
        suites=suites,
        bootstrap=args.bootstrap,
        plots=not args.no_plots,
        show_progress=show,
    )
    print((out / "latest.md").read_text())
    print(f"results in {out}/ ({summary['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
