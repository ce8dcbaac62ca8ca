"""dpor: the exhaustive search with dynamic partial-order reduction, shallowest schedules first.

What is explored. The schedules of sim/search/exhaustive.py (its docstring: steps, WAITs, faults,
the bound and how it is counted), level by level: bound 0, then 1, ..., then B (`--bound B`), so
the first race found needs the fewest preemptions and faults (CHESS's iterative context bounding,
Musuvathi and Qadeer, PLDI 2007). Level d reports only the schedules that cost exactly d (the
cheaper ones are equivalent to ones an earlier level reported: equivalent schedules cost the
same). `--bound none` deepens until a level where no option was over its bound: then every
schedule of the configuration has been explored, the space is finite, and the result says so.

Three reductions (`--reduction`), each a depth-first search of the choice points:
- none: every option of every choice point (the brute force the others are checked against);
- sleep-sets: every option, with sleep sets over the steps' footprints (exhaustive.py);
- dpor (the default): an option is explored only when a race in an explored schedule asks for it
  (Flanagan and Godefroid, POPL 2005: a backtrack set per choice point), with sleep sets on top.

The dependency relation. A step's footprint (exhaustive.py `footprint_of`) is its own process, the
actors and links it gave work to, the processes it signalled and the fence-table entries it read
or wrote; two steps are dependent when they are steps of one actor or their footprints meet. A
WAIT and time passing with nothing to run are *clock events*, dependent on everything (every
later step reads the new time). A choice point of a kind the search does not know is a fault
point here (both outcomes explored), so a choice point added to the scheduler is never reduced.

What is cut, and why nothing that can race is lost:
- Races. After each schedule, every pair of steps i < j of different actors that are dependent
  and not ordered by a chain of dependent steps between them (a direct race) is a race: the
  schedule where j's actor runs before i is a different class. If i was chosen at a choice point
  N (the state just before i), j's actor is added to N's backtrack set when N offered it;
  otherwise every option of N is (FG05's conservative rule: j's actor was not enabled there, so
  any option may be the one that leads to it). Narrower for one pair: i a link's delivery into a
  process P and j a step of P, whose actors could not run at N (`received`: the receive of i's
  send). What can run j before i from N is another frame into P delivered first (every frame of
  an instant is ready when it begins, so it is offered at N) or a step that is no delivery (a
  service's, which may give P work at this instant); a delivery into another process touches
  neither i nor P, and whatever its receiver then does to P races with i on its own. So those
  options are added, not the deliveries elsewhere: three importers' move_notify, delivered at one
  instant, are one order, not six that sleep sets would start and block. tests/test_dpor.py
  checks this against brute force with two and three importers. A step that had no choice
  point (one option) has no alternative: nothing is added there, as in FG05 (only the step that
  enabled j can be reversed, and that is its own race).
- The clock. Time moves only when nothing can run (then every runnable step of the instant has
  run, in any order: a clock event is a barrier) or by a WAIT, which only links can precede.
  Every choice point that offers WAIT or a link is explored in full (every option within the
  bound): a frame's delivery against anything else decides at which instant later work happens,
  and so the later times, and a link run early can leave WAIT unoffered later. So races are
  reversed by the backtrack sets only between steps of services at one instant; every
  reordering that moves time is explored as the sleep-set search explores it. Except where the
  bound is spent (`--bound-kind preemptions`, the default: every WAIT costs 1, so once a
  schedule's cost is the bound no WAIT can run at or below that choice point): time then moves
  only when nothing can run, every link ready at an instant delivers before it moves, and a
  link's step is a step like a service's (its footprint: its queue and its receiver), ordered by
  the races alone. Three importers' move_notify, delivered at one instant, are then one order,
  not six that sleep sets start and block.
- Faults. Both outcomes of every fault draw are explored (a fault point is a choice point with
  full backtracking); a fault belongs to the step that drew it, whose footprint is the union
  of what it touched under each outcome.
- The end of a schedule. A schedule judged in memory ends when the window closes
  (trial.py cut_tail); every actor still runnable then has a next step the schedule did not
  run. Each is added to the analysis as a step that touches everything, so it races with the
  last dependent steps and its actor is tried before them.
- Sleep sets and blocked schedules: as in exhaustive.py. A schedule blocked by its sleep set is
  analysed as far as it ran (its races are races of every schedule that extends it).
- The bound. Reversing a race between two service steps costs nothing (ties are free under
  both bound kinds), so a backtrack point added by a race is never beyond the bound when the
  race's schedule was within it; the options that cost (WAIT, a fault firing) are only at
  choice points explored in full, where the bound cuts them exactly as it cuts the brute
  force. That is the conservative backtracking bounded POR needs (Coons, Musuvathi and
  McKinley, OOPSLA 2013): no backtrack point is ever dropped for its cost.
- A state cache (`explore --state-cache`, sim/search/cache.py) ends a schedule at a state explored
  before; its cut steps of that instant are unknown, so every choice point of the instant on the
  path is then explored in full (`whole_instant`): the conservative answer to stateful DPOR's lost
  backtrack points (Yang et al., SPIN 2008). tests/test_state_cache.py checks it against brute force.
tests/test_dpor.py checks all of this the only way that catches a wrong relation: on
configurations small enough, the dpor search reports the same races and the same end states (the
digest of the whole merged history) as `--reduction none --bound none`, and as the bounded brute
force at bounds 1 and 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from sim.search.exhaustive import (EVERYTHING, PREEMPTIONS, STEP, DfsChooser, Diverged,
                                   Footprint, Node, _backtrack_above, fence_tracing)
from sim.search import snapshot
from sim.search.cache import Judge, StateCache
from sim.search.trial import Blocked, Config, Trial
from sim.world import TIME_PASSED, WAIT, Actor

DPOR, SLEEP_SETS, NONE = "dpor", "sleep-sets", "none"
REDUCTIONS = (DPOR, SLEEP_SETS, NONE)
CLOCK = "(clock)"       # the actor of a clock event
_LINK = "net."          # a link actor's name (sim/network.py)


@dataclass(slots=True)
class Event:
    """One step of a schedule as the analysis sees it."""

    actor: str
    fp: Footprint
    node: Node | None        # the choice point it was chosen at (None: it was the only option)
    clock: bool = False


def is_link(option: str) -> bool:
    return option == WAIT or option.startswith(_LINK)


def full(node: Node, spent: bool = False) -> bool:
    """A choice point DPOR explores in full: a fault (or a kind it does not know), one where only
    links can run (WAIT may be offered: which frames are held past the next event is decided
    there), or one whose first option is a link (the clock: see the module docstring); but not a
    step choice point where the bound is `spent` (preemptions: every WAIT costs 1, so none can
    run here or below, and time moves only when nothing can run: the links of an instant are
    then steps like the services', each to run before time moves, ordered by the races alone)."""
    if node.kind != STEP:
        return True
    if spent:
        return False
    return is_link(node.options[node.chosen]) or all(is_link(o) for o in node.options)


class DporChooser(DfsChooser):
    """exhaustive.DfsChooser with backtrack sets (reduction dpor), or without (sleep-sets, none);
    records every step for the race analysis and notes options the bound cut."""

    def __init__(self, seed: int, stack: list[Node], bound: int, kind: str = PREEMPTIONS,
                 reduction: str = DPOR, cache: StateCache | None = None) -> None:
        super().__init__(seed, stack, bound, kind, reduce=reduction != NONE)
        self.cache = cache                     # sim/search/cache.py: states explored before are cut
        self.judge: Judge | None = None
        self.cache_hit = False                 # this schedule ended at a state explored before
        self.keyed_at = -1                     # the instant of the last key taken (one an instant)
        self.dpor = reduction == DPOR
        self.events: list[Event] = []
        self.over_bound = 0                    # options of fresh choice points beyond the bound
        self.unraced = 0                       # options of fresh choice points not (yet) in a backtrack set
        self.world: Any = None
        self.ended: list[Event] | None = None  # pending_steps() of a run made elsewhere (snapshot.py)

    def setup(self, world: Any) -> None:
        super().setup(world)
        self.world = world
        if self.cache is not None:
            self.judge = Judge(self.sinks)

    def choose_step(self, index: int, options: Sequence[str]) -> int:
        cache = self.cache
        if cache is None or self.depth < len(self.stack) or self.world.now == self.keyed_at:
            return super().choose_step(index, options)
        self.keyed_at = self.world.now
        budget, asleep = self.bound - self.cost, frozenset(self.sleep)
        key = cache.visit(self.world, self, self.judge, budget, asleep, self.stack)   # type: ignore[arg-type]
        if key is None:
            self.cache_hit = True
            raise Blocked()                   # explored from an equal state: sim/search/cache.py
        k = super().choose_step(index, options)
        cache.add(key, budget, asleep, self.stack[-1])
        return k


    def fresh(self, node: Node) -> None:
        self.over_bound += sum(node.cost_before + c > self.bound for c in node.costs)
        if self.dpor and not full(node, self.kind == PREEMPTIONS and node.cost_before >= self.bound):
            node.backtrack = {node.chosen}
            self.unraced += len(node.options) - 1

    def observe(self, actor: Actor | None, touched: set | None) -> None:
        if actor is None and touched is TIME_PASSED:
            self.events.append(Event(CLOCK, EVERYTHING, None, True))
            return
        pending = self._pending
        super().observe(actor, touched)       # may raise Blocked: that step did not run
        node = pending[0] if pending is not None else None
        if actor is None:
            self.events.append(Event(CLOCK, EVERYTHING, node, True))
        else:
            self.events.append(Event(actor.name, self.last, node))

    def pending_steps(self) -> list[Event]:
        """The next step of every actor still runnable when the schedule was cut: unknown, so
        touching everything."""
        if self.ended is not None:
            return self.ended
        w = self.world
        if w is None or w.done is False:
            return []
        names = {a.name for a in w._ready}
        names |= {e[2].name for e in w._heap if e[3] is not None and e[2] is not None and e[0] <= w.now}
        return [Event(n, EVERYTHING, None) for n in sorted(names)]


def analyse(events: Sequence[Event]) -> int:
    """Add to the backtrack sets what the races among `events` ask for; how many were added."""
    added = 0
    start = 0
    n = len(events)
    while start < n:
        end = start
        while end < n and not events[end].clock:
            end += 1
        added += _races(events, start, end)
        start = end + 1                     # a clock event: a barrier (module docstring)
    return added


def _races(events: Sequence[Event], lo: int, hi: int) -> int:
    """The races of one instant, events[lo:hi] (no clock event among them)."""
    added = 0
    hb: list[int] = []                       # bit i - lo: event i happens before this one
    for j in range(lo, hi):
        ej = events[j]
        preds, indirect = 0, 0
        for i in range(lo, j):
            ei = events[i]
            if ei.actor == ej.actor or ei.fp.conflicts(ej.fp):
                preds |= 1 << (i - lo)
                indirect |= hb[i - lo]
        hb.append(preds | indirect)
        direct = preds & ~indirect
        i = lo
        while direct:
            if direct & 1:
                ei = events[i]
                node = ei.node
                if ei.actor != ej.actor and node is not None and node.backtrack is not None:
                    if ej.actor in node.options:
                        k = node.options.index(ej.actor)
                        if k not in node.backtrack:
                            node.backtrack.add(k)
                            added += 1
                    elif received(ei, ej):
                        # j is the receive of i's send: reversed only by another frame into the
                        # same process first, or by a step that is no delivery (module docstring)
                        receiver = ei.fp.keys - {ei.actor}
                        for k, o in enumerate(node.options):
                            if k not in node.backtrack and (not is_link(o) or _into(o, receiver)):
                                node.backtrack.add(k)
                                added += 1
                    else:
                        added += len(node.options) - len(node.backtrack)
                        node.backtrack = None
            direct >>= 1
            i += 1
    return added


def received(ei: Event, ej: Event) -> bool:
    """ej is a step of the process whose inbox ei, a link's delivery, filled, and ej's actor
    could not run when ei was chosen: a receive after its send, which only another delivery
    into that process or a step that is no delivery can reverse (module docstring)."""
    if not ei.actor.startswith(_LINK) or ei.fp.everything or ei.fp.fw or ei.fp.fr:
        return False
    others = ei.fp.keys - {ei.actor}
    return len(others) == 1 and ej.actor.split(".", 1)[0] in others


def _into(link: str, processes: frozenset) -> bool:
    """`link` (net.SENDER>RECEIVER, sim/network.py) delivers into one of `processes`."""
    return link != WAIT and link.rsplit(">", 1)[-1] in processes


def whole_instant(events: Sequence[Event]) -> int:
    """A state cache hit (sim/search/cache.py): the steps its cut subtree would have run at this
    instant could race with any step of the instant so far, so each of their choice points is
    explored in full; how many options that added. Earlier instants are behind a clock event."""
    added = 0
    for e in reversed(events):
        if e.clock:
            break
        node = e.node
        if node is not None and node.backtrack is not None:
            added += len(node.options) - len(node.backtrack)
            node.backtrack = None
    return added


@dataclass
class Level:
    """Where a deepening search is: its level (the bound of this pass) and the counts so far."""

    bound: int
    over_bound: int = 0                      # options the bound cut at this level
    unraced: int = 0                         # options no race asked for (dpor: never explored)


def explore(config: Config, bound: int | None, *, reduction: str = DPOR, kind: str = PREEMPTIONS,
            seed: int = 0, start: int = 0, stack: list[Node] | None = None, floor: int = 0,
            deepen: bool = True, over_bound: int = 0, snapshots: bool | None = None,
            cache: StateCache | None = None) -> Iterator[tuple[Trial, list[Node], Level, int]]:
    """Every schedule within `bound` (None: no bound), level by level from `start` (deepen) or at
    the bound alone: yields (trial, stack, level, cost) per schedule run, blocked ones too; a
    schedule cheaper than its level is yielded with its cost (the caller counts only those that
    cost the level: the others were counted at theirs). `stack`: the choices to resume from,
    at level `start` (`over_bound`: what that level's bound had cut before); `floor`: choice
    points fixed above a subtree (sim/explore.py's workers).
    The caller reads `level.over_bound` after the last yield of a level: 0 means the space is
    finite and was explored whole.
    `snapshots`: run each schedule from a snapshot of its prefix (sim/search/snapshot.py; None:
    as DMABUF_EMU_SNAPSHOTS says, by default where it measures cheaper); the schedules and
    everything yielded are the same either way.
    `cache`: cut the schedules that reach a state explored before (sim/search/cache.py; a trial
    so cut is blocked, with extra["state_cached"]); every schedule then runs in this process,
    from start-up (a forked runner's visits would be lost to the cache)."""
    if bound is None and not deepen:
        raise ValueError("an unbounded search deepens")
    levels = range(start, (bound if bound is not None else 1 << 30) + 1) if deepen else [bound]
    if cache is not None:
        snapshots = False
    snapshot.reset(None if snapshots is None else (snapshot.ON if snapshots else snapshot.OFF))
    with fence_tracing():
        for d in levels:
            level = Level(d, over_bound if d == start else 0)
            stack = [] if stack is None else stack
            snaps = snapshot.Snapshots(on=snapshots)   # a chain per pass: the bound is the chooser's
            try:
                while True:
                    chooser = DporChooser(seed, stack, d, kind, reduction, cache)  # type: ignore[arg-type]
                    trial = snaps.run(config, chooser)
                    if chooser.cache_hit:
                        trial.extra["state_cached"] = True
                    if chooser.depth < len(stack):
                        raise Diverged(f"the schedule ended after {chooser.depth} of its {len(stack)} recorded choices")
                    level.over_bound += chooser.over_bound
                    if chooser.dpor:
                        events = chooser.events if trial.blocked else chooser.events + chooser.pending_steps()
                        added = analyse(events) + (whole_instant(events) if chooser.cache_hit else 0)
                        level.unraced += chooser.unraced - added
                    yield trial, stack, level, chooser.cost
                    if not _backtrack_above(stack, d, floor):
                        break
            finally:
                snaps.close()
            stack = None
            if bound is None and level.over_bound == 0:
                return

