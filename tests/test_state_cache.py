"""The state cache (sim/search/cache.py) against brute force.

A cache is trusted only where it agrees with brute force: on configurations small enough for
`--reduction none` to enumerate without a cache, the cached search (dpor and sleep-sets) must report
the same races (kind, buffer) and the same end states. An end state here is what a cache keeps
apart: the world at the end of the schedule and the checker's state after its whole history
(sim/search/cache.py), not the history's bytes (two schedules the cache merges differ in the order
of lines the checker cannot tell apart). The agreement has teeth: a cache whose key leaves the
checker out merges states whose verdicts differ, and loses end states brute force reaches.
What has no teeth here: dpor's conservative answer to a hit (every choice point of the hit's
instant explored in full, sim/search/dpor.py `whole_instant`). Switched off, the cached dpor still
agrees on all eight configurations: their hits come at an instant's first choice point, after
steps that had no choice. It stays, because nothing shows that every hit will; its rule is
checked alone, by the last test here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from deploy import cli
from sim.search import cache as C
from sim.search import dpor
from sim.search import trial as T
from sim.search.statecache import Canon
from tests.test_dpor import (EARLY_SIGNAL, EARLY_SIGNAL_2, MNA, MNA_MOVE, MUTANT, REDRAIN, REVOKE, REVOKE_2, RF_DUP, RF_DUP_MOVE,
                             cfg_of, explore)

THREE = ("resv-fence", dict(importers=3, buffers=1, duration=0.01), 1, 1, ())   # answers meet at the exporter


def end_key(world: Any, history: list[bytes]) -> bytes:
    """The world at the end and the checker's state after the whole history, times as offsets."""
    from checker.oracle import Oracle
    found: list[Any] = []
    o = Oracle(on_race=lambda r: found.append((r.kind, r.job.buffer, r.job.svc, r.job.job)),
               on_finding=lambda what, svc, t, f: found.append((what, svc, sorted(f.items(), key=str))))
    o.run(history)
    o.finish()
    c = Canon(world)
    c.walk(world)
    c.walk(o)
    c.walk(found)
    return hashlib.blake2b(repr(c.out).encode(), digest_size=20).digest()


def outcomes(case: tuple, bound: int | None, reduction: str, cached: bool) -> tuple[int, int, set, set]:
    """(schedules run whole, schedules the cache cut, races as (kind, buffer), end states); with no
    bound, brute force runs one pass at a bound no schedule reaches (as tests/test_dpor.py's)."""
    seen: dict[str, Any] = {}
    setup, judge = dpor.DporChooser.setup, T.judge

    def watch_setup(self: Any, world: Any) -> None:
        setup(self, world)
        seen["world"] = world

    def watch_judge(history: Any, report: bool = False) -> Any:
        seen["history"] = list(history)
        return judge(history, report)

    deepen = reduction != dpor.NONE
    bound = bound if deepen or bound is not None else 1 << 30
    n, cut, races, ends = 0, 0, set(), set()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(dpor.DporChooser, "setup", watch_setup)
        m.setattr(T, "judge", watch_judge)
        for trial, _, level, cost in dpor.explore(cfg_of(*case), bound, reduction=reduction, deepen=deepen,
                                                  snapshots=False, cache=C.StateCache() if cached else None):
            cut += bool(trial.extra.get("state_cached"))
            if trial.blocked or (deepen and cost < level.bound):
                continue
            n += 1
            races |= {(r.kind, r.buffer) for r in trial.races}
            ends.add(end_key(seen["world"], seen["history"]))
    return n, cut, races, ends


CASES = [(MUTANT, 2), (EARLY_SIGNAL, 1), (RF_DUP, 1), (REVOKE, 1), (MNA, 0), (EARLY_SIGNAL_2, 0), (REVOKE_2, 0),
         (THREE, 0)]


@pytest.mark.parametrize("case,bound", CASES, ids=lambda c: c[0] + (" " + c[4][0] if c[4] else "") if isinstance(c, tuple) else str(c))
def test_the_cached_search_agrees_with_brute_force(case: tuple, bound: int) -> None:
    n_none, _, races_none, ends_none = outcomes(case, bound, dpor.NONE, False)
    for reduction in (dpor.DPOR, dpor.SLEEP_SETS):
        n, cut, races, ends = outcomes(case, bound, reduction, True)
        assert races == races_none, (reduction, races_none ^ races)
        assert ends == ends_none, (reduction, f"{len(ends_none - ends)} end states missed, {len(ends - ends_none)} new")
        assert n <= n_none


@pytest.mark.parametrize("case", [MNA_MOVE, RF_DUP_MOVE, pytest.param(REDRAIN, marks=pytest.mark.slow)],
                         ids=["move-notify-ack", "resv-fence dup", "revoke+cleanup-redrain"])
def test_the_cached_search_agrees_with_brute_force_with_no_bound(case: tuple) -> None:
    """Whole spaces (tests/test_dpor.py's): the mutant's 1,705 brute-force schedules against 68
    cached ones (dpor cuts 40 at states met before), the same 68 end states and races."""
    _, _, races_none, ends_none = outcomes(case, None, dpor.NONE, False)
    for reduction in (dpor.DPOR, dpor.SLEEP_SETS):
        _, _, races, ends = outcomes(case, None, reduction, True)
        assert races == races_none and ends == ends_none, (reduction, races_none ^ races, len(ends_none ^ ends))
    if case is REDRAIN:
        assert races_none == {("refcount_warning", 0), ("stuck", 0)}


@pytest.mark.parametrize("case,bound", [(THREE, 0), (MUTANT, 2), (EARLY_SIGNAL_2, 0)],
                         ids=["three-importers", "mutant", "early-signal-2-importers"])
def test_the_cached_search_split_across_workers_agrees_with_brute_force(tmp_path: Path, case: tuple,
                                                                       bound: int) -> None:
    """--jobs with --state-cache (sim/explore.py run_subtree: each worker keeps the states of the
    subtrees it finished; a hit's backtrack points above a subtree go to the coordinator): the same
    races and end states as brute force. The workers run here, one at a time, and share this
    process's cache, so states meet across subtrees as they do in a worker."""
    from sim import explore as ex
    from sim.executor import Pool, _Here
    _, _, races_none, ends_none = outcomes(case, bound, dpor.NONE, False)
    seen: dict[str, Any] = {}
    races: set = set()
    ends: set = set()
    setup, judge = dpor.DporChooser.setup, T.judge

    def watch_setup(self: Any, world: Any) -> None:
        setup(self, world)
        seen["world"] = world

    def watch_judge(history: Any, report: bool = False) -> Any:
        lines = list(history)
        verdict = judge(lines, report)
        races.update((r.kind, r.buffer) for r in verdict[0])
        ends.add(end_key(seen["world"], lines))
        return verdict

    with pytest.MonkeyPatch.context() as m:
        m.setattr(dpor.DporChooser, "setup", watch_setup)
        m.setattr(T, "judge", watch_judge)
        m.setattr(ex, "executor", lambda *a, **k: Pool(_Here(), 2))
        m.setattr(ex, "SPLIT_DEPTH", 6)
        spec = ex.Spec(cfg_of(*case), "exhaustive", 1, bound=bound, state_cache=True)
        r = ex.Explorer(spec, ex.Limits(all=True), tmp_path / "x", do_shrink=False, quiet=True).run()
    assert r["exhausted"] and r["states_cached"] > 0, r
    if case is THREE:
        assert r["cut_by"]["state-cache"] > 0, r["cut_by"]
    assert races == races_none, races_none ^ races
    assert ends == ends_none, f"{len(ends_none - ends)} end states missed, {len(ends - ends_none)} new"


def test_workers_pass_each_other_whole_records_of_their_states(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SharedStates (--jobs): a worker reads the states the others finished, not its own, and a
    record still being written only once it is whole; a state read so is a hit for another path."""
    path = str(tmp_path / "states.bin")
    key = b"k" * 20
    C.SharedStates(path).publish({key: [(2, frozenset(), None)]})    # no file: the search is over
    assert not Path(path).exists()
    Path(path).write_bytes(b"")
    monkeypatch.setattr(C.os, "getpid", lambda: 1)
    one = C.SharedStates(path)
    one.publish({key: [(2, frozenset({"importer-1"}), object())]})
    assert one.fetch(C.StateCache()) == 0                      # its own
    monkeypatch.setattr(C.os, "getpid", lambda: 2)
    two, cache = C.SharedStates(path), C.StateCache()
    with open(path, "ab") as f:
        f.write((100).to_bytes(4, "big") + b"half")            # another worker's record, being written
    assert two.fetch(cache) == 1 and cache.seen == {key: [(2, frozenset({"importer-1"}), None)]}
    assert two.fetch(cache) == 0                                # the half record waits
    assert cache.hit(key, 1, frozenset({"importer-1", "importer-2"}), [])
    assert not cache.hit(key, 3, frozenset({"importer-1"}), [])  # less bound left then: not covered
    Path(path).write_bytes((3).to_bytes(4, "big") + b"\xc1\xc1\xc1")   # not msgpack
    with pytest.raises(ValueError, match="byte 0 is not a record of states"):
        C.SharedStates(path).fetch(C.StateCache())


def test_the_cache_cuts_where_answers_meet() -> None:
    """Three importers' answers at one instant: six orders, one state; the cache runs fewer."""
    n_plain, _, _, ends = outcomes(THREE, 0, dpor.DPOR, False)
    n_cached, cut, _, ends_cached = outcomes(THREE, 0, dpor.DPOR, True)
    assert cut > 0 and n_cached < n_plain, (n_plain, n_cached, cut)
    assert ends_cached == ends


def test_a_key_without_the_checker_loses_end_states(monkeypatch: pytest.MonkeyPatch) -> None:
    """The teeth: the same cache keyed on the world alone merges pasts the checker tells apart."""
    brute = outcomes(MUTANT, 2, dpor.NONE, False)
    key = C.StateCache.key

    def world_only(self: Any, world: Any, chooser: Any, judge: Any, at_now: Any) -> bytes:
        class Blind:                          # a checker that has seen nothing
            oracle, found = None, []
        return key(self, world, chooser, Blind(), [])

    with monkeypatch.context() as m:
        m.setattr(C.StateCache, "key", world_only)
        _, cut, _, ends = outcomes(MUTANT, 2, dpor.DPOR, True)
    assert cut > 0
    assert ends < brute[3], "a cache blind to the checker agreed with brute force: this comparison cannot fail"


def canon_key(world: Any, chooser: Any, judge: Any, at_now: list) -> bytes:
    """The key as sim/search/statecache.py's Canon walks it (in Python, times as offsets, sets
    sorted): the reference the pickled key (Keyer) is checked against."""
    c = Canon(world)
    c.walk(world)
    w = chooser.window
    c.out.append(("window", w.open, w.closed, w.dma, w.cut, chooser.kind,
                  tuple(sorted(chooser.held)) if chooser.kind != "preemptions" else ()))
    c.out.append(("checker",))
    c.walk(judge.oracle)
    c.walk(judge.found)
    h = hashlib.blake2b(repr(c.out).encode(), digest_size=20)
    for file, lines in at_now:
        h.update(b"%s %d\n" % (file.encode(), len(lines)))
        for line in lines:
            h.update(line)
    return h.digest()


@pytest.mark.parametrize("case,bound", [(THREE, 0), (MUTANT, 2), (REVOKE_2, 0), (RF_DUP, 1), (EARLY_SIGNAL_2, 0)],
                         ids=["three-importers", "mutant", "revoke-2", "resv-fence-dup", "early-signal-2"])
def test_the_pickled_key_splits_states_as_the_walk_does(case: tuple, bound: int) -> None:
    """At every state a cached search keys (hits among them), two states have equal pickled keys
    exactly when Canon's walk gives them equal keys: the C pickler's key is the walk's, at a
    quarter of the cost. And the pair is not vacuous: states meet (some keys repeat)."""
    key = C.StateCache.key
    pairs: list[tuple[bytes, bytes, int]] = []

    def both(self: Any, world: Any, chooser: Any, judge: Any, at_now: Any) -> bytes:
        new = key(self, world, chooser, judge, at_now)
        pairs.append((new, canon_key(world, chooser, judge, at_now), world.now))
        return new

    with pytest.MonkeyPatch.context() as m:
        m.setattr(C.StateCache, "key", both)
        outcomes(case, bound, dpor.DPOR, True)
        outcomes(case, bound, dpor.SLEEP_SETS, True)
    new_to_old: dict[bytes, set] = {}
    old_to_new: dict[bytes, set] = {}
    for new, old, now in pairs:
        new_to_old.setdefault(new, set()).add(old)
        old_to_new.setdefault(old, set()).add((new, now))
    assert len(new_to_old) < len(pairs), "no state met another: this comparison shows nothing"
    assert all(len(v) == 1 for v in new_to_old.values()), "the pickled key merged states the walk tells apart"
    assert all(len(v) == 1 for v in old_to_new.values()), "the pickled key split states the walk merged"


def test_constants_are_only_what_never_changes() -> None:
    """A constant is written as its identity, so only what cannot change and reaches nothing that
    can may be one: a closure, a mutable default, a list, a plain dataclass are not."""
    import dataclasses
    import enum
    from protocol.machine import Rule
    from sim.search import statecache as S

    class E(enum.Enum):
        A = "a"

    @dataclasses.dataclass(frozen=True)
    class Frozen:
        x: Any

    @dataclasses.dataclass
    class Plain:
        x: int = 0

    def plain(a: int = 1, b: tuple = ("x", E.A)) -> None: ...
    def mutable_default(a: list = []) -> None: ...  # noqa: B006 (the point of the case)
    cell = [0]
    def closure() -> int:
        return cell[0]
    seen: dict[int, bool] = {}
    yes = [Rule(when=E.A, then=E.A, do=(E.A,)), E.A, E, plain, (1, "a", E.A), frozenset({E.A}),
           {"k": (E.A,)}]
    no = [mutable_default, closure, [1], (1, [2]), Plain(), {"k": [1]}, frozenset({(1, (2, closure))})]
    assert [S._constant(x, seen) for x in yes] == [True] * len(yes)
    assert [S._constant(x, seen) for x in no] == [False] * len(no)
    # Frozen is a test's class: only our packages' frozen dataclasses are taken as constants
    assert not S._constant(Frozen(1), {})
    # the memo numbers the constants 0 to n-1, each once: the pickler numbers what it meets from n
    # on, so a number left unused would be given to the first object met and to a constant alike
    _, memo = S._constants()
    assert sorted(i for i, _ in memo.copy().values()) == list(range(len(memo.copy())))


def test_two_processes_number_the_constants_alike() -> None:
    """Workers share keys (SharedStates) only if they number the constants alike: two processes
    with other string hashes (so other set orders) give the same signature."""
    import os
    import subprocess
    import sys
    code = ("import sim.explore, checker.oracle, protocol.strategies\n"
            "from sim.search import statecache as S\nprint(S._constants()[0].decode())")
    sigs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(sigs) == 1 and next(iter(sigs)).startswith("constants "), sigs


def test_a_key_writes_a_constant_as_one_index() -> None:
    """A strategy's spec, met in the world, costs its key a back-reference, not its rules; a spec
    that is not one of our modules' constants (a mutant's copy) is written whole."""
    import dataclasses
    from types import SimpleNamespace
    from protocol.strategies import resv_fence
    from sim.search import statecache as S

    def body(root: Any) -> int:
        k = S.Keyer(SimpleNamespace(_heap=[], now=0))  # type: ignore[arg-type]
        k.digest(root)
        b = k.buf.getvalue()
        return len(b) - b.index(b";") - 1

    copy = dataclasses.replace(resv_fence.IMPORTER, table=dict(resv_fence.IMPORTER.table))
    assert body((resv_fence.IMPORTER,)) < 32 < body((copy,))


# ---------------------------------------------------------------------------------- the command

def test_explore_state_cache_says_what_it_cut(tmp_path: Path) -> None:
    """Three importers' answers meet: the cached search exhausts bound 0 in fewer schedules, says
    how many the cache cut and how many states it holds, and finds what the plain one finds."""
    args = ("--strategy", "resv-fence", "--search", "exhaustive", "--bound", "0", "--importers", "3", "--buffers", "2",
            "--moves", "2", "--no-stalls")
    rc, plain = explore(tmp_path / "p", *args)
    rc2, r = explore(tmp_path / "c", *args, "--state-cache")
    assert rc == rc2 == 0 and plain["exhausted"] and r["exhausted"] and not r["races"] and not plain["races"]
    assert r["cut_by"]["state-cache"] > 0 and r["states_cached"] > 0 and r["schedules"] < plain["schedules"]
    assert "state-cache" not in plain["cut_by"] and plain["states_cached"] is None


@pytest.mark.parametrize("argv,message", [
    (["--search", "random", "--state-cache"], "--state-cache is for --search exhaustive, not random"),
    (["--search", "pct", "--state-cache", "--jobs", "2"], "--state-cache is for --search exhaustive, not pct"),
])
def test_bad_state_cache_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                                message: str) -> None:
    assert cli.main(["explore", "--out", str(tmp_path / "x"), "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x").exists()


def test_a_hit_opens_every_choice_point_of_its_instant_and_no_earlier_one() -> None:
    """dpor.whole_instant's rule, alone (the agreement above cannot show it: see the docstring)."""
    from sim.search.exhaustive import EVERYTHING, STEP, Footprint, Node

    def node(options: tuple[str, ...]) -> Node:
        return Node(0, STEP, options, 0, (0,) * len(options), {}, [0], {}, {0})

    fp = Footprint(frozenset({"exporter"}))
    before, now1, now2 = node(("exporter", "importer-1")), node(("exporter", "importer-2", "importer-3")), node(("a",))
    events = [dpor.Event("exporter", fp, before), dpor.Event(dpor.CLOCK, EVERYTHING, None, True),
              dpor.Event("exporter", fp, now1), dpor.Event("importer-1", fp, None), dpor.Event("a", fp, now2)]
    assert dpor.whole_instant(events) == 2          # now1's two other options; now2 had only one
    assert now1.backtrack is None and now2.backtrack is None
    assert before.backtrack == {0}                  # behind the clock event: untouched
    assert dpor.whole_instant(events) == 0          # already whole
