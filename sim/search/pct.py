"""pct: Probabilistic Concurrency Testing (Burckhardt, Kothari, Musuvathi, Nagarakatte, ASPLOS 2010).

Rules (the paper's Algorithm 1 over the simulator's step decisions):
- The *actors* are the names the world offers at a step decision: each service's loop, its DMA
  engine or copy engine, the driver, each link between two services (chosen delivery), and time
  itself (WAIT: let time pass while frames are in flight). Each gets a random priority above the
  depth D when it is first seen (all distinct).
- D - 1 change points are drawn uniformly without repetition among the steps 1..k, where k is the
  number of step decisions a schedule of this configuration makes inside its window (the first
  schedule's, raised whenever a longer one is seen, as Coyote and Shuttle do).
- At every step decision the enabled actor with the highest priority runs. The one that runs the
  i-th change point's step then drops to priority i, below every actor that has not dropped.
- Faults that --fault allows fire with their probability `p`, drawn from the schedule's generator.
- A device's stall past an exporter timer (sim/world.py; unless --no-stalls) is a fault of
  probability STALL_P (sim/search/trial.py), drawn from the same generator.
Guarantee (the paper's theorem): a race that needs D ordering constraints among those k steps,
with n actors, is found with probability at least 1 / (n * k^(D-1)) per schedule. With D = 1
there is no change point: each schedule is one fixed random priority order.
"""

from __future__ import annotations

import random
from typing import Sequence

from sim.search.trial import SearchChooser


def guarantee(n: int, k: int, depth: int) -> float:
    return 1.0 / (max(1, n) * max(1, k) ** (depth - 1))


class PctChooser(SearchChooser):
    def __init__(self, search_seed: int, schedule: int, depth: int, k: int) -> None:
        super().__init__(search_seed)
        self.rng = random.Random(f"{search_seed}:{schedule}:pct")
        self.depth = depth
        self.k = max(1, k)
        points = self.rng.sample(range(1, self.k + 1), min(depth - 1, self.k))
        self.change: dict[int, int] = {step: i for i, step in enumerate(sorted(points), 1)}
        self.priority: dict[str, float] = {}
        self.steps = 0

    def _priority(self, name: str) -> float:
        p = self.priority.get(name)
        if p is None:
            p = self.priority[name] = self.depth + self.rng.random()    # distinct, above every drop
        return p

    def choose_step(self, index: int, options: Sequence[str]) -> int:
        best = max(range(len(options)), key=lambda i: self._priority(options[i]))
        self.steps += 1
        drop = self.change.get(self.steps)
        if drop is not None:
            self.priority[options[best]] = float(drop)
        return best

    def choose_fault(self, index: int, stream: str, p: float, default: bool) -> bool:
        return self.rng.random() < p
