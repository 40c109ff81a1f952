"""One PNG per workload (matplotlib, optional: without it the run only says so)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._plan import TITLES

COLORS = {
    "ours": "tab:blue",
    "ours_memory": "tab:cyan",
    "npm": "tab:red",
    "plain": "tab:gray",
    "plain_task": "dimgray",
    "node_plain": "silver",
    "raw": "tab:olive",
    "raw_batched": "tab:green",
    "middleware": "tab:blue",
    "explicit": "tab:purple",
    "ours_http": "tab:purple",
}
LABELS = {
    "ours": "ours (Redis)",
    "ours_memory": "ours (in memory)",
    "npm": "npm original",
    "plain": "plain (Python)",
    "plain_task": "plain, producer task (Python)",
    "node_plain": "plain (Node)",
    "raw": "raw redis-py, per chunk",
    "raw_batched": "raw redis-py, batched",
    "ours_http": "ours through HTTP",
}


def _short(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.3g}M"
    if value >= 1e4:
        return f"{value / 1e3:.3g}k"
    return f"{value:.3g}"


def _bars(ax: Any, groups: list[str], series: dict[str, list[float | None]], title: str,
          *, log: bool = False) -> None:
    n = max(1, len(series))
    width = 0.8 / n
    for k, (name, values) in enumerate(series.items()):
        xs = [g + (k - (n - 1) / 2) * width for g in range(len(groups))]
        ys = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, ys, width, label=LABELS.get(name, name),
                      color=COLORS.get(name))
        ax.bar_label(bars, labels=[_short(v) if v else "" for v in values], fontsize=6,
                     rotation=90, padding=2)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_title(title, fontsize=9)
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.25)


def draw(summary: dict[str, Any], out_dir: Path, stem: str, subtitle: str) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    def save(fig: Any, name: str) -> None:
        fig.suptitle(f"{TITLES[name]}\n{subtitle}", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"{stem}-{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written[name] = str(path)

    w1 = summary.get("w1")
    if w1:
        sizes = sorted(w1, key=int)
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
        impls = ["ours", "ours_memory", "npm", "plain", "plain_task", "node_plain",
                 "raw_batched", "raw"]
        for ax, (path, title) in zip(axes, (
            ("chunks_per_s", "chunks/s (log)"),
            ("redis.round_trips_per_chunk", "Redis round trips per chunk"),
            ("latency_ms.p99", "latency p99, yield to original reader (ms, log)"),
        ), strict=True):
            for impl in impls:
                xs = [int(s) for s in sizes if path in w1[s].get(impl, {})]
                ys = [w1[s][impl][path] for s in sizes if path in w1[s].get(impl, {})]
                if xs:
                    ax.plot(xs, ys, marker="o", label=LABELS.get(impl, impl),
                            color=COLORS.get(impl))
            ax.set_xscale("log")
            if path != "redis.round_trips_per_chunk":
                ax.set_yscale("log")
            ax.set_xlabel("concurrent streams")
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        save(fig, "w1")
    w2 = summary.get("w2")
    if w2:
        modes = [m for m in ("same", "cross") if m in w2]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, p in zip(axes, ("p50", "p99"), strict=True):
            series = {impl: [w2[m].get(impl, {}).get(f"lag_ms.{p}") for m in modes]
                      for impl in ("ours", "npm")}
            _bars(ax, [f"{m} process" for m in modes], series, f"follower lag {p} (ms)")
        axes[0].legend(fontsize=7)
        save(fig, "w2")
    w3 = summary.get("w3")
    if w3:
        impls = [i for i in ("ours", "npm", "ours_http") if i in w3]
        groups = ["single p50", "single p99", "burst p50", "burst p99"]
        paths = ["ttfb_ms.p50", "ttfb_ms.p99", "burst_ttfb_ms.p50", "burst_ttfb_ms.p99"]
        fig, ax = plt.subplots(1, 1, figsize=(9, 4))
        _bars(ax, groups, {i: [w3[i].get(p) for p in paths] for i in impls},
              "time to first chunk of a resume (ms, log)", log=True)
        ax.legend(fontsize=7)
        save(fig, "w3")
    w4 = summary.get("w4")
    if w4:
        clients = sorted(w4, key=int)
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for ax, (path, title, log) in zip(axes, (
            ("chunks_per_s", "events/s", False),
            ("latency_ms.p50", "latency p50 (ms, log)", True),
            ("latency_ms.p99", "latency p99 (ms, log)", True),
        ), strict=True):
            series = {v: [w4[c].get(v, {}).get(path) for c in clients]
                      for v in ("plain", "middleware", "explicit")}
            _bars(ax, [f"{c} client(s)" for c in clients], series, title, log=log)
        axes[0].legend(fontsize=7)
        save(fig, "w4")
    w5 = summary.get("w5")
    if w5:
        impls = [i for i in ("ours", "plain", "raw") if i in w5]
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        _bars(axes[0], ["producer"],
              {i: [w5[i].get("redis.producer_round_trips_per_chunk",
                             w5[i].get("redis.round_trips_per_chunk"))] for i in impls},
              "Redis round trips per chunk")
        _bars(axes[1], ["CPU"], {i: [w5[i].get("cpu_us_per_chunk")] for i in impls},
              "process CPU per chunk (us)")
        _bars(axes[2], ["p50", "p99"],
              {i: [w5[i].get("latency_ms.p50"), w5[i].get("latency_ms.p99")] for i in impls},
              "latency to the original reader (ms, log)", log=True)
        axes[0].legend(fontsize=7)
        save(fig, "w5")
    mem = summary.get("memory")
    if mem and (mem.get("processes") or mem.get("redis")):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        procs = mem.get("processes", {})
        counts = sorted(procs, key=int)
        series: dict[str, list[float | None]] = {}
        for impl in ("ours", "ours_memory", "plain"):
            series[impl] = [procs[c].get(impl, {}).get("kb_per_stream") for c in counts]
        series["follower (ours)"] = [procs[c].get("ours", {}).get("kb_per_follower")
                                     for c in counts]
        _bars(axes[0], [f"{int(c):,} streams" for c in counts], series,
              "process memory per running stream / follower (KB)")
        axes[0].axhline(20, color="tab:red", linestyle="--", linewidth=0.8)
        axes[0].legend(fontsize=7)
        redis = mem.get("redis", {})
        sizes = sorted(redis, key=int)
        _bars(axes[1], [f"{s} B chunks" for s in sizes],
              {i: [redis[s].get(i, {}).get("redis_bytes_per_stored_kb") for s in sizes]
               for i in ("ours", "raw")},
              "Redis memory per KB of chunks stored (bytes)")
        axes[1].legend(fontsize=7)
        save(fig, "memory")
    return written
