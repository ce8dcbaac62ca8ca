"""`dmabuf-emu explore --around RUN_DIR`: confirm the races a run could have had by re-running it
in the simulator, guided by its history, with a few deviations from that schedule.

Rules:
- The run: RUN_DIR holds report.json with the run's `params` and history.jsonl (a real or a
  simulated run). Its `version` (sim/reporting.py) must be this dmabuf-emu's, or `force`; a run
  that records none is of an older version. Unreadable lines of the history (truncated, garbled)
  are skipped and counted (`unreadable_lines`); the rest is used.
- The base schedule: the run replayed in the simulator guided by its history (sim/realguide.py,
  as `replay --race` is), steps the guide leaves open taken in the world's order, judged from the
  exporter's start to the workload's stop (sim/search/trial.py run_trial). What the base
  schedule already shows is confirmed with 0 deviations: the run's own schedule, replayed.
- The candidates are checker/predict.py's over the history, then each potential deadlock of the
  run (checker/lockdep.py over the history, as the checker judges it: kind potential_deadlock, the
  importer and buffer whose fence's signalling took a reservation lock). lockdep flags one whether
  or not the cycle formed: it is a prediction, as predict's candidates are, never a catch here.
  A deviation changes one thing the guided replay does at a choice point it passes; a schedule
  is the base plus at most `bound` deviations. They are tried in this order, each deviation set once:
  1. reversals of each candidate, one deviation each, candidates taken in turn (RaceFuzzer, Sen
     PLDI 2008: hold one side back until the other arrives). For a job paired with a copy, free
     or invalidation window at time T (lost_write, stale_read, write_after_invalidate):
     `hold_end` (the job's duration draw stretched: its last chunk comes HOLD_NS after T),
     `run_across` (its start delayed to LEAD_NS before T, running until HOLD_NS after it), and
     `move_at` (the pressure tick that made the move comes so that the copy begins while the job
     runs: the copy begins early). For a job that began on a placement after the copy creating it
     ended (unfenced_access): `begin_at` (its start drawn earlier, into the copy).
     use_after_unmap is a race of the run itself (program order), never a reversal.
     Then the potential deadlocks' (`into_lock_waits`): for its importer I and each wait for
     fences under a reservation lock in the run (buffer B), I's first job begun after the wait
     began taken on B and begun UNDER_LOCK_LAGS_NS into it (`retarget_into`, on the base
     schedule's own wait where it has one): its map comes while the lock is held, and a fence of
     I on B whose signalling waits for that map closes the cycle. If the wait had no fence of I
     on B, a pair (bound 2, first of the pairs): I's last job begun before it taken on B too.
  2. crossings the run did not have (`crossings`): around each real move of buffer B, each
     importer's last job begun before the move taken on B, read or write, running until HOLD_NS
     after the move's free (`retarget`: the workload's buffer and access draws and its duration;
     with --pin-ratio, also pinned; and, two deviations, the importer's job before it taken on B
     pinned and the last one unpinned), the same around each revocation and un-revocation,
     and its first job begun after the copy began taken on B while the copy runs
     (`retarget_into`); then maps aimed into each move of the base schedule (`map_into`, on its
     simulated axis, where the simulation put the move's lock and copy, not where the real run
     had them: a 4 MiB copy takes 400 us in the simulator, 13 ms in a loaded real run): each
     importer's jobs on either side of the aim (its last one begun before, delayed, and its first
     one after, brought forward; the jobs drawn by the same refill come with it, for one think
     time precedes a refill) taken on B, their map request arriving at the exporter in the
     middle of the move's fence wait, MAP_EARLY_NS before it lets go of the lock (deferred to
     it) and a quarter into the copy, the exporter's replies from then until the copy's end
     taking the least delay (its notifications, sent before, keep theirs, so the lock and copy
     stay where they were); then the exporter's notifications of each move delivered late
     (`late_frames`: each frame the exporter sends in the move's first LATE_WINDOW_NS takes the
     network's longest delay), and
     the reorderings of dependent steps the run left open: two steps of different actors at one
     instant whose footprints meet (sim/search/dpor.py's dependency relation, footprints by
     sim/search/exhaustive.py), the later one's actor offered when the earlier one was chosen:
     `step` takes it there instead (nearest a candidate's time first).
  3. with bound 2: each candidate's reversals two at a time, each with its move's late frames,
     and each with the step reorderings nearest to it; each job held across a move (a `retarget`
     of 2.) with each other importer's map aimed into the fence wait that makes (`map_into`,
     HELD_MAP_LAGS_NS after the base schedule's fence wait began: a map served while the move
     holds the lock, when the run had no job on B at the move); each crossing with its move's
     late frames.
  A bound above 2 searches what bound 2 does (no schedule here has more than two deviations).
  A deviation that no longer fits (its job or step is not there: an earlier one moved it) is
  not applied; the schedule is judged as it ran.
- A schedule is judged by the checker (sim/search/trial.py judge: races, and the findings a
  search counts as catches: checker/findings.py CATCHES). What it has that the base schedule has
  not is found. A race of a candidate's kind on its buffer confirms it (the importer and job too
  when they match; else the first such candidate). A potential deadlock is confirmed only by a
  formed `deadlock` (the wait-for graph's cycle, checker/waitfor.py) whose lock is on its buffer
  or whose fence is its importer's: one such deadlock confirms every potential deadlock it
  involves. A potential_deadlock in a schedule's verdict confirms nothing and is never found (it
  is there whether or not the cycle formed). A catch finding (among them a deadlock of no
  potential deadlock's buffer or importer), or a race no candidate predicted, is kept in
  `also_found`: a catch is how a mutant whose bug is a finding is confirmed.
- Each race or finding found is kept once (by kind and buffer): its deviations shrunk by delta
  debugging (sim/shrink.py ddmin; then each single deviation removed must lose it: 1-minimal),
  the shrunk schedule written to OUT/races/K (a simulated run directory: schedule.json holds every
  decision, `dmabuf-emu replay OUT/races/K` re-executes it) with witness.md.
- Not confirmed, each with its reason: `ordered by a rule the prediction does not model` (a
  reversal ran and the exporter's side came after the held job's end anyway: something the
  prediction did not see made it wait), `unreachable within the bound` (every deviation set for
  it within the bound ran and none raced), `not tried` (past `schedules`, or nothing to reverse:
  the job never ended, the candidate overlapped in the run and its replay did not race). A
  potential deadlock's reason counts the deviation sets aimed at its importer's fences: `not
  tried` (none: no wait under a lock with a job of that importer after it; or some not run),
  else `unreachable within the bound` (they ran and no deadlock formed).
- OUT/around.json: candidates (with the potential deadlocks; by_kind counts them), confirmed,
  not_confirmed, also_found, schedules, seconds, first_confirmed_schedule, deviations tried
  (into_lock_waits: the potential deadlocks'), unreadable lines.
`base_counts=False` (the sweep's second measure, tests/around_sweep.py): what the base schedule
shows confirms nothing, and a deviation must find a race or finding it has not (another kind,
buffer, importer or job).
Stopping: after `schedules` schedules, when every candidate is confirmed, when the list of
deviation sets is done, or (stop_at_first) at the first schedule that confirms anything.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from sim.network import MAX_NS, MIN_NS
from sim.realguide import RealGuide, delay_u
from sim.scheduler import RANDOM, STEP, Request

HOLD_NS = 2_000_000          # a held side ends this long after the other side came
LEAD_NS = 1_000_000          # a delayed start comes this long before the other side
UNREVOKE_LAGS_NS = (0, 100_000, 300_000, 1_000_000, 2_000_000)   # jobs begun these long after an un-revocation
FAST_WINDOW_NS = 3_000_000   # before a job aimed into the simulated copy: the exporter's frames take the least delay
LATE_WINDOW_NS = 2_000_000   # a move's notifications: the exporter's frames this long after its start
MAP_EARLY_NS = 50_000        # a map aimed at a move's unlock arrives this long before it (deferred to it)
HELD_MAP_LAGS_NS = (200_000, 1_000_000)   # with a job held across the move: maps this long after its fence wait began
STEP_REVERSALS = 64          # dependent step reorderings kept (nearest the candidates first)
UNDER_LOCK_LAGS_NS = (2_000_000, 500_000, 8_000_000)   # a job aimed into a wait under a lock: this long into it
NEAR_STEPS = 3               # step reorderings paired with each reversal at bound 2
REVERSIBLE = ("lost_write", "stale_read", "write_after_invalidate")
ORDERED = "ordered by a rule the prediction does not model"
UNREACHABLE = "unreachable within the bound"


class AroundError(ValueError):
    """RUN_DIR cannot be explored around (one line says why)."""


@dataclass(frozen=True)
class Deviation:
    """One change to the guided replay. Times are on the real run's axis: ns after its
    exporter's start. `importer`/`job` name a real job, `move` a real move; a step is the
    decision `index` offered `options` where `value` is taken."""

    # hold_end | run_across | move_at | begin_at | late_frames | step | retarget | retarget_into | map_into
    kind: str
    t_ns: int
    importer: int | None = None
    job: Any = None
    move: Any = None
    index: int | None = None
    options: tuple[str, ...] = ()
    value: str = ""
    cand: int | None = None            # the candidate it reverses (its position in the list)
    buffer: Any = None                 # retarget: the buffer the job takes instead
    access: str = ""                   # retarget: and its access
    pin: bool | None = None            # retarget: and whether it pins (with --pin-ratio)
    sim_axis: bool = False             # t_ns is on the base schedule's simulated axis (its own event's time)
    until_ns: int | None = None        # map_into: the exporter's replies go fast from t_ns until then (simulated axis)
    refill: tuple[int, ...] = ()       # map_into: the jobs drawn with it (one refill), aimed with it

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "t_ms": round(self.t_ns / 1e6, 3)}
        for k in ("importer", "job", "move", "index", "cand", "buffer"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.access:
            d["access"] = self.access
        if self.pin is not None:
            d["pin"] = self.pin
        if self.sim_axis:
            d["axis"] = "simulated"
        if self.until_ns is not None:
            d["until_ms"] = round(self.until_ns / 1e6, 3)
        if self.refill:
            d["refill"] = list(self.refill)
        if self.kind == "step":
            d["options"], d["value"] = list(self.options), self.value
        return d


class AroundGuide:
    """The real run's guide (a copy, its jobs and ticks moved by the timing deviations) with the
    frame and step deviations on top; notes each step decision for the footprint recorder."""

    def __init__(self, inner: RealGuide, devs: Sequence[Deviation], recorder: "Recorder | None" = None) -> None:
        self.inner = inner
        self.steps = {d.index: d for d in devs if d.kind == "step"}
        self.late = [d for d in devs if d.kind == "late_frames"]
        # a job aimed into the simulated copy or lock: the exporter's replies meanwhile go as fast
        # as the network does (the real run's median reply delay would land it after the copy)
        self.fast = [(d.t_ns - FAST_WINDOW_NS, d.t_ns) for d in devs if d.kind == "retarget_into" and d.sim_axis]
        # a map aimed into a move's lock or copy: only the replies from its arrival on go fast
        # (the move's notifications, sent before, keep their delay: the lock and copy stay where they were)
        self.fast += [(d.t_ns - MAP_EARLY_NS, d.until_ns) for d in devs
                      if d.kind == "map_into" and d.until_ns is not None]
        self.recorder = recorder
        self.applied: set[Deviation] = set()

    def suggest(self, request: Request) -> Any | None:
        if request.kind == STEP:
            d = self.steps.get(request.index)
            if d is not None and request.options is not None and d.value in request.options \
                    and _offered_names(request.options) == d.options:
                self.applied.add(d)
                if self.recorder is not None:
                    self.recorder.node(request)
                return list(request.options).index(d.value)
            if self.recorder is not None:
                self.recorder.node(request)
        elif request.kind == RANDOM and (self.late or self.fast) and request.stream == "net:exporter":
            rel = self.inner._rel(request)
            if rel is not None and any(a <= rel <= b for a, b in self.fast):
                return 0.0
            for d in self.late:
                if rel is not None and d.t_ns <= rel <= d.t_ns + LATE_WINDOW_NS:
                    self.applied.add(d)
                    return delay_u(MAX_NS)
        return self.inner.suggest(request)


def _offered_names(options: Sequence[str]) -> tuple[str, ...]:
    from sim.search.trial import offered
    return tuple(options[i] for i in offered(options))


class Recorder:
    """The base schedule's steps with their footprints, for the dependent-step reorderings."""

    def __init__(self) -> None:
        self.world: Any = None
        self.pending: tuple[int, tuple[str, ...]] | None = None
        self.events: list[tuple[str, Any, tuple[int, tuple[str, ...]] | None, int] | None] = []

    def setup(self, world: Any) -> None:
        from sim.search import exhaustive
        self.world = world
        world.observer = self.observe
        exhaustive._traced[:] = [world]          # the fence table's reads and writes go to the step's footprint

    def node(self, request: Request) -> None:
        self.pending = (request.index, _offered_names(request.options or ()))

    def observe(self, actor: Any, touched: set | None) -> None:
        from sim.search.exhaustive import footprint_of
        if actor is None:
            self.events.append(None)             # time passed: a barrier
            self.pending = None
            return
        node, self.pending = self.pending, None
        self.events.append((actor.name, footprint_of(touched or set()), node, self.world.now))

    def reversals(self, s0: int) -> list[Deviation]:
        """Dependent steps of different actors at one instant, the later one's actor offered
        where the earlier one was chosen: that actor taken there instead."""
        out: dict[tuple[int, str], Deviation] = {}
        ev = self.events
        for i, e in enumerate(ev):
            if e is None or e[2] is None:
                continue
            actor, fp, (index, names), now = e
            for f in ev[i + 1:]:
                if f is None:
                    break
                if f[0] != actor and f[0] in names and fp.conflicts(f[1]) and (index, f[0]) not in out:
                    out[(index, f[0])] = Deviation("step", now - s0, index=index, options=names, value=f[0])
        return list(out.values())


def read_run(run_dir: Path, version: str, force: bool) -> tuple[dict[str, Any], Path]:
    """report.json and history.jsonl of a run, or AroundError naming what is wrong."""
    run_dir = Path(run_dir)
    try:
        report = json.loads((run_dir / "report.json").read_text())
    except (OSError, ValueError):
        raise AroundError(f"{run_dir} is not a run: no readable report.json") from None
    if not isinstance(report, dict) or not isinstance(report.get("params"), dict):
        raise AroundError(f"{run_dir} is not a run: its report.json has no run parameters (params)")
    history = run_dir / "history.jsonl"
    if not history.is_file():
        raise AroundError(f"{run_dir} is not a run: no history.jsonl (the run was never judged)")
    theirs = report.get("version")
    if theirs != version and not force:
        made = f"version {theirs}" if theirs else "an older version (its report.json records none)"
        raise AroundError(f"{run_dir} is a run of {made}, this is dmabuf-emu {version}: its events may mean "
                          f"other things here; --force to explore it anyway")
    return report, history


def _start_ns(history: Path) -> int:
    with open(history, "rb") as fh:
        for e in events_with(fh, (b'"control"',)):
            if e.get("event") == "control" and e.get("svc") == "exporter" and e.get("op") == "start":
                return int(e["t_ns"])
    raise AroundError(f"{history} has no start of the exporter: the run never started its workload")


def _tick_of(guide: RealGuide, move: Any) -> int | None:
    """The index in guide.ticks of the tick that made real move `move` (a promote into an
    evicted range: its eviction's tick)."""
    by_id = {m.move: m for m in guide.moves}
    m = by_id.get(move)
    while m is not None and m.follows is not None:
        m = by_id.get(m.follows)
    if m is None:
        return None
    for k, t in enumerate(guide.ticks):
        if t.t_ns == m.t_ns and t.buffer == m.buffer:
            return k
    return None


def reversals(n: int, cand: dict[str, Any], guide: RealGuide, s0: int, copy_ns: int) -> list[Deviation]:
    """Candidate n's one-deviation reversals (the module docstring, 1.), or [] with nothing to reverse."""
    kind, job, other = cand["kind"], cand["job"], cand["other"]
    try:
        importer = int(str(job["svc"]).rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return []
    real = next((j for j in guide.jobs.get(importer, []) if j.job == job["job"]), None)
    if real is None or other.get("t_ns") is None:
        return []
    t = other["t_ns"] - s0
    out: list[Deviation] = []
    if kind in REVERSIBLE:
        out.append(Deviation("hold_end", t + HOLD_NS, importer, job["job"], cand=n))
        if real.begin_ns < t - LEAD_NS:
            out.append(Deviation("run_across", t, importer, job["job"], cand=n))
        tick = _tick_of(guide, (other.get("move") or [None])[0] if isinstance(other.get("move"), list)
                        else other.get("move"))
        if tick is not None:
            mid = real.begin_ns + real.duration_ns // 2
            out.append(Deviation("move_at", guide.ticks[tick].t_ns + mid - t, move=tick, cand=n))
    elif kind == "unfenced_access":
        began = max((m.t_ns for m in guide.moves if m.buffer == cand["buffer"] and m.t_ns <= t), default=None)
        if began is not None:
            for frac in (2, 4):
                out.append(Deviation("begin_at", began + copy_ns // frac, importer, job["job"], cand=n))
    return out


def move_times(history: Path, s0: int) -> tuple[dict[Any, dict[str, int]], list[tuple[str, Any, int]]]:
    """Each real move's exporter events (move_begin, copy_begin, free, ...) by move id, and the
    revocations and un-revocations (event, buffer, time), in ns after s0."""
    out: dict[Any, dict[str, int]] = {}
    revocations: list[tuple[str, Any, int]] = []
    keys = (b'"copy_begin"', b'"copy_end"', b'"free"', b'"resv_unlock"', b'"move_end"', b'"revoke"', b'"unrevoke"')
    with open(history, "rb") as fh:
        for e in events_with(fh, keys):
            if e.get("svc") != "exporter" or not isinstance(e.get("t_ns"), int):
                continue
            if e.get("event") in ("revoke", "unrevoke"):
                revocations.append((e["event"], e.get("buffer"), e["t_ns"] - s0))
            elif e.get("move") is not None:
                out.setdefault(e["move"], {}).setdefault(e["event"], e["t_ns"] - s0)
    return out, revocations


def sim_times(history: Sequence[bytes], sim_s0: int) -> tuple[dict[tuple[Any, int], int], dict[tuple[Any, int], int]]:
    """The base schedule's own copy_begin of each buffer's k-th move and its k-th un-revocation,
    ns after its exporter's start: where a job begun into them is aimed (the simulated copy and
    lock come where the simulation put them, not where the real run had them)."""
    copies: dict[tuple[Any, int], int] = {}
    unrevokes: dict[tuple[Any, int], int] = {}
    seen: dict[tuple[str, Any], int] = {}
    for e in events_with(history, (b'"copy_begin"', b'"unrevoke"')):
        if e.get("svc") != "exporter" or e.get("event") not in ("copy_begin", "unrevoke"):
            continue
        k = seen[(e["event"], e.get("buffer"))] = seen.get((e["event"], e.get("buffer")), -1) + 1
        (copies if e["event"] == "copy_begin" else unrevokes)[(e.get("buffer"), k)] = e["t_ns"] - sim_s0
    return copies, unrevokes


def crossings(guide: RealGuide, times: dict[Any, dict[str, int]], copy_ns: int,
              revocations: Sequence[tuple[str, Any, int]] = (),
              simulated: tuple[dict, dict] = ({}, {})) -> list[Deviation]:
    """Pairs the run did not have: around each real move of buffer B, each importer's last job
    begun before the move taken on B instead, read or write, running until HOLD_NS after the
    move's free (`retarget`; with --pin-ratio also pinning B); and its job begun first after the
    copy began, taken on B and
    begun while the copy runs (`retarget_into`: aimed at the base schedule's own copy, a quarter and
    half way through it, where the simulation has one, for the simulated copy comes where the
    simulation put it; the exporter's frames in the FAST_WINDOW_NS before it take the network's
    least delay, so that its map reply can land inside). First, around each revocation of B (Linux 7.1), each
    importer's last job begun before it taken on B and running past it; around each un-revocation,
    its first job begun after it taken on B and begun UNREVOKE_LAGS_NS after it (its map served as
    the buffer becomes mappable again; after the base schedule's own un-revocation where it has one)."""
    out: list[Deviation] = []
    nth: dict[tuple[str, Any], int] = {}
    for event, buffer, t in revocations:        # first: a run has few, and a strategy that revokes is about them
        k = nth[(event, buffer)] = nth.get((event, buffer), -1) + 1
        at = simulated[1].get((buffer, k)) if event == "unrevoke" else None
        for importer, jobs in sorted(guide.jobs.items()):
            if event == "revoke":
                before = [j for j in jobs if j.begin_ns < t]
                if before:
                    for access in ("read", "write"):
                        out.append(Deviation("retarget", t + HOLD_NS, importer, before[-1].job, buffer=buffer,
                                             access=access))
            else:
                after = [j for j in jobs if j.begin_ns > t]
                for lag in UNREVOKE_LAGS_NS:
                    if after:
                        out.append(Deviation("retarget_into", (t if at is None else at) + lag, importer, after[0].job,
                                             buffer=buffer, access=after[0].access, sim_axis=at is not None))
    for m in guide.moves:
        t = times.get(m.move, {})
        free, copy_begin = t.get("free"), t.get("copy_begin")
        k = nth[("move", m.buffer)] = nth.get(("move", m.buffer), -1) + 1
        at = simulated[0].get((m.buffer, k))
        for importer, jobs in sorted(guide.jobs.items()):
            before = [j for j in jobs if j.begin_ns < m.t_ns]
            if before and free is not None:
                j = before[-1]
                for pin in ((None, True) if guide.pin_ratio > 0 else (None,)):
                    for access in ("read", "write"):
                        out.append(Deviation("retarget", free + HOLD_NS, importer, j.job, move=m.move,
                                             buffer=m.buffer, access=access, pin=pin))
            after = [j for j in jobs if copy_begin is not None and j.begin_ns > copy_begin]
            if after and copy_begin is not None:
                for frac in ((2,) if at is None else (4, 2)):
                    out.append(Deviation("retarget_into", (copy_begin if at is None else at) + copy_ns // frac, importer,
                                         after[0].job, move=m.move, buffer=m.buffer, access=after[0].access,
                                         sim_axis=at is not None))
    return out


@dataclass(frozen=True)
class SimMove:
    """A move of the base schedule, ns after its exporter's start (simulated axis): where maps
    are aimed into its lock and copy."""

    move: Any
    buffer: Any
    begin: int
    waits: int                       # its fence wait began (every move_notify returned): the fence snapshot
    copy_begin: int                  # the copy began and the lock was let go (resv-fence pipelines the copy)
    copy_end: int


def sim_moves(history: Sequence[bytes], sim_s0: int) -> tuple[list[SimMove], dict[int, list[tuple[int, int, int]]]]:
    """The base schedule's moves (SimMove) and each importer's jobs as (dma_begin, job, when its
    map was asked for), by time. Job n of an importer is its n-th draw (the guide's
    jobs[importer][n - 1]); jobs asked for at one instant were drawn by one refill."""
    keys = (b'"move_begin"', b'"fence_wait_begin"', b'"copy_begin"', b'"copy_end"', b'"dma_begin"', b'"event":"map"')
    seen: dict[Any, dict[str, Any]] = {}
    asked: dict[tuple[str, Any], int] = {}
    begins: dict[int, dict[int, tuple[int, int]]] = {}
    for e in events_with(history, keys):
        ev, svc, t = e.get("event"), str(e.get("svc", "")), e.get("t_ns", 0) - sim_s0
        if ev == "map" and svc.startswith("importer-"):
            asked[(svc, e.get("buffer"))] = t - int(e.get("latency_ns") or 0)
        elif ev == "dma_begin" and svc.startswith("importer-") and isinstance(e.get("job"), int):
            sent = asked.get((svc, e.get("buffer")), t)
            begins.setdefault(int(svc.rsplit("-", 1)[1]), {}).setdefault(e["job"], (t, sent))
        elif svc == "exporter" and e.get("move") is not None and ev != "dma_begin":
            seen.setdefault(e["move"], {"buffer": e.get("buffer")}).setdefault(ev, t)
    out = [SimMove(mv, m["buffer"], m["move_begin"], m.get("fence_wait_begin", m["copy_begin"]), m["copy_begin"],
                   m["copy_end"])
           for mv, m in seen.items() if {"move_begin", "copy_begin", "copy_end"} <= m.keys()]
    jobs = {i: sorted((t, n, sent) for n, (t, sent) in b.items()) for i, b in begins.items()}
    return sorted(out, key=lambda m: m.begin), jobs


def _near_jobs(guide: RealGuide, jobs: dict[int, list[tuple[int, int, int]]], importer: int,
               t: int) -> list[tuple[Any, tuple[int, ...]]]:
    """The importer's jobs (the guide's) on either side of t in the base schedule, each with the
    others of its refill: its last one begun before t (delayed to t with its refill, it is free
    to come then) and its first one after (brought forward if a slot is free)."""
    began = jobs.get(importer, [])
    real = guide.jobs.get(importer, [])
    k = next((n for n, (b, _, _) in enumerate(began) if b >= t), len(began))
    out = []
    for n in (k - 1, k):
        if 0 <= n < len(began) and 1 <= began[n][1] <= len(real):
            sent = began[n][2]
            refill = tuple(real[m - 1].job for _, m, s in began
                           if s == sent and m != began[n][1] and 1 <= m <= len(real))
            out.append((real[began[n][1] - 1], refill))
    return out


def lock_maps(guide: RealGuide, moves: Sequence[SimMove], jobs: dict[int, list[tuple[int, int, int]]],
              copy_ns: int) -> list[Deviation]:
    """Maps aimed into each base-schedule move of buffer B (`map_into`, simulated axis): each
    importer's job nearest the aim taken on B, its map request arriving at the exporter while the
    move waits for fences (its fence wait's middle), just before the lock is let go (deferred to
    it), and a quarter into the copy; the exporter's replies from then until the copy's end take
    the least delay, so that the job begins inside the copy. A map served meanwhile either waits
    for the lock and then for the copy's KERNEL fence, or (a strategy that serves maps unlocked,
    or an importer that skips the KERNEL fence) races the copy."""
    out: list[Deviation] = []
    for m in moves:
        aims = [m.copy_begin - MAP_EARLY_NS, m.copy_begin + copy_ns // 4]
        if m.copy_begin - m.waits > 2 * MAP_EARLY_NS:     # it waited for fences: a map into the wait
            aims.insert(0, (m.waits + m.copy_begin) // 2)
        for t in aims:
            for importer in sorted(guide.jobs):
                for j, refill in _near_jobs(guide, jobs, importer, t):
                    out.append(Deviation("map_into", t, importer, j.job, move=m.move, buffer=m.buffer,
                                         access=j.access, sim_axis=True, until_ns=m.copy_end, refill=refill))
    return out


def held_maps(guide: RealGuide, crossed: Sequence[Deviation], moves: Sequence[SimMove],
              jobs: dict[int, list[tuple[int, int, int]]]) -> list[tuple[Deviation, Deviation]]:
    """Two deviations, for a move of B that waited for no fence in the base schedule (no job
    on B when it began: lock_maps has no fence wait to aim into): a job held on B across it (a
    write `retarget` of crossings, unpinned: a write's fence every fence wait waits for), so that
    the move waits for its fence, and another importer's map of B aimed into that wait
    (HELD_MAP_LAGS_NS after the base schedule's fence wait began): a map served while the move
    holds the lock."""
    out: list[tuple[Deviation, Deviation]] = []
    by_move = {(m.move, m.buffer): m for m in moves if m.copy_begin - m.waits <= 2 * MAP_EARLY_NS}
    for hold in crossed:
        m = by_move.get((hold.move, hold.buffer))
        if hold.kind != "retarget" or hold.access != "write" or hold.pin or m is None:
            continue
        for lag in HELD_MAP_LAGS_NS:
            t = m.waits + lag
            for importer in sorted(guide.jobs):
                if importer == hold.importer:
                    continue
                for j, refill in _near_jobs(guide, jobs, importer, t):
                    out.append((hold, Deviation("map_into", t, importer, j.job, move=m.move, buffer=m.buffer,
                                                access=j.access, sim_axis=True, until_ns=t + MAX_NS, refill=refill)))
    return out


def pinned_before(guide: RealGuide, times: dict[Any, dict[str, int]], copy_ns: int) -> list[tuple[Deviation, Deviation]]:
    """With --pin-ratio: around each real move of buffer B, each importer's job before its last
    one before the move taken on B pinned (pin, unpin: an attachment that pinned B, its mapping
    kept), and either its last one taken on B unpinned, read or write, running past the free, or
    its first one after the copy began taken on B while the copy runs: two deviations."""
    out: list[tuple[Deviation, Deviation]] = []
    if guide.pin_ratio <= 0:
        return out
    for m in guide.moves:
        free = times.get(m.move, {}).get("free")
        copy_begin = times.get(m.move, {}).get("copy_begin")
        for importer, jobs in sorted(guide.jobs.items()):
            before = [j for j in jobs if j.begin_ns < m.t_ns]
            if len(before) < 2 or free is None:
                continue
            prev, last = before[-2], before[-1]
            first = Deviation("retarget", prev.begin_ns + prev.duration_ns, importer, prev.job, move=m.move,
                              buffer=m.buffer, access=prev.access, pin=True)
            for access in ("read", "write"):
                out.append((first, Deviation("retarget", free + HOLD_NS, importer, last.job, move=m.move,
                                             buffer=m.buffer, access=access, pin=False)))
            after = [j for j in jobs if copy_begin is not None and j.begin_ns > copy_begin]
            if after and copy_begin is not None:
                out.append((first, Deviation("retarget_into", copy_begin + copy_ns // 2, importer, after[0].job,
                                             move=m.move, buffer=m.buffer, access=after[0].access, pin=False)))
    return out


def apply(base: RealGuide, devs: Sequence[Deviation]) -> RealGuide:
    """A copy of the guide with the timing deviations made (jobs and ticks moved)."""
    g = copy.deepcopy(base)
    for d in devs:
        if d.kind in ("hold_end", "run_across", "begin_at"):
            j = next((j for j in g.jobs.get(d.importer, []) if j.job == d.job), None)  # type: ignore[arg-type]
            if j is None:
                continue
            if d.kind == "hold_end":
                j.duration_ns = max(j.duration_ns, d.t_ns - j.begin_ns)
            elif d.kind == "run_across":
                end = d.t_ns + HOLD_NS
                j.begin_ns = d.t_ns - LEAD_NS
                j.duration_ns = max(j.duration_ns, end - j.begin_ns)
            else:
                j.begin_ns = min(j.begin_ns, d.t_ns)
        elif d.kind == "map_into":
            # its map reaches the exporter at t_ns, one exporter delay before it begins; the jobs
            # drawn with it come with it (one think time before a refill: none between its jobs)
            for j in g.jobs.get(d.importer, []):  # type: ignore[arg-type]
                if j.job == d.job or j.job in d.refill:
                    j.aim_ns = d.t_ns + g.net_ns.get("exporter", MIN_NS)
                if j.job == d.job:
                    j.buffer, j.access = d.buffer, d.access
        elif d.kind in ("retarget", "retarget_into"):
            j = next((j for j in g.jobs.get(d.importer, []) if j.job == d.job), None)  # type: ignore[arg-type]
            if j is None:
                continue
            j.buffer, j.access = d.buffer, d.access
            if d.pin is not None:
                j.pin = d.pin
            if d.kind == "retarget":
                j.duration_ns = max(j.duration_ns, d.t_ns - j.begin_ns)
            elif d.sim_axis:
                j.aim_ns = d.t_ns
            else:
                j.begin_ns = d.t_ns
        elif d.kind == "move_at" and d.move is not None and d.move < len(g.ticks):
            g.ticks[d.move] = replace(g.ticks[d.move], t_ns=max(0, d.t_ns))
    g.ticks = sorted(g.ticks, key=lambda t: t.t_ns)
    return g


def events_with(lines: Iterable[bytes], keys: Sequence[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON objects among history lines that contain one of `keys` (a cheap test before
    parsing); unreadable lines skipped."""
    import orjson
    for line in lines:
        if any(k in line for k in keys):
            try:
                e = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(e, dict):
                yield e


def lockdep_candidates(history: Path) -> list[dict[str, Any]]:
    """The run's potential deadlocks, as the checker judges its history (checker/lockdep.py), as
    candidates: kind potential_deadlock, the importer and buffer whose fence's signalling took a
    reservation lock (`job`: that fence's job, `fence`: its seq), `other`: the wait for fences
    under a reservation lock that closes lockdep's cycle. A prediction, not a finding: only a
    formed deadlock confirms it."""
    from checker.findings import POTENTIAL_DEADLOCK
    from checker.lockdep import HANDLED, LockDep
    dep = LockDep()
    with open(history, "rb") as fh:
        for e in events_with(fh, [f'"{name}"'.encode() for name in HANDLED]):
            if e.get("event") in HANDLED and isinstance(e.get("t_ns"), int):
                dep.feed(e)
    out = []
    for it in dep.items:
        fence, _taking, _lock, wait = it["events"]
        out.append({"kind": POTENTIAL_DEADLOCK, "buffer": it["buffer"], "gen": None, "importer": it["importer"],
                    "fence": it["fence"], "job": {"svc": it["importer"], "job": fence.get("job"), "t_ns": fence["t_ns"]},
                    "other": {"event": wait.get("event"), "svc": wait.get("svc"), "buffer": wait.get("buffer"),
                              "move": wait.get("move"), "revoke": wait.get("revoke"), "t_ns": wait["t_ns"]}})
    return out


def lock_waits(lines: Iterable[bytes], s0: int) -> list[tuple[Any, int, int, frozenset[str]]]:
    """Each move's or revocation's first wait for fences while it holds its buffer's reservation
    lock (lockdep's side B), in order: (buffer, k: the k-th such wait on that buffer, its time in ns
    after s0, the importers whose fences it waited for)."""
    from checker.model import importer_name
    held: set[Any] = set()
    seen: set[tuple[str, Any]] = set()
    nth: dict[Any, int] = {}
    out = []
    for e in events_with(lines, (b'"resv_', b'"fence_wait_begin"')):
        if e.get("svc") != "exporter" or not isinstance(e.get("t_ns"), int):
            continue
        name, buf = e.get("event"), e.get("buffer")
        if name == "resv_lock":
            held.add(buf)
        elif name == "resv_unlock":
            held.discard(buf)
        elif name == "fence_wait_begin" and buf in held:
            holder = ("move", e["move"]) if e.get("move") is not None else ("revoke", e.get("revoke"))
            if holder in seen:
                continue
            seen.add(holder)
            k = nth[buf] = nth.get(buf, -1) + 1
            fenced = frozenset(importer_name(f.get("importer", f.get("slot"))) for f in e.get("fences") or []
                               if isinstance(f, dict) and f.get("buffer", buf) == buf)
            out.append((buf, k, e["t_ns"] - s0, fenced))
    return out


def into_lock_waits(items: Sequence[dict[str, Any]], guide: RealGuide, real: Sequence[tuple], simulated: Sequence[tuple],
                    ) -> tuple[list[Deviation], list[tuple[Deviation, Deviation]]]:
    """Deviations aimed at forming each potential deadlock's cycle (RaceFuzzer's hold-back, for a
    lock and a fence): for its importer I and each wait for fences under a reservation lock of the
    run (`real`, from lock_waits; buffer B), I's first job begun after the wait began (and after
    I's own job on B running then ended) taken on B and begun UNDER_LOCK_LAGS_NS after that (on the
    base schedule's own wait, from `simulated`, where it has one; `retarget_into`): its map request
    comes while the lock is held. If that wait
    waited for I's fence on B, one deviation; else a pair, with I's last job begun before the wait
    taken on B too (`retarget`), so that the wait has I's fence on B to wait for. Each deviation's
    candidate is I's on B if there is one, else I's first."""
    from checker.findings import POTENTIAL_DEADLOCK
    sim_at = {(b, k): t for b, k, t, _ in simulated}
    singles: list[Deviation] = []
    pairs: list[tuple[Deviation, Deviation]] = []
    importers = list(dict.fromkeys(str(c["importer"]) for c in items if c["kind"] == POTENTIAL_DEADLOCK))
    for imp in importers:
        try:
            index = int(imp.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        jobs = guide.jobs.get(index, [])
        mine = [n for n, c in enumerate(items) if c["kind"] == POTENTIAL_DEADLOCK and str(c["importer"]) == imp]
        for buf, k, t, fenced in real:
            n = next((m for m in mine if items[m]["buffer"] == buf), mine[0])
            before = [j for j in jobs if j.begin_ns < t]
            held = [j for j in before if j.buffer == buf]
            if imp not in fenced:
                if not before:
                    continue
                held = [before[-1]]             # the pair's first: taken on B
            # I's own job on B still running keeps B busy for I (a busy buffer is not drawn again):
            # the job aimed into the wait begins after it ended
            start = max([t] + [j.begin_ns + j.duration_ns for j in held])
            after = [j for j in jobs if j.begin_ns > start]
            if not after:
                continue
            at = sim_at.get((buf, k))
            into = [Deviation("retarget_into", (t if at is None else at) + start - t + lag, index, after[0].job,
                              buffer=buf, access=after[0].access, sim_axis=at is not None, cand=n)
                    for lag in UNDER_LOCK_LAGS_NS]
            if imp in fenced:
                singles += into
            else:
                j = before[-1]
                first = Deviation("retarget", j.begin_ns + j.duration_ns, index, j.job, buffer=buf, access=j.access, cand=n)
                pairs += [(first, d) for d in into]
    return singles, pairs


def deadlock_reason(n: int, items: Sequence[dict[str, Any]], plan: Sequence[tuple[Deviation, ...]],
                    state: Sequence[dict[str, Any]], bound: int, schedules: int, stopped: bool) -> str:
    """Why potential deadlock n was not confirmed: the deviation sets aimed at its importer's
    fences (into_lock_waits gives each one candidate of that importer) and how many of them ran."""
    from checker.findings import POTENTIAL_DEADLOCK
    imp = str(items[n]["importer"])
    mine = {m for m, c in enumerate(items) if c["kind"] == POTENTIAL_DEADLOCK and str(c["importer"]) == imp}
    left = sum(1 for devs in plan if any(d.cand in mine for d in devs))
    tried = sum(state[m]["tried"] for m in mine)
    if not left:
        return (f"not tried: no wait for fences under a reservation lock in the run with a job of {imp} begun "
                f"after it to aim into it")
    if tried < left:
        return (f"not tried: {left - tried} of the {left} deviation sets aimed at {imp}'s fences, "
                + ("stopped at the first confirmation" if stopped else f"past --schedules {schedules}"))
    return (f"{UNREACHABLE} {bound}: {tried} schedules began a job of {imp} inside a wait for its fence under a "
            f"reservation lock (up to {bound} deviations) and no deadlock formed")


def _event_times(history: Sequence[bytes], cand: dict[str, Any]) -> tuple[int | None, int | None]:
    """In a schedule's history: the candidate's job's end and the exporter's side (its event on
    the buffer and generation), first of each."""
    import orjson
    job, other = cand["job"], cand["other"]
    end = side = None
    want = other.get("event")
    for line in history:
        if end is None and b'"dma_end"' in line:
            e = orjson.loads(line)
            if e.get("svc") == job["svc"] and e.get("job") == job["job"]:
                end = e["t_ns"]
        elif side is None and want and f'"{want}"'.encode() in line:
            e = orjson.loads(line)
            if e.get("event") == want and e.get("svc") == "exporter" and e.get("buffer") == cand["buffer"] \
                    and e.get("from_gen", e.get("gen", cand["gen"])) == cand["gen"]:
                side = e["t_ns"]
    return end, side


def around(run_dir: Path, out: Path, *, bound: int = 2, schedules: int = 200, force: bool = False,
           version: str | None = None, stop_at_first: bool = False, base_counts: bool = True,
           say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    from checker.findings import CATCHES, DEADLOCK, POTENTIAL_DEADLOCK
    from checker.predict import PredictRefused, predict_history
    from exporter_svc.service import COPY_CHUNK
    from runtime.runparams import OptionError, from_mapping
    from sim.options import SimOptions
    from sim.reporting import tool_version
    from sim.search.exhaustive import fence_tracing
    from sim.search.trial import Config, SearchChooser, run_trial
    from sim.world import LANE_COST_NS

    began = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out)
    if bound < 1:
        raise AroundError(f"--bound {bound}: a reversal is one deviation, so the bound must be 1 or more")
    report, history = read_run(run_dir, version or tool_version(), force)
    try:
        params = from_mapping(report["params"], f"{run_dir / 'report.json'} params")
    except (OptionError, ValueError, TypeError) as exc:
        raise AroundError(f"{run_dir} is not a run of this version: {exc}") from None
    try:
        pred = predict_history(history)
    except PredictRefused as exc:
        raise AroundError(str(exc)) from None
    s0 = _start_ns(history)
    base = RealGuide.from_history(history, params)
    config = Config(params, SimOptions())
    copy_ns = LANE_COST_NS["copy"] * -(-params.buffer_size // COPY_CHUNK)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "races", ignore_errors=True)
    if base.unreadable:
        say(f"  {base.unreadable} of {base.lines} history lines unreadable (truncated or garbled): skipped, "
            f"the rest used")

    ran = 0

    def run(devs: Sequence[Deviation], recorder: Recorder | None = None) -> tuple[Any, AroundGuide]:
        nonlocal ran
        ran += 1
        guide = AroundGuide(apply(base, devs), devs, recorder)
        trial = run_trial(config, SearchChooser(0), guide=guide, keep_history=True,
                          setup=recorder.setup if recorder is not None else None)
        return trial, guide

    # the base schedule, with its steps' footprints
    recorder = Recorder()
    with fence_tracing():                       # observing changes nothing of the schedule
        base_trial, base_guide = run((), recorder)
    baseline = set(base_trial.races)
    sim_s0 = base_guide.inner._s0 or 0
    say(f"explore --around {run_dir}: {pred['candidates']} candidate(s), {len(pred['items'])} listed; "
        f"base schedule: {len(baseline)} race(s) or finding(s) of its own; bound {bound}, at most {schedules} schedules")

    items = pred["items"] + lockdep_candidates(history)      # the happens-before candidates, then lockdep's
    n_potential = sum(c["kind"] == POTENTIAL_DEADLOCK for c in items)
    if n_potential:
        say(f"  and {n_potential} potential deadlock(s) (checker/lockdep.py): each confirmed only by a schedule in "
            f"which a deadlock forms")
    state: list[dict[str, Any]] = [{"tried": 0, "ordered": 0, "why": None} for _ in items]
    confirmed: dict[int, dict[str, Any]] = {}
    also_found: list[dict[str, Any]] = []
    kept_keys: set[tuple[str, Any]] = set()
    first_schedule: int | None = None

    def label(c: dict[str, Any]) -> dict[str, Any]:
        if c["kind"] == POTENTIAL_DEADLOCK:
            return {"kind": c["kind"], "buffer": c["buffer"], "importer": c["importer"], "fence": c["fence"],
                    "job": c["job"], "other": c["other"]}
        return {"kind": c["kind"], "buffer": c["buffer"], "gen": c["gen"], "job": c["job"], "other": c["other"]}

    def involved(r: Any) -> list[int]:
        """The potential deadlocks a formed deadlock confirms: those of its fence's importer or of
        its lock's buffer."""
        return [n for n, c in enumerate(items) if c["kind"] == POTENTIAL_DEADLOCK
                and (str(c["importer"]) == r.svc or c["buffer"] == r.buffer)]

    def matches(r: Any) -> int | None:
        same = [n for n, c in enumerate(items) if c["kind"] == r.kind and c["buffer"] == r.buffer]
        exact = [n for n in same if items[n]["job"]["svc"] == r.svc and items[n]["job"]["job"] == r.job]
        pick = exact or [n for n in same if n not in confirmed] or same
        return pick[0] if pick else None

    def keep(r: Any, devs: Sequence[Deviation], schedule: int) -> dict[str, Any]:
        """Shrink the deviations that found r, write the shrunk schedule with its witness."""
        from sim.shrink import ddmin

        def test(sub: Sequence[Deviation]) -> Any:
            if not sub:
                return None                     # the base schedule, which does not have it
            t, _ = run(sub)
            return t if any(x.kind == r.kind and x.buffer == r.buffer and x not in baseline for x in t.races) else None
        if devs:
            small = ddmin(list(devs), test)
            trial = test(small) if small != list(devs) else None
            if trial is None:
                small = list(devs)
                trial, _ = run(small)
            one_minimal = all(test([d for d in small if d != x]) is None for x in small) if len(small) > 1 else True
        else:
            small, one_minimal = [], True
            trial = base_trial
        where = out / "races" / str(len(confirmed) + len(also_found) + 1)
        _write(config, trial, where, r.kind, r.buffer)
        return {"dir": str(where), "schedule": schedule, "deviations": [d.as_dict() for d in small],
                "deviations_before_shrink": len(devs), "one_minimal": one_minimal,
                "race": {"kind": r.kind, "buffer": r.buffer, "importer": r.svc, "job": r.job}}

    def judge_schedule(trial: Any, devs: Sequence[Deviation], schedule: int, races: Any) -> bool:
        nonlocal first_schedule
        got = False
        for r in races:
            if r.kind == POTENTIAL_DEADLOCK:
                continue                        # a prediction, seen again: it confirms nothing, nor is it found
            key = (r.kind, r.buffer)
            pending = [n for n in involved(r) if n not in confirmed] if r.kind == DEADLOCK else []
            if pending:                         # the cycle formed: it confirms the potential deadlocks it involves
                kept_keys.add(key)
                info = keep(r, devs, schedule)
                for n in pending:
                    confirmed[n] = {**label(items[n]), **info}
                say(f"  confirmed {len(pending)} potential deadlock(s): a deadlock formed on buffer {r.buffer}'s lock "
                    f"({r.svc}'s fence {r.job}) in schedule {schedule}, {len(info['deviations'])} deviation(s) -> "
                    f"{info['dir']}")
                got = True
                continue
            if r.kind == DEADLOCK and involved(r):
                continue                        # they are confirmed already
            n = matches(r)
            if n is not None and n not in confirmed:
                kept_keys.add(key)
                info = keep(r, devs, schedule)
                confirmed[n] = {**label(items[n]), **info}
                say(f"  confirmed {r.kind} on buffer {r.buffer} ({r.svc} job {r.job}) in schedule {schedule}, "
                    f"{len(info['deviations'])} deviation(s) -> {info['dir']}")
                got = True
            elif n is None and key not in kept_keys:
                kept_keys.add(key)
                info = keep(r, devs, schedule)
                info["catch"] = "finding" if r.kind in CATCHES else "race no candidate predicted"
                also_found.append(info)
                say(f"  found {r.kind} on buffer {r.buffer} ({info['catch']}) in schedule {schedule} -> {info['dir']}")
                got = True
        if got and first_schedule is None:
            first_schedule = schedule
        return got

    # what the replay shows with no deviation (base_counts=False: nothing; a deviation must find a
    # race or finding the base schedule has not: another kind, buffer, importer or job)
    if base_counts:
        judge_schedule(base_trial, (), 0, base_trial.races)

    # the deviation sets, in order (module docstring)
    per_cand = [reversals(n, c, base, s0, copy_ns) if c["kind"] != "use_after_unmap" else []
                for n, c in enumerate(items)]
    level1: list[tuple[Deviation, ...]] = []
    for depth in range(max((len(v) for v in per_cand), default=0)):
        level1 += [(v[depth],) for v in per_cand if depth < len(v)]
    with open(history, "rb") as fh:             # then the potential deadlocks' (into_lock_waits)
        held, held_pairs = into_lock_waits(items, base, lock_waits(fh, s0), lock_waits(base_trial.history or [], sim_s0))
    level1 += [(d,) for d in held]
    if held or held_pairs:
        say(f"  {len(held)} jobs aimed into waits for fences under a lock, {len(held_pairs)} pairs (potential deadlocks)")
    late = [Deviation("late_frames", m.t_ns, move=m.move) for m in base.moves]
    times, revocations = move_times(history, s0)
    crossed = crossings(base, times, copy_ns, revocations, sim_times(base_trial.history or [], sim_s0))
    unpinned = pinned_before(base, times, copy_ns) if bound >= 2 else []
    moved, drawn = sim_moves(base_trial.history or [], sim_s0)
    into = lock_maps(base, moved, drawn, copy_ns)
    held_into = held_maps(base, crossed, moved, drawn) if bound >= 2 else []
    cand_times = sorted(c["other"]["t_ns"] - s0 for c in items if c["other"].get("t_ns") is not None)

    def distance(t: int) -> int:
        return min((abs(t - x) for x in cand_times), default=0)
    steps = sorted(recorder.reversals(sim_s0), key=lambda d: distance(d.t_ns))[:STEP_REVERSALS]
    level1 += [(d,) for d in crossed] + [(d,) for d in into] + unpinned + [(d,) for d in late] + [(d,) for d in steps]
    level2: list[tuple[Deviation, ...]] = []
    if bound >= 2:
        level2 += held_pairs
        for n, v in enumerate(per_cand):
            level2 += [tuple(p) for p in combinations(v, 2)]
            mv = items[n]["other"].get("move")
            mv = mv[0] if isinstance(mv, list) else mv
            level2 += [(d, x) for d in v for x in late if x.move == mv]
            t = items[n]["other"].get("t_ns")
            if t is not None and v:
                near = sorted(steps, key=lambda x: abs(x.t_ns - (t - s0)))[:NEAR_STEPS]
                level2 += [(d, x) for d in v for x in near]
        level2 += held_into + [(d, x) for d in crossed for x in late if x.move == d.move]
    plan = level1 + level2
    say(f"  {len(level1) - len(unpinned)} single deviations ({sum(map(len, per_cand))} reversals of candidates, "
        f"{len(crossed)} crossings of moves and revocations, {len(into)} maps into moves, {len(late)} late "
        f"notifications, {len(steps)} dependent "
        f"step reorderings), {len(level2) + len(unpinned)} pairs")

    schedule = 0
    first_deviation_s: float | None = None
    for devs in plan:
        if schedule >= schedules or len(confirmed) == len(items) and items:
            break
        if stop_at_first and first_schedule is not None:
            break
        targets = {d.cand for d in devs if d.cand is not None}
        if targets and targets <= set(confirmed) and len(items):
            continue                           # its candidates are confirmed: spend the schedules elsewhere
        schedule += 1
        if first_deviation_s is None:
            first_deviation_s = round(time.perf_counter() - began, 2)
        trial, guide = run(devs)
        new = [r for r in trial.races if r not in baseline]
        judge_schedule(trial, devs, schedule, new)
        for n in targets - set(confirmed):
            st = state[n]
            st["tried"] += 1
            if trial.history is not None and len(devs) == 1 and devs[0].kind in ("hold_end", "run_across"):
                end, side = _event_times(trial.history, items[n])
                if end is not None and side is not None and side >= end:
                    st["ordered"] += 1
                    st["why"] = (f"held until {devs[0].as_dict()['t_ms']} ms, the job ended before the exporter's "
                                 f"{items[n]['other']['event']} all the same (schedule {schedule}): the exporter waited "
                                 f"for it")
        if schedule % 25 == 0:
            say(f"  {schedule} schedules, {len(confirmed)} confirmed, {time.perf_counter() - began:.1f} s")

    not_confirmed = []
    for n, c in enumerate(items):
        if n in confirmed:
            continue
        st = state[n]
        left = [devs for devs in plan if any(d.cand == n for d in devs)]
        if c["kind"] == POTENTIAL_DEADLOCK:
            why = deadlock_reason(n, items, plan, state, bound, schedules, stop_at_first and first_schedule is not None)
        elif c["kind"] == "use_after_unmap" or not per_cand[n]:
            why = ("not tried: a race in the run's own order (use_after_unmap), which its replay did not repeat"
                   if c["kind"] == "use_after_unmap" else
                   "not tried: nothing to reverse (the job never ended, or the other side has no time)")
        elif st["tried"] < len(left) and stop_at_first and first_schedule is not None:
            why = f"not tried: {len(left) - st['tried']} of its {len(left)} deviation sets, stopped at the first confirmation"
        elif st["tried"] < len(left):
            why = f"not tried: {len(left) - st['tried']} of its {len(left)} deviation sets past --schedules {schedules}"
        elif st["ordered"]:
            why = f"{ORDERED}: {st['why']}"
        else:
            why = (f"{UNREACHABLE} {bound}: {st['tried']} schedules reversed it (up to {bound} deviations) "
                   f"and none raced")
        not_confirmed.append({**label(c), "reason": why})
    by_kind = {**pred["by_kind"], **({POTENTIAL_DEADLOCK: n_potential} if n_potential else {})}
    doc = {"run": str(run_dir), "version": report.get("version"), "candidates": pred["candidates"] + n_potential,
           "by_kind": by_kind, "listed": len(items), "into_lock_waits": len(held) + len(held_pairs),
           "confirmed": [confirmed[n] for n in sorted(confirmed)], "not_confirmed": not_confirmed,
           "also_found": also_found, "confirms": bool(confirmed or also_found),
           "first_confirmed_schedule": first_schedule, "first_deviation_s": first_deviation_s, "schedules": schedule, "bound": bound,
           "deviation_sets": {"single": len(level1) - len(unpinned), "pairs": len(level2) + len(unpinned)},
           "base": {"races": [r.as_dict() for r in base_trial.races], "guided": dict(base_guide.inner.taken),
                    "left": dict(base_guide.inner.left)},
           "unreadable_lines": base.unreadable, "history_lines": base.lines,
           "seconds": round(time.perf_counter() - began, 2), "simulations": ran}
    (out / "around.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return doc


def _write(config: Any, trial: Any, where: Path, kind: str, buffer: Any) -> None:
    """The schedule as a replayable run directory with witness.md (a finding's lines for a catch)."""
    from checker.explain import write_witness_md
    from checker.findings import CATCHES
    from checker.report_md import finding_lines
    from sim.explore import _witness_of
    from sim.search.trial import write_run
    result = write_run(config, trial.entries, trial.streams, where)
    try:
        _, index = _witness_of(result.report, kind, buffer)
    except (ValueError, KeyError):
        (where / "witness.md").write_text(f"# {kind} on buffer {buffer}\n\nThe written run's report does not "
                                          f"list it (see report.md).\n")
        return
    if kind in CATCHES:
        item = result.report["findings"][kind]["items"][index - 1]
        (where / "witness.md").write_text("\n".join([f"# {kind} on buffer {buffer}", ""] + finding_lines(item)) + "\n")
    else:
        write_witness_md(where / "history.jsonl", index, where / "witness.md", report=result.report)
