"""The virtual loop: simulated processes and their actors on one virtual clock, in one thread.

Rules:
- Time is an int of virtual nanoseconds (`World.now`), starting at T0 (not 0: a timestamp of 0
  reads as "none" too easily). It only moves forward, and only when no actor can run: then it
  jumps to the earliest pending timer or frame arrival. Running a callback takes no virtual time.
- An *actor* is one lane of a simulated process (runtime/loop.py `lane`): `exporter`,
  `exporter.copy` (the copy engine), `importer-N`, `importer-N.dma` (the DMA engine), and the
  driver `deploy`. Each has its own deferred calls (call_soon) and timers; its loop view
  (ActorLoop) is the LoopLike the shells run on. Within one actor the real loop's order holds:
  deferred calls first, then due timers by (time, order of arming).
- An actor is *enabled* when it has a deferred call or a timer due now, and its process is
  neither paused nor dead. The enabled actors, in the fixed order of their creation, are the
  step choice: one enabled actor just runs; two or more ask the scheduler (a "step" decision).
  A step runs one callback. Nothing else decides what happens next.
- Time spent working, modelled in two lanes only: a deferred call of the exporter's copy engine
  (lane `copy`) runs LANE_COST_NS["copy"] after it was deferred, the time one COPY_CHUNK (256 KiB)
  takes at about 10 GB/s (deploy/bench's memcpy floor), so a copy spans time as it does in real runs; a
  deferred call of a DMA engine (lane `dma`: a chunk's access, after its fence check) runs
  LANE_COST_NS["dma"] after, the real engine's floor for a chunk (stamp or verify of up to 4 KiB
  costs it 8 to 13 us), so a force can fall between a chunk's check and its access as it does in
  real runs (importer_svc/dma.py).
- A frame arrival (sim/network.py) is an event of the world, not a step: at its time the frame
  lands in its channel, whose reader becomes a deferred call of the receiving actor. Under
  chosen delivery (sim/options.py network "chosen") a frame between services is instead the due
  work of a link actor with `slack`: when only such links can run and the next timer or arrival
  is due before the first of their frames must arrive, the step choice has one more option,
  WAIT, which lets time pass to that next event (the frames arrive later).
- A process can be paused (its actors keep their work and timers, which run late once it is
  resumed, as after SIGSTOP / SIGCONT), killed (everything it had pending is dropped, nothing of
  it runs again, as after SIGKILL) or stopped by its own loop (`stop()`: after the current step
  the world calls its `on_exit`, the shell's end_serving, and it is gone).
- A device may stall (`World(..., stalls=True)`, sim/options.py `stalls`: the schedule search's
  default). When a timer of a DMA engine comes due (the next chunk of a job, importer_svc/dma.py),
  the device may instead hold that chunk until just after one of the exporter's pending timers
  has fired: for each of them, latest first, a yes/no decision of the scheduler on the stream
  `device:stall:<importer>` (default no, not a draw: an unguided run is what it was); the first
  yes re-arms the chunk 1 ns after that timer, and the stalled chunk does not stall again. Only
  the exporter's timers count because they are what happens without the device: its timeouts,
  its memory manager's ticks, its polls and resends; between two of them nothing the exporter
  does depends on how long the device slept, so "past timer k" for each k is every stall that
  can make a difference, however long a device is slow. Without `stalls` nothing is asked.
- An importer may pause (`World(..., pause_ns=N)`, sim/options.py `pauses`: explore --pauses). A
  DMA engine's deferred call (a chunk's access, after its check: importer_svc/dma.py) comes due;
  before it runs, a yes/no decision of the scheduler on `process:pause:<importer>` (default no)
  may freeze the whole process there for N ns (world.pause, then world.resume: SIGSTOP and
  SIGCONT at the worst moment for a lease, between the check and the access). Each access is
  asked once. Without `pause_ns` nothing is asked.
- A callback that raises is the process crashing: the world records the traceback, calls
  `on_exit` (a real shell's serve() runs end_serving in its `finally`) and the process is gone.
"""

from __future__ import annotations

import bisect
import heapq
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from sim.scheduler import Scheduler

T0 = 1_000_000_000
STALL_STREAM = "device:stall:"    # + the importer: a device's stall decisions (see the rules above)
PAUSE_STREAM = "process:pause:"   # + the importer: a search's pause decisions (see the rules above)
PAUSE_MARK = "pause"              # a timer entry's 5th item: a DMA access its process may pause before
WAIT = "(time)"    # the step option "let time pass" (only links can run: see World._may_wait)
LANE_COST_NS = {"copy": 25_000, "dma": 10_000}
TIME_PASSED: frozenset = frozenset()    # the observer's `touched` when time moved with nothing to run
Callback = Callable[[], None]


class SimError(Exception):
    """The simulation cannot go on (it ran past its limits): one line saying why."""


@dataclass(eq=False)
class SimProcess:
    """A simulated OS process: one service (all its lanes), or the driver."""

    name: str
    pid: int
    paused: bool = False
    dead: bool = False
    exit_code: int | None = None
    how: str = ""                              # exited | killed | crashed
    on_exit: Callable[[], None] | None = None  # the shell's end_serving
    on_kill: Callable[[], None] | None = None  # what dies with it (its sockets)
    actors: list["Actor"] = field(default_factory=list)
    lanes: dict[str, "ActorLoop"] = field(default_factory=dict)
    stopping: bool = False

    @property
    def alive(self) -> bool:
        return not self.dead


class Actor:
    __slots__ = ("name", "order", "process", "soon", "due", "queued", "cost", "slack", "lane")

    def __init__(self, name: str, order: int, process: SimProcess, cost: int = 0, lane: str = "") -> None:
        self.name = name
        self.lane = lane
        self.cost = cost                      # virtual ns a deferred call waits (LANE_COST_NS)
        self.slack = 0                        # ns its due work may wait (a chosen-delivery link)
        self.order = order
        self.process = process
        self.soon: deque[Callback] = deque()
        self.due: deque[list] = deque()       # timer entries come due, in (time, seq) order
        self.queued = False                   # in the world's enabled list


class World:
    def __init__(self, scheduler: Scheduler, *, t0: int = T0, stalls: bool = False,
                 pause_ns: int | None = None) -> None:
        self.scheduler = scheduler
        self.stalls = stalls                         # a DMA engine's timer may stall (see the rules)
        self.pause_ns = pause_ns                     # an importer may pause before an access (the rules)
        self.now = t0
        scheduler.clock = lambda: self.now   # a guide sees when each decision is asked
        self.t0 = t0
        self.steps = 0
        self.processes: list[SimProcess] = []
        self.crashes: list[tuple[str, str]] = []     # (process, traceback)
        self._heap: list[list] = []                  # [t, seq, actor or None, callback or None]
        self._seq = 0
        self._ready: list[Actor] = []                # the enabled actors, in their order of creation
        self._orders: list[int] = []                 # their `order`s, beside them (bisect without a key)
        self._actors = 0
        self._stopping: list[SimProcess] = []
        self.done = False
        # The schedule search's view of each step (sim/search/exhaustive.py): when `observer` is
        # set, `touched` collects the actors a step gave work to and the processes it signalled,
        # and observer(actor, touched) is called after it; observer(None, None) when a WAIT lets
        # time pass, observer(None, TIME_PASSED) when it passes because nothing can run.
        self.observer: Callable[[Actor | None, set | None], None] | None = None
        self.touched: set | None = None

    # ------------------------------------------------------------------ processes and actors

    def process(self, name: str, pid: int) -> SimProcess:
        p = SimProcess(name, pid)
        self.processes.append(p)
        return p

    def loop(self, process: SimProcess, lane: str = "") -> "ActorLoop":
        """The loop view of one lane of `process` (made on first use, kept after)."""
        view = process.lanes.get(lane)
        if view is None:
            actor = Actor(process.name + (f".{lane}" if lane else ""), self._actors, process,
                          LANE_COST_NS.get(lane, 0), lane)
            self._actors += 1
            process.actors.append(actor)
            view = process.lanes[lane] = ActorLoop(self, actor)
        return view

    def pause(self, p: SimProcess) -> None:
        if self.touched is not None:
            self.touched.add(p)
        p.paused = True
        for a in p.actors:
            if a.queued:
                self._unready(a)

    def resume(self, p: SimProcess) -> None:
        if self.touched is not None:
            self.touched.add(p)
        p.paused = False
        for a in p.actors:
            if a.soon or a.due:
                self._wake(a)

    def kill(self, p: SimProcess, how: str = "killed", exit_code: int = -9) -> None:
        """Gone at once: nothing it had pending runs, and it cleans nothing up."""
        if p.dead:
            return
        if self.touched is not None:
            self.touched.add(p)
        p.dead, p.how, p.exit_code = True, how, exit_code
        if p.on_kill is not None:
            p.on_kill()
        for a in p.actors:
            if a.queued:
                self._unready(a)
            a.soon.clear()
            a.due.clear()

    def stop_process(self, p: SimProcess) -> None:
        """The process's loop was stopped: it exits after the current step."""
        if not p.stopping and not p.dead:
            if self.touched is not None:
                self.touched.add(p)
            p.stopping = True
            self._stopping.append(p)

    def _exit(self, p: SimProcess) -> None:
        if p.dead:
            return
        if p.on_exit is not None:
            try:
                p.on_exit()
            except Exception:
                self.crashes.append((p.name, traceback.format_exc()))
        self.kill(p, "exited", 0)

    # ------------------------------------------------------------------ timers

    def push(self, t: int, actor: Actor | None, callback: Callback) -> list:
        if self.touched is not None and actor is not None:
            self.touched.add(actor)
        self._seq += 1
        entry = [t, self._seq, actor, callback]
        heapq.heappush(self._heap, entry)
        return entry

    def _wake(self, a: Actor) -> None:
        if a.queued or a.process.paused or a.process.dead:
            return
        a.queued = True
        i = bisect.bisect(self._orders, a.order)
        self._orders.insert(i, a.order)
        self._ready.insert(i, a)

    def _unready(self, a: Actor) -> None:
        a.queued = False
        i = self._ready.index(a)
        del self._ready[i]
        del self._orders[i]

    # ------------------------------------------------------------------ running

    def run(self, *, max_t: int | None = None, max_steps: int | None = None) -> None:
        """Run until `done` is set (the driver finished) or nothing is left to happen."""
        heap, ready, pop = self._heap, self._ready, heapq.heappop
        step = self.scheduler.step
        while not self.done:
            while heap and heap[0][0] <= self.now:
                entry = pop(heap)
                entry[1] = 0                      # its seq ordered the heap, and nothing now: a handle a
                callback = entry[3]               # service keeps says no more (the state cache's key)
                if callback is None:
                    continue                      # cancelled
                actor = entry[2]
                if actor is None:
                    callback()                    # a frame arrives: no step, no choice
                elif len(entry) > 4 and not actor.process.dead and self._stall(entry):
                    continue                      # the device holds this chunk past a timer
                elif not actor.process.dead:
                    actor.due.append(entry)
                    if not actor.queued:
                        self._wake(actor)
            if not ready:
                if not heap:
                    return
                t = heap[0][0]
                if max_t is not None and t > max_t:
                    raise SimError(f"the simulation ran past {(max_t - self.t0) / 1e9:g} virtual seconds "
                                   f"without finishing (the driver is still waiting)")
                self.now = t
                if self.observer is not None:
                    self.observer(None, TIME_PASSED)
                continue
            if len(ready) == 1 and not ready[0].slack:
                actor = ready[0]
            else:
                names = [a.name for a in ready]
                if self._may_wait():
                    names.append(WAIT)
                k = 0 if len(names) == 1 else step(names)
                if k == len(ready):
                    self.now = heap[0][0]         # let time pass: every waiting frame arrives later
                    if self.observer is not None:
                        self.observer(None, None)
                    continue
                actor = ready[k]
            if actor.soon:
                callback = actor.soon.popleft()
            else:
                callback = actor.due.popleft()[3]
            self.steps += 1
            observer = self.observer
            if observer is not None:
                self.touched = {actor}
            if callback is not None:
                try:
                    callback()
                except Exception:
                    self.crashes.append((actor.process.name, traceback.format_exc()))
                    self.stop_process(actor.process)
            if actor.queued and not (actor.soon or actor.due):
                self._unready(actor)
            if self._stopping:
                stopping, self._stopping = self._stopping, []
                for p in stopping:
                    self._exit(p)
            if observer is not None:
                touched, self.touched = self.touched, None
                observer(actor, touched)
            if max_steps is not None and self.steps >= max_steps:
                raise SimError(f"the simulation took more than {max_steps} steps without finishing")


    def _stall(self, entry: list) -> bool:
        """A DMA engine's timer `entry` is due: does the device stall it past one of the
        exporter's pending timers (latest first; see the rules above)? If so it is re-armed,
        unmarked, just after that timer. An access (marked PAUSE_MARK) may instead pause its
        process: it stays due, and runs when the process resumes."""
        if entry[4] is PAUSE_MARK:
            p = entry[2].process
            if not p.paused and self.scheduler.decide(PAUSE_STREAM + p.name):
                self.pause(p)
                self.push(self.now + self.pause_ns, None, lambda: self.resume(p))   # type: ignore[operator]
            return False
        pending = sorted({e[0] for e in self._heap
                          if e[2] is not None and e[3] is not None and e[2].name == "exporter"}, reverse=True)
        stream = STALL_STREAM + entry[2].process.name
        for t in pending:
            if self.scheduler.decide(stream):
                self.push(t + 1, entry[2], entry[3])
                return True
        return False

    def _may_wait(self) -> bool:
        """Only links (sim/network.py elastic) can run now, and the next timer or arrival comes
        before the first of their frames is due at the latest: time may pass first."""
        heap = self._heap
        while heap and heap[0][3] is None:
            heapq.heappop(heap)[1] = 0            # cancelled (its seq: as World.run's)
        if not heap:
            return False
        latest = None
        for a in self._ready:
            if not a.slack:
                return False
            due = a.due[0][0] + a.slack
            latest = due if latest is None or due < latest else latest
        return heap[0][0] <= latest  # type: ignore[operator]


class ActorLoop:
    """One actor's loop (runtime/loop.LoopLike). Handles are the world's timer entries."""

    __slots__ = ("world", "actor")

    def __init__(self, world: World, actor: Actor) -> None:
        self.world = world
        self.actor = actor

    def now_ns(self) -> int:
        return self.world.now

    def call_soon(self, callback: Callback) -> None:
        a = self.actor
        if a.process.dead:
            return
        if a.cost:
            entry = self.world.push(self.world.now + a.cost, a, callback)
            if self.world.pause_ns is not None and a.lane == "dma":
                entry.append(PAUSE_MARK)          # a chunk's access: its process may pause first
            return
        a.soon.append(callback)
        if self.world.touched is not None:
            self.world.touched.add(a)
        if not a.queued:
            self.world._wake(a)

    def call_at(self, t_ns: int, callback: Callback) -> list:
        entry = self.world.push(t_ns, self.actor, callback)
        if self.world.stalls and self.actor.lane == "dma":
            entry.append(True)                    # a device's timer: it may stall (World._stall)
        return entry

    def call_later(self, seconds: float, callback: Callback) -> list:
        # World.push, inline (the services arm a timer at about every other step)
        w, a = self.world, self.actor
        if w.touched is not None:
            w.touched.add(a)
        w._seq += 1
        entry = [w.now + int(seconds * 1e9), w._seq, a, callback]
        heapq.heappush(w._heap, entry)
        return entry

    def cancel(self, handle: Any) -> None:
        handle[3] = None

    def add_reader(self, source: Any, callback: Callback) -> None:
        source.set_reader(self, callback)

    def remove_reader(self, source: Any) -> None:
        source.set_reader(None, None)

    def lane(self, name: str) -> "ActorLoop":
        return self.world.loop(self.actor.process, name)

    def stop(self) -> None:
        self.world.stop_process(self.actor.process)
