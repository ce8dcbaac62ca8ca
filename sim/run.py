"""Running a simulation: into a run directory (`simulate`), or in memory (`simulate_in_memory`).

A run directory gets what a real run's gets (docs/events.md and the README):
events/<service>.jsonl, history.jsonl (merged by the checker's own merge, ordered by virtual
t_ns), report.json and report.md (the checker's, plus `mode: "sim"`, `sim_speedup` and a `sim`
block: sim/reporting.py), trace.json, logs/<service>.log (what a service printed, a crash's
traceback), and schedule.json (sim/schedule.py). There is no deploy.json: no process was started,
so there is nothing for `status` or `down` to find.

In memory, nothing is written: the history is merged in the same order (t_ns, then the file
name, then the line: checker/history.py) and judged by the same Oracle, for searches that run
many schedules.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from runtime.runparams import RunParams
from sim.driver import SimDeployment
from sim.options import SimOptions
from sim.schedule import ScheduleWriter
from sim.scheduler import Chooser, DecisionLog, Guide, Scheduler
from sim.world import World

# How far past the workload the driver may take to start, stop and shut everything down (its
# own timeouts: 20 s ready, 5 s start, 10 s stop, 5 s down, restarts) before the run is a bug.
SLACK_S = 120.0
MAX_STEPS = 50_000_000
STALE = ("history.jsonl", "report.json", "report.md", "trace.json", "schedule.json", "deploy.json")


@dataclass
class Outcome:
    """What one simulated run gave, whatever it was written to."""

    scheduler: Scheduler
    world: World
    deployment: SimDeployment
    error: str | None               # the driver could not run the workload (it says why)
    wall_s: float                   # spent simulating (not judging)
    logs: dict[str, list[str]] = field(default_factory=dict)

    @property
    def virtual_s(self) -> float:
        return (self.world.now - self.world.t0) / 1e9

    @property
    def crashes(self) -> list[str]:
        return [name for name, _ in self.world.crashes]

    @property
    def speedup(self) -> float:
        return self.virtual_s / self.wall_s if self.wall_s > 0 else float("inf")

    def figures(self) -> dict[str, Any]:
        s = self.scheduler
        return {"virtual_s": round(self.virtual_s, 6), "wall_s": round(self.wall_s, 4),
                "steps": self.world.steps, "decisions": len(s.log), "frames": self.deployment.net.frames,
                "guided": {"from_guide": s.counts.from_guide, "made": s.counts.made} if s.guide else None,
                "crashes": self.crashes, "error": self.error}


def _execute(params: RunParams, out: Path, scheduler: Scheduler, sink_for: Callable[[str], Any],
             options: SimOptions = SimOptions(), setup: Callable[[World], None] | None = None) -> Outcome:
    """`setup(world)`: called before the world runs (the schedule search sets its observer)."""
    world = World(scheduler, stalls=options.stalls, pause_ns=options.pause_ns(params.lease_ms))
    if setup is not None:
        setup(world)
    logs: dict[str, list[str]] = defaultdict(list)
    dep = SimDeployment(params, out, scheduler, world, sink_for, lambda svc, text: logs[svc].append(text), options)
    result: dict[str, Any] = {}

    def done(error: str | None) -> None:
        result["error"] = error
        world.done = True

    dep.spawn(dep.main(), done)
    began = time.perf_counter()
    world.run(max_t=world.t0 + int((params.duration + SLACK_S) * 1e9), max_steps=MAX_STEPS)
    wall = time.perf_counter() - began
    for name, tb in world.crashes:
        logs[name].append(tb)
    error = result.get("error") if "error" in result else "the driver did not finish"
    return Outcome(scheduler, world, dep, error, wall, dict(logs))


def _make_scheduler(params: RunParams, guide: Guide | None, chooser: Chooser | None,
                    log: DecisionLog) -> Scheduler:
    return Scheduler(params.seed, chooser=chooser, guide=guide, log=log)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class SimResult:
    out: Path
    report: dict[str, Any]
    outcome: Outcome
    history_sha256: str
    events: int


def simulate(params: RunParams, out: Path, *, guide: Guide | None = None,
             chooser: Chooser | None = None, options: SimOptions = SimOptions()) -> SimResult:
    """One simulated run into `out` (made or cleaned). The decisions and events stream to disk as
    they come, so memory does not grow with the run's length."""
    from checker import check_run
    from sim.reporting import finish_report

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in STALE:
        (out / stale).unlink(missing_ok=True)
    for d in ("events", "logs", "run"):
        shutil.rmtree(out / d, ignore_errors=True)
    (out / "events").mkdir()
    files: dict[str, IO[bytes]] = {}

    def sink_for(svc: str) -> IO[bytes]:
        f = files.get(svc)
        if f is None:
            f = files[svc] = open(out / "events" / f"{svc}.jsonl", "ab", buffering=1 << 18)
        return f

    writer = ScheduleWriter(out / "schedule.json", params, options)
    try:
        log = DecisionLog(keep=False, stream_to=writer.file)
        outcome = _execute(params, out, _make_scheduler(params, guide, chooser, log), sink_for, options)
    except BaseException:
        writer.abandon()
        raise
    finally:
        for f in files.values():
            f.close()
    if outcome.logs:
        (out / "logs").mkdir(exist_ok=True)
        for svc, lines in outcome.logs.items():
            (out / "logs" / f"{svc}.log").write_text("\n".join(lines) + "\n")
    report = check_run(out)
    history_sha = sha256_file(out / "history.jsonl")
    events = int(report.get("merge", {}).get("events", 0))
    s = outcome.scheduler
    writer.finish({"streams": s.streams, "decision_count": len(s.log), "steps": outcome.world.steps,
                   "virtual_ns": outcome.world.now - outcome.world.t0, "history_sha256": history_sha,
                   "history_events": events})
    sim = {**outcome.figures(), "history_sha256": history_sha, "schedule": "schedule.json"}
    report = finish_report(out, report, "sim", sim_speedup=round(outcome.speedup, 2), sim=sim)
    return SimResult(out, report, outcome, history_sha, events)


class _Lines:
    """An in-memory sink that keeps (t_ns, line) per service."""

    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def write(self, line: bytes) -> None:
        self.lines.append(line)


def _t_of(line: bytes) -> int:
    return int(line[line.rindex(b":") + 1:-2])      # the line ends with "t_ns":<int>}\n


def merged(sinks: dict[str, _Lines]) -> Iterator[bytes]:
    """checker/history.py's order: t_ns, then the file name, then the line. One sort of every
    line by that key (each key is unique, and each service's lines are in time order already, as
    its clock is the world's, which never goes back: the order a merge of the files gives)."""
    names = sorted(sinks, key=lambda s: f"{s}.jsonl")
    items = [(_t_of(line), i, n, line) for i, name in enumerate(names) for n, line in enumerate(sinks[name].lines)]
    items.sort()
    for item in items:
        yield item[3]


@dataclass
class MemoryResult:
    history: list[bytes]
    report: dict[str, Any]
    outcome: Outcome

    @property
    def history_sha256(self) -> str:
        return hashlib.sha256(b"".join(self.history)).hexdigest()


def simulate_in_memory(params: RunParams, *, guide: Guide | None = None, chooser: Chooser | None = None,
                       judge: bool = True, options: SimOptions = SimOptions()) -> MemoryResult:
    """One simulated run with nothing written: the history as lines, the checker's report
    (judge=False: none), the decision log in `outcome.scheduler.log.entries`."""
    from checker.oracle import Oracle

    sinks: dict[str, _Lines] = {}

    def sink_for(svc: str) -> _Lines:
        return sinks.setdefault(svc, _Lines())

    outcome = _execute(params, Path("/nonexistent-sim-run"), _make_scheduler(params, guide, chooser, DecisionLog()),
                       sink_for, options)
    history = list(merged(sinks))
    report: dict[str, Any] = {}
    if judge:
        oracle = Oracle()
        oracle.run(history)
        report = oracle.report()
    return MemoryResult(history, report, outcome)
