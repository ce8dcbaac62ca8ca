"""subtrees: one level of the exhaustive search's tree cut into subtrees for workers (sim/explore.py
`--jobs`, `--scheduler`), so that together they are the search one process makes.

What a subtree is. A prefix of a schedule's choice points (serialized nodes, with what one process
knows there: what is asleep, the options tried before and their footprints, DPOR's backtrack
sets); a worker explores every schedule below it (sim/explore.py run_subtree). The walk finds the
prefixes by running one schedule per prefix (not counted: the subtree's first schedule repeats
it), depth first, and cuts each before the first step choice point at `depth` or below
(`split_at`: a step's fault draws stay with it, so its footprint is the union over their
outcomes, as one process has it when it moves on), deeper where less of the bound is spent.

The rule that makes it the one-process search. A choice point that DPOR may reduce (one with a
backtrack set) grows with the races found below it, so which option it tries next, and in what
order, is known only once every schedule below its current option has run. One process knows
that when it backtracks there. Here a task below it may still be running: the walk then
*suspends* that choice point (its ancestors as serialized on the path, the walk's own node) and
goes on with the rest of the tree above it, which does not depend on it (a choice point explored
whole needs no wait; a DPOR one above is suspended in turn, as it is held by the one below). A
suspended choice point is *held* by every task below it, every suspended choice point below it
and the walk under its current option; when nothing holds it, its next option is the first
of its backtrack set it has not tried, as one process's would be, and a new walk explores below
it (`settle`). Until then nothing below it is recorded out of order: each task has a `key`, the
how-manieth option tried at each choice point of its prefix, whose order is the depth-first
order of one process; the caller records a finished task only when every task before it is
recorded and no walk or suspended choice point can still give one before it (`can_record`).
So the schedules, their numbers, the first race, the cuts and the verdict are one process's;
only the order in which workers run the subtrees differs. Before, the walk stopped at such a
choice point until every task below it had finished: one subtree (every schedule whose first
preemption comes after the first 16 choice points, on resv-fence with three importers at bound
2) then held two thirds of the work and ran alone.
tests/test_dpor.py checks that a split search gives the one-process counts, with tasks finished
in the order submitted and in the reverse order, and resumed after stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from sim.search.dpor import DporChooser
from sim.search.exhaustive import STEP, Diverged, Node, fence_tracing, node_from_dict, node_to_dict
from sim.search.trial import Config, run_trial


@dataclass(eq=False)
class Task:
    """A subtree for a worker."""

    prefix: list[dict[str, Any]]
    key: tuple[int, ...]                 # at each choice point, the how-manieth option tried there
    owners: list[Node | None]            # the walk's DPOR choice point at each position (None: explored whole)

    @property
    def id(self) -> str:
        """The key as the state file keeps it."""
        return ".".join(map(str, self.key))


@dataclass(eq=False)
class _Suspended:
    node: Node
    above: list[dict[str, Any]]          # its ancestors, serialized as they were on its path
    owners: list[Node | None]            # theirs
    key: tuple[int, ...]                 # their options' places (Task.key)

    def low(self) -> tuple[int, ...]:
        """No task it gives later comes before this."""
        return self.key + (len(self.node.tried),)


class _Walk:
    """Depth first below `floor` fixed choice points of `stack`."""

    def __init__(self, tree: "Subtrees", stack: list[Node], owners: list[Node | None], floor: int,
                 root: "_Suspended | None") -> None:
        self.tree, self.stack, self.owners, self.floor, self.root = tree, stack, owners, floor, root
        self.low = tuple(len(n.tried) - 1 for n in stack[:floor])   # every later task comes after this
        self._gen = self._prefixes()

    def step(self) -> Task | None:
        return next(self._gen, None)

    def _prefixes(self) -> Iterator[Task]:
        t = self.tree
        stack, owners = self.stack, self.owners
        while True:
            known = len(stack)
            chooser = DporChooser(0, stack, t.level, t.kind, t.reduction)
            with fence_tracing():
                run_trial(t.config, chooser, setup=chooser.setup)
            if chooser.depth < len(stack):
                raise Diverged("a prefix did not replay")
            owners.extend(n if n.backtrack is not None else None for n in stack[known:])
            cut = split_at(stack, t.depth, self.floor, t.reach, t.level)
            t.over += sum(n.cost_before + c > t.level for n in stack[known:cut] for c in n.costs)
            task = Task([node_to_dict(n) for n in stack[:cut]], tuple(len(n.tried) - 1 for n in stack[:cut]),
                        owners[:cut])
            self.low = task.key
            t.hold(task.owners)
            yield task
            del stack[cut:], owners[cut:]
            while len(stack) > self.floor:      # exhaustive.py backtrack, suspending where DPOR must wait
                node = stack[-1]
                if node.backtrack is not None and t.held(node):
                    t.suspend(node, stack[:-1], owners[:-1])
                elif (nxt := next((o for o in node.candidates() if node.available(o, t.level)), None)) is not None:
                    node.tried.append(nxt)
                    break
                elif node.backtrack is not None:
                    t.unraced += len(node.options) - len(node.backtrack)
                stack.pop()
                owners.pop()
            else:
                return


class Subtrees:
    """Level `level` (its bound) cut into Tasks (the module docstring). `next` gives the next task
    (None: none now, or `finished`); `merge` takes a finished task's additions to the backtrack
    sets on its prefix (run_subtree's `above`); `can_record` says whether a finished task's
    schedules may be counted yet. `over`: options of the prefixes' own choice points over the
    bound; `unraced`: options of their DPOR choice points no race asked for (one process counts
    both too)."""

    def __init__(self, config: Config, kind: str, reduction: str, depth: int, level: int, reach: int = 0) -> None:
        self.config, self.kind, self.reduction, self.depth, self.level = config, kind, reduction, depth, level
        self.reach = reach
        self.over = self.unraced = 0
        self._holds: dict[int, int] = {}            # id(DPOR node) -> what holds it
        self._suspended: dict[int, _Suspended] = {}
        self._ready: list[_Suspended] = []
        self._walks: list[_Walk] = [_Walk(self, [], [], 0, None)]

    @property
    def finished(self) -> bool:
        """Every task of the level has been given out."""
        return not self._walks and not self._suspended

    def next(self) -> Task | None:
        while True:
            while self._ready:
                self._settle(self._ready.pop())
            if not self._walks:
                return None
            walk = min(self._walks, key=lambda w: w.low)   # the earliest in depth-first order
            task = walk.step()
            if task is not None:
                return task
            self._walks.remove(walk)
            if walk.root is not None:
                self.release([walk.root.node])

    def merge(self, task: Task, above: list) -> None:
        """A task finished (or was dropped: `above` empty): what its races added above it
        ([position, options or None: all]), then it holds nothing."""
        for k, final in above:
            node = task.owners[k]
            if node is not None and node.backtrack is not None:
                node.backtrack = None if final is None else node.backtrack | set(final)
        self.release(task.owners)

    def can_record(self, key: tuple[int, ...]) -> bool:
        """No task still to be given out comes before `key` in depth-first order."""
        return (all(key <= w.low for w in self._walks) and all(key < s.low() for s in self._suspended.values()))

    # ------------------------------------------------------------------ holds

    def hold(self, owners: list[Node | None]) -> None:
        for n in owners:
            if n is not None:
                self._holds[id(n)] = self._holds.get(id(n), 0) + 1

    def release(self, owners: list[Node | None]) -> None:
        for n in owners:
            if n is None:
                continue
            left = self._holds[id(n)] = self._holds[id(n)] - 1
            if left == 0 and (s := self._suspended.get(id(n))) is not None:
                self._ready.append(s)

    def held(self, node: Node) -> bool:
        return self._holds.get(id(node), 0) > 0

    def suspend(self, node: Node, above: list[Node], owners: list[Node | None]) -> None:
        s = _Suspended(node, [node_to_dict(n) for n in above], list(owners), tuple(len(n.tried) - 1 for n in above))
        self._suspended[id(node)] = s
        self.hold(s.owners)

    def _settle(self, s: _Suspended) -> None:
        """Nothing holds `s` any more: its next option, walked, or it is done."""
        node = s.node
        nxt = next((o for o in node.candidates() if node.available(o, self.level)), None)
        if nxt is None:
            self.unraced += len(node.options) - len(node.backtrack or node.options)
            del self._suspended[id(node)]
            self.release(s.owners)
            return
        node.tried.append(nxt)
        stack = [node_from_dict(d) for d in s.above] + [node]
        self.hold([node])                               # the walk below its new option
        self._walks.append(_Walk(self, stack, s.owners + [node], len(stack), s))


def split_at(stack: list[Node], depth: int, floor: int = 0, reach: int = 0, level: int = 0) -> int:
    """How many of a schedule's choice points a subtree's prefix holds: up to the first step
    choice point at `depth` or below, and `reach` more for each unit of the level's bound not yet
    spent there (most of a level's schedules spend it late: cut at one depth, the subtree that
    spent none holds most of the work), never fewer than `floor` (a fault draw stays with its
    step)."""
    for i in range(max(depth, floor), len(stack)):
        n = stack[i]
        if n.kind == STEP and i >= depth + reach * max(0, level - n.cost_before):
            return i
    return len(stack)
