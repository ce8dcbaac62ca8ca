"""predict_events_per_s: `check --predict`'s pass (checker/predict.py) over the same simulated
history as checker_events_per_s (deploy/bench/checkerperf.py records it: resv-fence, 4 importers,
8 buffers, seed 1), each repetition in a fresh interpreter so its peak RSS is its own. Per second
of the pass's own CPU time (the target: >= 200,000), and per second of wall clock beside it.
Memory flat in the history's length: the pass over a history a tenth as long peaks at (nearly)
the same RSS (`predict_rss_growth_ratio`, full over tenth)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from deploy.bench import checkerperf
from deploy.bench.stats import summary

_CHILD = r"""
import json, sys, time
from checker.predict import predict_history
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
c0, w0 = time.process_time(), time.perf_counter()
p = predict_history(sys.argv[1])
print(json.dumps({"events": p["events"], "cpu_s": time.process_time() - c0,
                  "wall_s": time.perf_counter() - w0, "rss_mb": rss(), "candidates": p["candidates"]}))
"""


def _once(history: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(history)], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    return json.loads(out.stdout)


def measure(reps: int, events: int = 1_000_000,
            progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    from checker.history import merge_history
    with tempfile.TemporaryDirectory(prefix="dmb-predict-") as tmp:
        hist = {}
        for label, n in (("full", events), ("tenth", events // 10)):
            d = Path(tmp) / label
            d.mkdir()
            checkerperf.record(d, n)
            merge_history(d / "events", d / "history.jsonl")
            hist[label] = d / "history.jsonl"
        runs = []
        for i in range(reps):
            progress(f"bench: predict {i + 1}/{reps}")
            runs.append(_once(hist["full"]))
        tenth = _once(hist["tenth"])
    cpu = [r["events"] / r["cpu_s"] for r in runs]
    wall = [r["events"] / r["wall_s"] for r in runs]
    rss = max(r["rss_mb"] for r in runs)
    return {"predict_events_per_s": summary(cpu), "predict_events_per_wall_s": summary(wall),
            "predict_events": runs[0]["events"], "predict_candidates": runs[0]["candidates"],
            "predict_peak_rss_mb": summary([rss]), "predict_peak_rss_tenth_mb": summary([tenth["rss_mb"]]),
            "predict_rss_growth_ratio": summary([rss / tenth["rss_mb"]])}
