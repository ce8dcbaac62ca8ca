"""Process faults, applied by a run's driver to the services' processes: kill, pause, restart.

The real driver (deploy/run.py) signals OS processes; the simulated one (sim/driver.py) gives the
same class a `kill` that stops, resumes or ends a simulated process: one schedule, one applier.

Rules:
- The schedule is fixed before the workload starts: each process fault of the run's list, if its
  draw (stream `process:<index>`, seeded by the run's seed and the fault's index) says yes,
  becomes one or two timed steps (kill; stop then continue; kill then start again). `importers` as a target means every importer.
- Each step is a `fault` event in deploy.jsonl when it is applied, and a killed service also gets
  `service_died` with how="killed by fault", so the report can tell injected deaths from crashes.
- A restarted importer is a new process under the same name with incarnation n + 1: new pid, ids
  that do not collide with the dead one's, the same events file (appended). It is started, waited
  for (ready) and given `start`, all bounded in time.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any, Callable

from runtime.faults import PROCESS_KINDS, describe
from runtime.rng import MakeRng, real_rng


@dataclass(order=True)
class Step:
    t: float                                   # seconds into the workload
    order: int
    action: str = field(compare=False)         # kill | stop | cont | restart
    target: str = field(compare=False)
    fault: dict[str, Any] = field(compare=False)


def schedule(faults: list[dict[str, Any]], seed: int, importers: int,
             make_rng: MakeRng = real_rng) -> list[Step]:
    steps: list[Step] = []
    for i, f in enumerate(faults):
        if f["kind"] not in PROCESS_KINDS:
            continue
        if not make_rng(f"process:{i}", f"{seed}:{i}:deploy").chance(f["p"]):
            continue
        targets = ([f"importer-{n}" for n in range(1, importers + 1)]
                   if f["target"] == "importers" else [f["target"]])
        for target in targets:
            if f["kind"] == "kill":
                steps.append(Step(f["at"], len(steps), "kill", target, f))
            elif f["kind"] == "pause":
                steps.append(Step(f["at"], len(steps), "stop", target, f))
                steps.append(Step(f["at"] + (f["for"] or 0.0), len(steps), "cont", target, f))
            else:  # restart
                steps.append(Step(f["at"], len(steps), "kill", target, f))
                steps.append(Step(f["at"] + (f["for"] or 0.0), len(steps), "restart", target, f))
    return sorted(steps)


class ProcessFaults:
    """Applies the steps as their time comes. `pid_of(name)` gives a service's current pid;
    `restart(name, incarnation)` starts an importer again and returns its new pid; `kill(pid,
    signal)` delivers a signal (os.kill; the simulator's stops, resumes or ends a simulated
    process), raising ProcessLookupError for a process that is gone."""

    def __init__(self, steps: list[Step], emit: Callable[..., None], pid_of: Callable[[str], int | None],
                 restart: Callable[[str, int], int], say: Callable[[str], None],
                 kill: Callable[[int, int], None] = os.kill) -> None:
        self.kill = kill
        self.steps = list(steps)
        self.emit = emit
        self.pid_of = pid_of
        self.restart = restart
        self.say = say
        self.incarnations: dict[str, int] = {}
        self.killed: set[str] = set()   # dead by our hand (and not back)
        self.stopped: set[str] = set()  # SIGSTOPped and not yet continued

    def next_at(self) -> float | None:
        return self.steps[0].t if self.steps else None

    def due(self, t: float) -> None:
        while self.steps and self.steps[0].t <= t:
            self._apply(self.steps.pop(0), t)

    def _apply(self, step: Step, t: float) -> None:
        name, f = step.target, step.fault
        pid = self.pid_of(name)
        common = dict(kind=f["kind"], target=name, at=step.t, applied_s=round(t, 4), fault=describe(f))
        if step.action == "restart":
            n = self.incarnations.get(name, 0) + 1
            self.incarnations[name] = n
            try:
                new_pid = self.restart(name, n)
            except Exception as exc:  # the run goes on without it; the report says so
                self.emit("fault", step="restart", error=str(exc), **common)
                self.say(f"fault: restart of {name} failed: {exc}")
                return
            self.killed.discard(name)
            self.emit("fault", step="restart", pid=new_pid, incarnation=n, **common)
            self.emit("service_restarted", name=name, pid=new_pid, incarnation=n)
            self.say(f"fault: {name} restarted (pid {new_pid}, incarnation {n}) at {t:.2f} s")
            return
        if pid is None or name in self.killed:
            self.emit("fault", step=step.action, skipped="not running", **common)
            return
        sig = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP, "cont": signal.SIGCONT}[step.action]
        try:
            self.kill(pid, sig)
        except ProcessLookupError:
            self.emit("fault", step=step.action, skipped="already gone", pid=pid, **common)
            return
        self.emit("fault", step=step.action, pid=pid, **common)
        if step.action == "kill":
            self.killed.add(name)
            self.stopped.discard(name)
            self.emit("service_died", name=name, pid=pid, how="killed by fault")
            self.say(f"fault: {name} (pid {pid}) killed at {t:.2f} s")
        elif step.action == "stop":
            self.stopped.add(name)
            self.say(f"fault: {name} (pid {pid}) paused at {t:.2f} s")
        else:
            self.stopped.discard(name)
            self.say(f"fault: {name} (pid {pid}) resumed at {t:.2f} s")

    def resume_all(self) -> None:
        """Never leave a service stopped: down could not stop it gracefully."""
        for name in list(self.stopped):
            pid = self.pid_of(name)
            if pid is not None:
                try:
                    self.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            self.stopped.discard(name)
