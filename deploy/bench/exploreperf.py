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
- `explore_split`: where one schedule's CPU time goes, on what `dmabuf-emu explore` runs by
  default (resv-fence, the small configuration, devices that may stall), random schedules in one
  process: the share of CPU samples (ITIMER_PROF, every SAMPLE_S of this process's CPU time) in
  each PARTS: `startup` every sample before the schedule's window opens (building the world and
  the services, hello and attach: sim/search/trial.py), then by the innermost frame of this
  repository's code on the stack: `services` (protocol/, runtime/, exporter_svc/, importer_svc/:
  the code real runs run too), `simulator` (sim/: the world, network, scheduler, chooser, driver,
  the in-memory history and its merge) and `checker` (checker/: judging each history). Shares of
  one run, so they hold on a loaded machine; `us_per_schedule` turns them into CPU microseconds
  with that run's CPU seconds per schedule (beside it, not a figure to compare across machines).
  `schedules_per_cpu_s` and `sim_speedup` (virtual seconds simulated per CPU second, judging
  included) come from the same schedules.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from deploy.bench.stats import summary

SMALL = dict(importers=2, buffers=2, buffer_size=4096, vram_size=4096, queue_depth=1, dma_ms=2.0, think_ms=0.5,
             move_rate=500.0, duration=0.05)


def small(strategy: str, seed: int = 1, stalls: bool = False) -> Any:
    from deploy.options import RunParams
    from sim.options import SimOptions
    from sim.search.trial import Config
    return Config(RunParams(strategy=strategy, seed=seed, **SMALL),
                  SimOptions(network="chosen", jobs=2, moves=2, stalls=stalls))


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


PARTS = ("startup", "services", "simulator", "checker")
SAMPLE_S = 0.001
_ROOT = str(Path(__file__).resolve().parents[2]) + os.sep
_PART_OF = {"protocol": "services", "runtime": "services", "exporter_svc": "services", "importer_svc": "services",
            "sim": "simulator", "checker": "checker"}


def _part(frame: Any) -> str | None:
    """The part the innermost frame of this repository's code belongs to (None: none on the stack)."""
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_ROOT):
            top = name[len(_ROOT):].split(os.sep, 1)[0]
            part = _PART_OF.get(top)
            if part is not None:
                return part
        frame = frame.f_back
    return None


def split(schedules: int, strategy: str = "resv-fence") -> dict[str, Any]:
    """`explore_split` (see the top of the file): random schedules of explore's default
    configuration, sampled. Main thread only (a signal handler does the sampling)."""
    from sim.search.random import RandomChooser
    from sim.search.trial import run_trial
    cfg = small(strategy, stalls=True)
    run_trial(cfg, RandomChooser(1, 0))            # imports and caches, not measured
    counts = dict.fromkeys(PARTS, 0)
    current: list[Any] = [None]

    def sample(signum: int, frame: Any) -> None:
        window = current[0].window
        if not (window.open or window.closed):
            counts["startup"] += 1
            return
        part = _part(frame)
        if part is not None:
            counts[part] += 1

    virtual_ns = 0
    old = signal.signal(signal.SIGPROF, sample)
    signal.setitimer(signal.ITIMER_PROF, SAMPLE_S, SAMPLE_S)
    cpu = time.process_time()
    try:
        for i in range(1, schedules + 1):
            current[0] = chooser = RandomChooser(1, i)
            trial = run_trial(cfg, chooser)
            virtual_ns += trial.virtual_ns
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, old)
    cpu = time.process_time() - cpu
    total = sum(counts.values()) or 1
    per = cpu / schedules
    return {"strategy": strategy, "schedules": schedules, "samples": sum(counts.values()),
            "shares": {k: round(v / total, 4) for k, v in counts.items()},
            "us_per_schedule": {k: round(1e6 * per * v / total, 1) for k, v in counts.items()},
            "schedules_per_cpu_s": round(schedules / cpu, 1),
            "sim_speedup": round(virtual_ns / 1e9 / cpu, 2)}


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
    progress(f"bench: explore split, {schedules} schedules of resv-fence")
    parts = split(schedules)
    progress("bench: exhaustive resv-fence, bound 2")
    wall, cpu, n = exhaustive_seconds()
    return {"explore_schedules_per_s": summary(walls, "schedules / wall s"),
            "explore_schedules_per_cpu_s": summary(cpus, "schedules / CPU s"),
            "pct_vs_random": summary([medians["random"] / medians["pct"]], "median random / median pct"),
            "pct_vs_random_medians": {**medians, "ratios": ratios, "seeds": seeds, "cap": cap, "firsts": firsts},
            "exhaustive_resv_fence_s": summary([wall], "s"), "exhaustive_resv_fence_cpu_s": summary([cpu], "CPU s"),
            "exhaustive_resv_fence_schedules": n, "explore_split": parts}
