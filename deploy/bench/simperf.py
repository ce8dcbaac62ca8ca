"""The simulator's figures: how much faster than real time it runs, and whether its memory
stays flat as the simulated run gets longer.

- `sim_speedup`: virtual seconds simulated per wall-clock second spent simulating them (the
  world's run, not the checker's judging), on the standard workload (--importers 4 --buffers 8
  --duration 3, default rates, every chunk stamped or verified as in real runs), seed 1.
  `sim_cpu_speedup`: the same per CPU second of the simulating process, which a machine shared
  with other work inflates less. Both are ratios against real time, measured in the same
  repetition.
- `sim_rss_growth_ratio`: peak RSS of a process simulating `long` virtual seconds over that of one
  simulating `short` (each a fresh process writing a run directory, events and decisions
  streamed to disk, then judged): 1.0 is flat.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from deploy.bench.stats import summary

STANDARD = dict(strategy="move-notify", importers=4, buffers=8, seed=1)

_CHILD = """
import json, resource, sys
from pathlib import Path
from deploy.options import RunParams
from sim.run import simulate
r = simulate(RunParams(**json.loads(sys.argv[1])), Path(sys.argv[2]))
print(json.dumps({"rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "events": r.events,
                  "virtual_s": r.outcome.virtual_s}))
"""


def _speed(duration_s: float) -> tuple[float, float, int]:
    from deploy.options import RunParams
    from sim.run import simulate_in_memory

    cpu = time.process_time()
    r = simulate_in_memory(RunParams(**STANDARD, duration=duration_s), judge=False)
    cpu = time.process_time() - cpu
    o = r.outcome
    return o.virtual_s / o.wall_s, o.virtual_s / cpu, o.world.steps


def _rss(duration_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dmb-sim-") as tmp:
        out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps({**STANDARD, "duration": duration_s}), tmp],
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(reps: int, duration_s: float, short_s: float, long_s: float,
            progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    speeds, cpu_speeds, steps = [], [], 0
    for i in range(reps):
        progress(f"bench: sim speed {i + 1}/{reps} ({duration_s:g} virtual s)")
        wall, cpu, steps = _speed(duration_s)
        speeds.append(wall)
        cpu_speeds.append(cpu)
    progress(f"bench: sim memory, {short_s:g} and {long_s:g} virtual s")
    short, long = _rss(short_s), _rss(long_s)
    return {"sim_speedup": summary(speeds, "virtual s / wall s"),
            "sim_cpu_speedup": summary(cpu_speeds, "virtual s / CPU s"),
            "sim_steps_per_virtual_s": round(steps / duration_s),
            "sim_peak_rss_short_mb": round(short["rss_kb"] / 1024, 1),
            "sim_peak_rss_long_mb": round(long["rss_kb"] / 1024, 1),
            "sim_rss_growth_ratio": summary([long["rss_kb"] / short["rss_kb"]]),
            "sim_rss_durations_s": [short_s, long_s],
            "sim_rss_events": [short["events"], long["events"]]}
