"""snapshot: the exhaustive search runs each schedule from the nearest snapshot of its prefix, not
from start-up.

What is snapshotted, and when. Consecutive schedules of the depth-first search (sim/search/dpor.py
`explore`) share their prefix: every choice up to the backtrack point. The simulator is one
single-threaded process, so a snapshot of the whole simulated world (the services, the shells,
timers, frames in flight, the heaps' bytes, the scheduler's and the chooser's state) is a forked
process. The search (the *searcher*, the process that calls `explore`) forks a *runner* that
starts the schedule from start-up. At the entry of a choice point (before its option is looked up
or chosen: DfsChooser `at_choice`) the runner may *park*: it forks, the child goes on as the
runner, and the parent keeps that instant, waiting for its child to end. It parks at depth 0
(after start-up, a third of a schedule's CPU) and then every `every` choice points (EVERY: a
fork costs more than a few choice points' work, see below).
When the schedule ends, the runner sends the searcher what a run in the searcher would have
left (the Trial, the chooser's counters, its new choice points and the footprints it added to
replayed ones, and for dpor the steps it observed since the snapshot) and exits. The searcher
backtracks as before (deepest choice point with an option left, depth d), tells every snapshot
deeper than d to exit and the deepest one at depth q <= d to resume: with the search's choice
points q.. (its stack below q, the new option at d among them) it forks a new runner, which
replays choices q..d-1, takes the new option at d and goes on exploring. So a schedule costs its
suffix from q, plus a fork.

Why results are identical. A snapshot at depth q is the state a run in the searcher reaches at
the entry of choice point q with the same choices 0..q-1: the simulation is deterministic (the
same choices give the same steps: a replay that differs raises Diverged in both ways), and every
schedule resumed from it has those choices (a backtrack above q exits it first). The chooser's
state at q is a function of the choices before q as well: its sleep set (made from the options
tried before at choice points above q, which do not change while q stands), cost, frames held
back, events so far. The runner gets the searcher's current choice points from q on, so the
choice at q and below is made from the same sleep sets, backtrack sets and footprints as a run
in the searcher makes it; what the run changes there (new choice points, footprints: only ever
unions) is sent back and applied to the searcher's stack, the one the search backtracks on and
DPOR's race analysis reads. The steps before the snapshot are the searcher's record of the last
schedule up to q (the same steps). Counts (schedules, blocked, over_bound, unraced) are made in
the searcher as before; trial.seconds is the runner's time for its suffix. tests/test_snapshots.py
compares every schedule (its history digest, races, verdict, cost) and the counts with snapshots
and without, for dpor, sleep-sets and none.

What it costs, and auto. A snapshot is paid in the kernel: the fork copies the page tables
(about 2 ms of CPU for this 60 MB process on the 2-core VM this was measured on), the exit frees
them (about 3 ms), and every page a runner writes after the fork is copied on its first write
(about 3.3 us a page there, and a runner writes 1,000 to 1,600 pages: the interpreter's objects'
reference counts, the services' state, the checker's judging of the whole history). So on the
small configuration at bound 2 without stalls a resumed schedule cost 15 ms of CPU there against
7.4 ms for the whole schedule from start-up, while with stalls (the default), whose schedules
are longer, 26 ms against 47. Cheaper page faults (bare metal: under 1 us) move the balance. So the default, auto (DMABUF_EMU_SNAPSHOTS unset or "auto"), measures all along
(Duel: blocks of BLOCK schedules, each way in turn at first, then the cheaper, the other again
every DUEL blocks) and takes snapshots where a schedule costs less than GAIN of one from start-up
(explore.json `snapshots`: chose, block_ms). "on" forces them (tests, comparisons); "off"
(explore --no-snapshots) never forks.

When there is no snapshot (each falls back to running the schedule in the searcher, from
start-up, as without snapshots, and is said once: a warning on the CLI's log and `fallback` in
Stats, explore.json's `snapshots`): threads alive in the searcher (a fork would copy a lock
another thread holds; a Dask worker runs tasks in threads), a fork refused (OSError: processes,
memory), a runner or snapshot that died without a result. A runner that cannot park goes on
without the snapshot; a snapshot that cannot fork a runner runs the schedule itself. After
MAX_FAILURES lost chains the search goes on without snapshots.

Lifetime and what is left behind. The processes are a chain, each the parent of the next,
the runner last; only one runs at a time (the others wait in waitpid), so one pipe up (to the
searcher) and one down (commands) serve the whole chain, each message written by the only process
running. A snapshot reaps its child before it reads a command, and exits on "exit", on end of
file (the searcher closed the pipe or died) or when its parent dies (PR_SET_PDEATHSIG: SIGKILL);
so every process but the first is reaped by a live parent and the first by the searcher
(`close`: at the end of each pass of the search, on any exception, Ctrl-C among them, and when
the explore generator is closed). Children ignore SIGINT, SIGTERM and SIGHUP: a Ctrl-C reaches
the whole process group, and it is the searcher's to stop them; close() closes both pipes and
kills the running runner (or lets it end on EPIPE at its next message), and its ancestors exit in
turn. No shared memory, file or socket is made: the simulator's heaps
are process memory.
"""

from __future__ import annotations

import ctypes
import gc
import os
import pickle
import resource
import select
import signal
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from sim.search.trial import Config, Trial, run_trial

ENV = "DMABUF_EMU_SNAPSHOTS"    # auto (the default), on or off (explore --no-snapshots)
AUTO, ON, OFF = "auto", "on", "off"
EVERY = 16                      # choice points between two snapshots of one schedule
BLOCK = 24                      # auto: schedules measured together, one way
DUEL = 8                        # auto: blocks between two measurements of the way not taken ...
MAX_DUEL = 64                   # ... doubled, up to this, each time the same way wins again
GAIN = 0.9                      # auto: snapshots are taken if a schedule costs less than this of one from start-up
MAX_FAILURES = 3                # chains lost before the search goes on without snapshots
CLOSE_WAIT_S = 10.0             # close(): how long the chain may take to exit before SIGKILL
_PR_SET_PDEATHSIG = 1
_STOPS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
_HEAD = struct.Struct("<I")


def mode() -> str:
    m = os.environ.get(ENV, AUTO)
    return m if m in (AUTO, ON, OFF) else AUTO


@dataclass
class Stats:
    """What snapshots did in this process (explore.json `snapshots`; reset by each search)."""

    mode: str = AUTO
    chose: str | None = None    # auto: "snapshots" or "start-up", the cheaper at the last comparison
    block_ms: dict[str, float] | None = None   # auto: CPU ms a schedule cost in each way's last block
    schedules: int = 0          # schedules run through Snapshots.run (blocked and re-run ones too)
    resumed: int = 0            # of them, resumed from a snapshot (not run from start-up)
    replayed: int = 0           # choice points replayed by resumed runners (snapshots not taken there)
    forks: int = 0              # processes forked: snapshots taken and runners started
    snapshots: int = 0          # snapshots taken (parked processes)
    fallbacks: int = 0          # schedules or snapshots that fell back to running the prefix
    fallback: str | None = None  # why, the first time

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


STATS = Stats()


_searched: list[bool] = []      # a search ran in this process (reset was called)


def report() -> dict[str, Any]:
    """explore.json `snapshots`: this process's search's counts; only the mode when no search ran
    here (--jobs and --scheduler run the subtrees' searches in workers, whose counts stay there)."""
    if not _searched:
        return {"mode": mode(), "schedules": None, "note": "no schedule ran in this process (workers of --jobs or an earlier run: not counted)"}
    return STATS.as_dict()


_SUMMED = ("schedules", "resumed", "replayed", "forks", "snapshots", "fallbacks")


def add_counts(total: dict[str, Any], part: dict[str, Any] | None) -> None:
    """Add one worker's search's `report()` into `total` (explore.json `snapshots` of a search
    run in subtrees: the counts summed, `workers` the subtree searches, `chose` each way's
    number of them, the first fallback's reason)."""
    if not part or part.get("schedules") is None:
        return
    if not total:
        total.update({"mode": part.get("mode"), "workers": 0, "chose": {}, "fallback": None,
                      **{k: 0 for k in _SUMMED}})
    total["workers"] += 1
    for k in _SUMMED:
        total[k] += part.get(k) or 0
    chose = part.get("chose")
    if chose:
        total["chose"][chose] = total["chose"].get(chose, 0) + 1
    if total["fallback"] is None and part.get("fallback"):
        total["fallback"] = part["fallback"]


def reset(m: str | None = None) -> None:
    """A new search: its own counts (and the process's last comparison, if made)."""
    _searched[:] = [True]
    STATS.__init__(mode=m or mode())  # type: ignore[misc]
    if STATS.mode == AUTO:
        DUEL_OF_PROCESS.tell()


def fork_refusal() -> str | None:
    """Why this process must not fork a snapshot chain (None: it may). Threads of Python code
    (a Dask worker's, a thread pool's) refuse it: a fork copies only the calling thread, and a
    lock another one holds would stay held in the child. Threads of native libraries are not
    counted: numpy's OpenBLAS pool (imported by runtime/fences.py) stops itself before a fork
    (pthread_atfork), and nothing a runner calls uses any other."""
    if threading.current_thread() is not threading.main_thread():
        return "the search runs outside the main thread"
    n = threading.active_count()
    if n > 1:
        return f"{n} threads are alive in the searching process (a fork copies only one)"
    return None


# ------------------------------------------------------------------------- framing

def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    parts, got = [], 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            return None
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _frame(msg: Any) -> bytes:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEAD.pack(len(data)) + data


def _recv(fd: int) -> Any:
    """The next message, None at end of file."""
    head = _read_exact(fd, _HEAD.size)
    if head is None:
        return None
    data = _read_exact(fd, _HEAD.unpack(head)[0])
    if data is None:
        return None
    return pickle.loads(data)


# ------------------------------------------------------------------------- the chain's side

def _prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None                         # no prctl: end of file on the pipe still stops a snapshot


_PRCTL = _prctl()


def _child_setup(parent: int) -> None:
    """A forked process: dies with its parent, leaves signals to the searcher."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:              # the parent died before prctl
        os._exit(0)
    for sig in _STOPS:
        signal.signal(sig, signal.SIG_IGN)
    gc.freeze()                             # the parent's objects: not traversed (not copied) by our GC


class _Runner:
    """The chain's state in each of its processes (one per process, inherited by fork): the pipes,
    and where the schedule running now was resumed (what its result is relative to)."""

    def __init__(self, up: int, down: int, every: int, dpor: bool) -> None:
        self.up, self.down, self.every, self.dpor = up, down, every, dpor
        self.last = -(1 << 30)              # depth of the deepest snapshot above us
        self.events_at = 0                  # chooser.events kept by the searcher (before the snapshot)
        self.lo = 0                         # first choice point whose footprints we may have changed
        self.sent = 0                       # choice points the searcher knows (len of its stack)
        self.began = time.perf_counter()

    def send(self, msg: Any) -> None:
        try:
            _write_all(self.up, _frame(msg))
        except OSError:                     # the searcher is gone
            os._exit(0)

    def at_choice(self, chooser: Any) -> None:
        """The entry of choice point chooser.depth: park here (become a snapshot) if it is time."""
        p = chooser.depth
        if p - self.last < self.every:
            return
        try:
            self._park(chooser, p)
        except BaseException:               # never into the simulation: it would call it a crash
            os._exit(1)

    def _park(self, chooser: Any, p: int) -> None:
        me = os.getpid()
        events = len(chooser.events) if self.dpor else 0
        pending = chooser._pending
        lo = p
        if pending is not None:             # a step begun above p: its footprint is finished below
            lo = next(i for i, n in enumerate(chooser.stack) if n is pending[0])
        self.send(("park", p, me, events))
        while True:
            try:
                pid = os.fork()
            except OSError as exc:
                self.send(("unparked", p, f"fork refused at choice point {p}: {exc}"))
                return                      # go on running, without this snapshot
            if pid == 0:
                _child_setup(me)
                self.last = p
                self.send(("runner", os.getpid()))
                return
            _, status = os.waitpid(pid, 0)
            if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                self.send(("lost", p, _status_text(status)))
            cmd = _recv(self.down)
            if cmd is None or cmd[0] == "exit":
                os._exit(0)
            _, depth, nodes = cmd
            assert depth == p, f"snapshot at choice point {p} told to resume at {depth}"
            chooser.stack[p:] = nodes
            chooser.over_bound = 0
            if self.dpor:
                chooser.unraced = 0
            self.events_at, self.lo, self.sent = events, lo, p + len(nodes)
            self.began = time.perf_counter()

    def finish(self, chooser: Any, trial: Trial) -> None:
        """The schedule ended here: send the searcher what it needs, relative to the resume point."""
        trial.seconds = time.perf_counter() - self.began
        stack = chooser.stack
        msg: dict[str, Any] = {
            "trial": trial, "depth": chooser.depth, "cost": chooser.cost, "over_bound": chooser.over_bound,
            "lo": self.lo, "footprints": [stack[i].footprints for i in range(self.lo, self.sent)],
            "new": stack[self.sent:]}
        if self.dpor:
            pos = {id(n): i for i, n in enumerate(stack)}
            msg["unraced"] = chooser.unraced
            msg["events"] = [_enc(e, pos) for e in chooser.events[self.events_at:]]
            msg["pending"] = None if trial.blocked else [_enc(e, pos) for e in chooser.pending_steps()]
        self.send(("result", msg))


def _enc(e: Any, pos: dict[int, int]) -> tuple:
    return (e.actor, e.fp, None if e.node is None else pos[id(e.node)], e.clock)


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


# ------------------------------------------------------------------------- the searcher's side

class Lost(RuntimeError):
    """The chain ended without the schedule's result."""


@dataclass
class _Park:
    depth: int
    pid: int
    events: int


@dataclass
class _Chain:
    first: int                               # the process the searcher forked (its child)
    up: int
    down: int
    runner: int
    running: bool = True
    runner_known: bool = True               # no snapshot taken since `runner` was announced
    parks: list[_Park] = field(default_factory=list)


LOCAL, SNAP = "start-up", "snapshots"


class Duel:
    """auto: which way runs the next schedules, measured all along (one per process,
    DUEL_OF_PROCESS: an explore with --jobs runs a search per subtree in each worker). Schedules
    run in blocks of BLOCK; the first block from start-up, the second from snapshots, then the
    cheaper way (CPU per schedule) runs, and after DUEL blocks (doubled each time the same way wins
    again, up to MAX_DUEL) the other runs one block and is compared with the block before it (neighbouring schedules of a depth-first search are alike;
    the first schedules of a search are not like its later ones, so one early probe would not
    do). A block's CPU from snapshots is the searcher's own in `run` and the chain's: reaped
    processes (RUSAGE_CHILDREN) and live ones (/proc/PID/stat, with their reaped children)."""

    def __init__(self) -> None:
        self.way = LOCAL
        self.n = 0                            # schedules of the current block
        self.mark = 0.0                       # the way's CPU counter at the block's start
        self.last: dict[str, float] = {}      # CPU per schedule of each way's last block
        self.blocks = 0
        self.winner: str | None = None
        self.every = DUEL                     # blocks between duels: doubled while the winner holds
        self.since = 0                        # blocks since the last duel

    def done(self, cpu_now: float) -> bool:
        """One more schedule of the block (cpu_now: the way's counter); True at the block's end,
        when the way may change."""
        self.n += 1
        if self.n < BLOCK:
            return False
        self.last[self.way] = (cpu_now - self.mark) / self.n
        self.n, self.blocks = 0, self.blocks + 1
        if len(self.last) == 2 and (self.winner is None or self.way != self.winner):
            local, snap = self.last[LOCAL], self.last[SNAP]
            winner = SNAP if snap < GAIN * local else LOCAL
            self.every = min(MAX_DUEL, 2 * self.every) if winner == self.winner else DUEL
            self.winner, self.since = winner, 0
        self.since += 1
        if self.winner is None:
            self.way = SNAP
        elif self.way == self.winner and self.since > self.every:
            self.way = LOCAL if self.winner == SNAP else SNAP
        else:
            self.way = self.winner
        self.tell()
        return True

    def tell(self) -> None:
        if self.winner is not None:
            STATS.chose = self.winner
            STATS.block_ms = {k: round(1e3 * v, 2) for k, v in sorted(self.last.items())}


DUEL_OF_PROCESS = Duel()


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


_TICK = os.sysconf("SC_CLK_TCK")


def _live_cpu(pids: set[int]) -> float:
    """CPU of live processes and of the children they reaped (/proc/PID/stat utime stime cutime cstime)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue                          # gone: counted by whoever reaped it
        fields = data[data.rindex(b")") + 2:].split()
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / _TICK


_cpu_in_searcher = {LOCAL: 0.0, SNAP: 0.0}    # this process's CPU in runs of each way


class Snapshots:
    """Runs the schedules of one pass of an exhaustive search (one bound, one chooser class) from
    snapshots. `run(config, chooser)` leaves the chooser as a run in this process would (see the
    module docstring for what crosses); `close()` ends the chain (always call it). `on`: None
    follows DMABUF_EMU_SNAPSHOTS (auto: the process's Duel decides), True always,
    False never."""

    def __init__(self, *, every: int | None = None, on: bool | None = None, duel: Duel | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        self.every = max(1, EVERY if every is None else every)
        m = mode() if on is None else (ON if on else OFF)
        self.off: str | None = "switched off" if m == OFF else None
        self.duel = (duel or DUEL_OF_PROCESS) if m == AUTO else None
        self.chain: _Chain | None = None
        self.failures = 0
        self.events: list[Any] = []          # the last schedule's steps (dpor), on the searcher's stack
        self.warn = warn or _warn

    def _fallback(self, why: str) -> None:
        STATS.fallbacks += 1
        if STATS.fallback is None:
            STATS.fallback = why
            self.warn(f"explore: no snapshot ({why}): running the schedule from start-up, and going on")

    def _local(self, config: Config, chooser: Any) -> Trial:
        began = time.process_time()
        try:
            return run_trial(config, chooser, setup=chooser.setup)
        finally:
            _cpu_in_searcher[LOCAL] += time.process_time() - began

    def run(self, config: Config, chooser: Any) -> Trial:
        STATS.schedules += 1
        if self.off is not None or self.failures >= MAX_FAILURES:
            return self._local(config, chooser)
        duel = self.duel
        if duel is None:
            return self._snap(config, chooser)
        if duel.n == 0:
            duel.mark = self._cpu(duel.way)
        trial = self._snap(config, chooser) if duel.way == SNAP else self._local(config, chooser)
        way = duel.way
        if duel.done(self._cpu(way)) and duel.way == LOCAL and way == SNAP:
            self.close()                     # not needed for a while: its memory back
        return trial

    def _cpu(self, way: str) -> float:
        """The way's CPU counter: this process's (LOCAL), or its share and its chains' (SNAP)."""
        if way == LOCAL:
            return _cpu_in_searcher[LOCAL]
        ch = self.chain
        live = set() if ch is None else {ch.first, ch.runner, *(k.pid for k in ch.parks)}
        return _cpu_in_searcher[SNAP] + _children_cpu() + _live_cpu(live)

    def _snap(self, config: Config, chooser: Any) -> Trial:
        began = time.process_time()
        try:
            return self._run(config, chooser)
        except Lost as exc:                  # the chooser is untouched: its run was elsewhere
            self.failures += 1
            self.close()
            self._fallback(str(exc))
        finally:
            _cpu_in_searcher[SNAP] += time.process_time() - began
        return self._local(config, chooser)

    def _run(self, config: Config, chooser: Any) -> Trial:
        ch = self.chain
        d = len(chooser.stack) - 1
        if ch is not None:
            while ch.parks and ch.parks[-1].depth > d:
                ch.parks.pop()
                _write_all(ch.down, _frame(("exit",)))
            if not ch.parks:                 # nothing to resume from (no snapshot was taken)
                self.close()
                ch = None
        if ch is None:
            why = fork_refusal()
            if why is not None:
                self.off = why
                self._fallback(why)
                return self._local(config, chooser)
            try:
                ch = self._start(config, chooser)
            except OSError as exc:
                self._fallback(f"fork refused: {exc}")
                return self._local(config, chooser)
            base = _Park(-1, ch.first, 0)
        else:
            base = ch.parks[-1]
            _write_all(ch.down, _frame(("resume", base.depth, chooser.stack[base.depth:])))
            ch.running, ch.runner_known = True, False      # its runner is not announced yet
            STATS.resumed += 1
            STATS.replayed += d - base.depth
        return self._collect(ch, chooser, base)

    def _start(self, config: Config, chooser: Any) -> _Chain:
        dpor = getattr(chooser, "dpor", False)
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        me = os.getpid()
        # Ctrl-C must not land between the fork and the chain's record (the child would be
        # nobody's to reap), nor in the child before it ignores it: held until both are done.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            for fd in (up_r, up_w, down_r, down_w):
                os.close(fd)
            raise
        if pid == 0:
            try:
                os.close(up_r)
                os.close(down_w)
                _child_setup(me)
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
                runner = _Runner(up_w, down_r, self.every, dpor)
                runner.sent = len(chooser.stack)
                chooser.at_choice = runner.at_choice
                trial = run_trial(config, chooser, setup=chooser.setup)
                runner.finish(chooser, trial)     # in whichever process of the chain ran the end
            except BaseException as exc:
                try:
                    runner.send(("error", exc))
                except BaseException:
                    pass
            finally:
                os._exit(0)
        try:
            os.close(up_w)
            os.close(down_r)
            STATS.forks += 1
            self.events = []
            self.chain = _Chain(pid, up_r, down_w, pid)    # recorded before a signal can come
            return self.chain
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _collect(self, ch: _Chain, chooser: Any, base: _Park) -> Trial:
        while True:
            msg = _recv(ch.up)
            if msg is None:
                raise Lost("the snapshot chain ended without a result")
            kind = msg[0]
            if kind == "runner":
                ch.runner, ch.runner_known = msg[1], True
                STATS.forks += 1
            elif kind == "park":
                ch.runner_known = False
                ch.parks.append(_Park(msg[1], msg[2], msg[3]))
                STATS.snapshots += 1
            elif kind == "unparked":        # that process runs on, as the runner
                gone = [k for k in ch.parks if k.depth == msg[1]]
                ch.parks = [k for k in ch.parks if k.depth != msg[1]]
                if gone:
                    ch.runner, ch.runner_known = gone[0].pid, True
                self._fallback(msg[2])
            elif kind == "lost":
                raise Lost(f"a snapshot's process at choice point {msg[1]} ended without a result ({msg[2]})")
            elif kind == "error":
                ch.running = False
                raise msg[1]
            else:
                ch.running = False
                return self._apply(msg[1], chooser, base)

    def _apply(self, r: dict[str, Any], chooser: Any, base: _Park) -> Trial:
        stack = chooser.stack
        for i, fps in enumerate(r["footprints"], r["lo"]):
            node = stack[i]
            for k, fp in fps.items():
                old = node.footprints.get(k)
                node.footprints[k] = fp if old is None else old | fp
        stack.extend(r["new"])
        chooser.depth, chooser.cost, chooser.over_bound = r["depth"], r["cost"], r["over_bound"]
        if "events" in r:
            from sim.search.dpor import Event
            chooser.unraced = r["unraced"]

            def dec(e: tuple) -> Any:
                return Event(e[0], e[1], None if e[2] is None else stack[e[2]], e[3])
            self.events = self.events[:base.events] + [dec(e) for e in r["events"]]
            chooser.events = self.events
            chooser.ended = None if r["pending"] is None else [dec(e) for e in r["pending"]]
        return r["trial"]

    def close(self) -> None:
        """End the chain: every process exits and is reaped (see the module docstring)."""
        ch, self.chain = self.chain, None
        if ch is None:
            return
        self._end(ch)

    def _end(self, ch: _Chain) -> None:
        # Nothing more is read: after an interruption a message may be half read. The runner is
        # killed only if it is the one last announced; a newer one (forked by a snapshot taken
        # since) exits at its next message, on EPIPE.
        os.close(ch.down)                    # end of file: each snapshot exits once its child has
        os.close(ch.up)
        if ch.running and ch.runner_known:
            try:
                os.kill(ch.runner, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap(ch.first)


def _reap(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        fd = None
    if fd is not None:
        try:
            if not select.select([fd], [], [], CLOSE_WAIT_S)[0]:
                os.kill(pid, signal.SIGKILL)     # the chain's others die with it (PDEATHSIG)
        finally:
            os.close(fd)
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except InterruptedError:
            continue
        except ChildProcessError:
            return


def _warn(text: str) -> None:
    from runtime import oplog
    oplog.cli_logger().warning(text)
