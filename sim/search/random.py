"""random: a seeded random walk over the runnable steps.

At every step decision inside the window (sim/search/trial.py) one option is taken uniformly at
random: an enabled actor, a link delivering its oldest frame, or letting time pass while frames
are in flight (sim/world.py WAIT). Each fault that --fault allows fires with its probability `p`.
A device stalls a chunk past each pending exporter timer with probability STALL_P (0.1, sim/search/
trial.py), drawn from the same generator (unless --no-stalls).
Schedule i of a search seeded N walks with its own generator (seeded "N:i:walk"), so schedule i
is the same whatever ran before it, on whichever machine: a search is resumable and spreads over
workers by schedule number.
"""

from __future__ import annotations

import random
from typing import Sequence

from sim.search.trial import SearchChooser


class RandomChooser(SearchChooser):
    def __init__(self, search_seed: int, schedule: int) -> None:
        super().__init__(search_seed)
        self.rng = random.Random(f"{search_seed}:{schedule}:walk")

    def choose_step(self, index: int, options: Sequence[str]) -> int:
        return self.rng.randrange(len(options))

    def choose_fault(self, index: int, stream: str, p: float, default: bool) -> bool:
        return self.rng.random() < p
