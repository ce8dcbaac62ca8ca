"""Table-driven state machines, the way h11/_state.py does it.

A strategy states its protocol as a table: `(state, event) -> rules`. Each rule is
`Rule(when, then, do)`: the first rule whose guard `when` holds wins, the machine enters state
`then` (SAME: stay) and performs the steps `do` in order. A `(ANY, event)` row applies where no
row names the state. An event with no row in the current state is a protocol violation:
`TransitionError` names the strategy, the object, the state and the event, and nothing changes.

Guards and steps are enum members; the half that interprets the table (exporter.py,
importer.py) implements each one. The tables therefore read as the protocol, and the code that
does the bookkeeping is written once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Generic, Hashable, Mapping, TypeVar


class _Wildcard(enum.Enum):
    ANY = "any"    # as a state in a table key: every state without its own row
    SAME = "same"  # as a rule's target: stay in the current state


ANY = _Wildcard.ANY
SAME = _Wildcard.SAME

S = TypeVar("S", bound=Hashable)
G = TypeVar("G", bound=Hashable)
P = TypeVar("P", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Rule(Generic[S, G, P]):
    when: G
    then: S | _Wildcard
    do: tuple[P, ...] = ()


class TransitionError(Exception):
    """An event that the strategy's table does not allow in the current state."""

    def __init__(self, strategy: str, what: str, state: object, event: object) -> None:
        self.strategy, self.what, self.state, self.event = strategy, what, state, event
        super().__init__(
            f"{strategy}: {what} in state {getattr(state, 'value', state)} "
            f"cannot handle event {getattr(event, 'value', event)}")


def rules_for(table: Mapping, state: object, event: object) -> tuple[Rule, ...] | None:
    """The rules of `(state, event)`, else `(ANY, event)`, else None."""
    rules = table.get((state, event))
    if rules is None:
        rules = table.get((ANY, event))
    return rules


def choose(table: Mapping, state: object, event: object, holds: Callable[[Any], bool],
           strategy: str, what: str) -> Rule:
    """The first rule of `(state, event)` whose guard holds; TransitionError if there is none."""
    for rule in rules_for(table, state, event) or ():
        if holds(rule.when):
            return rule
    raise TransitionError(strategy, what, state, event)
