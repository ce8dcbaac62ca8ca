"""The schedule search's figures (sim/explore.py, on the small configuration of `dmabuf-emu explore`).

- `explore_schedules_per_s`: schedules per second of one process (one core) running random
  schedules of pin (no race: every history judged in memory, nothing written), wall clock;
  `explore_schedules_per_cpu_s` the same per CPU second, which a shared machine inflates less.
- `pct_vs_random`: over `seeds` seeds (each the workload's and the search's), the median number of
  schedules to the first move-notify-ack race (its hazard, the map reply that crosses
  move_notify) under random, divided by the same median under PCT at explore's default depth
  (2). Capped at `cap` schedules a seed; every seed's count and the medians, and the same ratio
  at depths 1 and 3, are in `pct_vs_random_medians`.
- `exhaustive_resv_fence_s`: the exhaustive search of resv-fence, bound 2, no faults, on one core
  (wall clock; `exhaustive_resv_fence_cpu_s` in CPU seconds), and how many schedules it made.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from deploy.bench.stats import summary

SMALL = dict(importers=2, buffers=2, buffer_size=4096, vram_size=4096, queue_depth=1, dma_ms=2.0, think_ms=0.5,
             move_rate=500.0, duration=0.05)


def small(strategy: str, seed: int = 1) -> Any:
    from deploy.options import RunParams
    from sim.options import SimOptions
    from sim.search.trial import Config
    return Config(RunParams(strategy=strategy, seed=seed, **SMALL), SimOptions(network="chosen", jobs=2, moves=2))


def schedules_per_s(n: int) -> tuple[float, float]:
    from sim.search.random import RandomChooser
    from sim.search.trial import run_trial
    cfg = small("pin")
    run_trial(cfg, RandomChooser(1, 0))            # imports and caches, not measured
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(1, n + 1):
        run_trial(cfg, RandomChooser(1, i))
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def first_race(strategy: str, seed: int, search: str, cap: int, depth: int = 2) -> int:
    """Schedules until the first race (cap + 1 when none within cap)."""
    from sim.search.pct import PctChooser
    from sim.search.random import RandomChooser
    from sim.search.trial import SearchChooser, run_trial
    cfg = small(strategy, seed)
    k = run_trial(cfg, SearchChooser(0)).window_steps
    for i in range(1, cap + 1):
        chooser = RandomChooser(seed, i) if search == "random" else PctChooser(seed, i, depth, k)
        if run_trial(cfg, chooser).races:
            return i
    return cap + 1


def exhaustive_seconds(strategy: str = "resv-fence", bound: int = 2) -> tuple[float, float, int]:
    from sim.search import exhaustive
    cfg = small(strategy)
    wall, cpu, n = time.perf_counter(), time.process_time(), 0
    for trial, _ in exhaustive.explore(cfg, bound):
        n += not trial.blocked
    return time.perf_counter() - wall, time.process_time() - cpu, n


def measure(reps: int, schedules: int, seeds: int, cap: int,
            progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    walls, cpus = [], []
    for i in range(reps):
        progress(f"bench: explore speed {i + 1}/{reps} ({schedules} schedules)")
        w, c = schedules_per_s(schedules)
        walls.append(w)
        cpus.append(c)
    firsts: dict[str, list[int]] = {"random": [], "pct": [], "pct depth 1": [], "pct depth 3": []}
    for s in range(1, seeds + 1):
        progress(f"bench: pct vs random, seed {s}/{seeds}")
        firsts["random"].append(first_race("move-notify-ack", s, "random", cap))
        for name, depth in (("pct", 2), ("pct depth 1", 1), ("pct depth 3", 3)):
            firsts[name].append(first_race("move-notify-ack", s, "pct", cap, depth))
    medians = {k: statistics.median(v) for k, v in firsts.items()}
    ratios = {k: round(medians["random"] / medians[k], 3) for k in firsts if k != "random"}
    progress("bench: exhaustive resv-fence, bound 2")
    wall, cpu, n = exhaustive_seconds()
    return {"explore_schedules_per_s": summary(walls, "schedules / wall s"),
            "explore_schedules_per_cpu_s": summary(cpus, "schedules / CPU s"),
            "pct_vs_random": summary([medians["random"] / medians["pct"]], "median random / median pct"),
            "pct_vs_random_medians": {**medians, "ratios": ratios, "seeds": seeds, "cap": cap, "firsts": firsts},
            "exhaustive_resv_fence_s": summary([wall], "s"), "exhaustive_resv_fence_cpu_s": summary([cpu], "CPU s"),
            "exhaustive_resv_fence_schedules": n}
