"""dmabuf-emu bench: the emulator measured against its two floors, in the same run.

Floors: a raw pyzmq DEALER/ROUTER round trip of a msgpack message between two processes over
the services' transport (ipc), and a raw numpy copy between shared-memory segments. Every other
figure is a ratio to one of them, taken within the same repetition, so the figures hold on a
noisy shared machine; each is the median of several repetitions with min and max beside it.
See docs/benchmarks.md and the modules: rtt, eventlog, mem, runs, scaling, checkerperf, simperf, exploreperf.
Not part of the test suite's pass/fail (tests/test_bench_smoke.py checks only the structure).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from deploy.bench.report import render_md, targets


@dataclass(frozen=True)
class BenchConfig:
    rtt_reps: int = 9
    rtt_samples: int = 3000
    breakdown_calls: int = 5000
    eventlog_reps: int = 9
    eventlog_events: int = 20000
    mem_reps: int = 9
    move_reps: int = 3
    move_duration_s: float = 3.0
    scaling_reps: int = 5
    scaling_window_s: float = 2.0
    scaling_counts: tuple[int, ...] = (1, 2, 4, 8, 16)
    checker_reps: int = 5
    checker_events: int = 1_000_000
    race_seeds: int = 5
    race_duration_s: float = 3.0
    sim_reps: int = 3
    sim_duration_s: float = 3.0
    sim_rss_s: tuple[float, float] = (3.0, 30.0)
    explore_reps: int = 3
    explore_schedules: int = 300
    explore_seeds: int = 20
    explore_cap: int = 300
    parts: tuple[str, ...] = ("rtt", "eventlog", "mem", "scaling", "checker", "predict", "moves", "races", "sim",
                              "explore")


FULL = BenchConfig()
QUICK = BenchConfig(rtt_reps=5, rtt_samples=800, eventlog_reps=5, eventlog_events=5000, mem_reps=5, move_reps=2, move_duration_s=1.0,
                    scaling_reps=3, scaling_window_s=0.75, checker_reps=2, checker_events=300_000, race_seeds=5,
                    race_duration_s=1.0, sim_reps=1, sim_rss_s=(1.0, 10.0), explore_reps=1, explore_schedules=100,
                    explore_seeds=5, explore_cap=100)
PARTS = FULL.parts


def run_bench(cfg: BenchConfig, out: Path, *, command: str = "",
              progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Measure every part of `cfg`, write out/bench.json and out/bench.md, return the results."""
    from deploy.bench import (checkerperf, eventlog, exploreperf, mem, predict as predictperf, rtt, runs, scaling,
                              simperf)
    from runtime import shm

    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    figures: dict[str, Any] = {}
    timings: dict[str, float] = {}
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("rtt", lambda: {**rtt.measure(cfg.rtt_reps, cfg.rtt_samples), **rtt.breakdown(cfg.breakdown_calls)}),
        ("eventlog", lambda: eventlog.measure(cfg.eventlog_reps, cfg.eventlog_events)),
        ("mem", lambda: mem.measure(cfg.mem_reps)),
        ("scaling", lambda: scaling.measure(cfg.scaling_reps, cfg.scaling_window_s, cfg.scaling_counts, progress)),
        ("checker", lambda: checkerperf.measure(cfg.checker_reps, cfg.checker_events, progress)),
        ("predict", lambda: predictperf.measure(cfg.checker_reps, cfg.checker_events, progress)),
        ("moves", lambda: runs.move_latency(cfg.move_reps, cfg.move_duration_s, progress=progress)),
        ("races", lambda: runs.time_to_first_race(cfg.race_seeds, cfg.race_duration_s, progress=progress)),
        ("sim", lambda: simperf.measure(cfg.sim_reps, cfg.sim_duration_s, *cfg.sim_rss_s, progress=progress)),
        ("explore", lambda: exploreperf.measure(cfg.explore_reps, cfg.explore_schedules, cfg.explore_seeds,
                                                cfg.explore_cap, progress=progress)),
    ]
    for name, step in steps:
        if name not in cfg.parts:
            continue
        progress(f"bench: {name} ...")
        t = time.monotonic()
        figures.update(step())
        timings[name] = round(time.monotonic() - t, 2)
    result = {
        "meta": {"command": command, "config": asdict(cfg), "cpus": os.cpu_count(),
                 "python": platform.python_version(), "platform": platform.platform(),
                 "loadavg_at_end": list(os.getloadavg()), "seconds": round(time.monotonic() - began, 1),
                 "seconds_by_part": timings, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "figures": figures,
    }
    result["targets"] = targets(figures)
    leftover = [n for n in shm.existing() if n.startswith("dmabuf-bench")]
    if leftover:
        result["meta"]["leftover_segments"] = leftover
    (out / "bench.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / "bench.md").write_text(render_md(result))
    return result


def stderr_progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
