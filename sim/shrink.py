"""Shrinking: a racing schedule reduced to the fewest deviations that still give the same race.

Rules:
- A schedule of a search (sim/search/trial.py) is the default schedule plus its *deviations*:
  each step decision inside the window where it took other than the first offered option (a
  WAIT, which holds every frame in flight back past one more event, or a tie taken out of the
  world's order) and each fault that fired. Everything else (the start-up, the workload's draws,
  the control sockets' delays) is the configuration's, the same in every schedule. So the
  fewest deviations is the fewest preemptions and faults; and since each WAIT adds decisions
  and a duplicated or dropped frame adds messages, it is also, nearly always, the fewest steps,
  decisions and messages.
- A candidate is a subset of the deviations (or one made simpler: a tie moved to an option
  offered earlier), replayed with each deviation applied where the run asks for a decision at
  the same position with the same offered options, and the default everywhere else (a deviation
  whose position moved, because an earlier one went, is dropped: the candidate is judged as it
  ran). It is kept when the checker finds a race of the same kind on the same buffer.
- The order of work: delta debugging (Zeller and Hildebrandt's ddmin, TSE 2002) over the
  deviations, repeated on the deviations the kept candidate actually has until nothing goes;
  then every remaining tie is tried at each earlier offered option ("preemption reduction":
  closer to the default order); then ddmin again if that changed anything.
- 1-minimal: at the end every single remaining deviation is tried removed, and every tie at
  each earlier option: if none of these keeps the race, the result is 1-minimal and says so
  (`one_minimal: true`); a budget of candidates (MAX_TESTS) that ran out says false.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from sim.scheduler import CHANCE, STEP, Request
from sim.search.trial import (FAULT_DEVIATION, FAULT_STREAMS, STEP_DEVIATION, Config, Deviation, PrefixGuide,
                              SearchChooser, Trial, offered, run_trial)

MAX_TESTS = 2000


class ShrinkChooser(SearchChooser):
    """The default schedule with `deviations` applied where they still fit."""

    def __init__(self, deviations: Sequence[Deviation]) -> None:
        super().__init__(0)
        self.at = {d.index: d for d in deviations}
        self.record = []

    def choose_step(self, index: int, options: Sequence[str]) -> int:
        d = self.at.get(index)
        if d is not None and d.kind == STEP_DEVIATION and d.options == tuple(options):
            return d.options.index(d.value)
        return 0

    def choose_fault(self, index: int, stream: str, p: float, default: bool) -> bool:
        d = self.at.get(index)
        return d is not None and d.kind == FAULT_DEVIATION and d.options == (stream,)


class DeviationGuide:
    """Replays a decision log exactly (PrefixGuide: strict, defaults after its end) and notes its
    deviations as a search's chooser would have (the window is the chooser's)."""

    def __init__(self, entries: Sequence[Sequence[Any]], streams: Sequence[str], chooser: SearchChooser) -> None:
        self.inner = PrefixGuide(entries, streams)
        self.chooser = chooser
        self.deviations: list[Deviation] = []

    def suggest(self, request: Request) -> Any | None:
        value = self.inner.suggest(request)
        if request.kind == STEP and self.chooser.window.open and request.options is not None:
            live = offered(request.options)
            if len(live) > 1 and value in live and value != live[0]:
                names = tuple(request.options[i] for i in live)
                self.deviations.append(Deviation(request.index, STEP_DEVIATION, names, request.options[value]))
        elif request.kind == CHANCE and value and request.stream.startswith(FAULT_STREAMS):
            self.deviations.append(Deviation(request.index, FAULT_DEVIATION, (request.stream,), "fired"))
        return value


def deviations_of(config: Config, entries: Sequence[Sequence[Any]], streams: Sequence[str]) -> tuple[Trial, list[Deviation]]:
    """Replay a schedule and list its deviations."""
    chooser = SearchChooser(0)
    guide = DeviationGuide(entries, streams, chooser)
    trial = run_trial(config, chooser, guide=guide, keep_history=True)
    return trial, guide.deviations


@dataclass
class ShrinkResult:
    kind: str
    buffer: Any
    before: Trial
    after: Trial
    deviations_before: list[Deviation]
    deviations: list[Deviation]
    one_minimal: bool
    tests: int
    notes: list[str] = field(default_factory=list)

    @staticmethod
    def counts(devs: Sequence[Deviation]) -> dict[str, int]:
        waits = sum(d.is_wait for d in devs)
        faults = sum(d.kind == FAULT_DEVIATION for d in devs)
        return {"waits": waits, "ties": len(devs) - waits - faults, "faults": faults}


class _Tester:
    def __init__(self, config: Config, kind: str, buffer: Any) -> None:
        self.config, self.kind, self.buffer = config, kind, buffer
        self.cache: dict[tuple, Trial | None] = {}
        self.tests = 0

    def __call__(self, devs: Sequence[Deviation]) -> Trial | None:
        key = tuple(sorted(devs))
        if key in self.cache:
            return self.cache[key]
        if self.tests >= MAX_TESTS:
            return None
        self.tests += 1
        trial = run_trial(self.config, ShrinkChooser(devs))
        ok = trial if trial.error is None and trial.has(self.kind, self.buffer) else None
        self.cache[key] = ok
        return ok


def ddmin(items: list[Deviation], test: Callable[[list[Deviation]], Trial | None]) -> list[Deviation]:
    """Zeller's ddmin: a subset of `items` that passes `test`, from which no chunk of the last
    granularity can be removed."""
    if test([]) is not None:
        return []
    n = 2
    while len(items) >= 2:
        size = len(items) / n
        chunks = [items[int(i * size):int((i + 1) * size)] for i in range(n)]
        for c in chunks:
            if c and test(c) is not None:
                items, n = c, 2
                break
        else:
            for i in range(n):
                comp = [x for j, c in enumerate(chunks) if j != i for x in c]
                if comp and test(comp) is not None:
                    items, n = comp, max(n - 1, 2)
                    break
            else:
                if n >= len(items):
                    break
                n = min(len(items), 2 * n)
    return items


def _simpler(d: Deviation) -> list[Deviation]:
    """The same tie taken at each option offered before it (closer to the default order)."""
    if d.kind != STEP_DEVIATION or d.is_wait:
        return []
    k = d.options.index(d.value)
    return [d._replace(value=d.options[j]) for j in range(1, k)]


def _size(devs: Sequence[Deviation]) -> tuple[int, int]:
    """Fewer deviations first, then ties closer to the default order."""
    return len(devs), sum(d.options.index(d.value) for d in devs if d.kind == STEP_DEVIATION and not d.is_wait)


def _neighbours(devs: list[Deviation]) -> list[list[Deviation]]:
    """Every single deviation removed, then every tie moved one or more options earlier."""
    out = [devs[:i] + devs[i + 1:] for i in range(len(devs))]
    out += [devs[:i] + [s] + devs[i + 1:] for i, d in enumerate(devs) for s in _simpler(d)]
    return out


def shrink(config: Config, entries: Sequence[Sequence[Any]], streams: Sequence[str],
           kind: str | None = None, buffer: Any = None) -> ShrinkResult:
    """Shrink the schedule `entries` (a decision log) keeping its race `kind` on `buffer` (by
    default its first race)."""
    before, devs0 = deviations_of(config, entries, streams)
    if not before.races:
        raise ValueError("the schedule has no race to keep")
    if kind is None:
        kind, buffer = before.races[0].kind, before.races[0].buffer
    elif not before.has(kind, buffer):
        raise ValueError(f"the schedule has no {kind} on buffer {buffer}")
    test = _Tester(config, kind, buffer)
    best = test(devs0)
    if best is None:  # replaying by deviations lost it: keep the schedule as it is
        return ShrinkResult(kind, buffer, before, before, devs0, devs0, False, test.tests,
                            ["the race did not survive a replay by deviations; not shrunk"])
    devs = list(best.extra["deviations"])
    one_minimal = False
    while test.tests < MAX_TESTS:
        t = test(ddmin(devs, test))
        if t is not None and _size(t.extra["deviations"]) < _size(devs):
            devs = list(t.extra["deviations"])
            continue
        kept = [t for t in map(test, _neighbours(devs)) if t is not None]
        smaller = [t for t in kept if _size(t.extra["deviations"]) < _size(devs)]
        if smaller:
            devs = list(min(smaller, key=lambda t: _size(t.extra["deviations"])).extra["deviations"])
            continue
        one_minimal = not kept and test.tests < MAX_TESTS
        break
    after = run_trial(config, ShrinkChooser(devs), keep_history=True)
    return ShrinkResult(kind, buffer, before, after, devs0, devs, one_minimal, test.tests)
