"""Where the shells' random numbers come from: one generator per purpose, made by a factory.

Rules:
- Every draw a shell makes (which message a fault hits, which buffer a job uses, how long it
  runs) comes from a generator it got from a `MakeRng`, named by its purpose (the *stream*, e.g.
  `msgfault:0:exporter`) and seeded by a string built from the run's seed (e.g. `7:0:exporter`).
- A generator offers exactly what the shells use: `random()`, `uniform(a, b)`, `choice(seq)` and
  `chance(p)` (a yes with probability p: `random() < p`).
- Real runs use `real_rng`: `random.Random(seed)`, so the same seed gives the same draws for the
  same sequence of calls. The simulator passes its own factory (sim/scheduler.py), whose
  generators route every draw through its Scheduler: the value a real run would draw is the
  default, and every draw is a decision in the schedule's log.
"""

from __future__ import annotations

import random
from typing import Callable, Protocol, Sequence, TypeVar

T = TypeVar("T")


class RngLike(Protocol):
    def random(self) -> float: ...
    def uniform(self, a: float, b: float) -> float: ...
    def choice(self, seq: Sequence[T]) -> T: ...
    def chance(self, p: float) -> bool: ...


MakeRng = Callable[[str, str], RngLike]   # (stream, seed string) -> generator


class Rng(random.Random):
    """The real runs' generator: random.Random plus chance(p)."""

    def chance(self, p: float) -> bool:
        return self.random() < p


def real_rng(stream: str, seed: str) -> Rng:
    return Rng(seed)
