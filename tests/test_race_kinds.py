"""Race kinds are the checker's (checker/model.py RACE_KINDS): every table deploy builds from a
report counts each of them, write_after_invalidate (Linux 7.1) included.

The run is a real simulated one (sim/run.py simulate: the services on virtual time, judged by the
checker) of `revoke` under rogue devices, seed 2: its races are mostly write_after_invalidate, and
its first racing job is one of them, before its first lost_write. A campaign's summary, the run
summary and compare's table are built from its run directory by their own functions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from checker.model import RACE_KINDS, WRITE_AFTER_INVALIDATE
from deploy import campaign_report, compare
from deploy.options import RunParams
from deploy.summary import summary_lines
from runtime import faults as F
from sim.run import simulate

SEED = 2
PARAMS = dict(strategy="revoke", importers=3, duration=1.0, seed=SEED, faults=(F.parse_cli("rogue:ms=20,p=0.3"),))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """OUT/runs/revoke/rogue/seed-2 as a campaign lays it out, and its report."""
    out = tmp_path_factory.mktemp("campaign")
    run_dir = out / "runs" / "revoke" / "rogue" / f"seed-{SEED}"
    simulate(RunParams(**PARAMS), run_dir)
    return out, json.loads((run_dir / "report.json").read_text())


def _table(md: str, title: str = "") -> dict[str, str]:
    """The one data row of the markdown table under `title` (or the first table), as column -> cell."""
    body = (md.split(title, 1)[1] if title else md).split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("|")]
    head, _, row = rows[:3]
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    return dict(zip(cells(head), cells(row)))


def test_the_run_has_write_after_invalidate_races_first(run: tuple[Path, dict[str, Any]]) -> None:
    """The premise of the tests below, said of this seed: a kind the old copies did not list."""
    _, report = run
    assert report["races"][WRITE_AFTER_INVALIDATE] > 0
    assert report["races"][WRITE_AFTER_INVALIDATE] < report["races"]["total"]   # other kinds too
    ends = {k: ws[0]["job"]["end_t_ns"] for k, ws in report["witnesses"].items() if ws}
    assert min(ends, key=ends.__getitem__) == WRITE_AFTER_INVALIDATE and len(ends) > 1


def test_campaign_summary_counts_every_kind(run: tuple[Path, dict[str, Any]]) -> None:
    out, report = run
    summary = campaign_report.write_summary(out, plots=False)
    row = summary["rows"][0]
    assert row["races_by_kind"] == {k: report["races"][k] for k in RACE_KINDS}
    assert sum(row["races_by_kind"].values()) == report["races"]["total"]
    # the first race: the end of the earliest racing job of any kind, from the workload's start
    run_dir = out / "runs" / "revoke" / "rogue" / f"seed-{SEED}"
    start = campaign_report.workload_start_ns(run_dir)
    first_wai = report["witnesses"][WRITE_AFTER_INVALIDATE][0]["job"]["end_t_ns"]
    assert isinstance(start, int)
    assert row["first_race_s"] == [pytest.approx((first_wai - start) / 1e9)]
    kinds = _table((out / "summary.md").read_text(), "### Races by kind (totals)")
    assert [k for k in kinds if k in RACE_KINDS] == list(RACE_KINDS)
    assert kinds[WRITE_AFTER_INVALIDATE] == str(report["races"][WRITE_AFTER_INVALIDATE]) != "0"


def test_run_summary_and_compare_table_count_every_kind(run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, report = run
    n = report["races"][WRITE_AFTER_INVALIDATE]
    races_line = next(line for line in summary_lines(report, "X") if line.lstrip().startswith("races"))
    assert f"{WRITE_AFTER_INVALIDATE} {n}" in races_line
    shutil.copytree(out / "runs" / "revoke" / "rogue" / f"seed-{SEED}", tmp_path / "revoke")
    row = _table(compare.table(tmp_path, ["revoke"]))
    assert row[" / ".join(RACE_KINDS)] == " / ".join(str(report["races"][k]) for k in RACE_KINDS)
