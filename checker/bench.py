"""`python -m checker.bench --events 1000000`: how fast the checker judges a realistic history.

Not a test. It generates a synthetic, race-free history (checker.synth, fenced moves, several
importers) as a run's events/ directory in a temporary directory, then measures, each in a fresh
interpreter so its peak RSS is its own:
- merge: merge_history of the per-service files;
- judge: judge_history alone (the figure the target is about: >= 200,000 events/s);
- check_run without merging: judge + trace.json + report.json + report.md in one pass.
It prints events per second and peak RSS for each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from checker.synth import SerialSchedule, SynthConfig, write_events_dir


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


def _measure(phase: str, run_dir: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "checker.bench", "--phase", phase, str(run_dir)],
                         check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def synth_config(events: int, *, seed: int = 1, importers: int = 4, buffers: int = 32) -> SynthConfig:
    """The benchmark's history: race-free, fenced moves, `importers` devices, about `events` events."""
    return SynthConfig(importers=importers, buffers=buffers, vram_slots=max(2, buffers * 2 // 3),
                       sys_slots=buffers * 2, steps=10**12, max_events=events, seed=seed,
                       move_prob=0.02, max_moves=3)


def generate(run_dir: Path, cfg: SynthConfig) -> int:
    """Write the history as run_dir/events/*.jsonl; returns the number of events."""
    return write_events_dir(SerialSchedule(cfg).events(), run_dir / "events")


def measure(phase: str, run_dir: Path) -> dict[str, Any]:
    """One phase (merge, judge, check) in a fresh interpreter, so its peak RSS is its own."""
    return _measure(phase, run_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m checker.bench")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--importers", type=int, default=4)
    ap.add_argument("--buffers", type=int, default=32)
    ap.add_argument("--keep", type=Path, default=None, help="generate into this directory and keep it")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("run_dir", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase:
        print(json.dumps(_phase(args.phase, args.run_dir)))
        return 0

    cfg = synth_config(args.events, seed=args.seed, importers=args.importers, buffers=args.buffers)
    with tempfile.TemporaryDirectory(prefix="checker-bench-") as tmp:
        run_dir = args.keep or Path(tmp)
        run_dir.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        n = generate(run_dir, cfg)
        gen_s = time.perf_counter() - t
        size = sum(p.stat().st_size for p in (run_dir / "events").glob("*.jsonl"))
        print(f"generated {n} events ({size / 1e6:.1f} MB, {cfg.importers} importers, {cfg.buffers} buffers) "
              f"in {gen_s:.1f} s")
        results = [_measure(p, run_dir) for p in ("merge", "judge", "check")]
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
