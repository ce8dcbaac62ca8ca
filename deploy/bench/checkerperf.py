"""checker_events_per_s: the race checker's judge_history over a history of about 1,000,000 events
recorded from the simulator (sim/: the real services on virtual time, resv-fence, the standard
workload's 4 importers and 8 buffers, seed 1; race-free), each repetition in a fresh interpreter so
that its peak RSS is its own (checker/bench.py). The history is recorded once per benchmark run and
judged by nothing but the measured checker. Reported per second of wall clock and per second of the
judge's own CPU time: on a shared 2-core machine under load the first measures the scheduler as
much as the checker, so the target is judged on the second. Memory flat in the history's length:
the same judge over a history a tenth as long must peak at (nearly) the same RSS."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Callable

from checker import bench as cbench
from deploy.bench.stats import summary
from deploy.options import RunParams

WORKLOAD = dict(strategy="resv-fence", importers=4, buffers=8, seed=1)
CALIBRATION_S = 0.5          # virtual seconds of the short run that gives the events per second
_SVC = re.compile(rb'\{"svc": ?"([^"]+)"')   # every event line begins with its service


def record(run_dir: Path, events: int) -> int:
    """Simulate WORKLOAD for long enough to write about `events` events, as the services wrote them,
    into run_dir/events/<service>.jsonl; returns the number written. Nothing is judged."""
    from sim.run import simulate_in_memory

    short = simulate_in_memory(RunParams(**WORKLOAD, duration=CALIBRATION_S), judge=False)
    per_s = len(short.history) / CALIBRATION_S
    run = simulate_in_memory(RunParams(**WORKLOAD, duration=max(CALIBRATION_S, events / per_s)), judge=False)
    files: dict[bytes, Any] = {}
    (run_dir / "events").mkdir(parents=True, exist_ok=True)
    try:
        for line in run.history:            # merged in history order: each service's in its own
            m = _SVC.match(line)
            assert m is not None, line[:200]
            f = files.get(m[1])
            if f is None:
                f = files[m[1]] = open(run_dir / "events" / f"{m[1].decode()}.jsonl", "wb", buffering=1 << 20)
            f.write(line)
    finally:
        for f in files.values():
            f.close()
    return len(run.history)


def measure(reps: int, events: int = 1_000_000,
            progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dmb-checker-") as tmp:
        runs = {}
        for label, n in (("full", events), ("tenth", events // 10)):
            d = Path(tmp) / label
            d.mkdir()
            got = record(d, n)
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
