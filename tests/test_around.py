"""explore --around RUN_DIR (sim/around.py): a run with no race, replayed guided by its history,
and the deviations around it; refusals of what is not a run, of another version, and a history
with unreadable lines. The sweep over real runs is tests/around_sweep.py (slow: -m slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, cli

SMALL = ["--duration", "0.1", "--importers", "2", "--move-rate", "10"]


def _sim(tmp_path: Path, strategy: str, seed: int, name: str = "run") -> Path:
    run = tmp_path / name
    r = cli("sim", "--strategy", strategy, *SMALL, "--seed", str(seed), "--out", str(run), timeout=120)
    assert r.returncode == 0, r.stderr
    return run


def _report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def test_runs_record_the_version(tmp_path: Path) -> None:
    from sim.reporting import tool_version
    run = _sim(tmp_path, "pin", 1)
    assert _report(run)["version"] == tool_version()
    assert cli("check", str(run)).returncode == 0        # judged again: still the version that ran it
    assert _report(run)["version"] == tool_version()


def test_confirms_a_mutant_from_a_run_without_its_race(tmp_path: Path) -> None:
    run = _sim(tmp_path, "resv-fence+wait-write-only", 4)      # seed 4: no race in the run itself
    assert _report(run)["races"]["total"] == 0
    out = tmp_path / "around"
    r = cli("explore", "--around", str(run), "--out", str(out), "--schedules", "40", "--quiet", timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "around.json").read_text())
    found = doc["confirmed"] + doc["also_found"]
    assert doc["confirms"] and found, doc
    assert doc["first_confirmed_schedule"] >= 1 and doc["schedules"] <= 40
    first = found[0]
    assert first["race"]["kind"] == "stale_read"
    assert 1 <= len(first["deviations"]) <= doc["bound"] and first["one_minimal"]
    race_dir = Path(first["dir"])
    assert (race_dir / "witness.md").read_text().startswith("# Witness")
    assert _report(race_dir)["races"]["stale_read"] >= 1
    again = cli("replay", str(race_dir), "--out", str(tmp_path / "again"), timeout=120)
    assert again.returncode == 0 and "identical" in again.stdout, again.stdout + again.stderr


def test_a_correct_strategy_confirms_nothing(tmp_path: Path) -> None:
    run = _sim(tmp_path, "resv-fence", 4)
    out = tmp_path / "around"
    r = cli("explore", "--around", str(run), "--out", str(out), "--schedules", "40", "--quiet", timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "around.json").read_text())
    assert doc["schedules"] >= 10
    assert not doc["confirms"] and not doc["also_found"] and not doc["confirmed"], doc
    assert all(c["reason"] for c in doc["not_confirmed"])


def _first_found(tmp_path: Path, run: Path, schedules: int) -> dict:
    """explore --around the run, a deviation needed (what the undeviated replay shows does not count)."""
    from sim.around import around
    doc = around(run, tmp_path / "around", schedules=schedules, stop_at_first=True, base_counts=False)
    found = doc["confirmed"] + doc["also_found"]
    assert doc["confirms"] and found, doc
    return found[0]


def test_a_map_aimed_into_the_copy_confirms_no_kernel_fence_wait(tmp_path: Path) -> None:
    """map_into: a job's map served after the move let go of the lock, its reply fast, so that the
    job begins inside the pipelined copy (the mutant skips the KERNEL fence): seed 1's run has no
    such map, and no reversal or crossing before map_into makes one (the list ran out at 23)."""
    run = tmp_path / "run"
    r = cli("sim", "--strategy", "resv-fence+no-kernel-fence-wait", *SMALL, "--buffer-size", "4MiB", "--seed", "1",
            "--out", str(run), timeout=120)
    assert r.returncode == 0, r.stderr
    assert _report(run)["races"]["total"] == 0
    first = _first_found(tmp_path, run, 30)
    assert first["race"]["kind"] == "unfenced_access"
    assert [d["kind"] for d in first["deviations"]] == ["map_into"], first


def test_a_map_into_a_held_fence_wait_confirms_map_unlocked(tmp_path: Path) -> None:
    """map_into after a hold: in seed 2's run no job is on a buffer when it moves, so the move
    waits for no fence; one importer's job held on it across the move makes it wait, the other
    importer's map aimed into that wait is served the old placement without the lock. Two
    deviations, each needed (1-minimal)."""
    run = _sim(tmp_path, "resv-fence+map-unlocked", 2)
    assert _report(run)["races"]["total"] == 0
    first = _first_found(tmp_path, run, 40)
    assert first["race"]["kind"] in ("lost_write", "stale_read")
    assert [d["kind"] for d in first["deviations"]] == ["retarget", "map_into"], first
    assert first["one_minimal"]
    hold, into = first["deviations"]
    assert hold["importer"] != into["importer"] and hold["buffer"] == into["buffer"]


def _refusal(*args: str) -> str:
    r = cli("explore", *args, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "is not a run: no readable report.json" in _refusal("--around", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    (tmp_path / "noparams").mkdir()
    (tmp_path / "noparams" / "report.json").write_text('{"races": {}}')
    assert "has no run parameters" in _refusal("--around", str(tmp_path / "noparams"), "--out", str(tmp_path / "o"))
    assert "--bound" in _refusal("--around", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--bound", "0")


def test_refuses_a_run_of_another_version_unless_forced(tmp_path: Path) -> None:
    from sim.reporting import tool_version
    run = _sim(tmp_path, "pin", 1)
    rep = _report(run)
    rep["version"] = "0.0.1-old"
    (run / "report.json").write_text(json.dumps(rep))
    line = _refusal("--around", str(run), "--out", str(tmp_path / "o"))
    assert "version 0.0.1-old" in line and f"dmabuf-emu {tool_version()}" in line and "--force" in line
    del rep["version"]
    (run / "report.json").write_text(json.dumps(rep))
    assert "records none" in _refusal("--around", str(run), "--out", str(tmp_path / "o"))
    r = cli("explore", "--around", str(run), "--out", str(tmp_path / "o"), "--force", "--schedules", "1",
            "--quiet", timeout=300)
    assert r.returncode == 0, r.stderr


def test_unreadable_history_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    run = _sim(tmp_path, "pin", 1)
    lines = (run / "history.jsonl").read_bytes().splitlines(keepends=True)
    garbled = lines[:40] + [b"{not json\n"] + lines[40:] + [lines[-1][: len(lines[-1]) // 2]]   # and a truncated last line
    (run / "history.jsonl").write_bytes(b"".join(garbled))
    out = tmp_path / "o"
    r = cli("explore", "--around", str(run), "--out", str(out), "--schedules", "1", timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "around.json").read_text())
    assert doc["unreadable_lines"] == 2 and doc["history_lines"] == len(lines) + 2
    assert "2 of" in r.stderr and "unreadable" in r.stderr


@pytest.mark.slow
def test_sweep_confirms_a_mutant_in_real_runs(short_dir: Path) -> None:
    """The must-show's sweep for one mutant, on two real runs (the full sweep: tests/around_sweep.py).
    A short directory: the runs' ipc sockets sit under it (a tmp_path made one 108 bytes long)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "around_sweep.py"), "mutants", "--out", str(short_dir),
                        "--runs", "2", "--mutant", "resv-fence+wait-write-only"], capture_output=True, text=True,
                       env=env, timeout=1800)
    assert r.returncode == 0, r.stderr
    row = json.loads((short_dir / "mutants.json").read_text())["result"]["resv-fence+wait-write-only"]
    assert row["kept"] == 2 and row["confirmed"] >= 1, row
