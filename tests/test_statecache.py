"""The state key (sim/search/statecache.py): stable where the state is the same, different where it
is not, and where two paths meet on one key, the futures agree.

The measurement these tests keep honest (the resv-fence small configuration, bound 2, sleep sets,
no stalls): states of the world alone repeat at a few percent of the choice points; with the
history the checker still has to judge against, none do. docs in the module docstring.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from deploy.explore_table import small_config
from sim.search import statecache as sc
from sim.search.dpor import SLEEP_SETS, DporChooser
from sim.search.exhaustive import fence_tracing
from sim.search.trial import run_trial

SCHEDULES = 60           # the first schedules of the search: a few hits of the world's key


@pytest.fixture(scope="module")
def config() -> Any:
    c = small_config("resv-fence", 1, {})
    return dataclasses.replace(c, options=dataclasses.replace(c.options, stalls=False))


@pytest.fixture(scope="module")
def measured(config: Any) -> dict[str, Any]:
    return sc.measure(config, 2, reduction=SLEEP_SETS, limit=SCHEDULES, keep_pairs=2, check_replay=15)


def test_a_replayed_prefix_gives_the_same_key(measured: dict[str, Any]) -> None:
    """Every choice point the search replays (each schedule re-runs its prefix) hashes as it did
    the first time: no address, id or walk-order noise in the key."""
    assert measured["fresh_points"] > 50
    assert measured["replay_mismatches"] == 0


def test_what_repeats(measured: dict[str, Any]) -> None:
    """The world alone repeats (paths that meet), the world with its history does not: the
    history, hence the checker's view, differs where the world is the same."""
    hits = measured["hits"]
    assert hits["world"] > 0
    assert hits["world+now+history"] <= hits["world+now"] <= hits["world"]
    assert measured["distinct"]["world+now+history"] >= measured["distinct"]["world"]
    assert measured["schedules_cut"]["world"] < measured["schedules"]


def test_paths_that_meet_have_the_same_future(config: Any, measured: dict[str, Any]) -> None:
    """For sampled hits of the world's key, both paths continued by the same random walk give
    the same history from the choice point on (times as offsets from it) and the same verdicts."""
    pairs = measured["pairs"]["world"]
    assert pairs
    for first, hit in pairs:
        assert first[0] != hit[0]                         # two different paths
        for walk in range(1):
            a = sc.continuation(config, first[0], first[1], walk)
            b = sc.continuation(config, hit[0], hit[1], walk)
            assert a["suffix"] == b["suffix"]
            assert a["races"] == b["races"]


@pytest.fixture(scope="module")
def racing() -> dict[str, Any]:
    """The move-notify small configuration at bound 1, exhausted (253 schedules): it races
    (lost_write), and some of its races are below choice points whose state was seen before."""
    c = small_config("move-notify", 1, {})
    c = dataclasses.replace(c, options=dataclasses.replace(c.options, stalls=False))
    return sc.measure(c, 1, reduction=SLEEP_SETS)


def test_a_hit_of_the_whole_key_loses_nothing(racing: dict[str, Any]) -> None:
    """Over the whole tree: every hit's cut subtree finds no race and no end state (the whole
    merged history's digest) that its first visit's subtree did not."""
    lost = racing["lost"]["world+now+history"]
    assert lost["hits"] > 0 and lost["found"]            # hits, with races below them
    assert (lost["races"], lost["ends"]) == (0, 0)


def test_the_world_alone_is_not_enough(racing: dict[str, Any]) -> None:
    """Without the history the key hits more, and its hits lose end states: the past differs
    (a frame's arrival, the order of a service's lines at one instant) where the world does not."""
    assert racing["hits"]["world"] > racing["hits"]["world+now+history"]
    assert racing["lost"]["world"]["ends"] > 0


def _at_choice_point(config: Any, n: int, probe: Any) -> Any:
    """Run the default schedule up to its n-th step choice point in the window; call probe(world, chooser)."""
    found: list[Any] = []

    class Probe(DporChooser):
        def choose_step(self, index: int, options: Any) -> int:
            if len(found) < n:
                found.append(None)
                if len(found) == n:
                    found[-1] = probe(self.world, self)
            return super().choose_step(index, options)

    with fence_tracing():
        chooser = Probe(0, [], 2, reduction=SLEEP_SETS)
        run_trial(config, chooser, setup=chooser.setup)
    assert len(found) == n
    return found[-1]


def _changes(world: Any, chooser: Any, mutate: Any) -> bool:
    before = sc.state_key(world, chooser)
    undo = mutate(world)
    after = sc.state_key(world, chooser)
    undo()
    assert sc.state_key(world, chooser) == before       # restored: the key is a function of the state
    return after != before


def _segment(world: Any) -> bytearray:
    canon = sc.Canon(world)
    canon.walk(world)
    return next(x for x in canon.keep if type(x) is bytearray and len(x) > 0)


def _flip_byte(world: Any) -> Any:
    data = _segment(world)
    i = len(data) // 2
    data[i] ^= 0xFF

    def undo() -> None:
        data[i] ^= 0xFF
    return undo


def _timer_later(world: Any) -> Any:
    entry = next(e for e in world._heap if e[3] is not None and e[2] is not None)
    entry[0] += 1

    def undo() -> None:
        entry[0] -= 1
    return undo


def _clock_later(world: Any) -> Any:
    world.now += 1         # every pending timer is now 1 ns nearer

    def undo() -> None:
        world.now -= 1
    return undo


def _draw(world: Any) -> Any:
    canon = sc.Canon(world)
    canon.walk(world)
    rng = next(x for x in canon.keep if type(x).__name__ == "Random")
    state = rng.getstate()
    rng.random()
    return lambda: rng.setstate(state)


def _history_line(world: Any) -> Any:
    canon = sc.Canon(world)
    canon.walk(world)
    lines = next(h for h in canon.histories if h)
    lines.append(lines[-1])
    return lines.pop


@pytest.mark.parametrize("mutate", [_flip_byte, _timer_later, _clock_later, _draw, _history_line],
                         ids=["memory-byte", "timer", "clock", "rng", "history"])
def test_the_key_sees_each_part_of_the_state(config: Any, mutate: Any) -> None:
    assert _at_choice_point(config, 5, lambda w, c: _changes(w, c, mutate))


def test_the_world_key_leaves_out_the_history_and_nothing_else(config: Any) -> None:
    def both(world: Any, chooser: Any) -> tuple[bool, bool]:
        k = sc.state_key(world, chooser, history=sc.NONE)
        undo = _history_line(world)
        same = sc.state_key(world, chooser, history=sc.NONE) == k
        undo()
        undo = _flip_byte(world)
        other = sc.state_key(world, chooser, history=sc.NONE) != k
        undo()
        return same, other
    assert _at_choice_point(config, 5, both) == (True, True)


def test_an_unknown_history_mode_is_refused(config: Any) -> None:
    with pytest.raises(ValueError, match="history must be one of"):
        _at_choice_point(config, 1, lambda w, c: sc.state_key(w, c, history="some"))
