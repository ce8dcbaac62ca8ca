"""A guide built from a real run's history: replay a real race in the simulator.

`dmabuf-emu replay RUN_DIR --race N` (deploy/sim_cmd.py) reads a real run's history.jsonl and
answers the simulated run's decisions from it where it can. Time: both runs are laid on one axis
whose origin is the exporter's `start` (its `control` event in the real run, the first
`pressure:exporter` decision in the simulated one, both where the pressure timer starts); each
importer's real times are aimed through its Warp (the identity but around moves, see Warp).

- the memory manager's moves (sim/driver.py steer_moves): each pressure tick's wait
  (`pressure:exporter`) ends where the real run's next tick came (its moves' move_begin, follow-up
  promotes aside; a real tick with no move is skipped), and each tick picks (`move:exporter`) the
  move that real tick made: the same buffer and reason, and for an eviction the buffer the real
  run promoted into the freed range (the promote that began right after its free);
- workload draws (stream `workload:<index>:0`): each importer's jobs in the order of their
  dma_begin: its buffer (the `choice`: the real buffer if the simulated importer has it idle),
  its access (the `chance` of a write), its duration (the `random` of the uniform: the D whose
  last chunk comes when the real last access came, dma_duration_ms), with --pin-ratio whether
  it pins (the `random` after the duration: pinned when the exporter's `pin` of that importer and
  buffer came since its previous job on it), and the think time before
  it (the `random`): the wait that makes its dma_begin come where the real one came, less the
  simulated map round trip;
- what the workload's ranges cannot give (sim/driver.py steer_importer): a wait longer than the
  think time's range is the refill's lateness (`late:<importer>`, also at the workload's start),
  a job longer than the duration's range the DMA's (`dma-late:<importer>`): a real importer
  starved under load;
- network delays (stream `net:<sender>`): the median real delay of what that sender sent
  (move_notify_sent -> move_notify_received for the exporter, map_request -> map_served for an
  importer), as the exponential's u, clamped to the simulator's range (sim/network.py); an
  importer's map request (the frame right after a job's draws) the delay that makes its job
  begin on time, its other frames the least delay (an early slot is waited out, a late one is
  not made up; under an acknowledging strategy this makes the acks come early);
- steps: the actor whose next expected real event (its next job's dma_begin) comes first;
  actors with no expected event are left to the chooser.

A decision the real history does not answer is left to the chooser and counted as `made`.
A history line that is not a JSON event with an integer t_ns (truncated, garbled) is skipped and
counted (`unreadable`, of `lines`): the guide is built from the rest.
The real t_ns are CLOCK_MONOTONIC; the simulated ones virtual: only differences are compared.

Measured (real `run --strategy move-notify --importers 4 --duration 1 --seed S`, S = 1..5 twice
and 6..10 once, on a loaded 2-core machine; `replay --race 0`): race 0 recurred on the same
buffer and generation in 14 of 15 runs, in 13 by the same importer; an unguided simulation of
the same seed has it in 6 (by the same importer in 4). Of each run's races (kind, buffer, gen)
50-100% recurred, median 83% (unguided 22-61%, median 46%). The miss (seed 4 of the second
five): the race's write was the second job of a refill, whose real map round trip took 11.5 ms
(both jobs of a refill send their maps at once, and a simulated hop takes at most MAX_NS =
2 ms), so it began 13 ms early and ended before the move. Near misses seen while tuning, same
kind: a promote's move began 1.35 ms after its eviction in the real run (a copy under load) and
25 us after it in the simulation (world.LANE_COST_NS), a narrow window to pace a job into.
"""

from __future__ import annotations

import bisect
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from exporter_svc.service import COPY_CHUNK
from importer_svc.service import ImporterArgs
from sim.driver import LATE_MAX_S
from sim.network import MAX_NS, MEAN_NS, MIN_NS
from sim.world import LANE_COST_NS
from sim.scheduler import CHANCE, CHOICE, RANDOM, STEP, Request

ALMOST_ONE = math.nextafter(1.0, 0.0)


@dataclass
class RealJob:
    job: int
    buffer: int
    access: str
    begin_ns: int                   # relative to the exporter's start
    duration_ns: int
    think_ns: int | None            # gap since this importer's previous dma_end (None: the first jobs)
    busy: frozenset[int]            # this importer's buffers in flight at begin_ns
    pin: bool = False               # it pinned its buffer first (the exporter's pin of it came before)
    aim_ns: int | None = None       # set (explore --around): its dma_begin aimed here on the simulated axis, unwarped


@dataclass(frozen=True)
class RealTick:
    """A pressure tick of the real run that wanted a move: when, and the move (as
    Exporter.move_options() labels it, `then` the buffer promoted after an eviction)."""

    t_ns: int                       # relative to the exporter's start
    reason: str
    buffer: int
    then: int | None


@dataclass
class _Cursor:
    jobs: list[RealJob]
    next: int = 0                   # the next job a choice draws
    pending: str = ""               # "chance" / "duration" / "pin" of job next-1 still to draw
    late_ns: int = 0                # what the last think time could not wait: the refill's lateness
    stretch_ns: int = 0             # what the last duration could not last: the DMA's lateness


@dataclass(frozen=True)
class RealMove:
    move: int
    t_ns: int                       # move_begin, relative to the exporter's start
    reason: str
    buffer: int
    follows: int | None             # the eviction whose freed range this promote takes (memory.py)


def _moves(events: list[dict], s0: int) -> list[RealMove]:
    """The real run's moves; a promote begun right after an eviction's free and move_end is that
    eviction's follow-up want (memory.py), not a tick's."""
    reason_of: dict[int, str] = {}
    out: list[RealMove] = []
    prev: dict | None = None
    for e in events:
        if e.get("svc") != "exporter":
            continue
        if e.get("event") == "move_begin":
            reason_of[e["move"]] = e.get("reason", "")
            follows = (prev is not None and prev.get("event") == "free"
                       and reason_of.get(prev.get("move")) == "evict" and e.get("reason") == "promote")
            out.append(RealMove(e["move"], e["t_ns"] - s0, e.get("reason", ""), e["buffer"],
                                prev["move"] if follows else None))  # type: ignore[index]
        if not (e.get("event") == "move_end" and prev is not None and prev.get("move") == e.get("move")):
            prev = e                                   # the free's own move_end comes between
    return out


def _ticks(moves: list[RealMove]) -> list[RealTick]:
    """The moves the real run's ticks wanted, each eviction with its follow-up's buffer."""
    then = {m.follows: m.buffer for m in moves if m.follows is not None}
    return [RealTick(m.t_ns, m.reason, m.buffer, then.get(m.move)) for m in moves if m.follows is None]


class Warp:
    """One importer's real time (relative to the exporter's start) to the simulated time its
    events are aimed at: monotone, piecewise linear between anchors, the identity before the
    first. The anchors keep, around every move, the order the importer saw things in: the move
    begins at its simulated time (a tick's where the real one came, a promote into an evicted
    range at that eviction's free, one simulated copy later) and its move_notify reaches the
    importer one simulated exporter delay after that. A real notify that took longer (5 ms under
    load: more than the simulator's MAX_NS) compresses what the importer did meanwhile into the
    simulated window, so that a job the real importer began before the notify came begins before
    it in the simulation too."""

    def __init__(self, anchors: list[tuple[int, int]]) -> None:
        pts: list[tuple[int, int]] = []
        for real, sim in sorted(anchors):
            if pts and real == pts[-1][0]:
                continue
            pts.append((real, max(sim, pts[-1][1]) if pts else sim))
        self.real = [r for r, _ in pts]
        self.sim = [t for _, t in pts]

    def __call__(self, t: int) -> int:
        if not self.real or t < self.real[0]:
            return t
        i = bisect.bisect_right(self.real, t) - 1
        if i == len(self.real) - 1:
            return t + self.sim[i] - self.real[i]
        r0, r1, s0, s1 = self.real[i], self.real[i + 1], self.sim[i], self.sim[i + 1]
        return s0 + (t - r0) * (s1 - s0) // (r1 - r0)


def _warps(events: list[dict], moves: list[RealMove], s0: int, notify_ns: int, copy_ns: int) -> dict[int, Warp]:
    """Each importer's Warp from the real moves (see Warp)."""
    began: dict[int, int] = {}                          # move -> its simulated begin
    for m in moves:
        began[m.move] = began[m.follows] + copy_ns if m.follows in began else m.t_ns
    common = [(m.t_ns, began[m.move]) for m in moves]
    anchors: dict[int, list[tuple[int, int]]] = {}
    for e in events:
        svc = e.get("svc", "")
        if e.get("event") == "move_notify_received" and svc.startswith("importer-") and e.get("move") in began:
            anchors.setdefault(int(svc.split("-", 1)[1]), list(common)).append(
                (e["t_ns"] - s0, began[e["move"]] + notify_ns))
    return {i: Warp(a) for i, a in anchors.items()}


@dataclass
class RealGuide:
    """Guide (sim/scheduler.py) answering from a real history. See the module docstring."""

    buffers: int
    dma_ms: float
    think_ms: float
    period_ns: int                                  # the pressure period (1/move_rate)
    jobs: dict[int, list[RealJob]]                  # importer index -> its jobs in order
    ticks: list[RealTick]
    net_u: dict[str, float]                         # sender -> u of its median delay
    net_ns: dict[str, int]                          # sender -> that delay
    warps: dict[int, Warp]                          # importer index -> where its real times are aimed
    chunk_ms: float = ImporterArgs.chunk_ms          # the DMA engine's chunk (importer_svc/dma.py)
    pin_ratio: float = 0.0                          # > 0: each job draws whether it pins (after its duration)
    moves: list[RealMove] = field(default_factory=list)   # the real run's moves (explore --around aims at them)
    lines: int = 0                                  # the history's non-blank lines
    unreadable: int = 0                             # of them, not a JSON event with an integer t_ns: skipped
    taken: dict[str, int] = field(default_factory=dict)   # decisions answered, by what they decide
    left: dict[str, int] = field(default_factory=dict)    # decisions left to the chooser, likewise
    _cursors: dict[str, _Cursor] = field(default_factory=dict)
    _s0: int | None = None                          # the simulated exporter's start (virtual ns)
    _waits: int = 0                                 # pressure waits answered

    @classmethod
    def from_history(cls, path: Path, params: Any) -> "RealGuide":
        events, lines = [], 0
        with open(path, "rb") as fh:
            for line in fh:                            # a truncated or garbled line is skipped and counted
                if not line.strip():
                    continue
                lines += 1
                try:
                    e = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(e, dict) and type(e.get("t_ns")) is int and isinstance(e.get("event"), str):
                    events.append(e)
        starts = [e["t_ns"] for e in events if e.get("event") == "control" and e.get("svc") == "exporter"
                  and e.get("op") == "start"]
        if not starts:
            raise ValueError(f"{path} has no start of the exporter: the real run never started its workload")
        s0 = starts[0]
        begins: dict[tuple[str, int], dict] = {}
        per_svc: dict[str, list[tuple[dict, int]]] = {}
        sent: dict[tuple, int] = {}
        pins: dict[tuple[str, int], list[int]] = {}     # (importer, buffer) -> the exporter's pin times
        delays: dict[str, list[int]] = {}
        for e in events:
            ev, svc = e.get("event"), e.get("svc", "")
            if ev == "dma_begin":
                begins[(svc, e["job"])] = e
            elif ev == "pin" and svc == "exporter":
                pins.setdefault((str(e.get("importer")), e.get("buffer")), []).append(e["t_ns"])
            elif ev == "dma_end" and (svc, e["job"]) in begins:
                b = begins[(svc, e["job"])]
                per_svc.setdefault(svc, []).append((b, e["t_ns"]))
            elif ev == "move_notify_sent":
                sent[("mn", e.get("importer"), e.get("id"))] = e["t_ns"]
            elif ev == "move_notify_received":
                t = sent.get(("mn", svc, e.get("id")))
                if t is not None:
                    delays.setdefault("exporter", []).append(e["t_ns"] - t)
            elif ev == "map_request":
                sent[("map", svc, e.get("id"))] = e["t_ns"]
            elif ev == "map" and "latency_ns" in e:
                # the importer's map event carries its latency: request at t_ns - latency_ns
                sent[("map", svc, e.get("id"))] = e["t_ns"] - e["latency_ns"]
        for e in events:                               # map_served comes after the request
            if e.get("event") == "map_served":
                t = sent.get(("map", e.get("importer"), e.get("id")))
                if t is not None and e["t_ns"] >= t:
                    delays.setdefault(e.get("importer", ""), []).append(e["t_ns"] - t)
        jobs: dict[int, list[RealJob]] = {}
        for svc, items in per_svc.items():
            if not svc.startswith("importer-"):
                continue
            index = int(svc.split("-", 1)[1])
            items.sort(key=lambda item: item[0]["t_ns"])
            out: list[RealJob] = []
            for n, (b, end) in enumerate(items):
                earlier_ends = [e2 for b2, e2 in items[:n] if e2 <= b["t_ns"]]
                busy = frozenset(b2["buffer"] for b2, e2 in items[:n] if e2 > b["t_ns"])
                think = b["t_ns"] - max(earlier_ends) if earlier_ends else None
                # a pin of this importer and buffer since its previous job on it: this job pinned
                mine = pins.get((svc, b["buffer"]), [])
                pinned = bool(mine) and mine[0] <= b["t_ns"]
                while mine and mine[0] <= b["t_ns"]:
                    mine.pop(0)
                out.append(RealJob(b["job"], b["buffer"], b["access"], b["t_ns"] - s0, end - b["t_ns"], think, busy,
                                   pinned))
            jobs[index] = out
        net_u, net_ns = {}, {}
        for sender, ds in delays.items():
            d = net_ns[sender] = min(MAX_NS, max(MIN_NS, int(statistics.median(ds))))
            net_u[sender] = delay_u(d)
        period = int(1e9 / params.move_rate) if params.move_rate > 0 else 0
        moves = _moves(events, s0)
        copy_ns = LANE_COST_NS["copy"] * math.ceil(params.buffer_size / COPY_CHUNK)
        warps = _warps(events, moves, s0, net_ns.get("exporter", MIN_NS), copy_ns)
        return cls(params.buffers, params.dma_ms, params.think_ms, period, jobs, _ticks(moves), net_u, net_ns, warps,
                   moves=moves, lines=lines, unreadable=lines - len(events), pin_ratio=params.pin_ratio)

    # ------------------------------------------------------------------ Guide

    def suggest(self, request: Request) -> Any | None:
        value = self._suggest(request)
        what = "step" if request.kind == STEP else request.stream.split(":", 1)[0]
        tally = self.left if value is None else self.taken
        tally[what] = tally.get(what, 0) + 1
        return value

    def _suggest(self, request: Request) -> Any | None:
        if request.kind == STEP:
            return self._step(request)
        stream = request.stream
        if stream == "pressure:exporter":
            return self._wait(request)
        if stream == "move:exporter":
            return self._move(request)
        if stream.startswith(("late:", "dma-late:")):
            index = int(stream.split("-")[-1])
            cur = self._cursor(index)
            if request.kind != RANDOM:
                return None
            if stream.startswith("late:") and cur.next == 0 and cur.jobs and (rel := self._rel(request)) is not None:
                late = max(0, self._aim(f"importer-{index}", cur.jobs[0]) - self._rtt(index) - rel)   # the start
            elif stream.startswith("late:"):
                late, cur.late_ns = cur.late_ns, 0
            else:
                late, cur.stretch_ns = cur.stretch_ns, 0
            return min(ALMOST_ONE, max(0.0, late / 1e9 / LATE_MAX_S))
        if stream.startswith("net:"):
            return self._delay(stream[4:], request)
        if stream.startswith("workload:") and stream.endswith(":0"):
            index = int(stream.split(":")[1])
            return self._workload(self._cursor(index), index, request)
        return None

    def _cursor(self, index: int) -> _Cursor:
        cur = self._cursors.get(f"workload:{index}:0")
        if cur is None:
            cur = self._cursors[f"workload:{index}:0"] = _Cursor(self.jobs.get(index, []))
        return cur

    def _rtt(self, index: int) -> int:
        """A simulated map round trip of importer `index`: its median delay and the exporter's."""
        return self.net_ns.get(f"importer-{index}", MIN_NS) + self.net_ns.get("exporter", MIN_NS)

    def _delay(self, sender: str, request: Request) -> float | None:
        """A frame's delay: the exporter's, its real median; an importer's map request (the frame
        it sends right after a job's draws), the delay that makes the job begin when the real one
        did, the reply taking the exporter's median; its other frames (unmaps, replies), the
        least: a slot freed late cannot be made up, one freed early the next think waits out."""
        if request.kind != RANDOM:
            return None
        cur = self._cursors.get(f"workload:{sender.split('-')[-1]}:0") if sender.startswith("importer-") else None
        rel = self._rel(request)
        if cur is not None and cur.pending == "map" and rel is not None:
            cur.pending = ""
            want = self._aim(sender, cur.jobs[cur.next - 1]) - rel - self.net_ns.get("exporter", MIN_NS)
            return delay_u(min(MAX_NS, max(MIN_NS, want)))
        if cur is not None:
            cur.pending = ""
            if rel is not None:
                return 0.0                   # its other frames: as fast as the network goes
        return self.net_u.get(sender)

    def _aim(self, importer: str, job: RealJob) -> int:
        """When the job's dma_begin should come in the simulation (relative to its exporter's start)."""
        if job.aim_ns is not None:
            return job.aim_ns
        warp = self.warps.get(int(importer.split("-")[-1]))
        return warp(job.begin_ns) if warp is not None else job.begin_ns

    def _rel(self, request: Request) -> int | None:
        """The request's time on the common axis (None before the exporter started)."""
        return None if self._s0 is None else request.now - self._s0

    def _wait(self, request: Request) -> float | None:
        """The wait until the next tick: until the real tick that comes next after now."""
        if self._s0 is None:
            self._s0 = request.now
        self._waits += 1
        rel = request.now - self._s0
        if request.kind != RANDOM or self.period_ns <= 0:
            return None
        later = [t.t_ns for t in self.ticks if t.t_ns > rel + self.period_ns // 4]
        span = 8 * self.period_ns                    # sim/driver.py steer_moves: the wait is 8 periods times x
        if not later or later[0] - rel >= span:
            return None                              # no real tick in reach: the period
        return min(ALMOST_ONE, max(0.0, (later[0] - rel) / span))

    def _move(self, request: Request) -> int | None:
        """The move of the real tick at this time (within a quarter period), if it is an option."""
        rel = self._rel(request)
        if rel is None or request.kind != CHOICE or not request.options:
            return None
        near = [t for t in self.ticks if abs(t.t_ns - rel) <= self.period_ns // 4]
        if not near:
            return None
        tick = min(near, key=lambda t: abs(t.t_ns - rel))
        labels = list(request.options)
        want = f"{tick.reason}:{tick.buffer}"
        if tick.reason == "evict":
            exact = f"{want}>{'-' if tick.then is None else tick.then}"
            if exact in labels:
                return labels.index(exact)
            want += ">"
            return next((k for k, label in enumerate(labels) if label.startswith(want)), None)
        return labels.index(want) if want in labels else None

    def _workload(self, cur: _Cursor, index: int, request: Request) -> Any | None:
        if request.kind == CHOICE:
            cur.pending = ""
            if cur.next >= len(cur.jobs):
                return None
            job = cur.jobs[cur.next]
            cur.next += 1
            cur.pending = "chance"
            if request.options is not None:
                labels = list(request.options)
                return labels.index(str(job.buffer)) if str(job.buffer) in labels else None
            idle = [b for b in range(self.buffers) if b not in job.busy]
            if len(idle) == request.n and job.buffer in idle:
                return idle.index(job.buffer)
            return None
        if request.kind == CHANCE and cur.pending == "chance":
            cur.pending = "duration"
            return cur.jobs[cur.next - 1].access == "write"
        if request.kind == RANDOM and cur.pending == "duration":
            cur.pending = "pin" if self.pin_ratio > 0 else "map"
            want = dma_duration_ms(cur.jobs[cur.next - 1].duration_ns / 1e6, self.chunk_ms)
            x = min(ALMOST_ONE, max(0.0, want / self.dma_ms - 0.5))
            cur.stretch_ns = max(0, int((want - self.dma_ms * (0.5 + x)) * 1e6))
            return x
        if request.kind == RANDOM and cur.pending == "pin":   # importer_svc/workload.py: pin when < pin_ratio
            cur.pending = "map"
            return 0.0 if cur.jobs[cur.next - 1].pin else ALMOST_ONE
        if request.kind == RANDOM:                      # a think time, before job `next`
            if cur.next >= len(cur.jobs) or self.think_ms <= 0:
                return None
            job, rel = cur.jobs[cur.next], self._rel(request)
            if rel is not None:
                wait_ns = self._aim(f"importer-{index}", job) - self._rtt(index) - rel
            elif job.think_ns is not None:
                wait_ns = job.think_ns
            else:
                return None
            think_ns = min(max(0, wait_ns), int(2 * self.think_ms * 1e6))
            cur.late_ns = max(0, wait_ns - think_ns)
            return min(ALMOST_ONE, think_ns / 1e6 / (2 * self.think_ms))
        return None

    def _step(self, request: Request) -> int | None:
        best: tuple[int, int] | None = None
        for k, actor in enumerate(request.options or ()):
            t = self._next_expected(actor)
            if t is not None and (best is None or t < best[0]):
                best = (t, k)
        return best[1] if best is not None else None

    def _next_expected(self, actor: str) -> int | None:
        """The real time (relative to the exporter's start) of the actor's next job, if it is an importer."""
        if not actor.startswith("importer-"):
            return None
        try:
            index = int(actor.split("-", 1)[1].split(".")[0])
        except ValueError:
            return None
        cur = self._cursors.get(f"workload:{index}:0")
        jobs = self.jobs.get(index, [])
        n = cur.next if cur else 0
        return self._aim(actor.split(".")[0], jobs[n]) if n < len(jobs) else None


def delay_u(d_ns: int) -> float:
    """The u of sim/network.py's delay_ns that gives a delay of d_ns (MIN_NS..MAX_NS)."""
    return min(ALMOST_ONE, max(0.0, 1.0 - math.exp(-(d_ns - MIN_NS) / MEAN_NS)))


def dma_duration_ms(measured_ms: float, chunk_ms: float) -> float:
    """The duration D to draw for a job whose last access came `measured_ms` after its dma_begin:
    the DMA engine runs chunk i of n = round(D / chunk_ms) at i * D / n, so the last at
    D * (n - 1) / n (importer_svc/dma.py). Between two n no D gives some values: the nearest."""
    best, best_err = chunk_ms, abs(measured_ms)                    # n = 1: the one chunk at 0
    for n in range(2, max(3, int(measured_ms / chunk_ms) + 3)):
        lo, hi = (n - 0.5) * chunk_ms * (1 + 1e-9), (n + 0.5) * chunk_ms * (1 - 1e-9)
        d = min(hi, max(lo, measured_ms * n / (n - 1)))
        if round(d / chunk_ms) != n:
            continue
        err = abs(d * (n - 1) / n - measured_ms)
        if err < best_err:
            best, best_err = d, err
    return best


def witness_key(kind: str, witness: dict[str, Any]) -> tuple[str, Any, Any]:
    """What "the same race" means: its kind, its buffer and the generation the access used."""
    job = witness.get("job") or {}
    return kind, job.get("buffer"), job.get("gen")


def all_races(history: Path) -> dict[tuple[str, Any, Any], set[str]]:
    """Every race the checker finds in a history (report.json keeps only the first witnesses of
    each kind), as witness_key's (kind, buffer, gen), each with the importers whose access raced."""
    from checker.oracle import Oracle

    found: dict[tuple[str, Any, Any], set[str]] = {}
    oracle = Oracle(on_race=lambda race: found.setdefault((race.kind, race.job.buffer, race.job.gen), set()).add(race.job.svc))
    with open(history, "rb") as f:
        oracle.run(f)
    return found
