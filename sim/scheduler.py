"""The one source of nondeterminism of a simulated run: every choice is the Scheduler's, and
every choice it makes is appended to its decision log.

Rules:
- A simulated run asks for exactly four kinds of decision, in an order fixed by the run itself:
    step    which of n >= 2 enabled actors runs next (sim/world.py asks; one enabled actor is no
            choice and is not logged);        entry ("s", n, k), 0 <= k < n
    random  a float in [0, 1) from a stream;   entry ("r", stream, x)
    chance  a yes/no with probability p;       entry ("p", stream, 0 | 1)
    choice  one of n items from a stream;      entry ("c", stream, k, n)
  `stream` is an index into `Scheduler.streams`, the names of the generators in the order the
  run first used them (`net:exporter`, `workload:1:0`, `msgfault:0:exporter`, ...).
  Some streams are the simulator's own, not a shell's generator: `move:exporter` (which of the
  memory manager's moves a pressure tick wants, `pick`), `pressure:exporter` (how long a tick
  waits), `late:<importer>` and `dma-late:<importer>` (how late its refill and DMA timers fire,
  `fixed`); their defaults are fixed, not draws: what a real run does, or on time (sim/driver.py
  steer_moves, steer_importer); `device:stall:<importer>` (whether a DMA engine's chunk stalls past
  one of the exporter's timers, `decide`: default no; asked only when stalls are on, sim/world.py).
- Draws come from generators the shells got from `Scheduler.rng(stream, seed)` (runtime/rng.py).
  Each keeps the random.Random a real run would have made with the same seed string, and draws
  from it on every call: that value is the *default*, so a simulated run without a guide draws
  what a real run draws for the same sequence of calls (the same seeding semantics), and a
  guided run keeps every stream aligned with the unguided one.
- Who decides, for every decision in turn: the guide, if there is one and it suggests a valid
  value; otherwise the chooser (`Chooser`: steps uniformly at random from the seed's own
  generator, draws by their defaults). `from_guide` and `made` count the two.
- The log is the schedule: the same options, seed and sources with a guide that replays a log
  (`ListGuide`) give the same decisions and the same history, byte for byte.

For the schedule search of issue 14: a Chooser subclass decides steps (PCT: by priorities of the
named actors) and may override draws (`chance` with its p, `choice` with its n, `random`);
a Guide replays a prefix of a log (shrinking: `ListGuide(..., strict=False)` takes a recorded
value while it is still valid, falls back to the chooser after). Everything is in memory unless
the log is given a file to stream to.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import IO, Any, Callable, NamedTuple, Protocol, Sequence, TypeVar

import orjson

T = TypeVar("T")
STEP, RANDOM, CHANCE, CHOICE = "s", "r", "p", "c"
KINDS = {STEP: "a step", RANDOM: "a random draw", CHANCE: "a chance draw", CHOICE: "a choice"}


class ScheduleDiverged(Exception):
    """The run asked for a decision the schedule being replayed does not have there."""


class Request(NamedTuple):
    """One decision to make, as a guide sees it."""

    index: int                      # its position in the log
    kind: str                       # STEP, RANDOM, CHANCE or CHOICE
    stream: str                     # the stream's name ("" for a step)
    n: int | None                   # options (step, choice)
    options: Sequence[str] | None   # a step's enabled actors, in the world's fixed order; a pick's or
                                    # a choice's options (str of each item)
    p: float | None                 # a chance's probability
    default: Any                    # what the chooser would take
    now: int = 0                    # the virtual time it is asked at (the world's clock)


class Guide(Protocol):
    def suggest(self, request: Request) -> Any | None:
        """A value for the decision, or None to leave it to the chooser."""


class Chooser:
    """Makes every decision no guide made. This one: a step uniformly at random from its own
    generator (seeded `<seed>:steps`), every draw its default."""

    def __init__(self, seed: int) -> None:
        self._steps = random.Random(f"{seed}:steps")

    def step(self, index: int, options: Sequence[str]) -> int:
        return self._steps.randrange(len(options))

    def random(self, index: int, stream: str, default: float) -> float:
        return default

    def chance(self, index: int, stream: str, p: float, default: bool) -> bool:
        return default

    def choice(self, index: int, stream: str, n: int, default: int) -> int:
        return default


class DecisionLog:
    """The decisions in order: kept in memory (`entries`), or streamed to a file as JSON array
    elements (`stream_to`, for long runs: memory stays flat), or both."""

    def __init__(self, keep: bool = True, stream_to: IO[bytes] | None = None) -> None:
        self.entries: list[tuple] | None = [] if keep else None
        self._file = stream_to
        self.count = 0

    def append(self, entry: tuple) -> None:
        if self.entries is not None:
            self.entries.append(entry)
        if self._file is not None:
            self._file.write((b",\n" if self.count else b"\n") + orjson.dumps(entry))
        self.count += 1

    def __len__(self) -> int:
        return self.count


class SimRandom:
    """A generator whose every draw is a decision of the scheduler (runtime/rng.RngLike)."""

    __slots__ = ("_sched", "_sid", "_base")

    def __init__(self, sched: "Scheduler", sid: int, base: random.Random) -> None:
        self._sched, self._sid, self._base = sched, sid, base

    def random(self) -> float:
        return self._sched._random(self._sid, self._base.random())

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.random()   # as random.Random.uniform does

    def chance(self, p: float) -> bool:
        return self._sched._chance(self._sid, p, self._base.random() < p)

    def choice(self, seq: Sequence[T]) -> T:
        if not seq:
            raise IndexError("cannot choose from an empty sequence")
        n = len(seq)
        options = tuple(map(str, seq)) if self._sched.guide is not None else None   # what a guide sees
        return seq[self._sched._choice(self._sid, n, self._base.randrange(n), options)]


@dataclass
class Counts:
    from_guide: int = 0
    made: int = 0


class Scheduler:
    def __init__(self, seed: int, *, chooser: Chooser | None = None, guide: Guide | None = None,
                 log: DecisionLog | None = None) -> None:
        self.seed = seed
        self.chooser = chooser or Chooser(seed)
        self.guide = guide
        self.log = log if log is not None else DecisionLog()
        self.streams: list[str] = []
        self._sids: dict[str, int] = {}
        self.counts = Counts()
        self._append = self.log.append
        self.clock: Callable[[], int] = lambda: 0     # the world's virtual clock (sim/world.py sets it)

    # ------------------------------------------------------------------ generators

    def rng(self, stream: str, seed: str) -> SimRandom:
        """runtime/rng.MakeRng: the generator for one purpose, a random.Random(seed) behind it.
        Asked for again (a restarted importer makes its message faults anew, as a real one does),
        it is a fresh generator with the same seed, logged as stream `<stream>#2`, `#3`, ..."""
        name, n = stream, 1
        while name in self._sids:
            n += 1
            name = f"{stream}#{n}"
        self._sids[name] = sid = len(self.streams)
        self.streams.append(name)
        return SimRandom(self, sid, random.Random(seed))

    def _sid(self, stream: str) -> int:
        sid = self._sids.get(stream)
        if sid is None:
            self._sids[stream] = sid = len(self.streams)
            self.streams.append(stream)
        return sid

    # ------------------------------------------------------------------ decisions

    def pick(self, stream: str, options: Sequence[str]) -> int:
        """A choice of the simulator's own, where a real run always takes the first option (the
        memory manager's move: sim/driver.py steer_moves): a `choice` on `stream` whose default is
        0, not a draw; the guide sees the options. One option or none is no choice, not logged."""
        if len(options) < 2:
            return 0
        return self._choice(self._sid(stream), len(options), 0, options)

    def fixed(self, stream: str, default: float) -> float:
        """A `random` of the simulator's own whose default is `default`, not a draw (the pressure
        tick's wait, a refill's lateness: sim/driver.py), so an unguided run is what it was."""
        return self._random(self._sid(stream), default)

    def decide(self, stream: str) -> bool:
        """A yes/no of the simulator's own whose default is no, not a draw (a device stall:
        sim/world.py): a `chance` on `stream` the guide and the chooser see with p = 0."""
        return self._chance(self._sid(stream), 0.0, False)

    def _ask(self, kind: str, sid: int, n: int | None, options: Sequence[str] | None,
             p: float | None, default: Any) -> Any | None:
        stream = self.streams[sid] if sid >= 0 else ""
        value = self.guide.suggest(Request(len(self.log), kind, stream, n, options, p, default, self.clock()))  # type: ignore[union-attr]
        if value is None:
            return None
        if kind in (STEP, CHOICE):
            ok = type(value) is int and 0 <= value < n  # type: ignore[operator]
        elif kind == CHANCE:
            ok = type(value) is bool
        else:
            ok = type(value) is float and 0.0 <= value < 1.0
        return value if ok else None

    def step(self, options: Sequence[str]) -> int:
        """Which of the enabled actors (two or more, in the world's fixed order) runs next."""
        n = len(options)
        k = None
        if self.guide is not None:
            k = self._ask(STEP, -1, n, options, None, None)
        if k is None:
            k = self.chooser.step(len(self.log), options)
            self.counts.made += 1
        else:
            self.counts.from_guide += 1
        self._append((STEP, n, k))
        return k

    def _random(self, sid: int, default: float) -> float:
        x = None
        if self.guide is not None:
            x = self._ask(RANDOM, sid, None, None, None, default)
        if x is None:
            x = self.chooser.random(len(self.log), self.streams[sid], default)
            self.counts.made += 1
        else:
            self.counts.from_guide += 1
        self._append((RANDOM, sid, x))
        return x

    def _chance(self, sid: int, p: float, default: bool) -> bool:
        b = None
        if self.guide is not None:
            b = self._ask(CHANCE, sid, None, None, p, default)
        if b is None:
            b = self.chooser.chance(len(self.log), self.streams[sid], p, default)
            self.counts.made += 1
        else:
            self.counts.from_guide += 1
        self._append((CHANCE, sid, 1 if b else 0))
        return b

    def _choice(self, sid: int, n: int, default: int, options: Sequence[str] | None = None) -> int:
        k = None
        if self.guide is not None:
            k = self._ask(CHOICE, sid, n, options, None, default)
        if k is None:
            k = self.chooser.choice(len(self.log), self.streams[sid], n, default)
            self.counts.made += 1
        else:
            self.counts.from_guide += 1
        self._append((CHOICE, sid, k, n))
        return k


class ListGuide:
    """Replays a decision log. strict: any mismatch (another kind, stream or option count at
    that position, or a log that ends early) raises ScheduleDiverged naming the position;
    otherwise a mismatch, or the end of the log, leaves the decision to the chooser."""

    def __init__(self, entries: Sequence[Sequence[Any]], streams: Sequence[str], *, strict: bool = True) -> None:
        self.entries = entries
        self.streams = streams
        self.strict = strict
        self.mismatches = 0

    def _refuse(self, request: Request, why: str) -> None:
        if self.strict:
            raise ScheduleDiverged(f"decision {request.index}: the run asked for {KINDS[request.kind]}"
                                   + (f" of {request.stream}" if request.stream else "")
                                   + (f" among {request.n}" if request.n is not None else "")
                                   + f", but {why}")
        self.mismatches += 1

    def suggest(self, request: Request) -> Any | None:
        if request.index >= len(self.entries):
            self._refuse(request, f"the schedule has only {len(self.entries)} decisions")
            return None
        e = self.entries[request.index]
        kind = e[0]
        if kind != request.kind:
            self._refuse(request, f"the schedule has {KINDS.get(kind, repr(kind))} there")
            return None
        if kind == STEP:
            if e[1] != request.n:
                self._refuse(request, f"the schedule chose among {e[1]} there")
                return None
            return e[2]
        stream = self.streams[e[1]]
        if stream != request.stream:
            self._refuse(request, f"the schedule drew from {stream} there")
            return None
        if kind == CHOICE:
            if e[3] != request.n:
                self._refuse(request, f"the schedule chose among {e[3]} there")
                return None
            return e[2]
        if kind == CHANCE:
            return bool(e[2])
        return float(e[2])
