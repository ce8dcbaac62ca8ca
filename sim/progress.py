"""What a schedule search tells whoever watches it: facts, never drawing.

The search (sim/explore.py) is a library below the command line: it says how far it got through
a Reporter, and the command (deploy/explore_cmd.py) draws that (deploy/progress.py: a bar on a
terminal, a line every few seconds otherwise). A search nobody watches gets `Silent`.

Rules: `begin(title, total)` once when the search starts (total: the schedules it may run, None
if unknown); `update(facts)` whenever the facts change; `say(text)` for a line of its own (a
race found, a schedule that failed, an interruption); `close()` once when it ends, interrupted
or not. A reporter must not raise and must not block the search.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SearchProgress:
    schedules: int                                          # schedules run so far (resumed ones included)
    rate: float                                             # schedules per second, over the search's time
    races: dict[str, int] = field(default_factory=dict)    # schedules that caught each kind so far
    note: str = ""                                          # the search's own: subtrees done, cut by sleep sets


class Reporter(Protocol):
    def begin(self, title: str, total: int | None) -> None: ...
    def update(self, facts: SearchProgress) -> None: ...
    def say(self, text: str) -> None: ...
    def close(self) -> None: ...


class Silent:
    """Nobody watching."""

    def begin(self, title: str, total: int | None) -> None:
        pass

    def update(self, facts: SearchProgress) -> None:
        pass

    def say(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass
