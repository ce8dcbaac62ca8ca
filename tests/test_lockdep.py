"""potential_deadlock (checker/lockdep.py): the signal-after-next-map mutant is flagged in every
run, including runs where no deadlock formed; correct strategies never are."""

from __future__ import annotations

import json

import pytest

from checker.findings import CATCHES, FINDING_KINDS, POTENTIAL_DEADLOCK
from checker.lockdep import LockDep
from checker.oracle import Oracle
from tests.checker_helpers import simulated_lines


def _findings(lines: list[bytes]) -> dict:
    o = Oracle()
    o.run(lines)
    return o.report()["findings"]


def test_declared_as_a_finding_and_a_catch() -> None:
    from sim.explore import CATCH_TITLES
    assert POTENTIAL_DEADLOCK in FINDING_KINDS and POTENTIAL_DEADLOCK in CATCHES
    assert "lockdep" in CATCH_TITLES[POTENTIAL_DEADLOCK]


def test_the_finding_hook_hears_each_finding_once() -> None:
    # what a search needs to count it as a catch (sim/search/trial.py judge keys it)
    heard: list = []
    dep = LockDep(on_finding=lambda what, svc, t, fields: heard.append((what, svc, t, fields)))
    for line in simulated_lines(1, strategy="resv-fence+signal-after-next-map", duration=0.3):
        dep.feed(json.loads(line))
    assert dep.count >= 1 and len(heard) == dep.count
    what, svc, t, fields = heard[0]
    assert (what, fields["finding"]) == ("potential deadlock", POTENTIAL_DEADLOCK)
    assert svc == fields["importer"] and fields["buffer"] is not None and t == fields["t_ns"]
    assert len({(f["importer"], f["buffer"]) for *_, f in heard}) == len(heard)


@pytest.mark.parametrize("seed", range(1, 11))
def test_signal_after_next_map_is_flagged_in_every_run(seed: int) -> None:
    # a long fence timeout (no deadlock finding forms) on odd seeds; few moves on even ones
    kw = dict(fence_timeout_ms=60000.0) if seed % 2 else dict(move_rate=10.0)
    f = _findings(simulated_lines(seed, strategy="resv-fence+signal-after-next-map", duration=0.3, **kw))
    assert f[POTENTIAL_DEADLOCK]["count"] >= 1
    item = f[POTENTIAL_DEADLOCK]["items"][0]
    assert [e["event"] for e in item["events"]][0] == "fence_blocked"
    assert "whether or not it formed" in item["sentence"]


@pytest.mark.parametrize("strategy", ["resv-fence", "revoke", "pin", "move-notify", "move-notify-ack",
                                      "unmap-hint", "revalidate"])
@pytest.mark.parametrize("faults", [(), ("delay:ms=2,jitter_ms=2,p=0.5", "dup:p=0.1"),
                                    ("pause:target=importer-2,at=0.1,for=0.3",)])
def test_correct_strategies_are_never_flagged(strategy: str, faults: tuple[str, ...]) -> None:
    f = _findings(simulated_lines(1, faults, strategy=strategy, duration=0.4))
    assert f[POTENTIAL_DEADLOCK]["count"] == 0


def test_flagged_in_a_run_where_the_cycle_never_formed() -> None:
    # one importer, a tenth of a second, 4 moves: with seed 6 no move of this run waited for a
    # fence whose importer then asked for the lock, so no deadlock finding; lockdep's still stands
    f = _findings(simulated_lines(6, strategy="resv-fence+signal-after-next-map", importers=1, buffers=8,
                                  duration=0.1, move_rate=20.0))
    assert f["deadlock"]["count"] == 0
    assert f[POTENTIAL_DEADLOCK]["count"] >= 1
