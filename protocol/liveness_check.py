"""What a strategy's exporter table alone says about progress: states a move may never leave.

A table that loads can still hold a move for ever: the base table's `(ANY, event)` rows, which do
nothing, take every event a strategy forgot, timers included. This module finds the plainest
case, from the table alone, and says it as a warning (the table still loads and runs: whether a
move really sticks depends on who answers, which the checker judges from the history as a
`stuck` finding, checker/liveness.py). `dmabuf-emu strategies --check`, `run` and `sim` print it.

The rule (`warnings`), conservative: it warns only where the table leaves no doubt.
A state S of the expanded exporter table (protocol/machine.py `expand`) is *held on an unheard
timer* when all of these hold:
1. a rule of a reachable row enters S from another state and starts a timer (TIMERS: the step that
   starts it, the event it fires): the move is meant to wait in S, bounded by that timer;
2. in S, the timer's event runs the base table's `(ANY, event)` row, and that row does nothing
   (every rule stays, with no step): the strategy gave S no row for its own timer;
3. no event the move can count on leads out of S: every event with a rule whose target is another
   state is a follow-up (FOLLOW_UPS) that no step S asks for produces: NOTIFY_DONE only after
   ANSWERED in S's row of an answer (ACK, NOTIFY_RETURNED: an importer going away is no answer),
   FENCES_SIGNALED only after a fence wait, COPY_DONE only after COPY, UNMAPS_DONE only after
   AWAIT_UNMAPS, each taken by the entering rule or by a rule of one of S's rows. An event from
   outside (a request, the memory manager, the run's stop, a revocation) that leaves S is a way
   out, and then nothing is said.
A move that enters S by that rule waits there until every importer it waits for has gone away.
"""

from __future__ import annotations

from typing import Any, Mapping

from protocol import machine
from protocol.exporter import MoveEvent, MoveState, Step, compile_spec
from protocol.exporter.moves import VOCABULARY
from protocol.machine import ANY, SAME, VIOLATION

# The step that starts a timer -> the event the timer fires (protocol/exporter/table.py).
TIMERS: Mapping[Step, MoveEvent] = {
    Step.START_NOTIFY_TIMER: MoveEvent.NOTIFY_TIMEOUT,
    Step.WAIT_FENCES: MoveEvent.FENCE_TIMEOUT,
    Step.WAIT_WRITE_FENCES: MoveEvent.FENCE_TIMEOUT,
    Step.WAIT_KERNEL_FENCES: MoveEvent.FENCE_TIMEOUT,
    Step.AWAIT_RESETS: MoveEvent.RESET_TIMEOUT,
    Step.AWAIT_UNMAPS: MoveEvent.UNMAP_WAIT_TIMEOUT,
}

# A follow-up event -> the steps that ask for it, and the events of S's rows in which such a step
# counts (None: any row of S, and the rule entering S).
FOLLOW_UPS: Mapping[MoveEvent, tuple[frozenset[Step], frozenset[MoveEvent] | None]] = {
    MoveEvent.NOTIFY_DONE: (frozenset({Step.ANSWERED}), frozenset({MoveEvent.ACK, MoveEvent.NOTIFY_RETURNED})),
    MoveEvent.FENCES_SIGNALED: (frozenset({Step.WAIT_FENCES, Step.WAIT_WRITE_FENCES, Step.WAIT_KERNEL_FENCES}), None),
    MoveEvent.COPY_DONE: (frozenset({Step.COPY}), None),
    MoveEvent.UNMAPS_DONE: (frozenset({Step.AWAIT_UNMAPS, Step.PUT_UNMAP_REF}), None),
    **{timer: (frozenset(s for s, t in TIMERS.items() if t is timer), None) for timer in set(TIMERS.values())},
}


def _does_nothing(rules: Any) -> bool:
    return rules is not VIOLATION and all(r.then is SAME and not r.do for r in rules)


def _name(x: Any) -> str:
    return str(getattr(x, "value", x))


def warnings(spec: Any) -> list[str]:
    """One line per state of `spec`'s exporter table (an ExporterSpec) held on an unheard timer
    (the rule above), naming the state, the rule that enters it, the timer and the ways out."""
    compiled = compile_spec(spec)
    rows, origins, table = compiled.rows, compiled.origins, compiled.table
    reach = machine.reachable(VOCABULARY, rows)
    out: list[str] = []
    seen: set[tuple[Any, Any]] = set()
    for (src, event), rules in table.items():
        for rule in () if rules is VIOLATION else rules:
            target = rule.then
            if target in (SAME, VIOLATION) or target is src or target not in reach:
                continue
            for step in rule.do:
                timer = TIMERS.get(step)
                if timer is None or (target, timer) in seen:
                    continue
                line = _held(rows, origins, table, src, event, rule, target, timer)
                if line is not None:
                    seen.add((target, timer))
                    out.append(f"{spec.strategy}: {line}")
    return out


def _held(rows: Mapping, origins: Mapping, table: Mapping, src: MoveState, event: MoveEvent, entering: Any,
          state: MoveState, timer: MoveEvent) -> str | None:
    key = machine.source(rows, state, timer)
    if key != (ANY, timer) or origins.get(key) != machine.BASE or not _does_nothing(rows[key]):
        return None
    outs: list[MoveEvent] = []
    for ev in MoveEvent:
        rules = table.get((state, ev))
        if rules is None or rules is VIOLATION or ev is timer:
            continue
        if any(r.then not in (SAME, VIOLATION) and r.then is not state for r in rules):
            if ev not in FOLLOW_UPS or _asked(table, entering, state, ev):
                return None           # a way out the move can count on
            outs.append(ev)
    entry = f"({_name(src)}, {_name(event)})"
    timer_step = next(s for s in entering.do if TIMERS.get(s) is timer)
    if outs:
        why = ("its only way out, " if len(outs) == 1 else "its only ways out, ") + ", ".join(
            f"{_name(ev)}, comes only after {_after(ev)}, which no row of {_name(state)} takes" for ev in outs)
    else:
        why = "no other event leaves it"
    return (f"exporter state {_name(state)}: entered by {entry}, which starts a timer ({_name(timer_step)}), "
            f"but {_name(timer)} there runs the base table's (ANY, {_name(timer)}) row, which does nothing, "
            f"and {why}: a move that enters it may never leave (add a ({_name(state)}, {_name(timer)}) row)")


def _after(ev: MoveEvent) -> str:
    steps, where = FOLLOW_UPS[ev]
    said = " or ".join(sorted(s.value for s in steps))
    return said + (f" in a row of {' or '.join(sorted(e.value for e in where))}" if where else "")


def _asked(table: Mapping, entering: Any, state: MoveState, ev: MoveEvent) -> bool:
    """Whether a step S takes (the entering rule, or a rule of one of S's rows) asks for `ev`."""
    steps, where = FOLLOW_UPS[ev]
    if where is None and steps & set(entering.do):
        return True
    for other in MoveEvent:
        if where is not None and other not in where:
            continue
        rules = table.get((state, other))
        if rules is None or rules is VIOLATION:
            continue
        if any(steps & set(r.do) for r in rules):
            return True
    return False


def strategy_warnings(strategy: Any) -> list[str]:
    """The warnings of a strategy: a loaded module, or what names one (protocol/strategies resolve)."""
    if isinstance(strategy, str):
        from protocol.strategies import resolve
        strategy = resolve(strategy)
    return warnings(strategy.EXPORTER)
