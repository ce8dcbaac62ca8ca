"""`python -m checker.bench RUN_DIR`: how fast the checker judges a recorded run's history.

Not a test. It copies RUN_DIR/events/ (a real or simulated run's event files, e.g. from
`dmabuf-emu sim --out RUN_DIR`; `dmabuf-emu bench` records a simulated one of a million events:
deploy/bench/checkerperf.py) into a temporary directory, then measures, each in a fresh
interpreter so its peak RSS is its own:
- merge: merge_history of the per-service files;
- judge: judge_history alone (the figure the target is about: >= 200,000 events/s);
- check_run without merging: judge + trace.json + report.json + report.md in one pass.
It prints events per second and peak RSS for each. The checker imports nothing of ours, so the
history comes from outside: it judges what it is given and makes up nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _peak_rss_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child started by a
    # big parent (dmabuf-emu bench) would report the parent's peak instead of its own.
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _phase(phase: str, run_dir: Path) -> dict[str, Any]:
    """Run in the child interpreter: one phase, timed."""
    from checker import check_run, judge_history, merge_history

    rss_before = _peak_rss_mb()
    t = time.perf_counter()
    cpu = time.process_time()
    if phase == "merge":
        n = merge_history(run_dir / "events", run_dir / "history.jsonl")
    elif phase == "judge":
        n = judge_history(run_dir / "history.jsonl")["events"]
    elif phase == "check":
        n = check_run(run_dir, merge=False)["events"]
    else:
        raise ValueError(phase)
    dt = time.perf_counter() - t
    cpu = time.process_time() - cpu
    return {"phase": phase, "events": n, "seconds": dt, "events_per_s": n / dt if dt else None,
            "cpu_seconds": cpu, "events_per_cpu_s": n / cpu if cpu else None,
            "peak_rss_mb": _peak_rss_mb(), "rss_at_start_mb": rss_before}


def measure(phase: str, run_dir: Path) -> dict[str, Any]:
    """One phase (merge, judge, check) in a fresh interpreter, so its peak RSS is its own."""
    out = subprocess.run([sys.executable, "-m", "checker.bench", "--phase", phase, str(run_dir)],
                         check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m checker.bench",
                                 description="Time the checker on a recorded run's events/ (copied: the run is not touched).")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("run_dir", type=Path, help="a run directory with events/*.jsonl")
    args = ap.parse_args(argv)
    if args.phase:
        print(json.dumps(_phase(args.phase, args.run_dir)))
        return 0
    events = args.run_dir / "events"
    if not any(events.glob("*.jsonl")):
        print(f"checker.bench: no events/*.jsonl in {args.run_dir}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="checker-bench-") as tmp:
        run_dir = Path(tmp)
        shutil.copytree(events, run_dir / "events")
        size = sum(p.stat().st_size for p in (run_dir / "events").glob("*.jsonl"))
        print(f"judging {args.run_dir}: {size / 1e6:.1f} MB of events")
        results = [measure(p, run_dir) for p in ("merge", "judge", "check")]
        for r in results:
            print(f"{r['phase']:>6}: {r['events']} events in {r['seconds']:.2f} s = "
                  f"{r['events_per_s']:,.0f} events/s, peak RSS {r['peak_rss_mb']:.1f} MB "
                  f"(interpreter + imports: {r['rss_at_start_mb']:.1f} MB)")
        trace = run_dir / "trace.json"
        if trace.exists():
            print(f" trace.json {trace.stat().st_size / 1e6:.1f} MB; report.json races "
                  f"{json.loads((run_dir / 'report.json').read_text())['races']['total']}")
        judge = results[1]
        verdict = "meets" if judge["events_per_s"] >= 200_000 else "MISSES"
        print(f"judge_history {verdict} the 200,000 events/s target on {os.cpu_count()} CPU(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
