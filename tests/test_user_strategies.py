"""Strategies of the user's own, end to end: `--strategy ./file.py` wherever a strategy is named,
checked before anything starts, run by real services, judged like the built-in ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import ROOT, cli
from tests.test_e2e import assert_nothing_left, do_run, history

EXAMPLE = ROOT / "docs" / "examples" / "move_notify_ack_defer.py"


def copy_of(tmp: Path, builtin: str) -> Path:
    """A strategy file that copies a built-in one's tables under a name of its own."""
    module = builtin.replace("-", "_")
    path = tmp / f"{module}_copy.py"
    path.write_text(textwrap.dedent(f"""\
        from protocol.exporter import ExporterSpec
        from protocol.importer import ImporterSpec
        from protocol.strategies import {module} as base
        NAME = "{builtin}-copy"
        SUMMARY = "{builtin}, copied"
        EXPORTER = ExporterSpec(NAME, base.EXPORTER.table)
        IMPORTER = ImporterSpec(NAME, base.IMPORTER.table)
    """))
    return path


def test_a_broken_strategy_is_refused_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(EXAMPLE.read_text().replace("Step.DEFER_MAP,", "Step.DEFER_MAPP,"))
    out = tmp_path / "run"
    for args in (["run", "--strategy", str(bad), "--out", str(out)],
                 ["up", "--strategy", str(bad), "--out", str(out)],
                 ["compare", "--strategy", str(bad), "--duration", "1", "--out", str(out)],
                 ["campaign", "--strategies", f"pin,{bad}", "--out", str(out)]):
        r = cli(*args, timeout=300)
        assert r.returncode == 2, (args, r.stderr)
        line = r.stderr.strip()
        assert "\n" not in line and str(bad) in line and "Step has no member 'DEFER_MAPP'" in line, line
        assert not out.exists(), f"{args[0]} made its directory: something started"
    missing = tmp_path / "missing.py"
    missing.write_text(EXAMPLE.read_text().replace(
        "(MoveState.NOTIFYING, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.DEFER_MAP,)),),",
        "(MoveState.FENCE_WAIT, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.DEFER_MAP,)),),").replace(
        "**move_notify_ack.EXPORTER.table,",
        "**{k: v for k, v in move_notify_ack.EXPORTER.table.items() if k != (MoveState.NOTIFYING, MoveEvent.MAP)},"))
    r = cli("run", "--strategy", str(missing), "--out", str(out), timeout=300)
    assert r.returncode == 2 and "exporter row (notifying, map): missing" in r.stderr and not out.exists()


def test_the_services_load_a_strategy_by_path_and_refuse_a_broken_one(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("NAME = 'x'\n")
    for module in ("exporter_svc", "importer_svc"):
        r = subprocess.run([sys.executable, "-m", module, *_args(module, tmp_path, bad)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "--strategy" in r.stderr and "this one has no SUMMARY" in r.stderr, r.stderr
    assert not list(Path("/dev/shm").glob("dmabuf-t-*"))


def _args(module: str, tmp: Path, strategy: Path) -> list[str]:
    common = ["--out", str(tmp), "--control", f"ipc://{tmp}/c", "--strategy", str(strategy)]
    if module == "exporter_svc":
        return ["--run-id", "t", "--endpoint", f"ipc://{tmp}/e", *common]
    return ["--name", "importer-1", "--index", "1", "--exporter", f"ipc://{tmp}/e", *common]


def test_a_copy_of_a_built_in_races_like_it_in_a_real_run(tmp_path: Path, short_dir: Path) -> None:
    reports = {}
    for strategy, name in (("move-notify", "move-notify"), (str(copy_of(tmp_path, "move-notify")), "move-notify-copy")):
        out = short_dir / name
        reports[name] = do_run(out, strategy=strategy, importers=3, duration=2.0, seed=5)
        starts = [e for e in history(out) if e["event"] == "service_start"]
        assert len(starts) == 4 and {e["strategy"] for e in starts} == {name}, "every service ran it"
    builtin, mine = reports.values()
    assert builtin["races"]["total"] > 0 and mine["races"]["total"] > 0, "move-notify races, and so does its copy"
    assert mine["strategy"].endswith("move_notify_copy.py"), "the report names the file the services ran"
    assert mine["moves"]["completed"] > 0 and builtin["moves"]["completed"] > 0


def test_a_copy_of_a_built_in_in_a_campaign_and_the_example_in_run(tmp_path: Path, short_dir: Path) -> None:
    copy = copy_of(tmp_path, "resv-fence")
    out, scratch = tmp_path / "c", tmp_path / "s"
    env = {**os.environ, "DMABUF_EMU_SCRATCH": str(scratch)}
    r = cli("campaign", "--strategies", f"resv-fence,{copy}", "--faults", "none", "--seeds", "1",
            "--duration", "1", "--importers", "2", "--no-plots", "--out", str(out), env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {x["strategy"]: x for x in json.loads((out / "summary.json").read_text())["rows"]}
    assert set(rows) == {"resv-fence", "resv-fence-copy"}
    assert all(x["runs"] == 1 and x["runs_with_race"] == 0 and x["moves_completed"] > 0 for x in rows.values()), rows
    assert (out / "runs" / "resv-fence-copy" / "none" / "seed-1" / "report.json").exists()
    report = do_run(short_dir, strategy=str(EXAMPLE), importers=3, duration=2.0)
    assert report["moves"]["completed"] > 0 and report["corruption"]["jobs"] == 0
    deferred = [e for e in history(short_dir) if e["event"] == "map_served" and e["deferred_ns"] > 0]
    assert deferred, "maps that came during an ack wait were held until the move was done"
    assert_nothing_left(short_dir)


def test_a_strategy_naming_a_guard_or_step_that_no_longer_exists_gets_one_line(tmp_path: Path) -> None:
    """Written against older names (NO_SPACE was once the guard's value; COPYY a slip): the file,
    the line, the row the name is in and the name, whatever the command."""
    path = tmp_path / "old_names.py"
    path.write_text(textwrap.dedent("""\
        from protocol.exporter import BASE_TABLE, ExporterSpec, Guard, MoveEvent, MoveState, Step
        from protocol.importer import BASE_TABLE as IMPORTER_BASE, ImporterSpec
        from protocol.machine import Rule
        NAME = "old-names"
        SUMMARY = "written before a rename"
        EXPORTER = ExporterSpec(NAME, {
            **BASE_TABLE,
            (MoveState.IDLE, MoveEvent.MOVE_WANTED): (
                Rule(Guard.PINNED, MoveState.IDLE, (Step.REFUSE,)),
                Rule(Guard.NO_SPACE, MoveState.IDLE, (Step.REFUSE,)),
                Rule(Guard.ALWAYS, MoveState.COPYING, (Step.BEGIN, Step.COPY))),
        })
        IMPORTER = ImporterSpec(NAME, IMPORTER_BASE)
    """))
    for args in (("strategies", str(path), "--table"), ("strategies", "--check", str(path))):
        r = cli(*args)
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"dmabuf-emu: {path}:10: row (MoveState.IDLE, MoveEvent.MOVE_WANTED): "
                                   f"Guard has no member 'NO_SPACE'"), r.stderr
    path.write_text(path.read_text().replace("Guard.NO_SPACE", "Guard.NO_ROOM").replace("Step.COPY)", "Step.COPYY)"))
    r = cli("strategies", str(path), "--table")
    assert r.returncode == 2 and r.stderr.strip() == (f"dmabuf-emu: {path}:11: row (MoveState.IDLE, MoveEvent.MOVE_WANTED): "
                                                      f"Step has no member 'COPYY' (did you mean COPY?)")
    path.write_text(path.read_text().replace("Step.COPYY)", "Step.COPY)"))
    r = cli("strategies", str(path), "--table")
    assert r.returncode == 0 and "strategy  idle" in r.stdout and "no_room" in r.stdout
