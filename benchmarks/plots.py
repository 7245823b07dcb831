"""PNG plots of result documents (matplotlib, no display needed)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

__all__ = ["plot_all", "plot_passthrough", "plot_pipeline", "plot_pool", "plot_scaling"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _subtitle(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    return (
        f"{doc['mode']} mode · {m['cpus']} CPUs · Python {m['python']} · "
        f"load {m['load_average'][0]:.1f} at the end"
    )


def plot_pool(doc: dict[str, Any], path: Path) -> Path:
    """Throughput (or µs per task) against max_running_task, one line per process_number,
    the baselines as horizontal lines."""
    plt = _plt()
    per_task = doc["params"]["workload"] == "trivial"
    key = "us_per_task" if per_task else None

    def value(entry: dict[str, Any]) -> float:
        return entry[key] if key else entry["rate"]["median"]

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ps = sorted({e["process_number"] for e in doc["metrics"]["grid"]})
    for p in ps:
        rows = [e for e in doc["metrics"]["grid"] if e["process_number"] == p]
        ms = [e["max_running_task"] for e in rows]
        ax.plot(ms, [value(e) for e in rows], marker="o", label=f"fogverse, {p} process(es)")
        lows = [e["rate"]["min"] for e in rows]
        highs = [e["rate"]["max"] for e in rows]
        if not per_task:
            ax.fill_between(ms, lows, highs, alpha=0.15)
    styles = {
        "serial": (":", "black"),
        "serial (full-size decode)": (":", "tab:brown"),
        "Pool.imap": ("--", "grey"),
        "ProcessPoolExecutor.map": ("-.", "grey"),
        "arroyo.RunTaskWithMultiprocessing": ("--", "tab:red"),
    }
    for name, entries in doc["baselines"].items():
        for e in entries:
            serial = name.startswith("serial")
            if not serial and e["process_number"] != ps[-1]:
                continue
            label = name if serial else f"{name}, {e['process_number']} processes"
            style, color = styles.get(name, ("--", "grey"))
            ax.axhline(value(e), linestyle=style, color=color, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({e["max_running_task"] for e in doc["metrics"]["grid"]}))
    ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("max_running_task")
    if per_task:
        ax.set_yscale("log")
        ax.set_ylabel("µs per task (lower is better)")
    else:
        ax.set_ylabel("frames/s (median; band: min-max)")
    title = textwrap.fill(f"{doc['benchmark']}: {doc['params']['description']}", 95)
    ax.set_title(f"{title}\n{_subtitle(doc)}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pipeline(doc: dict[str, Any], path: Path) -> Path:
    """Per scenario: each frame's latency over time (top) and consumer lag (bottom)."""
    plt = _plt()
    scenarios = doc["metrics"]["scenarios"]
    fig, axes = plt.subplots(2, len(scenarios), figsize=(4.5 * len(scenarios), 6), squeeze=False)
    for col, (name, s) in enumerate(scenarios.items()):
        top, bottom = axes[0][col], axes[1][col]
        rows = s["latency_samples"]["rows"]
        if rows:
            top.scatter([r[0] for r in rows], [r[1] for r in rows], s=4)
            lat = s["latency_ms"]
            for q, style in (("p50", "--"), ("p99", ":")):
                top.axhline(lat[q], linestyle=style, color="grey", label=f"{q} {lat[q]:.0f} ms")
            top.legend(fontsize=8)
        top.set_yscale("log")
        top.set_title(f"{name}: {s['delivered_fps']:.1f} frames/s delivered", fontsize=9)
        top.set_xlabel("capture time (s)")
        top.set_ylabel("end-to-end latency (ms)")
        top.grid(alpha=0.3)
        lag = s["lag"]
        cols = lag["columns"]
        t = [r[cols.index("t")] for r in lag["rows"]]
        # Committed lag saw-tooths with the commit interval; "sent - arrived" is exact.
        for label in ("lag_pre", "lag_sink"):
            values = [r[cols.index(label)] for r in lag["rows"]]
            bottom.plot(t, values, label=f"{label} (committed)", linewidth=0.8, alpha=0.6)
        in_flight = [r[cols.index("sent")] - r[cols.index("arrived")] for r in lag["rows"]]
        bottom.plot(t, in_flight, label="sent - arrived", color="black", linewidth=1.5)
        bottom.set_xlabel("time (s)")
        bottom.set_ylabel("messages")
        bottom.grid(alpha=0.3)
        bottom.legend(fontsize=8)
    fig.suptitle(f"kafka.pipeline · {_subtitle(doc)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_passthrough(doc: dict[str, Any], path: Path) -> Path:
    """Messages/s per variant (bars: medians, dots: runs) and the profiled node's stages."""
    plt = _plt()
    variants = {**doc["baselines"], **doc["metrics"]["nodes"]}
    profile = doc["metrics"].get("profile")
    fig, axes = plt.subplots(
        1, 2 if profile else 1, figsize=(11 if profile else 6, 4), squeeze=False
    )
    ax = axes[0][0]
    names = list(variants)
    ax.bar(range(len(names)), [v["rate"]["median"] for v in variants.values()], alpha=0.6)
    for i, v in enumerate(variants.values()):
        ax.scatter([i] * len(v["rate"]["runs"]), v["rate"]["runs"], color="black", s=8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("messages/s")
    ax.set_title(f"1 KiB pass-through, at least once\n{_subtitle(doc)}", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    if profile:
        ax = axes[0][1]
        stages = list(profile["stages_us"])
        means = [profile["stages_us"][s]["mean"] for s in stages]
        ax.barh(stages, means)
        ax.set_xscale("log")
        ax.set_xlabel("µs per message (mean)")
        ax.set_title("profiled node: time per stage", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scaling(doc: dict[str, Any], path: Path) -> Path:
    """Cameras into one ParallelConsumer (frames/s, p99, memory) and one camera's top rate
    against max_running_task."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    cams = doc["metrics"]["cameras"]
    n = [r["cameras"] for r in cams]
    ax = axes[0]
    ax.plot(n, [r["offered_fps"] for r in cams], linestyle="--", color="grey", label="offered")
    ax.plot(n, [r["delivered_fps"] for r in cams], marker="o", label="delivered")
    ax.set_xlabel("cameras (30 frames/s each)")
    ax.set_ylabel("frames/s")
    ax.legend(fontsize=8)
    twin = ax.twinx()
    twin.plot(n, [r["latency_ms"]["p99"] or 0 for r in cams], marker="s", color="tab:red")
    twin.set_yscale("log")
    twin.set_ylabel("p99 latency (ms, red)")
    ax.set_title("cameras into one ParallelConsumer", fontsize=9)
    ax = axes[1]
    for key in ("parent", "workers"):
        ax.plot(n, [r["memory_mb"][key] for r in cams], marker="o", label=key)
    ax.set_xlabel("cameras")
    ax.set_ylabel("peak RSS (MB)")
    ax.set_title("memory (parent: all three nodes; workers: summed)", fontsize=9)
    ax.legend(fontsize=8)
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(n)
        ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    tasks = doc["metrics"]["max_running_task"]
    ax = axes[2]
    m = [r["max_running_task"] for r in tasks]
    ax.plot(m, [r["delivered_fps"] for r in tasks], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xticks(m)
    ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("max_running_task")
    ax.set_ylabel("frames/s delivered (one camera, top rate)")
    twin = ax.twinx()
    twin.plot(m, [r["latency_ms"]["p99"] or 0 for r in tasks], marker="s", color="tab:red")
    twin.set_ylabel("p99 latency (ms, red)")
    processes = doc["params"]["processes"]
    ax.set_title(f"top rate vs max_running_task ({processes} processes)", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"kafka.scaling · {_subtitle(doc)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(docs: list[dict[str, Any]], out: Path) -> list[Path]:
    """One PNG per result document, named after its benchmark."""
    paths = []
    for doc in docs:
        name = doc["benchmark"]
        target = out / f"{name.replace('.', '_')}.png"
        if name.startswith("pool.") or name == "detect.fused":
            paths.append(plot_pool(doc, target))
        elif name == "kafka.pipeline":
            paths.append(plot_pipeline(doc, target))
        elif name == "kafka.passthrough":
            paths.append(plot_passthrough(doc, target))
        elif name == "kafka.scaling":
            paths.append(plot_scaling(doc, target))
    return paths
