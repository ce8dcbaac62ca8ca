"""explore --around and lockdep's potential deadlocks (sim/around.py): each potential_deadlock of
the run is a candidate; a schedule whose verdict has only potential_deadlock (lockdep flags it
whether or not the cycle formed) confirms nothing; a schedule in which the deadlock forms does.
The run: a simulated resv-fence+signal-after-next-map run in which no deadlock formed (one
importer, 16 buffers, 20 ms think time: it never came back to a buffer while a move of it waited
for its held fence; each wait ended by the fence timeout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from checker.findings import DEADLOCK, POTENTIAL_DEADLOCK

RUN = dict(strategy="resv-fence+signal-after-next-map", importers=1, buffers=16, duration=0.2, move_rate=10.0,
           think_ms=20.0, seed=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from runtime.runparams import RunParams
    from sim.run import simulate
    out = tmp_path_factory.mktemp("around-deadlock") / "run"
    simulate(RunParams(**RUN), out)
    return out


def _report(run: Path) -> dict[str, Any]:
    return json.loads((run / "report.json").read_text())


def test_the_run_has_potential_deadlocks_and_no_deadlock(run: Path) -> None:
    f = _report(run)["findings"]
    assert f[POTENTIAL_DEADLOCK]["count"] >= 1 and f[DEADLOCK]["count"] == 0, f
    assert _report(run)["races"]["total"] == 0


def test_each_potential_deadlock_is_a_candidate(run: Path) -> None:
    from sim.around import lockdep_candidates
    cands = lockdep_candidates(run / "history.jsonl")
    items = _report(run)["findings"][POTENTIAL_DEADLOCK]["items"]
    assert [(c["importer"], c["buffer"], c["fence"]) for c in cands] == \
        [(i["importer"], i["buffer"], i["fence"]) for i in items]
    assert all(c["kind"] == POTENTIAL_DEADLOCK and c["other"]["event"] == "fence_wait_begin" for c in cands)


def test_a_schedule_with_only_potential_deadlock_confirms_nothing(run: Path, tmp_path: Path) -> None:
    from sim.around import around
    doc = around(run, tmp_path / "around", schedules=0)          # the base schedule alone
    n = _report(run)["findings"][POTENTIAL_DEADLOCK]["count"]
    base = [r["kind"] for r in doc["base"]["races"]]
    assert POTENTIAL_DEADLOCK in base and DEADLOCK not in base, base
    assert doc["by_kind"][POTENTIAL_DEADLOCK] == n and doc["candidates"] == n
    assert not doc["confirms"] and not doc["confirmed"] and not doc["also_found"], doc
    assert len(doc["not_confirmed"]) == n
    assert all(c["kind"] == POTENTIAL_DEADLOCK and c["reason"].startswith("not tried: ")
               and "--schedules 0" in c["reason"] for c in doc["not_confirmed"]), doc["not_confirmed"]


def test_a_formed_deadlock_confirms_it(run: Path, tmp_path: Path) -> None:
    from sim.around import around
    doc = around(run, tmp_path / "around", schedules=30, stop_at_first=True)
    assert doc["into_lock_waits"] >= 1
    assert doc["confirms"] and doc["confirmed"] and doc["first_confirmed_schedule"] >= 1, doc
    assert not doc["also_found"]
    first = doc["confirmed"][0]
    assert first["kind"] == POTENTIAL_DEADLOCK and first["race"]["kind"] == DEADLOCK
    # the deadlock involves the candidate: its importer's fence or its buffer's lock
    assert first["race"]["importer"] == first["importer"] or first["race"]["buffer"] == first["buffer"]
    assert first["deviations"] and first["deviations"][0]["kind"] == "retarget_into" and first["one_minimal"]
    written = _report(Path(first["dir"]))["findings"][DEADLOCK]
    assert written["count"] >= 1
    # a schedule's potential_deadlock is never reported as found
    assert all(c["race"]["kind"] != POTENTIAL_DEADLOCK for c in doc["confirmed"])


def test_a_run_without_potential_deadlocks_aims_nothing_into_lock_waits(tmp_path: Path) -> None:
    # around.json's into_lock_waits counts only the potential deadlocks' deviation sets, not the
    # maps aimed into moves (map_into's pairs), which a correct strategy's moves do get
    from runtime.runparams import RunParams
    from sim.around import around
    from sim.run import simulate
    run = tmp_path / "run"
    simulate(RunParams(strategy="resv-fence", importers=2, buffers=4, duration=0.2, move_rate=20.0, seed=1), run)
    doc = around(run, tmp_path / "around", schedules=0)
    assert POTENTIAL_DEADLOCK not in doc["by_kind"] and doc["into_lock_waits"] == 0, doc["by_kind"]
