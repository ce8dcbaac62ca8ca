"""Figures from whole runs (deploy.run.run: real exporter and importer processes, the checker):

- move_latency_us per strategy: from `move_begin` (the exporter decides to move; notifications,
  if any, go out) to `free` of the same move (the old range released), with 4 importers busy
  (the default workload), from the exporter's own events. p50 and p99 of each run, then the
  median over runs with min and max. `pin` never moves (every move is refused), and
  `revalidate` moves only buffers nobody has mapped, so they have few or no samples.
- time_to_first_race_s for move-notify, default scenario, one run per seed: from
  `workload_start` (the run's own event) to the first race the checker found. A race's time is
  when the job and the move first overlap in the way its kind names: max(the job's dma_begin,
  the first of the exporter's copy_begin / free / ... in its witness). The checker keeps the
  first five races of each kind it judged as witnesses; the earliest of those is taken.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from deploy.bench.services import short_tmpdir
from deploy.bench.stats import percentile, summary
from deploy.options import RunParams
from protocol.strategies import STRATEGIES


def _events(path: Path) -> list[dict[str, Any]]:
    out = []
    with open(path, "rb") as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def move_latencies_us(run_dir: Path) -> list[float]:
    begun: dict[Any, int] = {}
    lat = []
    for e in _events(run_dir / "events" / "exporter.jsonl"):
        if e.get("event") == "move_begin":
            begun[e["move"]] = e["t_ns"]
        elif e.get("event") == "free" and e.get("move") in begun:
            lat.append((e["t_ns"] - begun.pop(e["move"])) / 1000)
    return sorted(lat)


def first_race_s(run_dir: Path, report: dict[str, Any]) -> float | None:
    start = next((e["t_ns"] for e in _events(run_dir / "events" / "deploy.jsonl")
                  if e.get("event") == "workload_start"), None)
    if start is None:
        return None
    times = []
    for witnesses in report.get("witnesses", {}).values():
        for w in witnesses:
            job_begin = w.get("job", {}).get("begin_t_ns")
            mover = [e["t_ns"] for e in w.get("events", [])
                     if e.get("svc") == "exporter" and e.get("event") != "move_begin"]
            t = max(job_begin, min(mover)) if (job_begin is not None and mover) else job_begin
            if t is not None:
                times.append(t)
    return (min(times) - start) / 1e9 if times else None


def _run(params: RunParams, out: Path) -> dict[str, Any]:
    from deploy.run import run
    return run(params, out, quiet=True)


def move_latency(reps: int, duration: float, importers: int = 4,
                 progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with short_tmpdir("dmb-runs-") as tmp:
        for strategy in STRATEGIES:
            p50s, p99s, moves, races = [], [], 0, 0
            for rep in range(reps):
                out = tmp / f"{strategy}-{rep}"
                report = _run(RunParams(strategy=strategy, importers=importers, duration=duration,
                                        seed=rep + 1), out)
                lat = move_latencies_us(out)
                moves += len(lat)
                races += report["races"]["total"]
                p50s.append(percentile(lat, 50))
                p99s.append(percentile(lat, 99))
            result[strategy] = {"p50": summary(p50s, "us"), "p99": summary(p99s, "us"),
                                "moves": moves, "races": races, "runs": reps}
            progress(f"move latency {strategy}: p50 {result[strategy]['p50']['median']} us over {moves} moves")
    return {"move_latency_us": result, "move_latency_runs": {"importers": importers, "duration_s": duration}}


def time_to_first_race(seeds: int, duration: float, strategy: str = "move-notify",
                       progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    values = []
    with short_tmpdir("dmb-ttfr-") as tmp:
        for seed in range(1, seeds + 1):
            out = tmp / f"seed{seed}"
            report = _run(RunParams(strategy=strategy, duration=duration, seed=seed), out)
            values.append(first_race_s(out, report))
            progress(f"first race, seed {seed}: {values[-1]}")
    return {"time_to_first_race_s": {**summary(values, "s"), "strategy": strategy, "seeds": seeds,
                                     "run_duration_s": duration}}
