"""Adversarial DMA timing (issue 26 item 2): --dma-stall in runs, stalls as choices of the search.

- --dma-stall P,MS: out of range is one line and exit 2; the workload's own draws are the same with
  and without it; a stalled job's device holds it MS before its last chunk (dma_end stalled_ms).
- Stalls as choices: a world that may stall but is never told to asks, logs, and changes no event;
  a search stalls by default and says so, --no-stalls says "devices punctual"; the grace strategy
  (docs/examples/grace.py) is caught only when devices may stall.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.checker_helpers import SIM_RUN
from deploy.options import RunParams
from importer_svc.workload import Workload, WorkloadConfig
from sim.options import DEVICES, SimOptions
from sim.run import simulate_in_memory
from sim.world import STALL_STREAM
from tests.helpers import ROOT, cli

GRACE = str(ROOT / "docs" / "examples" / "grace.py")


@pytest.mark.parametrize("value", ["1.5,10", "-0.1,10", "0.1,0", "0.1,600001", "0.1", "a,b", "0.1,nan"])
def test_dma_stall_out_of_range_is_one_line_exit_2(value: str, tmp_path: Path) -> None:
    r = cli("sim", "--strategy", "pin", f"--dma-stall={value}", "--out", str(tmp_path / "x"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--dma-stall" in lines[0] and "P,MS" in lines[0], r.stderr
    assert not (tmp_path / "x").exists()


def test_workload_draws_the_same_jobs_with_and_without_stalls() -> None:
    plain = Workload(WorkloadConfig(), seed=3, index=1)
    stalled = Workload(WorkloadConfig(dma_stall="0.5,40"), seed=3, index=1)
    a = [plain.next_job([0, 1, 2, 3]) for _ in range(200)]
    b = [stalled.next_job([0, 1, 2, 3]) for _ in range(200)]
    assert [dataclasses.replace(j, stall_s=0.0) for j in b] == a          # type: ignore[type-var]
    stalls = [j.stall_s for j in b]                                        # type: ignore[union-attr]
    assert set(stalls) == {0.0, 0.04}
    assert 60 < stalls.count(0.04) < 140                                   # about half of 200
    assert all(j.stall_s == 0.0 for j in a)                                # type: ignore[union-attr]


def _sim(**kw: object) -> list[dict]:
    params = RunParams(**{**SIM_RUN, **kw})
    r = simulate_in_memory(params, judge=False)
    assert not r.outcome.crashes and r.outcome.error is None
    return [json.loads(line) for line in r.history]


def test_a_stalled_job_is_held_before_its_last_chunk() -> None:
    events = _sim(seed=2, dma_stall="1,50")
    begins = {(e["svc"], e["job"]): e for e in events if e["event"] == "dma_begin" and not e.get("rogue")}
    ends = [e for e in events if e["event"] == "dma_end" and e["status"] == "ok" and not e.get("rogue")]
    assert ends
    for e in ends:
        assert e["stalled_ms"] == 50
        took = e["t_ns"] - begins[(e["svc"], e["job"])]["t_ns"]
        assert took >= 50e6                     # the stall, plus the job as drawn
        assert e["last_access_ns"] >= begins[(e["svc"], e["job"])]["t_ns"] + 50e6
    assert not any("stalled_ms" in e for e in _sim(seed=2) if e["event"] == "dma_end")


def test_stall_choices_left_to_the_default_change_no_event() -> None:
    params = RunParams(**{**SIM_RUN, "seed": 7, "duration": 0.3})
    off = simulate_in_memory(params, judge=False)
    on = simulate_in_memory(params, judge=False, options=SimOptions(stalls=True))
    assert on.history == off.history
    streams = on.outcome.scheduler.streams
    asked = [e for e in on.outcome.scheduler.log.entries if e[0] == "p" and streams[e[1]].startswith(STALL_STREAM)]
    assert asked and all(e[2] == 0 for e in asked)
    assert not any(s.startswith(STALL_STREAM) for s in off.outcome.scheduler.streams)


def test_sim_options_stalls_is_written_only_when_on() -> None:
    assert "stalls" not in SimOptions().as_dict()
    assert SimOptions(stalls=True).as_dict()["stalls"] is True
    assert SimOptions.from_mapping({"stalls": True}, "x").stalls is True


def _explore(out: Path, *extra: str) -> tuple[int, dict]:
    r = cli("explore", "--strategy", GRACE, "--search", "random", "--schedules", "100", "--no-shrink", "--quiet",
            "--out", str(out), *extra, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.returncode, json.loads((out / "explore.json").read_text()) | {"stdout": r.stdout}


def test_grace_is_caught_by_random_search_only_when_devices_may_stall(tmp_path: Path) -> None:
    _, found = _explore(tmp_path / "stalls")
    assert found["races"], found
    assert found["first_race_schedule"] <= 100
    assert found["devices"] == DEVICES[True] and f"timing: {DEVICES[True]}" in found["stdout"]
    assert found["config"]["sim"]["stalls"] is True
    _, missed = _explore(tmp_path / "punctual", "--no-stalls")
    assert not missed["races"] and missed["schedules"] == 100
    assert missed["devices"] == DEVICES[False] and "devices punctual (--no-stalls)" in missed["stdout"]


def test_grace_races_in_a_simulated_run_only_with_dma_stall() -> None:
    def races(**kw: object) -> int:
        params = RunParams(**{**SIM_RUN, "strategy": GRACE, "seed": 1, "duration": 1.0, **kw})
        r = simulate_in_memory(params)
        assert not r.outcome.crashes and r.outcome.error is None
        return r.report["races"]["total"]

    assert races(dma_stall="0.2,1000") > 0
    assert races() == 0


def test_a_stall_past_a_short_fence_timeout_is_searched_whole_and_still_catches(tmp_path: Path) -> None:
    """Bound 1 with stalls on resv-fence: the default small configuration's 1,204 schedules are
    mostly the heartbeats (every lease/4 = 125 ms) that a stall past the 1 s fence timeout crosses;
    with the fence timeout under the heartbeat period the same search is exhausted in a few hundred,
    every stall past the timeout still one of them, and a broken rule is still caught at once."""
    short = ("--search", "exhaustive", "--bound", "1", "--fence-timeout-ms", "20", "--no-shrink", "--quiet")
    r = cli("explore", "--strategy", "resv-fence", *short, "--out", str(tmp_path / "rf"), timeout=300)
    assert r.returncode == 0, r.stderr
    done = json.loads((tmp_path / "rf" / "explore.json").read_text())
    assert done["exhausted"] and done["races"] == {} and 100 < done["schedules"] < 1204, done["schedules"]
    assert done["devices"] == DEVICES[True] and done["config"]["params"]["fence_timeout_ms"] == 20.0
    r = cli("explore", "--strategy", "resv-fence+early-signal", *short, "--out", str(tmp_path / "es"), timeout=300)
    caught = json.loads((tmp_path / "es" / "explore.json").read_text())
    assert caught["races"] and caught["first_race_schedule"] is not None, r.stderr
