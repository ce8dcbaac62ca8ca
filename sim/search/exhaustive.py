"""exhaustive: every schedule of a configuration within a bound, each order of independent steps once.

The schedules. Inside the window (sim/search/trial.py) a schedule is its sequence of choices:
- a *step*: which of the enabled actors runs its next callback, among them the links that
  deliver frames between services, or WAIT, letting time pass while frames are in flight (the
  world offers WAIT only when links alone can run and the next event comes before their frames
  must arrive: sim/world.py);
- a *fault*: whether a fault that --fault allows fires on this message, job or notification
  (its probability `p` is ignored: both outcomes are explored).
- a *stall* (unless --no-stalls): whether a DMA engine's chunk, come due, is held past one of
  the exporter's pending timers (sim/world.py: a yes/no per timer, latest first, on the stream
  `device:stall:<importer>`). It is a fault node like the others: both outcomes, a yes costs 1
  under either bound kind (each stalled chunk once, however long it waits, as a late frame is
  counted once). A stall is decided when the chunk comes due, between steps; the chunk then runs
  after an exporter step, which depends on every step of a service, so no sleeper outlives it.
Everything else is fixed by the configuration: the seed's workload draws, every timer's time.

The bound. The default schedule, every frame delivered 30 us after it was sent, ties in the
world's order and nothing faulted, costs 0; the search explores every schedule of cost <= B
(--bound, default 2). Two ways to count (--bound-kind):
- preemptions (the default): each WAIT step (it holds every frame in flight back past one more
  event: the network preempted, as CHESS counts a thread preempted) plus each fault that fired;
- late-frames: each frame that any WAIT held back, once however late it arrives (up to the
  network's 2 ms), plus each fault. A stronger statement per unit of bound, and far more
  schedules: a frame can be late by each number of events in its window.
Ties, the order in which actors that can run at the same instant run, cost nothing either way:
every order that matters is explored, and the reduction below keeps that small.

The reduction: sleep sets (Godefroid, 1996) over a conservative independence relation.
- A step's footprint is what it may touch: its own process (every actor of one process shares
  the service's state), every actor it gave work to (a link it sent on, a process it delivered
  to or signalled), the reader of any control frame it sent, and, for a step of a service's
  actor, "memory": the shared heaps and fence table are touched by DMA, copies and fence polls
  alike, and which bytes a step touches is not observed, so two steps of two services are always
  dependent. WAIT touches everything (time moved). Two steps are independent when their
  footprints are disjoint: a link delivering to one process and a step of another process, or
  deliveries to two processes. Each step's footprint is recorded by the world as it runs
  (sim/world.py `observer`, `touched`).
- Why independent steps commute: a step reads and writes only its footprint (the process state
  it runs in, the queues it appends to), so with disjoint footprints running a then b leaves
  every process, link and queue as b then a does, at the same virtual time (a step takes none);
  neither can enable or disable the other, since enabling means giving work to an actor, which
  would put it in the footprint. Timer entries they create are ordered per actor, and per actor
  only one of them can create any.
- Sleep sets: at a choice point where option a was explored before option b, a is put to sleep in
  b's subtree, and stays asleep while every step taken is independent of it; a sleeping option
  is not taken, because every schedule that takes it there is equivalent (the same steps, with
  independent neighbours swapped) to one in a's subtree. A schedule whose every option is
  asleep is cut (`blocked`: it would repeat one explored). So no two explored schedules are
  orderings of the same independent steps; every schedule of cost <= B is equivalent to an
  explored one.
- Why the bound does not break that: the cost counts WAITs (or the frames they hold back) and
  faults, and a swap of independent neighbours changes none of them (WAIT is dependent on every
  step, so nothing is swapped across one, and what is in flight at a WAIT is what the steps since
  the last one left, in whatever order they ran; a fault belongs to the step that drew it), so
  equivalent schedules cost the same and every prefix of one within the bound is within it too;
  the schedule that covers a pruned one is therefore never cut by the bound.
  (Costing ties, as CHESS costs preemptions, would break this: see Coons, Musuvathi and McKinley,
  "Bounded partial-order reduction", OOPSLA 2013.)
- A transition asleep is "actor X's next callback". Its footprint is the union of the footprints
  seen when it was explored (its fault outcomes may touch less or more). Independence is checked
  against every step, choice or not, so a sleeper wakes as soon as anything touches what it
  touches.
Result: "exhausted: N schedules within bound B, no race", or the first counterexample. The
count N is of complete schedules; blocked ones are counted apart.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from sim.search.trial import Blocked, Config, SearchChooser, Trial, run_trial
from sim.world import TIME_PASSED, WAIT, Actor, SimProcess

STEP, FAULT = "step", "fault"
PREEMPTIONS, LATE = "preemptions", "late-frames"
BOUND_KINDS = (PREEMPTIONS, LATE)


class Footprint:
    """What a step touched: processes and links (`keys`), fence-table entries written (`fw`) and
    read (`fr`), by buffer. WAIT (time moved) touches everything."""

    __slots__ = ("keys", "fw", "fr", "everything")

    def __init__(self, keys: frozenset = frozenset(), fw: frozenset = frozenset(), fr: frozenset = frozenset(),
                 everything: bool = False) -> None:
        self.keys, self.fw, self.fr, self.everything = keys, fw, fr, everything

    def __or__(self, other: "Footprint") -> "Footprint":
        if self.everything or other.everything:
            return EVERYTHING
        return Footprint(self.keys | other.keys, self.fw | other.fw, self.fr | other.fr)

    def conflicts(self, other: "Footprint") -> bool:
        if self.everything or other.everything:
            return True
        return bool(self.keys & other.keys or self.fw & (other.fw | other.fr) or other.fw & self.fr)

    def as_dict(self) -> dict[str, Any]:
        if self.everything:
            return {"everything": True}
        return {"keys": sorted(self.keys), "fw": sorted(self.fw), "fr": sorted(self.fr)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Footprint":
        if d.get("everything"):
            return EVERYTHING
        return cls(frozenset(d["keys"]), frozenset(d["fw"]), frozenset(d["fr"]))


EVERYTHING = Footprint(everything=True)


def footprint_of(touched: set) -> Footprint:
    keys, fw, fr = set(), set(), set()
    for x in touched:
        if type(x) is tuple:                   # ("fw" | "fr", buffer): the fence tracer's
            (fw if x[0] == "fw" else fr).add(x[1])
        elif isinstance(x, SimProcess):
            keys.add(x.name)
        elif x.process.name == "net":
            keys.add(x.name)                   # a link: its own queue
        else:
            keys.add(x.process.name)
    return Footprint(frozenset(keys), frozenset(fw), frozenset(fr))


# The fence table (runtime/fences.py) is the one piece of shared memory whose contents steer
# the services (fence polls, forced fences, kernel fences), so which entries a step reads and
# writes is part of its footprint: while a search runs, FenceTable's methods note the buffer
# they touch in the running step's `touched`. The heaps' bytes steer nothing (the engines never
# read them; the checker's race verdicts are made from event times, not bytes), so they are not
# traced: two steps that only stamp, verify or copy bytes of the heaps commute as far as any
# race verdict goes, though the bytes they leave (corruption events, final_content) may differ.
_READS = ("is_signaled", "forced_before_signaled", "error", "snapshot")
_WRITES = ("emit", "signal", "force", "publish_kernel", "signal_kernel")
_traced: list[Any] = []          # the world whose steps are being traced (one at a time)


def _tracing(name: str, write: bool, inner: Callable[..., Any]) -> Callable[..., Any]:
    kind = "fw" if write else "fr"
    buffer_at = 0 if name in ("snapshot", "publish_kernel", "signal_kernel") else 1

    def traced(self: Any, *args: Any) -> Any:
        world = _traced[0] if _traced else None
        if world is not None and world.touched is not None:
            b = args[buffer_at] if len(args) > buffer_at else None
            if b is None:                      # force(slot, None, ...): every buffer
                world.touched.update((kind, i) for i in range(self.buffers))
            else:
                world.touched.add((kind, b))
        return inner(self, *args)

    traced.__wrapped__ = inner  # type: ignore[attr-defined]
    return traced


@contextmanager
def fence_tracing() -> Iterator[None]:
    from runtime.fences import FenceTable
    saved = {n: FenceTable.__dict__[n] for n in _READS + _WRITES}
    for n, f in saved.items():
        setattr(FenceTable, n, _tracing(n, n in _WRITES, f))
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(FenceTable, n, f)
        _traced.clear()


@dataclass
class Node:
    """One choice point of the current schedule."""

    index: int                               # its position in the decision log
    kind: str                                # STEP or FAULT
    options: tuple[str, ...]                 # the actors (and WAIT) offered, or ("no", "yes")
    cost_before: int
    costs: tuple[int, ...]                   # of each option: WAIT the frames it newly holds back
    sleep: dict[str, Footprint]              # asleep on entry: name -> footprint
    tried: list[int] = field(default_factory=list)     # options explored, in order; the last is current
    footprints: dict[int, Footprint] = field(default_factory=dict)
    backtrack: set[int] | None = None        # DPOR (sim/search/dpor.py): the options to explore; None: all

    def cost(self, option: int) -> int:
        return self.costs[option]

    def candidates(self) -> Iterator[int]:
        """The options this node may still explore, in order (all of them, or DPOR's backtrack set)."""
        return iter(range(len(self.options)) if self.backtrack is None else sorted(self.backtrack))

    def available(self, option: int, bound: int) -> bool:
        if option in self.tried or self.cost_before + self.cost(option) > bound:
            return False
        return self.kind == FAULT or self.options[option] not in self.sleep

    @property
    def chosen(self) -> int:
        return self.tried[-1]

    def sleep_after(self) -> dict[str, Footprint]:
        """Asleep once the current option runs: what was asleep here, and the options explored
        here before it."""
        s = dict(self.sleep)
        if self.kind == STEP:
            for o in self.tried[:-1]:
                s[self.options[o]] = self.footprints.get(o, EVERYTHING)
        return s


class Diverged(RuntimeError):
    """A replayed prefix asked for another choice than the one recorded: the simulation is not
    deterministic (a bug of the simulator, never of the strategy)."""


class DfsChooser(SearchChooser):
    """Replays the stack's choices, then takes the first available option at each new choice
    point and pushes it; keeps the sleep set up to date as steps run."""

    def __init__(self, seed: int, stack: list[Node], bound: int, kind: str = PREEMPTIONS, reduce: bool = True) -> None:
        super().__init__(seed)
        self.stack = stack
        self.bound = bound
        self.kind = kind
        self.reduce = reduce                  # False: every step depends on every other (no sleep sets)
        self.depth = 0                        # nodes of the stack replayed so far
        self.sleep: dict[str, Footprint] = {}
        self.cost = 0
        self._pending: tuple[Node, int] | None = None   # the step node whose option runs next
        self.delivered: dict[str, int] = {}   # link -> frames it delivered: (link, n) names its head
        self.held: set[tuple[str, int]] = set()          # frames a WAIT has held back so far
        self.last: Footprint = EVERYTHING     # the footprint of the step observed last
        # called at the entry of each choice point, before it is looked up: where a snapshot may
        # be taken (sim/search/snapshot.py); None when the schedule runs in the searcher
        self.at_choice: Callable[["DfsChooser"], None] | None = None

    def _heads(self, options: tuple[str, ...]) -> set[tuple[str, int]]:
        return {(o, self.delivered.get(o, 0)) for o in options if o != WAIT}

    def _costs(self, kind: str, options: tuple[str, ...]) -> tuple[int, ...]:
        if kind == FAULT:
            return (0, 1)
        if WAIT not in options:
            return (0,) * len(options)
        # Every option but WAIT is then a link: PREEMPTIONS counts the WAIT, LATE the frames it
        # holds back that no WAIT held before.
        cost = 1 if self.kind == PREEMPTIONS else len(self._heads(options) - self.held)
        return tuple(cost if o == WAIT else 0 for o in options)

    def _node(self, index: int, kind: str, options: tuple[str, ...]) -> Node:
        if self.at_choice is not None:
            self.at_choice(self)
        if self.depth < len(self.stack):
            node = self.stack[self.depth]
            if node.index != index or node.kind != kind or node.options != options:
                raise Diverged(f"decision {index}: replay offered {kind} {options}, the schedule had "
                               f"{node.kind} {node.options} at decision {node.index}")
        else:
            node = Node(index, kind, options, self.cost, self._costs(kind, options),
                        dict(self.sleep) if kind == STEP else {})
            first = next((o for o in range(len(options)) if node.available(o, self.bound)), None)
            if first is None:
                raise Blocked()
            node.tried.append(first)
            self.fresh(node)
            self.stack.append(node)
        self.depth += 1
        self.cost += node.cost(node.chosen)
        return node

    def fresh(self, node: Node) -> None:
        """A choice point seen for the first time (sim/search/dpor.py sets its backtrack set)."""

    def choose_step(self, index: int, options: Sequence[str]) -> int:
        node = self._node(index, STEP, tuple(options))
        self.sleep = node.sleep_after()
        self._pending = (node, node.chosen)
        if node.options[node.chosen] == WAIT:
            self.held |= self._heads(node.options)
        return node.chosen

    def choose_fault(self, index: int, stream: str, p: float, default: bool) -> bool:
        return bool(self._node(index, FAULT, ("no", "yes")).chosen)

    def setup(self, world: Any) -> None:
        world.observer = self.observe
        _traced[:] = [world]

    def observe(self, actor: Actor | None, touched: set | None) -> None:
        """The world's per-step hook: record the footprint, wake the sleepers it touches. Time
        passing with nothing to run (TIME_PASSED) is no step and wakes nobody (as before the
        world reported it: only sim/search/dpor.py reads it)."""
        if actor is None and touched is TIME_PASSED:
            return
        if actor is not None and actor.name in self.sleep:
            raise Blocked()                   # a sleeper ran with nothing else to run: explored already
        if actor is not None and actor.process.name == "net":
            self.delivered[actor.name] = self.delivered.get(actor.name, 0) + 1
        fp = EVERYTHING if actor is None or not self.reduce else footprint_of(touched or set())
        self.last = fp
        pending, self._pending = self._pending, None
        if pending is not None:
            node, option = pending
            old = node.footprints.get(option)
            node.footprints[option] = fp if old is None else old | fp
        if self.sleep:
            self.sleep = {k: v for k, v in self.sleep.items() if not v.conflicts(fp)}


def backtrack(stack: list[Node], bound: int) -> bool:
    """Move the stack to the next schedule: the deepest choice point with an option left takes
    it, everything below is forgotten. False when nothing is left: exhausted."""
    while stack:
        node = stack[-1]
        nxt = next((o for o in node.candidates() if node.available(o, bound)), None)
        if nxt is not None:
            node.tried.append(nxt)
            return True
        stack.pop()
    return False


def explore(config: Config, bound: int, *, kind: str = PREEMPTIONS, seed: int = 0,
            stack: list[Node] | None = None, floor: int = 0, reduce: bool = True) -> Iterator[tuple[Trial, list[Node]]]:
    """Every schedule within `bound`, in depth-first order: yields (trial, stack) per complete
    or blocked schedule; the caller stops when it has seen enough. `stack`: the choices to start
    from (a resumed search's next schedule); `floor`: how many of them are fixed (a subtree that
    sim/explore.py handed to a worker: its root choices are not backtracked past)."""
    stack = [] if stack is None else stack
    with fence_tracing():
        while True:
            chooser = DfsChooser(seed, stack, bound, kind, reduce)
            trial = run_trial(config, chooser, setup=chooser.setup)
            if chooser.depth < len(stack):
                raise Diverged(f"the schedule ended after {chooser.depth} of its {len(stack)} recorded choices")
            yield trial, stack
            if not _backtrack_above(stack, bound, floor):
                return


def _backtrack_above(stack: list[Node], bound: int, floor: int) -> bool:
    head, tail = stack[:floor], stack[floor:]
    ok = backtrack(tail, bound)
    stack[:] = head + tail
    return ok


def node_to_dict(n: Node) -> dict[str, Any]:
    return {"index": n.index, "kind": n.kind, "options": list(n.options), "cost_before": n.cost_before,
            "costs": list(n.costs), "sleep": {k: v.as_dict() for k, v in n.sleep.items()}, "tried": list(n.tried),
            "footprints": {str(k): v.as_dict() for k, v in n.footprints.items()},
            "backtrack": None if n.backtrack is None else sorted(n.backtrack)}


def node_from_dict(d: dict[str, Any]) -> Node:
    return Node(d["index"], d["kind"], tuple(d["options"]), d["cost_before"], tuple(d["costs"]),
                {k: Footprint.from_dict(v) for k, v in d["sleep"].items()}, list(d["tried"]),
                {int(k): Footprint.from_dict(v) for k, v in d["footprints"].items()},
                None if d.get("backtrack") is None else set(d["backtrack"]))


def prefix_of(stack: Sequence[Node]) -> list[int]:
    return [n.chosen for n in stack]


def describe(stack: Sequence[Node]) -> list[dict[str, Any]]:
    return [{"index": n.index, "kind": n.kind, "option": n.options[n.chosen]} for n in stack]
