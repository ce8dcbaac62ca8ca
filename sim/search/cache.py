"""cache: the exhaustive search's state cache (`explore --state-cache`): a choice point whose state
was explored before, with as much bound left and no more asleep, is not explored again.

What a state is. At the first fresh step choice point of each instant inside the window
(sim/search/trial.py; one key an instant: about 2.3 ms, written by statecache.py's Keyer), `key`
hashes:
- the simulated world, as sim/search/statecache.py `Canon` walks it and `Keyer` pickles it (both
  protocol halves, the shells, the engines, the channels and frames in flight, the memory's
  bytes, the fence table, pending timers with their tie order, and now, the driver, the
  generators), and the
  search's own window (open, closed, DMA jobs running) and, under late-frames, the frames held;
- the checker's state: checker/oracle.py's Oracle, fed the merged history's lines written before
  this instant (in checker/history.py's order: time, file name, line), walked whole by the same
  `Canon` (every attribute: live jobs, attachments, generations, wait-for graph, liveness items,
  counters, histograms; times as offsets), with the races and findings it reported so far;
- each service's lines written at this instant, as bytes, in order.
Why that is the whole future. The world's future steps run callbacks the world holds and read only
what those reach (statecache.py: that walk is the world's state). The verdicts of a schedule are
the Oracle's on the merged history, which is the lines before this instant, then the lines of this
instant (sorted by file name, then in order: those written so far are in the key, the rest are the
future's), then the future's. The Oracle is a deterministic function of its state and the lines it
is given, so two choice points with equal keys have the same continuations, and each continuation
gets the same verdicts (as times are offsets, a hit at another instant would see every future time
shifted by the same amount; the driver holds the workload's end as an absolute time, so in practice
hits are at one instant). Two paths meet here when they ran the same steps in another order and
the checker cannot tell: three importers' answers reaching the exporter at one instant, in any of
six orders, leave one world and one checker state (docs/results.md).
What is cut, and why nothing is lost. A hit is a fresh choice point whose key was recorded at a
choice point that is not on the current path (so its subtree is explored whole) with at least as
much bound left and no more options asleep (Godefroid's sleep sets with state matching: every
schedule this visit must explore from here was explored from there). The schedule ends there,
counted as cut by the state cache. With dpor (sim/search/dpor.py), the cut subtree's steps at
this instant could race with steps of the path above (Yang, Chen, Gopalakrishnan and Kirby, SPIN
2008), and which they are is not known: every choice point of this instant on the path is then
explored in full (dpor.py `whole_instant`); steps of later instants cannot race with the path
(dpor reverses races only within an instant: a clock event is a barrier).
What is not cached: states before the window opens (every schedule shares them), states at an
instant's later choice points, and a resumed search's earlier states (the cache lives in the
search's process: a resumed search starts it empty).
Across workers (--jobs, --scheduler: sim/explore.py run_subtree): each worker process keeps the
states of the subtrees it finished for the rest of the search (one search's, by its scope), and a
subtree's own are consulted as it runs; a subtree stopped at a race commits nothing (its states'
subtrees were not explored whole). A hit's conservative backtrack points on the subtree's prefix
go to the coordinator as its races' do. With --jobs the workers on this machine also pass each
other the states they finished (`SharedStates`, a file of the search's directory); with
--scheduler each keeps its own. A state is a hit only once its subtree was finished, and
subtrees run side by side, so the counts (schedules, cut) depend on how the tree was dealt out
and on timing; the verdict does not.
tests/test_state_cache.py checks it against brute force: on configurations small enough, the
cached search reports the same races and the same end states (the world and the checker's state
at the end of each schedule) as `--reduction none` without a cache.
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgpack

from sim.run import _t_of
from sim.search.statecache import Keyer, window_of


class Judge:
    """The checker fed, within one schedule, the lines written before the current instant."""

    def __init__(self, sinks: dict[str, Any]) -> None:
        from checker.oracle import Oracle
        self.sinks = sinks                    # service -> its in-memory sink (trial.py), filled as they start
        self.fed: dict[str, int] = {}         # service -> lines given to the oracle
        self.found: list[Any] = []            # what it reported, in order
        self.oracle = Oracle(on_race=lambda r: self.found.append(("race", r.kind, r.job.buffer, r.job.svc, r.job.job)),
                             on_finding=lambda what, svc, t, f: self.found.append((what, svc, t, sorted(f.items(), key=str))))

    def catch_up(self, now: int) -> list[tuple[str, list[bytes]]]:
        """Give the oracle every line before `now`, merged; the lines at `now`, by service."""
        items: list[tuple[int, str, int, bytes]] = []
        at_now: list[tuple[str, list[bytes]]] = []
        for svc, sink in self.sinks.items():
            lines = sink.lines
            n = self.fed.get(svc, 0)
            file = f"{svc}.jsonl"
            while n < len(lines) and _t_of(lines[n]) < now:
                items.append((_t_of(lines[n]), file, n, lines[n]))
                n += 1
            self.fed[svc] = n
            if n < len(lines):
                at_now.append((file, lines[n:]))
        if items:
            items.sort()
            self.oracle.run([it[3] for it in items])
        at_now.sort()
        return at_now


class StateCache:
    """The states explored so far: key -> [(bound left, options asleep, the choice point)].
    `under`: the states of subtrees this process explored whole before (a worker of --jobs:
    sim/explore.py run_subtree), consulted as this cache's own; `commit` adds this one's to it."""

    def __init__(self, under: "StateCache | None" = None) -> None:
        self.under = under
        self.seen: dict[bytes, list[tuple[int, frozenset, Any]]] = {}
        self.points = 0                       # fresh choice points hashed
        self.hits = 0                         # of them, cut
        self.seconds = 0.0                    # spent hashing

    def visit(self, world: Any, chooser: Any, judge: Judge, budget: int, asleep: frozenset,
              path: list[Any]) -> bytes | None:
        """At a fresh step choice point: None when it is a hit (cut it), else its key, to `add`
        once its choice point exists."""
        began = time.perf_counter()
        key = self.key(world, chooser, judge, judge.catch_up(world.now))
        self.seconds += time.perf_counter() - began
        return None if self.hit(key, budget, asleep, path) else key

    def key(self, world: Any, chooser: Any, judge: Judge, at_now: list[tuple[str, list[bytes]]]) -> bytes:
        h = Keyer(world).digest(world, window_of(chooser), "checker", judge.oracle, judge.found)
        for file, lines in at_now:
            h.update(b"%s %d\n" % (file.encode(), len(lines)))
            for line in lines:
                h.update(line)
        self.points += 1
        return h.digest()

    def hit(self, key: bytes, budget: int, asleep: frozenset, path: list[Any]) -> bool:
        on_path = {id(n) for n in path}
        for seen in (self.seen, self.under.seen if self.under is not None else {}):
            for b, s, first in seen.get(key, ()):
                if b >= budget and s <= asleep and id(first) not in on_path:
                    self.hits += 1
                    return True
        return False

    def commit(self, shared: "SharedStates | None" = None) -> None:
        """This cache's states into `under`'s, and to the other workers through `shared`: their
        subtrees were explored whole."""
        if shared is not None:
            shared.publish(self.seen)
        if self.under is not None:
            for key, entries in self.seen.items():
                self.under.seen.setdefault(key, []).extend(entries)
            self.seen.clear()

    def add(self, key: bytes, budget: int, asleep: frozenset, node: Any) -> None:
        self.seen.setdefault(key, []).append((budget, asleep, node))

    def report(self) -> dict[str, Any]:
        return {"states": len(self.seen), "points": self.points, "hits": self.hits,
                "key_seconds": round(self.seconds, 3)}


class SharedStates:
    """The states every worker of one search on this machine explored whole (`--jobs`), in a file
    of the search's directory that each appends to and reads on: a worker's own cache then holds
    the other workers' states too, as one process's holds all of them, and a subtree dealt to
    one worker is cut where another explored the state. A record is one write of the committed
    states (a length, then msgpack of [writer's pid, [[key, bound left, options asleep]]]), so
    a reader takes whole records only; a state read from another worker has no choice point in
    this process (a hit needs it off the current path: a state another worker finished is).
    Made (empty) by the search at its start and removed at its end (sim/explore.py); a worker
    still running after that writes nothing."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0

    def publish(self, seen: dict[bytes, list[tuple[int, frozenset, Any]]]) -> None:
        if not seen:
            return
        blob = msgpack.packb([os.getpid(), [[k, b, sorted(a)] for k, entries in seen.items() for b, a, _ in entries]])
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            return                                # the search is over (it removes the file)
        try:
            os.write(fd, len(blob).to_bytes(4, "big") + blob)
        finally:
            os.close(fd)

    def fetch(self, into: StateCache) -> int:
        """The records written since the last fetch, by other workers, into `into`; how many states."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        n = at = 0
        while at + 4 <= len(data):
            size = int.from_bytes(data[at:at + 4], "big")
            if at + 4 + size > len(data):
                break                             # being written: the next fetch takes it
            try:
                pid, states = msgpack.unpackb(data[at + 4:at + 4 + size])
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                raise ValueError(f"{self.path}: byte {self.offset + at} is not a record of states ({exc})") from None
            at += 4 + size
            if pid == os.getpid():
                continue
            for key, budget, asleep in states:
                into.seen.setdefault(key, []).append((budget, frozenset(asleep), None))
                n += 1
        self.offset += at
        return n
