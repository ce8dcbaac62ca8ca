"""One schedule of a search: the simulated run under a chooser, judged in memory by the checker.

Rules:
- A search explores one *configuration* (`Config`: the run's parameters, among them the seed
  that fixes the workload's draws, and the simulator's options: chosen delivery, job and move
  budgets). What varies from one schedule to the next is the schedule: the order of steps, when
  each frame between services is delivered (sim/options.py network "chosen"), and whether each
  fault that --fault allows fires.
- The *window* is where a search decides: from the moment the exporter takes `start` (the
  first `control` event with op start) until deploy's `workload_stop`. Before it (start-up,
  attach) and after it (stop, detach, down) every step is the first enabled one and every draw
  its default: no DMA runs and no move is wanted outside it, so no race can need a choice there,
  and every schedule of a search shares its start-up.
- Fault draws (streams `msgfault:`, `device:`, `process:`) are the search's to make anywhere;
  every other draw (the workload's buffer, access and durations, the control sockets' delays)
  keeps its default, which the seed fixes.
- Races are the checker's: the merged history goes through checker.oracle.Oracle, each race it
  reports (kind, buffer, importer, job) is kept, and so is each deadlock finding (kind
  "deadlock", the buffer whose lock the cycle's holder took, the importer whose fence it waited
  for): a schedule that deadlocks is a catch as much as one that races, and only the checker's
  wait-for graph says that it did; and each revoke_incomplete finding (Linux 7.1: kind
  "revoke_incomplete", the buffer, the importer whose mapping was still live, its attachment):
  a revocation that went on with a mapping live is a broken rule, caught as a deadlock is; and
  each stuck finding (checker/liveness.py: kind "stuck", the buffer, the service it belongs to,
  what is stuck), judged at the window's close (workload_stop: the drain's end), so a schedule
  judged in memory ends where its witness does. FINDING_CATCHES names them. Nothing is written; the history is kept only when asked (a race,
  for its witness).
- A schedule judged in memory ends when the window closes with no DMA running (`cut_tail`): the
  importers answered stop with every job over, the exporter with every move over, and nothing
  after (detach, bye, down) begins a job or a move, so no verdict can change; the shutdown is
  a third of a run's time. A race's run directory (sim/explore.py) is the whole run.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from checker.findings import CATCHES
from runtime.runparams import RunParams
from sim.options import SimOptions
from sim.run import _execute, _Lines, merged
from sim.scheduler import Chooser, DecisionLog, Guide, ListGuide, Scheduler
from sim.world import PAUSE_STREAM, STALL_STREAM, WAIT

FAULT_STREAMS = ("msgfault:", "device:", "process:")   # device: includes device:stall: (sim/world.py)
# A random or PCT search's chance that a device stalls its chunk past one given exporter timer
# (asked for each pending one, latest first: sim/world.py). With the 2 to 4 timers an exporter
# has pending, about one chunk in four stalls, past the farthest timer one time in ten: enough
# that a schedule of the small configuration usually stalls some job, few enough that most jobs
# run as drawn and the races that need punctual ordering are still found as often.
STALL_P = 0.1
_CONTROL, _START = b'"event":"control"', b'"op":"start"'
_DMA_BEGIN, _DMA_END = b'"event":"dma_begin"', b'"event":"dma_end"'
_DMA = b'"event":"dma_'                    # what both contain
_STOP = b'"event":"workload_stop"'


@dataclass(frozen=True)
class Config:
    params: RunParams
    options: SimOptions

    def as_dict(self) -> dict[str, Any]:
        return {"params": self.params.as_dict(), "sim": self.options.as_dict()}


class Window:
    """Open from the exporter's `start` to deploy's workload_stop (see the rules above). With
    `world` set, the run ends when the window closes with no DMA running (`cut`)."""

    __slots__ = ("open", "closed", "dma", "world", "cut")

    def __init__(self) -> None:
        self.open = False
        self.closed = False
        self.dma = 0                          # jobs begun and not ended (rogue ones too)
        self.world: Any = None
        self.cut = False


class _Watched(_Lines):
    """An in-memory sink that opens and closes the window as the lines go by."""

    __slots__ = ("window",)

    def __init__(self, window: Window) -> None:
        super().__init__()
        self.window = window

    def write(self, line: bytes) -> None:
        self.lines.append(line)
        w = self.window
        if _DMA in line:                              # one search for most lines, not two
            if _DMA_BEGIN in line:
                w.dma += 1
                return
            if _DMA_END in line:
                w.dma -= 1
                return
        if not w.open:
            if not w.closed and _CONTROL in line and _START in line:
                w.open = True
        elif _STOP in line:
            w.open, w.closed = False, True
            if w.world is not None and w.dma == 0:
                w.world.done = w.cut = True


def offered(options: Sequence[str]) -> list[int]:
    """The options a search may take: all but a link whose receiving process has work of its
    own now. A frame due at the same instant as its receiver's work is read after that work, as
    a loop runs its due work before it polls its sockets; reading it before would be a delay
    shorter than the network's least (sim/network.py MIN_NS), which the model has not."""
    return _offer(options)[0]


def _offer(options: Sequence[str]) -> tuple[list[int], tuple[str, ...]]:
    """offered(options), and the names of those options (both cached by the options)."""
    key = tuple(options)
    out = _offered.get(key)
    if out is None:
        live = []
        for i, name in enumerate(key):
            if name.startswith("net."):
                receiver = name[name.index(">") + 1:]
                dot = receiver + "."
                if any(o == receiver or o.startswith(dot) for o in key):
                    continue
            live.append(i)
        out = (live, tuple(key[i] for i in live))
        if len(_offered) < 65536:
            _offered[key] = out
    return out


_offered: dict[tuple[str, ...], tuple[list[int], tuple[str, ...]]] = {}


STEP_DEVIATION, FAULT_DEVIATION = "step", "fault"


class Deviation(NamedTuple):
    """A choice of a schedule that is not the default one: a step other than the first offered
    (`options` the offered names, `value` the one taken: WAIT is a wait, anything else a tie
    taken out of order), or a fault that fired (`options` is (its stream,))."""

    index: int
    kind: str
    options: tuple[str, ...]
    value: str

    @property
    def is_wait(self) -> bool:
        return self.kind == STEP_DEVIATION and self.value == WAIT

    def as_list(self) -> list[Any]:
        return [self.index, self.kind, list(self.options), self.value]


class SearchChooser(Chooser):
    """The chooser of a search: outside the window the first enabled step; fault draws and
    steps inside it are `choose_fault` / `choose_step` (the subclass's)."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.window = Window()
        self.window_steps = 0                 # step decisions made inside the window
        self.record: list[Deviation] | None = None   # set to a list: every deviation is noted
        self.actors: set[str] = set()         # every name offered at a step decision in the window
        self.wait_points = 0                  # window step decisions that offered WAIT
        self.fault_points = 0                 # fault draws
        self.stall_points = 0                 # stall decisions (sim/world.py; counted in fault_points too)
        self.sinks: dict[str, Any] = {}       # service -> its in-memory history so far (run_trial's)

    def step(self, index: int, options: Sequence[str]) -> int:
        if not self.window.open:
            return 0
        live, names = _offer(options)
        if len(live) == 1:
            return live[0]
        self.window_steps += 1
        self.actors.update(names)
        self.wait_points += names[-1] == WAIT
        k = self.choose_step(index, names)
        if self.record is not None and k:
            self.record.append(Deviation(index, STEP_DEVIATION, names, names[k]))
        return live[k]

    def chance(self, index: int, stream: str, p: float, default: bool) -> bool:
        if stream.startswith((STALL_STREAM, PAUSE_STREAM)):
            if not self.window.open:
                return default                # a stall or a pause is the search's choice inside the window only
            self.stall_points += 1            # a pause is counted with the stalls: a device's timing
            p = STALL_P
        if stream.startswith(FAULT_STREAMS):
            self.fault_points += 1
            fired = self.choose_fault(index, stream, p, default)
            if self.record is not None and fired:
                self.record.append(Deviation(index, FAULT_DEVIATION, (stream,), "fired"))
            return fired
        return default

    def choose_step(self, index: int, options: Sequence[str]) -> int:
        return 0

    def choose_fault(self, index: int, stream: str, p: float, default: bool) -> bool:
        return default


class Blocked(BaseException):
    """The exhaustive search's chooser found every option asleep or over the bound: the rest of
    this schedule is one already explored (a BaseException: no simulated callback catches it)."""


@dataclass(frozen=True)
class RaceId:
    """A catch: a race (kind, buffer, importer, job), a deadlock finding ("deadlock", the buffer
    of the lock in its cycle, the importer of the fence in it, that fence's seq), a
    revoke_incomplete finding ("revoke_incomplete", the buffer, the importer, its attachment) or a
    stuck finding ("stuck", the buffer, the importer it belongs to or "exporter", what is stuck)."""

    kind: str
    buffer: Any
    svc: str
    job: Any

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "buffer": self.buffer, "importer": self.svc, "job": self.job}


@dataclass
class Trial:
    """What one schedule gave."""

    races: list[RaceId]
    entries: list[tuple]              # the decision log
    streams: list[str]
    steps: int
    messages: int                     # frames between services
    window_steps: int
    seconds: float
    history_sha256: str
    error: str | None = None          # the driver's, or a crash
    blocked: bool = False             # exhaustive: cut short by its sleep set (not a schedule)
    history: list[bytes] | None = None
    report: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    virtual_ns: int = 0               # virtual time simulated (to the cut)

    @property
    def decisions(self) -> int:
        return len(self.entries)

    def has(self, kind: str, buffer: Any) -> bool:
        return any(r.kind == kind and r.buffer == buffer for r in self.races)


class PrefixGuide(ListGuide):
    """Replays a search's decision log exactly (strict) and leaves what comes after its end to
    the chooser: a schedule judged in memory ends at the window's close (cut_tail), and its run
    directory is the whole run, whose shutdown takes the defaults."""

    def __init__(self, entries: Sequence[Sequence[Any]], streams: Sequence[str]) -> None:
        super().__init__(entries, streams, strict=True)

    def suggest(self, request: Any) -> Any | None:
        if request.index >= len(self.entries):
            return None
        return super().suggest(request)


def write_run(config: Config, entries: Sequence[Sequence[Any]], streams: Sequence[str], out: Path) -> Any:
    """A search's schedule as a simulated run directory (sim/run.py simulate): schedule.json holds
    every decision, so `dmabuf-emu replay` re-executes it."""
    from sim.run import simulate
    return simulate(config.params, out, guide=PrefixGuide(entries, streams), chooser=SearchChooser(0),
                    options=config.options)


def judge(history: Sequence[bytes], report: bool = False) -> tuple[list[RaceId], dict[str, Any] | None]:
    """The checker's verdicts on a merged history: every race, deadlock, revoke_incomplete, stuck
    item, refcount_warning and potential_deadlock, in the order it judged them."""
    from checker.findings import DEADLOCK, POTENTIAL_DEADLOCK, REFCOUNT_WARNING, REVOKE_INCOMPLETE, STUCK
    from checker.oracle import Oracle

    races: list[RaceId] = []

    def on_finding(what: str, svc: str, t: int, fields: dict[str, Any]) -> None:
        kind = fields.get("finding")
        if kind == DEADLOCK and what == DEADLOCK:      # a cycle formed (its breaking is "deadlock broken")
            races.append(deadlock_id(fields["cycle"]))
        elif kind == REVOKE_INCOMPLETE:
            races.append(RaceId(REVOKE_INCOMPLETE, fields.get("buffer"), str(fields.get("importer")),
                                fields.get("attachment")))
        elif kind == STUCK:
            races.append(RaceId(STUCK, fields.get("buffer"), str(fields.get("importer") or "exporter"),
                                fields.get("what")))
        elif kind == REFCOUNT_WARNING:
            races.append(RaceId(REFCOUNT_WARNING, fields.get("buffer"), "exporter", fields.get("message")))
        elif kind == POTENTIAL_DEADLOCK:   # the kernel's rule broken, whether or not the cycle formed
            races.append(RaceId(POTENTIAL_DEADLOCK, fields.get("buffer"), str(fields.get("importer")), None))

    oracle = Oracle(on_race=lambda r: races.append(RaceId(r.kind, r.job.buffer, r.job.svc, r.job.job)),
                    on_finding=on_finding)
    oracle.run(history)
    oracle.finish()
    return races, (oracle.report() if report else None)


# The checker's findings a search catches, beside its races (checker/findings.py CATCHES).
FINDING_CATCHES = CATCHES


def deadlock_id(cycle: Sequence[Sequence[Any]]) -> RaceId:
    """A deadlock cycle (checker/waitfor.py nodes: ("lock", buffer), ("move", buffer, id),
    ("fence", importer, buffer, seq), ("map", importer, id)) as a catch."""
    from checker.findings import DEADLOCK
    lock = next((n[1] for n in cycle if n[0] == "lock"), None)
    fence = next((n for n in cycle if n[0] == "fence"), None)
    return RaceId(DEADLOCK, lock, fence[1] if fence else "exporter", fence[3] if fence else None)


def run_trial(config: Config, chooser: SearchChooser, *, setup: Callable[[Any], None] | None = None,
              keep_history: bool = False, guide: Guide | None = None, cut_tail: bool = True) -> Trial:
    """One schedule under `chooser`, judged. `setup(world)` runs before the world does (the
    exhaustive search sets the world's per-step observer there, for its sleep sets)."""
    began = time.perf_counter()
    sinks: dict[str, _Watched] = {}
    chooser.sinks = sinks                     # the state cache's checker reads the lines so far
    window = chooser.window

    def sink_for(svc: str) -> _Watched:
        s = sinks.get(svc)
        if s is None:
            s = sinks[svc] = _Watched(window)
        return s

    log = DecisionLog()
    scheduler = Scheduler(config.params.seed, chooser=chooser, guide=guide, log=log)
    blocked = False
    def prepare(world: Any) -> None:
        if cut_tail:
            window.world = world
        if setup is not None:
            setup(world)

    try:
        outcome = _execute(config.params, Path("/nonexistent-sim-run"), scheduler, sink_for, config.options,
                           prepare)
    except Blocked:
        blocked, outcome = True, None
    entries = log.entries or []
    if blocked or outcome is None:
        return Trial([], entries, list(scheduler.streams), 0, 0, chooser.window_steps,
                     time.perf_counter() - began, "", blocked=True)
    history = list(merged(sinks))
    races, _ = judge(history)
    error = None if window.cut else outcome.error
    if outcome.crashes:
        error = (error + "; " if error else "") + "crashed: " + ", ".join(outcome.crashes)
    raced = bool(races)
    trial = Trial(races, entries, list(scheduler.streams), outcome.world.steps, outcome.deployment.net.messages,
                  chooser.window_steps, time.perf_counter() - began,
                  hashlib.sha256(b"".join(history)).hexdigest(), error,
                  history=history if (keep_history or raced) else None,
                  virtual_ns=outcome.world.now - outcome.world.t0)
    if chooser.record is not None:
        trial.extra["deviations"] = list(chooser.record)
    return trial
