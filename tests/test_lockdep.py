"""potential_deadlock (checker/lockdep.py): the signal-after-next-map mutant is flagged in every
run, including runs where no deadlock formed; correct strategies never are."""

from __future__ import annotations

import pytest

from checker.findings import CATCHES, FINDING_KINDS, POTENTIAL_DEADLOCK
from checker.oracle import Oracle
from tests.checker_helpers import simulated_lines


def _findings(lines: list[bytes]) -> dict:
    o = Oracle()
    o.run(lines)
    return o.report()["findings"]


def test_declared_as_a_finding() -> None:
    # not yet among CATCHES: sim/explore.py's CATCH_TITLES must name it first (a search's catch)
    assert POTENTIAL_DEADLOCK in FINDING_KINDS and POTENTIAL_DEADLOCK not in CATCHES


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
