"""Table-driven state machines, the way h11/_state.py does it, checked when they are loaded.

A strategy states each half of its protocol as a table: `(state, event) -> rules`. Each rule is
`Rule(when, then, do)`: the first rule whose guard `when` holds wins, the machine enters state
`then` (SAME: stay) and performs the steps `do` in order. Rules of this file:
- A row keyed `(ANY, event)` applies in every state without its own row for that event.
- `VIOLATION`, as a row's value or a rule's target, says the event cannot legally happen there:
  if it does, `TransitionError` names the strategy, the object, the state and the event, and
  nothing changes. An event with no row at all is not allowed: the table is refused at load.
- Guards and steps are enum members; each half (protocol/exporter/, protocol/importer.py)
  declares its vocabulary (`Vocabulary`): its states, events, guards and steps, and an explicit
  map from every guard and every step to the function that implements it. A member without an
  implementation fails when the half is imported, not when a table first names it.
- `check` is run on every table before it is used (built-in strategies at import, a user's
  strategy when it is loaded). It refuses, with one line naming the strategy, the half, the row
  and what is wrong: a key that is not (state, event) of this half; a guard, step or target
  state that is not this half's; a row whose last rule is guarded (an event no guard accepts
  would stop the run: end with ALWAYS, or VIOLATION); and a state reachable from the initial
  state that has no row for some event (every state must say what each event does there, or
  that it cannot happen).
- `expand` returns the checked table with the ANY rows spread over every reachable state, so that
  the interpreter finds a row with one dict lookup (a state no rule leads to is never looked up).
  That expanded table is what runs, and what `dmabuf-emu strategies NAME --table` prints, each row
  with its origin (`origins`): BASE (the half's base table, unchanged), STRATEGY (the strategy's
  own, or a base row it replaced), LOAD (added when the table was loaded: the exporter's deferred
  maps under the reservation lock), KIND (an importer kind's rows).
- What fired a row is recorded (`trigger`): every event a row's steps emit says which event (and
  timer) fired it, so that an explanation of a run reads its causes off the history.
- Named members. A step or an event the vocabulary lists in `named` takes the name of something
  the strategy declares (a timer: `start_timer("grace")`, `timer_fired("grace")`), written
  `Named(member, name)`. `check_rows` refuses a bare one and a name not declared (`names`, by
  kind). A row keyed by a Named event applies to that name; the row of its bare member (an ANY
  row in the base table) to every name without a row of its own: `rules_for` and `choose` look
  up (state, named), (ANY, named), (state, member), (ANY, member).
"""

from __future__ import annotations

import difflib
import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Hashable, Iterable, Mapping, TypeVar


class _Wildcard(enum.Enum):
    ANY = "any"              # as a state in a table key: every state without its own row
    SAME = "same"            # as a rule's target: stay in the current state
    VIOLATION = "violation"  # as a row or a target: the event cannot legally happen here


ANY = _Wildcard.ANY
SAME = _Wildcard.SAME
VIOLATION = _Wildcard.VIOLATION

# Where a row of the table that runs comes from (see the rules at the top).
BASE, STRATEGY, LOAD, KIND = "base", "strategy", "load", "kind"

S = TypeVar("S", bound=Hashable)
G = TypeVar("G", bound=Hashable)
P = TypeVar("P", bound=Hashable)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Rule(Generic[S, G, P]):
    when: G
    then: S | _Wildcard
    do: tuple[P, ...] = ()


Table = Mapping[tuple[Any, Any], "tuple[Rule, ...] | _Wildcard"]


@dataclass(frozen=True, slots=True)
class Named:
    """A member of a vocabulary (`named` lists which) applied to a name the strategy declares:
    a step or an event about one of its timers. Prints as `member(name)`."""

    member: enum.Enum
    arg: str

    @property
    def value(self) -> str:
        return f"{self.member.value}({self.arg})"

    @property
    def name(self) -> str:
        return f"{self.member.name}({self.arg!r})"

    def __str__(self) -> str:
        return self.value


class TransitionError(Exception):
    """An event that the strategy's table does not allow in the current state."""

    def __init__(self, strategy: str, what: str, state: object, event: object) -> None:
        self.strategy, self.what, self.state, self.event = strategy, what, state, event
        super().__init__(
            f"{strategy}: {what} in state {_name(state)} cannot handle event {_name(event)}")


class TableError(ValueError):
    """A table that cannot run. One line: the strategy, the half, the row, what is wrong."""

    def __init__(self, strategy: str, half: str, row: object, problem: str) -> None:
        self.strategy, self.half, self.row, self.problem = strategy, half, row, problem
        where = f"{half} row {row}" if row is not None else f"{half} table"
        super().__init__(f"{strategy}: {where}: {problem}")


@dataclass(frozen=True)
class Vocabulary:
    """What one half's tables may name, and the implementation of every guard and step."""

    half: str                                   # "exporter" or "importer"
    states: type[enum.Enum]
    events: type[enum.Enum]
    guards: type[enum.Enum]
    steps: type[enum.Enum]
    initial: enum.Enum
    always: enum.Enum                           # the guard that always holds
    guard_impl: Mapping[Any, Callable[..., bool]]
    step_impl: Mapping[Any, Callable[..., None]]
    named: Mapping[Any, str] = field(default_factory=dict)   # step or event -> the kind of name it takes

    def __post_init__(self) -> None:
        for kind, members, impl in (("guard", self.guards, self.guard_impl), ("step", self.steps, self.step_impl)):
            missing = [m.name for m in members if m not in impl]
            if missing:
                raise TypeError(f"{self.half}: {kind}s without an implementation: {', '.join(missing)}")
            stray = [k for k in impl if not isinstance(k, members)]
            if stray:
                raise TypeError(f"{self.half}: implementations of unknown {kind}s: {stray}")


CACHES: list["CompiledCache[Any]"] = []     # every CompiledCache made (sim/search/statecache.py reads them)


class CompiledCache(Generic[T]):
    """Checked tables by the spec's whole content. A service starts once per run, but the
    simulator starts the same strategy's services once per schedule, and checking a table costs
    more than most schedules' steps. Keyed by content, not identity: a spec whose dicts were
    changed is a new key. What it holds is read-only to everyone (the interpreters only read), so
    sharing one is safe. `last`: the key each spec object (by `ident`) had when last asked, with
    its table: hashing a key hashes every rule, a tenth of a simulated schedule's start-up, where
    comparing it with the same unchanged spec's key compares the same objects; equal keys mean
    equal content, so a hit there is the hit the content map would give."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._by_key: dict[Any, T] = {}
        self._last: dict[Any, tuple[Any, T]] = {}
        CACHES.append(self)

    def held(self) -> list[T]:
        """Every table it holds (read-only: a search's state hash takes each as one token)."""
        return [*self._by_key.values(), *(v for _, v in self._last.values())]

    def get(self, ident: Any, key: Any, build: Callable[[], T]) -> T:
        """The table for `key` (None: not a key, build it every time), built by `build` once."""
        if key is None:
            return build()
        last = self._last.get(ident)
        if last is not None and last[0] == key:
            return last[1]
        try:
            value = self._by_key.get(key)
        except TypeError:                   # something unhashable in a user's table: build checks it
            return build()
        if value is None:
            value = build()
            if len(self._by_key) < self.size:
                self._by_key[key] = value
        if len(self._last) >= self.size:
            self._last.clear()
        self._last[ident] = (key, value)
        return value


def check(strategy: str, vocab: Vocabulary, table: Any,
          names: Mapping[str, Iterable[str]] | None = None) -> dict[tuple[Any, Any], Any]:
    """The table as a plain dict, if it can run; TableError naming the first thing wrong.
    `names`: what the strategy declares, by kind, for the Named members (its timers)."""
    rows = check_rows(strategy, vocab, table, names)
    reach = reachable(vocab, rows)
    for state, path in reach.items():
        for event in vocab.events:
            if (state, event) not in rows and (ANY, event) not in rows:
                how = f" ({path})" if path else " (the initial state)"
                raise TableError(strategy, vocab.half, _key(state, event),
                                 f"missing: state {state.value} is reachable{how} but nothing says what "
                                 f"{event.value} does there (add a row, or VIOLATION if it cannot happen)")
    return rows


def expand(vocab: Vocabulary, rows: Mapping[tuple[Any, Any], Any]) -> dict[tuple[Any, Any], Any]:
    """The checked rows with ANY spread over every reachable state: one lookup per event."""
    out: dict[tuple[Any, Any], Any] = {}
    reach = reachable(vocab, rows)
    for state in vocab.states:
        if state not in reach:
            continue
        for event in events_of(vocab, rows):
            rules = rules_for(rows, state, event)
            if rules is not None:
                out[(state, event)] = rules
    return out


@dataclass(frozen=True)
class RunningRow:
    """A row of the table that runs: `(state, event) -> rules`, where it comes from (`origin`), and
    whether it is the table's (ANY, event) row spread over this state (`via_any`)."""

    state: Any
    event: Any
    rules: Any          # tuple of Rule, or VIOLATION
    origin: str
    via_any: bool


def running(vocab: Vocabulary, rows: Mapping[tuple[Any, Any], Any],
            origins: Mapping[tuple[Any, Any], str]) -> list[RunningRow]:
    """`expand(vocab, rows)`, row by row, with the origin of the row each comes from."""
    out = []
    for (state, event), rules in expand(vocab, rows).items():
        key = source(rows, state, event)
        out.append(RunningRow(state, event, rules, origins[key], key[0] is ANY))
    return out


def origins(rows: Mapping[tuple[Any, Any], Any], base: Mapping[tuple[Any, Any], Any]) -> dict[tuple[Any, Any], str]:
    """BASE for each row equal to `base`'s, STRATEGY for the others."""
    return {key: BASE if key in base and base[key] == rules else STRATEGY for key, rules in rows.items()}


def source(rows: Mapping[tuple[Any, Any], Any], state: object, event: object) -> tuple[Any, Any]:
    """The key of the row that `(state, event)` runs: its own, else `(ANY, event)` (and for a
    Named event, then its member's)."""
    for key in _lookups(state, event):
        if key in rows:
            return key
    return (ANY, event)


def rules_for(rows: Mapping, state: object, event: object) -> Any:
    """The rules of `(state, event)`, else `(ANY, event)` (for a Named event, then
    `(state, member)`, `(ANY, member)`), else None."""
    for key in _lookups(state, event):
        rules = rows.get(key)
        if rules is not None:
            return rules
    return None


def events_of(vocab: Vocabulary, rows: Mapping[tuple[Any, Any], Any]) -> list[Any]:
    """Every event of the half, then the Named events the rows are keyed by (table order)."""
    named = [e for (_, e) in rows if isinstance(e, Named)]
    return list(vocab.events) + list(dict.fromkeys(named))


def _lookups(state: object, event: object) -> tuple[tuple[Any, Any], ...]:
    if isinstance(event, Named):
        return ((state, event), (ANY, event), (state, event.member), (ANY, event.member))
    return ((state, event), (ANY, event))


def reachable(vocab: Vocabulary, rows: Mapping[tuple[Any, Any], Any]) -> dict[enum.Enum, str]:
    """Every state the table can reach from the initial one, with a path that reaches it."""
    paths: dict[enum.Enum, str] = {vocab.initial: ""}
    todo = [vocab.initial]
    while todo:
        state = todo.pop(0)
        for event in events_of(vocab, rows):
            for rule in _rules(rules_for(rows, state, event)):
                target = state if rule.then is SAME else rule.then
                if target is VIOLATION or target in paths:
                    continue
                step = f"{state.value} --{event.value}--> {target.value}"
                paths[target] = f"{paths[state]}, {step}" if paths[state] else step
                todo.append(target)
    return paths


def choose(table: Mapping, state: object, event: object, holds: Callable[[Any], bool],
           strategy: str, what: str) -> Rule:
    """The first rule of `(state, event)` whose guard holds; TransitionError if the row is a
    VIOLATION, if no guard holds, or if the rule chosen leads to VIOLATION."""
    rules = rules_for(table, state, event)
    if rules is not None and rules is not VIOLATION:
        for rule in rules:
            if holds(rule.when):
                if rule.then is VIOLATION:
                    break
                return rule
    raise TransitionError(strategy, what, state, event)


def steps_of(rows: Mapping[tuple[Any, Any], Any]) -> Iterable[tuple[tuple[Any, Any], Rule]]:
    """Every (key, rule) of the table, in table order."""
    for key, rules in rows.items():
        for rule in _rules(rules):
            yield key, rule


# ---------------------------------------------------------------------------------- checks


def check_rows(strategy: str, vocab: Vocabulary, table: Any,
               names: Mapping[str, Iterable[str]] | None = None) -> dict[tuple[Any, Any], Any]:
    """The rows as a plain dict if each is well formed (keys, guards, steps, targets, the last
    rule unconditional, the names a Named member takes declared in `names`, by kind); TableError
    naming the first that is not. No completeness check."""
    half = vocab.half
    if not isinstance(table, Mapping):
        raise TableError(strategy, half, None, f"must be a dict of (state, event) -> rules, got {type(table).__name__}")
    rows: dict[tuple[Any, Any], Any] = {}
    for key, rules in table.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TableError(strategy, half, repr(key), "a key must be a (state, event) pair")
        state, event = key
        row = _key(state, event)
        if state is not ANY and not isinstance(state, vocab.states):
            raise TableError(strategy, half, row, _unknown("state", state, vocab.states))
        if isinstance(event, Named):
            problem = _named_problem("event", event, vocab, names)
            if problem:
                raise TableError(strategy, half, row, problem)
        elif not isinstance(event, vocab.events):
            raise TableError(strategy, half, row, _unknown("event", event, vocab.events))
        if rules is VIOLATION:
            rows[key] = VIOLATION
            continue
        if not isinstance(rules, tuple) or not rules:
            raise TableError(strategy, half, row, "rules must be a non-empty tuple of Rule(...) or VIOLATION, "
                                                   f"got {rules!r}"[:200])
        for i, rule in enumerate(rules, 1):
            at = f"rule {i}: "
            if not isinstance(rule, Rule):
                raise TableError(strategy, half, row, at + f"not a Rule: {rule!r}"[:200])
            if not isinstance(rule.when, vocab.guards):
                raise TableError(strategy, half, row, at + _unknown("guard", rule.when, vocab.guards))
            if rule.then not in (SAME, VIOLATION) and not isinstance(rule.then, vocab.states):
                raise TableError(strategy, half, row, at + _unknown("state", rule.then, vocab.states, "target "))
            if not isinstance(rule.do, tuple):
                raise TableError(strategy, half, row, at + f"do must be a tuple of steps, got {rule.do!r}"[:200])
            for step in rule.do:
                if isinstance(step, Named):
                    problem = _named_problem("step", step, vocab, names)
                    if problem:
                        raise TableError(strategy, half, row, at + problem)
                elif not isinstance(step, vocab.steps):
                    raise TableError(strategy, half, row, at + _unknown("step", step, vocab.steps))
                elif step in vocab.named:
                    raise TableError(strategy, half, row, at + f"step {step.value} takes the name of a "
                                     f"{vocab.named[step]}: {step.value}(NAME), e.g. {step.name.lower()}(\"grace\")")
        if rules[-1].when is not vocab.always:
            raise TableError(strategy, half, row, f"the last rule is guarded by {_name(rules[-1].when)}: when no "
                                                   f"guard holds the event would stop the run (end with "
                                                   f"{vocab.guards.__name__}.{vocab.always.name}, or VIOLATION)")
        rows[key] = tuple(rules)
    return rows


def trigger(event: Any, timers: Mapping[Any, str]) -> dict[str, str]:
    """What an event emitted by the steps of a row records about the event that fired the row
    (history format, see checker/catalogue.py): `trigger`, the event's name, and `timer`, the
    timer's name when a timer fired it (a Named event's name, else `timers[event]`)."""
    if isinstance(event, Named):
        return {"trigger": event.member.value, "timer": event.arg}
    out = {"trigger": event.value}
    if event in timers:
        out["timer"] = timers[event]
    return out


def _named_problem(kind: str, x: Named, vocab: Vocabulary, names: Mapping[str, Iterable[str]] | None) -> str:
    """What is wrong with a Named step or event, or ""."""
    what = vocab.named.get(x.member)
    if what is None:
        return f"{kind} {x.member.value!r} takes no name (members that do: " \
               f"{', '.join(m.value for m in vocab.named) or 'none'})"
    declared = sorted((names or {}).get(what, ()))
    if x.arg not in declared:
        near = difflib.get_close_matches(str(x.arg), declared, n=1)
        return (f"{kind} {x.value} names no declared {what} (declared: {', '.join(declared) or 'none'})"
                + (f"; did you mean {near[0]}?" if near else ""))
    return ""


def _rules(rules: Any) -> tuple[Rule, ...]:
    return () if rules is None or rules is VIOLATION else rules


def _key(state: object, event: object) -> str:
    return f"({_name(state)}, {_name(event)})"


def _name(x: object) -> str:
    return str(getattr(x, "value", x))


def _unknown(kind: str, value: object, members: type[enum.Enum], prefix: str = "") -> str:
    names = [m.value for m in members]
    given = getattr(value, "value", value)
    foreign = f" (a {type(value).__name__}, not a {members.__name__})" if isinstance(value, enum.Enum) else ""
    near = difflib.get_close_matches(str(given).lower(), names, n=1)
    hint = f"; did you mean {near[0]}?" if near and not foreign else ""
    return f"{prefix}{kind} {given!r}{foreign} is not one of this half's {kind}s ({', '.join(names)}){hint}"
