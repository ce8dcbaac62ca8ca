"""The campaign's plots (matplotlib, Agg backend, PNG) in OUT/plots/:

- race_rate.png: heatmap of the share of runs with a race, strategy x plan, each cell "k/n";
- first_race_cdf.png: per plan, for each strategy the share of its runs that had raced by time t
  (log time axis; the curve ends at the race rate: runs that never raced keep it below 1);
- map_latency.png: map latency per strategy, one box per plan (all maps of the runs pooled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

DPI = 110


def _cells(summary: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["strategy"], r["plan"]): r for r in summary["rows"]}


def heatmap(summary: dict[str, Any], path: Path) -> Path:
    strategies, plans = summary["strategies"], summary["plans"]
    cells = _cells(summary)
    grid = [[(cells[(s, p)]["race_rate"] if (s, p) in cells else float("nan")) for p in plans] for s in strategies]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(plans), 1.2 + 0.55 * len(strategies)))
    im = ax.imshow(grid, cmap="RdYlGn_r", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(plans)), plans)
    ax.set_yticks(range(len(strategies)), strategies)
    ax.set_xlabel("fault plan")
    for i, s in enumerate(strategies):
        for j, p in enumerate(plans):
            r = cells.get((s, p))
            if r is None:
                continue
            rate = r["race_rate"] or 0.0
            ax.text(j, i, f"{r['runs_with_race']}/{r['runs']}", ha="center", va="center",
                    color="white" if rate > 0.75 or rate < 0.25 else "black", fontsize=10)
    fig.colorbar(im, ax=ax, label="share of runs with a race")
    ax.set_title("Runs with at least one race (strategy x fault plan)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _colors(strategies: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {s: cmap(i % 10) for i, s in enumerate(strategies)}


def first_race_cdf(summary: dict[str, Any], path: Path) -> Path:
    strategies, plans = summary["strategies"], summary["plans"]
    cells = _cells(summary)
    colors = _colors(strategies)
    firsts = [t for r in summary["rows"] for t in r["first_race_s"]]
    tmax = max(firsts + [d["duration_s"] or 0 for d in summary["runs"]] + [0.1])
    # races tend to come early: a log time axis from a little before the first one to the run's end
    tmin = max(1e-3, min(min(firsts, default=tmax / 100), tmax / 100) / 2)
    fig, axes = plt.subplots(1, len(plans), figsize=(4.2 * len(plans), 3.8), sharey=True, squeeze=False)
    for ax, p in zip(axes[0], plans):
        never = []
        for s in strategies:
            r = cells.get((s, p))
            if r is None:
                continue
            times = r["first_race_s"]
            if not times:
                never.append(s)
                continue
            xs = [tmin] + [max(t, tmin) for t in times] + [tmax]
            ys = [0.0] + [(i + 1) / r["runs"] for i in range(len(times))] + [len(times) / r["runs"]]
            ax.step(xs, ys, where="post", color=colors[s], label=s, linewidth=1.8)
        ax.set_title(f"plan: {p}")
        ax.set_xlabel("seconds into the workload (log scale)")
        ax.set_xscale("log")
        ax.set_xlim(tmin, tmax)
        ax.set_ylim(-0.02, 1.05)
        ax.grid(alpha=0.3)
        if never:
            ax.text(0.98, 0.02, "never raced:\n" + "\n".join(never), transform=ax.transAxes, ha="right",
                    va="bottom", fontsize=8, color="dimgray")
    axes[0][0].set_ylabel("share of runs raced by then")
    raced = [s for s in strategies if any(r["first_race_s"] for r in summary["rows"] if r["strategy"] == s)] or strategies
    handles = [Line2D([], [], color=colors[s], linewidth=1.8) for s in raced]
    ncol = min(len(raced), 7)
    rows = -(-len(raced) // ncol)
    fig.legend(handles, raced, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle("Time to the first race: share of runs that had raced by then")
    fig.tight_layout(rect=(0, 0.03 + 0.05 * rows, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def map_latency(summary: dict[str, Any], path: Path) -> Path:
    strategies, plans = summary["strategies"], summary["plans"]
    lat = summary.get("_latencies", {})
    cells = _cells(summary)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(strategies) * max(1, len(plans)) * 0.55 + 2), 4.2))
    width = 0.8 / max(1, len(plans))
    cmap = plt.get_cmap("Set2")
    for j, p in enumerate(plans):
        data, pos = [], []
        for i, s in enumerate(strategies):
            samples = lat.get(f"{s}\t{p}")
            if not samples and (s, p) in cells and cells[(s, p)]["map_p50_us"] is not None:
                # no events: the pooled percentiles stand in (p50 as the box, p99 as the whisker)
                r = cells[(s, p)]
                samples = [r["map_p50_us"], r["map_p99_us"] or r["map_p50_us"]]
            if samples:
                data.append(samples)
                pos.append(i - 0.4 + width * (j + 0.5))
        if data:
            bp = ax.boxplot(data, positions=pos, widths=width * 0.9, whis=(1, 99), showfliers=False,
                            patch_artist=True, manage_ticks=False)
            for box in bp["boxes"]:
                box.set_facecolor(cmap(j % 8))
            for med in bp["medians"]:
                med.set_color("black")
    ax.set_xticks(range(len(strategies)), strategies, rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("map latency (us), log scale")
    ax.set_title("Map latency per strategy\n(box: p25-p75, line: median, whiskers: p1-p99; all maps pooled)",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend([plt.Rectangle((0, 0), 1, 1, facecolor=cmap(j % 8)) for j in range(len(plans))],
              [f"plan: {p}" for p in plans], fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def write_plots(summary: dict[str, Any], plots_dir: Path) -> list[Path]:
    plots_dir.mkdir(parents=True, exist_ok=True)
    return [heatmap(summary, plots_dir / "race_rate.png"),
            first_race_cdf(summary, plots_dir / "first_race_cdf.png"),
            map_latency(summary, plots_dir / "map_latency.png")]
