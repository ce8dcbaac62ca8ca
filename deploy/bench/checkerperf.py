"""checker_events_per_s: the race checker's judge_history over a generated history of 1,000,000
events (checker.bench: a synthetic, race-free run with fenced moves and 4 importers), each
repetition in a fresh interpreter so that its peak RSS is its own. Reported per second of wall
clock and per second of the judge's own CPU time: on a shared 2-core machine under load the first
measures the scheduler as much as the checker, so the target is judged on the second. Memory flat in the history's
length: the same judge over a history a tenth as long must peak at (nearly) the same RSS."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from checker import bench as cbench
from deploy.bench.stats import summary


def measure(reps: int, events: int = 1_000_000,
            progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dmb-checker-") as tmp:
        runs = {}
        for label, n in (("full", events), ("tenth", events // 10)):
            d = Path(tmp) / label
            d.mkdir()
            got = cbench.generate(d, cbench.synth_config(n))
            cbench.measure("merge", d)
            runs[label] = (d, got)
        full = [cbench.measure("judge", runs["full"][0]) for _ in range(reps)]
        tenth = [cbench.measure("judge", runs["tenth"][0]) for _ in range(reps)]
    out["checker_events_per_s"] = {**summary((r["events_per_s"] for r in full), "events/s"),
                                   "events": runs["full"][1]}
    out["checker_events_per_cpu_s"] = {**summary((r["events_per_cpu_s"] for r in full), "events/CPU s"),
                                       "events": runs["full"][1]}
    out["checker_peak_rss_mb"] = {**summary((r["peak_rss_mb"] for r in full), "MB"), "events": runs["full"][1]}
    out["checker_peak_rss_tenth_mb"] = {**summary((r["peak_rss_mb"] for r in tenth), "MB"),
                                        "events": runs["tenth"][1]}
    out["checker_rss_at_start_mb"] = summary((r["rss_at_start_mb"] for r in full), "MB")
    out["checker_rss_growth_ratio"] = summary(f["peak_rss_mb"] / t["peak_rss_mb"] for f, t in zip(full, tenth))
    progress(f"checker: {out['checker_events_per_s']['median']:,.0f} events/s "
             f"({out['checker_events_per_cpu_s']['median']:,.0f} per CPU s), peak RSS "
             f"{out['checker_peak_rss_mb']['median']:.1f} MB (a tenth as long: "
             f"{out['checker_peak_rss_tenth_mb']['median']:.1f} MB)")
    return out
