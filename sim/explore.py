"""dmabuf-emu explore: search the schedules of one small configuration for races, on one machine
or a Dask cluster, keep each race as a replayable run directory, and shrink the first.

Rules:
- A search (`Spec`) is a configuration (sim/search/trial.py `Config`: the run's parameters,
  whose seed fixes the workload, and the simulator's options: chosen delivery and the job and
  move budgets), a search kind (random, pct, exhaustive: sim/search/), its seed, PCT's depth and
  the exhaustive bound. Schedule i of a random or PCT search is a function of (spec, i) alone; an
  exhaustive search's schedules come level by level (bound 0, 1, ...), in depth-first order
  within a level. So a search is resumable and splits into work units: ranges of schedule
  numbers (random, pct) or a level's subtrees (exhaustive: sim/search/subtrees.py walks the tree's
  top as one process does; a DPOR choice point waits for what the races below it ask for while
  the walk goes on elsewhere, so the workers together make the one-process search: the same
  schedules, numbers and verdict), run
  in this process (--jobs 1), in worker
  processes (--jobs J) or as Dask tasks (--scheduler), all through sim/executor.py.
- It stops at the first race (unless --all), at --schedules or --time, when an exhaustive search
  has nothing left, or on Ctrl-C. With several workers the first race is the one with the lowest
  schedule number: work below it is finished before the search stops, so the answer is the one a
  single process gives.
- Races are the checker's: every schedule's history is judged in memory (nothing is written for
  one that did not race). A deadlock the checker finds (its wait-for graph) is a catch too, of
  kind "deadlock", and so is a revocation that ended its unmap wait with a mapping live, kind
  "revoke_incomplete", and so is something begun that was still open when the drain ended, kind
  "stuck" (sim/search/trial.py judge; checker/findings.py CATCHES): saved, counted and shrunk as
  a race is. The schedule of each new race (a kind on a buffer not seen before, at
  most MAX_SAVED) becomes DIR/races/K/, a simulated run directory written by running the schedule
  again with every decision taken from it (sim/run.py simulate, strict ListGuide) and checked to
  give the same history; `dmabuf-emu replay DIR/races/K` reproduces it.
- The first race is shrunk (sim/shrink.py) unless --no-shrink: DIR/shrunk/ is its shrunk
  schedule as a run directory, DIR/witness.md explains it (the checker's write_witness_md),
  DIR/trace.json is its Perfetto trace.
- How far it got goes to a Reporter (sim/progress.py: facts; the command line draws them).
- DIR/explore.json says what was done (FIELDS below). DIR/explore.state.json holds what a rerun
  of the same command needs to go on where this one stopped (written every CHECKPOINT_S and at
  the end); a rerun with other settings is refused.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from checker.explain import listed_witnesses, write_witness_md
from checker.findings import CATCHES
from checker.report_md import finding_lines
from runtime.runparams import from_mapping
from sim.executor import Pool, executor
from sim.options import SimOptions
from sim.progress import Reporter, SearchProgress, Silent
from sim.search import snapshot
from sim.search.cache import SharedStates, StateCache
from sim.search.dpor import DPOR, NONE
from sim.search.exhaustive import PREEMPTIONS, Diverged, backtrack, node_from_dict, node_to_dict
from sim.search.pct import PctChooser, guarantee
from sim.search.random import RandomChooser
from sim.search.subtrees import Subtrees, Task
from sim.search.trial import FAULT_DEVIATION, Config, SearchChooser, Trial, judge, run_trial, write_run

SEARCHES = ("random", "pct", "exhaustive")
DEFAULT_SCHEDULES = 10_000     # random and pct, when neither --schedules nor --time is given
CHUNK = 20                      # schedules per work unit (random, pct)
MAX_SAVED = 20                  # race directories kept
CHECKPOINT_S = 2.0
STOP_POLL_S = 1.0               # exhaustive across workers: how often a stop (--time, Ctrl-C) is looked for
SPLIT_DEPTH = 10                # exhaustive across workers: subtrees below about this many choice points (split_at),
SPLIT_REACH = 6                 # and this many more for each unit of the level's bound a prefix has not spent
MAX_EXHAUSTIVE = 1_000_000      # estimated schedules past which exhaustive refuses to start
PROBE_S = 3.0                   # --bound none: CPU seconds of levels 0, 1, ... run to estimate the whole space
EXIT_OK, EXIT_RACE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
FIELDS = ("strategy", "search", "schedules", "seconds", "schedules_per_s", "distinct_states",
          "distinct_histories", "races", "first_race_schedule", "exhausted", "bound", "bound_kind",
          "depth", "seed", "blocked", "pct", "saved", "shrunk", "interrupted", "complete", "config", "devices",
          "reduction", "traces", "cut_by", "snapshots", "states_cached", "level")
# witness.md's title for a catch that is a checker finding, not a race (one for each of CATCHES)
CATCH_TITLES = {"deadlock": "Deadlock", "revoke_incomplete": "Revocation incomplete (revoke_incomplete)",
                "refcount_warning": "Refcount warning (refcount_warning)",
                "potential_deadlock": "Potential deadlock, as lockdep reports it (potential_deadlock)",
                "stuck": "Stuck: no progress by the end of the drain (stuck)"}
assert set(CATCH_TITLES) == set(CATCHES), f"CATCH_TITLES must name every one of checker/findings.py CATCHES {CATCHES}"


def bound_text(bound: int | None) -> str:
    return "none" if bound is None else str(bound)


class ExploreError(ValueError):
    """A search that cannot start as asked: one line saying why."""


# ---------------------------------------------------------------------------------- the search

@dataclass(frozen=True)
class Spec:
    config: Config
    search: str
    seed: int = 1
    depth: int = 2
    bound: int | None = 2                    # None: no bound (exhaustive deepens until nothing is cut)
    bound_kind: str = PREEMPTIONS
    reduction: str = DPOR                    # exhaustive: sim/search/dpor.py REDUCTIONS
    state_cache: bool = False                # exhaustive: sim/search/cache.py (each worker its own)

    def as_dict(self) -> dict[str, Any]:
        return {"config": self.config.as_dict(), "search": self.search, "seed": self.seed, "depth": self.depth,
                "bound": self.bound, "bound_kind": self.bound_kind, "reduction": self.reduction,
                "state_cache": self.state_cache}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Spec":
        c = d["config"]
        return cls(Config(from_mapping(c["params"], "explore spec"), SimOptions(**c["sim"])), d["search"], d["seed"],
                   d["depth"], d["bound"], d["bound_kind"], d.get("reduction", DPOR), d.get("state_cache", False))

    def key(self) -> str:
        """What makes two searches the same search (the limits do not)."""
        d = self.as_dict()
        if self.search != "pct":
            d.pop("depth")
        if self.search != "exhaustive":
            d.pop("bound"), d.pop("bound_kind"), d.pop("reduction")
        else:
            d.pop("seed")
        if not self.state_cache:
            d.pop("state_cache")               # a search without it keeps the key it had before it existed
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Limits:
    schedules: int | None = None
    seconds: float | None = None
    all: bool = False


def default_trial(config: Config) -> tuple[Trial, SearchChooser]:
    chooser = SearchChooser(0)
    return run_trial(config, chooser), chooser


@dataclass(frozen=True)
class Estimate:
    """What running the first levels of an unbounded exhaustive search for a few seconds says
    about the whole space (`probe`)."""

    finished: bool                          # the probe explored the whole space
    counts: tuple[int, ...]                 # schedules of each level it completed (0, 1, ...)
    partial: int                            # schedules of the level it was in when time ran out
    per_level: tuple[float, ...]            # schedules of each level 0 .. the deepest, measured then estimated
    runs_per_s: float                       # schedules run (cheaper and blocked ones too) per CPU second

    @property
    def schedules(self) -> float:
        return sum(self.per_level)

    def runs(self, bound: int) -> float:
        """Schedules run to finish levels 0 .. bound (level d runs the cheaper ones again)."""
        return sum(sum(self.per_level[:d + 1]) for d in range(min(bound, len(self.per_level) - 1) + 1))

    def fits(self, runs: float) -> int | None:
        """The deepest bound a search finishes within `runs` schedules run."""
        ok = [b for b in range(len(self.per_level)) if self.runs(b) <= runs]
        return max(ok) if ok else None


def probe(spec: Spec, points: int, seconds: float | None = None) -> Estimate:
    """Run an unbounded exhaustive search (sim/search/dpor.py explore, level by level) for
    `seconds` of CPU (PROBE_S) and extrapolate. `points` (P): the choice points that cost on the
    default schedule (where time may pass, faults), taken as the deepest level. Past the last
    level measured, k with n_k schedules, level j is n_k * C(P, j) / C(P, k) * a^(j - k): the
    ways to place j costs among P points, as the bounded check counts them
    (deploy/explore_cmd.py estimate), times a per-cost factor `a` fitted to the last two
    levels measured (one level measured: a = 1; none: the unfinished level 0's count, a lower
    bound). Move-notify with 1 importer and 1 move: 16,638 estimated by brute force's first 10
    seconds, 14,546 in fact."""
    from math import comb
    from sim.search import dpor
    seconds = PROBE_S if seconds is None else seconds
    counts: list[int] = []
    n = runs = 0
    began = time.process_time()
    gen = dpor.explore(spec.config, None, reduction=spec.reduction, kind=spec.bound_kind)
    finished = True
    try:
        for trial, _, level, cost in gen:
            runs += 1
            if level.bound > len(counts):
                counts.append(n)
                n = 0
            n += not trial.blocked and cost == level.bound
            if time.process_time() - began >= seconds:
                finished = False
                break
    finally:
        gen.close()
    rate = runs / max(time.process_time() - began, 1e-6)
    if finished:
        counts.append(n)
        return Estimate(True, tuple(counts), 0, tuple(map(float, counts)), rate)
    k = len(counts) - 1
    top = max(points, k + 1)
    if k < 0:
        per = tuple(float(max(n, 1) * comb(top, j)) for j in range(top + 1))
    else:
        a = 1.0
        if k >= 1 and counts[k - 1] > 0 and counts[k] > 0:
            a = counts[k] / counts[k - 1] * comb(top, k - 1) / comb(top, k)
        per = tuple(float(counts[j]) if j <= k else counts[k] * comb(top, j) / comb(top, k) * a ** (j - k)
                    for j in range(top + 1))
    return Estimate(False, tuple(counts), n, per, rate)


def chooser_for(spec: Spec, n: int, k: int) -> SearchChooser:
    if spec.search == "random":
        return RandomChooser(spec.seed, n)
    return PctChooser(spec.seed, n, spec.depth, k)


def summary(n: int, t: Trial) -> dict[str, Any]:
    """What a worker sends back about one schedule (the decisions only if it raced or failed)."""
    d: dict[str, Any] = {"n": n, "races": [[r.kind, r.buffer, r.svc, r.job] for r in t.races],
                         "sha": t.history_sha256[:16], "seconds": t.seconds, "error": t.error}
    if t.races or t.error:
        d["entries"], d["streams"] = t.entries, t.streams
    return d


def run_schedules(spec_d: dict[str, Any], first: int, count: int, k: int, stop_at_race: bool) -> list[dict[str, Any]]:
    """A work unit of a random or PCT search: schedules first .. first + count - 1."""
    spec = Spec.from_dict(spec_d)
    out = []
    for n in range(first, first + count):
        s = summary(n, run_trial(spec.config, chooser_for(spec, n, k)))
        out.append(s)
        if s["races"] and stop_at_race:
            break
    return out


# --state-cache across workers: one search's states, in each worker process (sim/search/cache.py)
_WORKER_CACHE: dict[str, tuple[StateCache, SharedStates | None]] = {}
_SEARCHES = itertools.count()            # the searches this process coordinated (a cache scope each)
SHARED_STATES = ".state-cache.bin"      # in the search's directory, while a --jobs search with --state-cache runs


def _worker_cache(scope: str | None, shared: str | None = None) -> tuple[StateCache | None, SharedStates | None]:
    """This process's states of the search `scope` (None: no cache), with what the other workers
    wrote to `shared` since it last looked (sim/search/cache.py SharedStates); another search's
    are dropped."""
    if scope is None:
        return None, None
    if scope not in _WORKER_CACHE:
        _WORKER_CACHE.clear()
        _WORKER_CACHE[scope] = (StateCache(), SharedStates(shared) if shared is not None else None)
    under, states = _WORKER_CACHE[scope]
    if states is not None:
        states.fetch(under)
    return under, states


def run_subtree(spec_d: dict[str, Any], prefix: list[dict[str, Any]], level: int, stop_at_race: bool,
                cache_scope: str | None = None, shared: str | None = None) -> dict[str, Any]:
    """A work unit of an exhaustive search: every schedule below `prefix` (serialized nodes, none
    of which DPOR could have reduced: sim/explore.py subtrees) at level `level` of the deepening
    (sim/search/dpor.py explore at that bound alone), with the search's reduction below the
    prefix. Returns the schedules that cost the level (numbered from 1 in depth-first order;
    cheaper ones were reported at their own level and are only counted) and what the level's
    bound and DPOR cut below the prefix. `cache_scope`: the search's --state-cache, in this
    process (`_worker_cache`: the states of the subtrees it finished before, and this one's once
    it is explored whole); `shared`: the file through which the workers on this machine pass
    each other theirs."""
    from sim.search import dpor
    spec = Spec.from_dict(spec_d)
    stack = [node_from_dict(d) for d in prefix]
    done: list[dict[str, Any]] = []
    blocked = cheaper = cached = 0
    level_seen = None
    under, states = _worker_cache(cache_scope if spec.state_cache else None, shared)
    cache = StateCache(under) if under is not None else None
    whole = True
    for trial, _, lvl, cost in dpor.explore(spec.config, level, reduction=spec.reduction, kind=spec.bound_kind,
                                            stack=stack, floor=len(prefix), deepen=False, cache=cache):
        level_seen = lvl
        if trial.extra.get("state_cached"):
            cached += 1
        elif trial.blocked:
            blocked += 1
        elif cost < level:
            cheaper += 1
        else:
            done.append(summary(len(done) + 1, trial))
            if trial.races and stop_at_race:
                whole = False
                break
    if cache is not None and whole:
        cache.commit(states)
    # what races below added to the prefix's DPOR choice points: the coordinator merges it (such
    # a point decides its next option once every task below it has: sim/search/subtrees.py); counted there
    above, added = [], 0
    for k, d in enumerate(prefix):
        if d.get("backtrack") is None:
            continue
        node = stack[k]
        final = None if node.backtrack is None else sorted(node.backtrack)
        if final != d["backtrack"]:
            above.append([k, final])
            added += (len(node.options) if final is None else len(final)) - len(d["backtrack"])
    return {"schedules": done, "blocked": blocked, "cheaper": cheaper, "above": above, "cached": cached,
            "worker": os.getpid(),
            "states_cached": len(under.seen) if under is not None else None,
            "over_bound": level_seen.over_bound if level_seen else 0,
            "unraced": (level_seen.unraced if level_seen else 0) + added,
            "snapshots": snapshot.report()}


# ---------------------------------------------------------------------------------- the explorer

@dataclass
class State:
    """What a search has done so far: explore.state.json holds it between runs."""

    key: str
    schedules: int = 0
    blocked: int = 0
    seconds: float = 0.0
    races: dict[str, int] = field(default_factory=dict)
    first_race: int | None = None
    saved: list[dict[str, Any]] = field(default_factory=list)
    shas: set[str] = field(default_factory=set)
    next: int = 1                           # random, pct: every schedule below it is done
    stack: list[dict[str, Any]] | None = None   # exhaustive, one process: the last schedule's
    tasks_done: list[str] = field(default_factory=list)     # exhaustive, several: subtrees done (Task.id)
    task_above: dict[str, list] = field(default_factory=dict)   # what each one's races added above it
    task_counts: dict[str, int] = field(default_factory=dict)
    exhausted: bool = False
    complete: bool = False
    pct: dict[str, Any] | None = None
    level: int = 0                          # exhaustive, one process: the bound of the current pass
    over_bound: int = 0                     # exhaustive: options the current pass's bound cut
    cheaper: int = 0                        # exhaustive: schedules re-run by a deeper pass (counted at their level)
    unraced: int = 0                        # exhaustive, dpor: options no race asked for, so never run
    cached: int = 0                         # exhaustive --state-cache: schedules cut at a state explored before
    states_cached: int | None = None        # exhaustive --state-cache: states in this process's cache
    snapshots: dict[str, Any] = field(default_factory=dict)   # exhaustive, several: the workers' counts summed

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["shas"] = sorted(self.shas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "State":
        d = dict(d)
        d["shas"] = set(d.get("shas", []))
        return cls(**d)


class Explorer:
    """One search into `out`. `reporter` hears how far it got (nothing is told with `quiet`)."""

    def __init__(self, spec: Spec, limits: Limits, out: Path, *, jobs: int = 1, scheduler: str | None = None,
                 do_shrink: bool = True, quiet: bool = False, reporter: Reporter | None = None) -> None:
        self.spec, self.limits, self.out = spec, limits, Path(out)
        self.jobs, self.scheduler = jobs, scheduler
        self.do_shrink = do_shrink
        self.reporter: Reporter = reporter if reporter is not None and not quiet else Silent()
        self.state = State(spec.key())
        self._entries: dict[int, tuple[list, list]] = {}   # racing schedules' decisions, by number
        self._last_checkpoint = 0.0
        self._began = 0.0
        self.interrupted = False
        # --state-cache across workers: this search's name for the states each worker keeps
        # (run_subtree: one search's at a time), and how many each holds (pid -> states)
        self.cache_scope = f"{self.out.resolve()}#{next(_SEARCHES)}"
        self.worker_states: dict[int, int] = {}

    # ---------------------------------------------------------------- files

    @property
    def state_path(self) -> Path:
        return self.out / "explore.state.json"

    def load(self) -> bool:
        """Resume: True when DIR holds this search's state."""
        if not self.state_path.exists():
            if (self.out / "explore.json").exists():
                raise ExploreError(f"{self.out} holds a search without its state file: choose another --out or remove it")
            return False
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as exc:
            raise ExploreError(f"{self.state_path}: cannot read it ({exc}): remove it to start over") from None
        if data.get("key") != self.state.key:
            raise ExploreError(f"{self.out} holds another search (other strategy, search, seed, bound or "
                               f"configuration): choose another --out, or remove it to start over")
        self.state = State.from_dict(data)
        for s in self.state.saved:
            sched = self.out / s["dir"] / "schedule.json"
            if sched.exists():
                d = json.loads(sched.read_text())
                self._entries[s["schedule"]] = (d["decisions"], d["streams"])
        return True

    def checkpoint(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_checkpoint < CHECKPOINT_S:
            return
        self._last_checkpoint = now
        self.state.seconds += now - self._began
        self._began = now
        tmp = self.state_path.with_name(".explore.state.json.tmp")
        tmp.write_text(json.dumps(self.state.as_dict()))
        os.replace(tmp, self.state_path)

    # ---------------------------------------------------------------- one finished schedule

    def _record(self, n: int, s: dict[str, Any]) -> None:
        st = self.state
        st.schedules += 1
        st.shas.add(s["sha"])
        if s.get("error"):
            self.reporter.say(f"  schedule {n}: {s['error']}")
        if not s["races"]:
            return
        for kind in {r[0] for r in s["races"]}:
            st.races[kind] = st.races.get(kind, 0) + 1
        if st.first_race is None or n < st.first_race:
            st.first_race = n
        self._entries.setdefault(n, (s["entries"], s["streams"]))
        known = {(r["kind"], r["buffer"]) for x in st.saved for r in x["races"]}
        fresh = [r for r in s["races"] if (r[0], r[1]) not in known]
        if fresh and len(st.saved) < MAX_SAVED:
            self._save(n, s)

    def _save(self, n: int, s: dict[str, Any]) -> None:
        k = len(self.state.saved) + 1
        d = self.out / "races" / str(k)
        result = write_run(self.spec.config, s["entries"], s["streams"], d)
        again, _ = judge((d / "history.jsonl").read_bytes().splitlines(keepends=True))
        same = sorted(map(tuple, s["races"])) == sorted((r.kind, r.buffer, r.svc, r.job) for r in again)
        races = [{"kind": r[0], "buffer": r[1], "importer": r[2], "job": r[3]} for r in s["races"]]
        info = {"schedule": n, "search": self.spec.search, "seed": self.spec.seed, "races": races,
                "history_sha256": result.history_sha256, "same_verdicts": same}
        (d / "race.json").write_text(json.dumps(info, indent=2) + "\n")
        self.state.saved.append({"dir": f"races/{k}", "schedule": n, "races": races})
        first = races[0]
        self.reporter.say(f"  race: {first['kind']} on buffer {first['buffer']} ({first['importer']} job {first['job']}) "
                     f"in schedule {n} -> {d}")
        if not same:
            self.reporter.say(f"  warning: the run directory of schedule {n} has other races than the search saw "
                         f"(a simulator nondeterminism?): see {d}/report.md")

    def _stop(self) -> bool:
        st, lim = self.state, self.limits
        if st.first_race is not None and not lim.all:
            return True
        if lim.schedules is not None and st.schedules >= lim.schedules:
            return True
        return lim.seconds is not None and st.seconds + (time.perf_counter() - self._began) >= lim.seconds

    # ---------------------------------------------------------------- the loops

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = self.load()
        title = (f"explore {self.spec.config.params.strategy} {self.spec.search}"
                 + (f" bound {bound_text(self.spec.bound)}, reduction {self.spec.reduction}"
                    if self.spec.search == "exhaustive" else ""))
        if resumed and self.state.complete:
            self.reporter.say(f"{self.out}: this search was finished before; nothing to search")
            self._maybe_shrink()
            return self.report()
        self.reporter.begin(title + (" (resumed)" if resumed else ""), self.limits.schedules)
        self._began = time.perf_counter()
        be = executor(self.jobs, self.scheduler, retries=1)
        shared = self.out / SHARED_STATES
        shared.unlink(missing_ok=True)          # a killed run's: this search's cache starts empty
        if self.spec.state_cache and self.scheduler is None and be.workers > 1:
            shared.write_bytes(b"")             # the workers append to it while it exists
        try:
            if self.spec.search == "exhaustive":
                if self._split_made(be):
                    self._exhaustive_split(be)
                else:
                    self._exhaustive_here()
            else:
                self._sampled(be)
            self.state.complete = not self.limits.all and self.state.first_race is not None or self.state.exhausted
        except KeyboardInterrupt:
            self.interrupted = True
            self.reporter.say("interrupted: keeping what was found (rerun the same command to go on)")
        finally:
            be.close()
            shared.unlink(missing_ok=True)
            self.reporter.close()
            self.checkpoint(force=True)
        if not self.interrupted:
            self._maybe_shrink()
        return self.report()

    def _maybe_shrink(self) -> None:
        """The first race shrunk, unless asked not to or done already (shrunk.json is written last)."""
        if self.do_shrink and self.state.saved and not (self.out / "shrunk.json").exists():
            try:
                self.shrink_first()
            except KeyboardInterrupt:
                self.interrupted = True

    def _rate(self) -> float:
        seconds = self.state.seconds + (time.perf_counter() - self._began)
        return self.state.schedules / seconds if seconds > 0 else 0.0

    def _progress(self, note: str = "") -> None:
        st = self.state
        if self.spec.search == "exhaustive" and self.spec.reduction != NONE:
            note = f"{self._rate():,.1f} traces/s, " + note
        self.reporter.update(SearchProgress(st.schedules, self._rate(), dict(st.races), note))

    def _sampled(self, be: Pool) -> None:
        """Random and PCT: units of CHUNK schedule numbers, recorded in number order (a unit that
        stopped at its race leaves the rest of its numbers unrun: nothing after the first race
        is recorded then)."""
        st, spec = self.state, self.spec
        if st.pct is None and spec.search == "pct":
            base, chooser = default_trial(spec.config)
            n_actors = len(chooser.actors)
            st.pct = {"k": max(1, base.window_steps), "n": n_actors, "depth": spec.depth,
                      "guarantee": guarantee(n_actors, base.window_steps, spec.depth)}
        k = st.pct["k"] if st.pct else 0
        limit = self.limits.schedules
        if limit is None and self.limits.seconds is None:
            limit = DEFAULT_SCHEDULES
        stop_at_race = not self.limits.all
        spec_d = spec.as_dict()
        pending: dict[Any, int] = {}
        results: dict[int, dict[str, Any]] = {}
        nxt = st.next

        def wanted(first: int) -> bool:    # a unit that may still matter
            return st.first_race is None or not stop_at_race or first < st.first_race

        while True:
            while (len(pending) < 2 * be.workers and not self._stop() and (limit is None or nxt <= limit)
                   and wanted(nxt)):
                count = CHUNK if limit is None else min(CHUNK, limit - nxt + 1)
                pending[be.submit(run_schedules, spec_d, nxt, count, k, stop_at_race)] = nxt
                nxt += count
            if not pending:
                return
            for fut in be.done(pending):
                pending.pop(fut)
                results.update((s["n"], s) for s in fut.result())
            while st.next in results and wanted(st.next):
                self._record(st.next, results.pop(st.next))
                st.next += 1
            self._progress()
            self.checkpoint()
            late = [f for f, first in pending.items() if not wanted(first)]
            if late:
                be.cancel(late)
                for f in late:
                    pending.pop(f)
            if self._stop() and st.first_race is None:
                be.cancel(list(pending))
                return

    def _split_made(self, be: Pool) -> bool:
        """Whether the exhaustive search goes on split into subtrees (else in this process). A
        resumed search goes on the way it was begun, whatever --jobs says now: its place is a stack
        of choice points in one process, or the subtrees recorded split, and neither knows the
        other's (taken the other way, the level would start over and count its schedules again)."""
        st = self.state
        if st.tasks_done or st.task_counts:
            return True                          # a level begun split: split, with one worker too
        if st.stack is not None and be.workers > 1:
            self.reporter.say(f"{self.out}: this search was begun in one process, so it goes on in one "
                              f"(--jobs {be.workers} is for a new directory)")
            return False
        return be.workers > 1

    def _exhaustive_here(self) -> None:
        """Level by level (sim/search/dpor.py explore): a schedule is recorded at the level of
        its cost, so schedule numbers run shallowest first."""
        from sim.search import dpor
        st, spec = self.state, self.spec
        stack = None
        if st.stack is not None:
            stack = [node_from_dict(d) for d in st.stack]
            if not backtrack(stack, st.level):
                if spec.bound is not None and st.level >= spec.bound or spec.bound is None and st.over_bound == 0:
                    st.exhausted = True
                    return
                st.level, st.over_bound, stack = st.level + 1, 0, None
        cache = StateCache() if spec.state_cache else None   # empty on a resume (sim/search/cache.py)
        for trial, stack, level, cost in dpor.explore(spec.config, spec.bound, reduction=spec.reduction,
                                                      kind=spec.bound_kind, start=st.level, stack=stack,
                                                      over_bound=st.over_bound, cache=cache):
            if level.bound != st.level:
                st.unraced = 0                  # each pass is a whole search: its own count
            st.level, st.over_bound, st.unraced = level.bound, level.over_bound, st.unraced + level.unraced
            level.unraced = 0
            if trial.extra.get("state_cached"):
                st.cached += 1
            elif trial.blocked:
                st.blocked += 1
            elif cost < level.bound:
                st.cheaper += 1
            else:
                self._record(st.schedules + 1, summary(st.schedules + 1, trial))
            st.stack = [node_to_dict(n) for n in stack]
            if cache is not None:
                st.states_cached = len(cache.seen)
            self._progress(f"bound {level.bound}, {st.blocked} cut by sleep sets"
                           + (f", {st.cached} by the state cache" if cache is not None else ""))
            self.checkpoint()
            if self._stop():
                return
        st.exhausted = True
        st.stack = None

    def _exhaustive_split(self, be: Pool) -> None:
        """Level by level, as one process does (sim/search/dpor.py explore): each level's tree is
        cut into subtrees (`subtrees`), each a task at that level's bound; a level's schedules are
        numbered after the levels before it, in depth-first order, so the schedules, their
        numbers, the first race and the verdict are those of a single process."""
        st, spec = self.state, self.spec
        while self._split_level(be, st.level):
            if spec.bound is not None and st.level >= spec.bound or spec.bound is None and st.over_bound == 0:
                st.exhausted = True
                return
            st.level += 1
            st.tasks_done, st.task_counts, st.task_above = [], {}, {}
            st.over_bound = st.unraced = 0

    def _split_level(self, be: Pool, d: int) -> bool:
        """One level across workers; True when its whole tree was searched (no stop on the way).
        A task's schedules are recorded once every task before it in depth-first order is
        (sim/search/subtrees.py `can_record`); a task is `done` in the state only then (with what
        its races added above it), so a resumed search reruns what it had not recorded, and the
        walk merges the recorded tasks' additions as it meets their prefixes again."""
        st, spec = self.state, self.spec
        spec_d = spec.as_dict()
        stop_at_race = not self.limits.all
        walk = Subtrees(spec.config, spec.bound_kind, spec.reduction, SPLIT_DEPTH, d, SPLIT_REACH)
        scope = self.cache_scope if spec.state_cache else None
        shared = str(self.out / SHARED_STATES) if scope is not None and self.scheduler is None else None
        if any(not isinstance(k, str) for k in st.tasks_done):
            raise ExploreError(f"{self.state_path}: written by an older dmabuf-emu (its subtrees are numbered, not "
                               f"keyed): remove it to start over")
        done_before = set(st.tasks_done)         # recorded by an earlier run of this search
        met: set[str] = set()                    # of them, those the walk has given again
        given = 0                                # tasks given out (counted for the progress line)
        pending: dict[Any, Task] = {}
        finished: dict[tuple[int, ...], tuple[Task, dict[str, Any]]] = {}
        waiting: list[tuple[int, ...]] = []      # given out and not recorded, in depth-first order
        race_key: tuple[int, ...] | None = None

        def level_over() -> int:
            return walk.over + sum(v for k, v in st.task_counts.items() if k.startswith("over:"))

        def record() -> None:               # the finished tasks in order, none after the first race's
            while waiting and waiting[0] in finished and walk.can_record(waiting[0]):
                task, out = finished.pop(waiting.pop(0))
                base = st.schedules
                for s in out["schedules"]:
                    self._record(base + s["n"], s)
                st.blocked += out["blocked"]
                st.cheaper += out["cheaper"]
                st.cached += out.get("cached", 0)
                if out.get("states_cached") is not None:
                    self.worker_states[out["worker"]] = out["states_cached"]
                    # each worker's cache holds the others' states too where they share them
                    st.states_cached = (max if shared is not None else sum)(self.worker_states.values())
                st.unraced += out["unraced"]
                snapshot.add_counts(st.snapshots, out.get("snapshots"))
                st.task_counts[f"over:{task.id}"] = out["over_bound"]
                st.task_above[task.id] = out["above"]
                st.tasks_done.append(task.id)

        def drop(task: Task) -> None:            # after the first race: no schedule of it counts
            walk.merge(task, [])

        while True:
            while (len(pending) < 2 * be.workers and not (self._stop() and st.first_race is None)):
                task = walk.next()
                if task is None:
                    break
                if task.id in done_before:        # recorded before this run: its additions, again
                    walk.merge(task, st.task_above.get(task.id, []))
                    met.add(task.id)
                    continue
                if race_key is not None and stop_at_race and task.key > race_key:
                    drop(task)
                    continue
                pending[be.submit(run_subtree, spec_d, task.prefix, d, stop_at_race, scope, shared)] = task
                bisect.insort(waiting, task.key)
                given += 1
            if not pending:
                record()                          # what the walk's end let through
                break
            for fut in be.done(pending, timeout=STOP_POLL_S):    # a subtree may run for hours
                task = pending.pop(fut)
                out = fut.result()
                walk.merge(task, out["above"])
                finished[task.key] = (task, out)
                if any(s["races"] for s in out["schedules"]) and (race_key is None or task.key < race_key):
                    race_key = task.key
            if race_key is not None and stop_at_race:
                for fut in [f for f, t in pending.items() if t.key > race_key]:
                    be.cancel([fut])
                    drop(pending.pop(fut))
                for key in [k for k in waiting if k > race_key]:
                    waiting.remove(key)
                    finished.pop(key, None)
            record()
            st.over_bound = level_over()
            recorded = len(st.tasks_done)
            self._progress(split_note(d, recorded, len(done_before) + given,
                                      walk.finished, [len(o["schedules"]) for _, o in finished.values()], st.blocked)
                           + (f", {st.cached} by the state cache" if scope is not None else ""))
            self.checkpoint()
            if self._stop() and (race_key is None or all(t.key > race_key for t in pending.values())):
                be.cancel(list(pending))
                return False
        st.over_bound = level_over()
        if walk.finished and met != done_before:
            raise Diverged(f"a resumed level's subtrees are not those it recorded "
                           f"({len(done_before - met)} recorded ones never came again)")
        whole = walk.finished and not waiting and (race_key is None or not stop_at_race)
        if whole:
            st.unraced += walk.unraced
        return whole

    # ---------------------------------------------------------------- shrinking and the report

    def shrink_first(self, race: int = 1) -> dict[str, Any]:
        entry = self.state.saved[race - 1]
        decisions, streams = self._entries.get(entry["schedule"]) or _read_decisions(self.out / entry["dir"])
        first = entry["races"][0]
        return shrink_into(self.spec.config, decisions, streams, first["kind"], first["buffer"], self.out)

    def report(self) -> dict[str, Any]:
        st, spec = self.state, self.spec
        seconds = round(st.seconds, 3)
        shrunk = None
        if (self.out / "shrunk.json").exists():
            shrunk = json.loads((self.out / "shrunk.json").read_text())
        result = {
            "strategy": spec.config.params.strategy, "search": spec.search, "schedules": st.schedules,
            "seconds": seconds, "schedules_per_s": round(st.schedules / seconds, 1) if seconds > 0 else None,
            "distinct_states": None, "distinct_histories": len(st.shas), "races": dict(sorted(st.races.items())),
            "first_race_schedule": st.first_race, "exhausted": st.exhausted,
            "bound": spec.bound if spec.search == "exhaustive" else None,
            "bound_kind": spec.bound_kind if spec.search == "exhaustive" else None,
            "depth": spec.depth if spec.search == "pct" else None,
            "seed": spec.seed if spec.search != "exhaustive" else None,
            "blocked": st.blocked if spec.search == "exhaustive" else None,
            "pct": st.pct, "saved": st.saved, "shrunk": shrunk, "interrupted": self.interrupted,
            "complete": st.complete, "config": spec.config.as_dict(),
            "devices": spec.config.options.devices,     # the timing the verdict assumes
            **self._search_fields(),
        }
        (self.out / "explore.json").write_text(json.dumps(result, indent=2) + "\n")
        return result


    def _search_fields(self) -> dict[str, Any]:
        """The exhaustive search's own (FIELDS): its reduction, the classes it explored (each
        schedule of dpor and sleep-sets is a Mazurkiewicz class of its own: sim/search/dpor.py;
        brute force does not know its classes), what cut the rest, and the pass it is at; what
        snapshots did (sim/search/snapshot.py: in this process, or summed over the subtrees the
        workers of --jobs and --scheduler ran); with --state-cache, the schedules it cut and the
        states it holds (sim/search/cache.py)."""
        st, spec = self.state, self.spec
        if spec.search != "exhaustive":
            return {k: None for k in ("reduction", "traces", "cut_by", "snapshots", "states_cached", "level")}
        cut = {"sleep-sets": st.blocked, "bound": st.over_bound}
        if spec.reduction == DPOR:
            cut["no-race"] = st.unraced
        if spec.state_cache:
            cut["state-cache"] = st.cached
        return {"reduction": spec.reduction, "traces": st.schedules if spec.reduction != NONE else None,
                "cut_by": cut, "snapshots": st.snapshots if st.snapshots else snapshot.report(),
                "states_cached": st.states_cached if spec.state_cache else None, "level": st.level}


def _read_decisions(run_dir: Path) -> tuple[list, list]:
    d = json.loads((run_dir / "schedule.json").read_text())
    return d["decisions"], d["streams"]


def split_note(level: int, recorded: int, tasks: int, walked: bool, ahead: list[int], blocked: int) -> str:
    """The progress note of a level split across workers. Schedules are counted (and numbered) in
    depth-first order, so a subtree that finished while one before it still runs is not counted
    yet: `ahead` (the schedules of each such subtree) says how much work is done beyond the count,
    which a long first subtree would otherwise hide behind a rate near 0."""
    note = f"bound {level}, {recorded}/{tasks}{'' if walked else '+'} subtrees"
    if ahead:
        note += f" ({len(ahead)} more finished with {sum(ahead):,} schedules, counted once those before them are)"
    return note + f", {blocked} cut by sleep sets"


def subtrees(spec: Spec, depth: int, level: int) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Every subtree of a level run here, in turn (tests, tools): (prefix, what run_subtree
    returned for it), each task's additions merged before the walk goes on."""
    walk = Subtrees(spec.config, spec.bound_kind, spec.reduction, depth, level, SPLIT_REACH)
    while (task := walk.next()) is not None:
        out = run_subtree(spec.as_dict(), task.prefix, level, False)
        walk.merge(task, out["above"])
        yield task.prefix, out


def shrink_into(config: Config, decisions: list, streams: list, kind: str, buffer: Any, out: Path) -> dict[str, Any]:
    """Shrink a racing schedule; write DIR/shrunk/ (a replayable run directory), DIR/witness.md,
    DIR/trace.json and DIR/shrunk.json; return what explore.json's `shrunk` says."""
    from sim.shrink import ShrinkResult, shrink
    r = shrink(config, decisions, streams, kind, buffer)
    shrunk_dir = out / "shrunk"
    result = write_run(config, r.after.entries, r.after.streams, shrunk_dir)
    witness_events, index = _witness_of(result.report, kind, buffer)
    if kind in CATCHES:
        item = result.report["findings"][kind]["items"][index - 1]
        (out / "witness.md").write_text("\n".join([f"# {CATCH_TITLES[kind]} on buffer {buffer}", ""] + finding_lines(item)))
    else:
        kept = [_kept(d.index, d.options[0], d.value, config.params.faults) for d in r.deviations
                if d.kind == FAULT_DEVIATION]
        write_witness_md(shrunk_dir / "history.jsonl", index, out / "witness.md", report=result.report, kept=kept)
    shutil.copyfile(shrunk_dir / "trace.json", out / "trace.json")
    info = {"kind": kind, "buffer": buffer, "events": len(witness_events), "decisions": r.after.decisions,
            "messages": r.after.messages, "steps": r.after.steps, "deviations": ShrinkResult.counts(r.deviations),
            "before": {"decisions": r.before.decisions, "messages": r.before.messages, "steps": r.before.steps,
                       "deviations": ShrinkResult.counts(r.deviations_before)},
            "one_minimal": r.one_minimal, "tests": r.tests, "dir": "shrunk", "witness": "witness.md",
            "notes": r.notes, "schedule": [d.as_list() for d in r.deviations]}
    (out / "shrunk.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _kept(index: int, stream: str, value: Any, faults: Any) -> dict[str, Any]:
    """A fault draw the shrunk schedule kept, as witness.md names it: its decision, its stream
    (`device:I:SVC`, `msgfault:I:SVC`, `process:I`: I indexes the run's faults) and that fault."""
    parts = stream.split(":")
    i = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
    fault = dict(faults[i]) if 0 <= i < len(faults) else None
    return {"decision": index, "stream": stream, "value": value, "fault": fault}


def _witness_of(report: dict[str, Any], kind: str, buffer: Any) -> tuple[list[dict[str, Any]], int]:
    """The events of the checker's witness of `kind` on `buffer`, and its number in report.md's
    order (checker/explain.py listed_witnesses); for a catch that is a finding (checker/findings.py
    CATCHES), the events of that finding and its number among the report's findings of its kind."""
    if kind in CATCHES:
        for i, item in enumerate(report["findings"][kind]["items"], 1):
            if finding_on(item, buffer):
                return item.get("events", []), i
        raise ValueError(f"the shrunk run's report has no {kind} finding on buffer {buffer}")
    for i, (k, w) in enumerate(listed_witnesses(report), 1):
        if k == kind and w.get("job", {}).get("buffer") == buffer:
            return w.get("events", []), i
    raise ValueError(f"the shrunk run's report has no {kind} witness on buffer {buffer}")


def finding_on(item: dict[str, Any], buffer: Any) -> bool:
    """Whether a finding is on `buffer`: a deadlock when its cycle holds that buffer's lock (the
    search keys it by its first: sim/search/trial.py deadlock_id), any other by its `buffer`."""
    if "cycle" in item:
        return any(n.get("node") == "lock" and n.get("buffer") == buffer for n in item["cycle"])
    return item.get("buffer") == buffer
