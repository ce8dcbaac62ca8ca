"""explore-table names the device timing it assumed, as explore does (issue 26: a verdict that
assumes punctual devices must say so), and a cell measured under the other assumption is run
again, never reused."""

from __future__ import annotations

import json
from pathlib import Path

from deploy import cli


def test_explore_table_assumes_stalls_unless_told_and_says_so(tmp_path: Path, capsys) -> None:
    out = tmp_path / "xt"
    args = ["explore-table", "--strategies", "pin", "--seeds", "1", "--cap", "2", "--bound", "1", "--out", str(out)]
    assert cli.main(args) == 0
    stalls = json.loads((out / "table.json").read_text())
    assert stalls["devices"] == "devices may stall past any timer"
    assert "Timing assumed: devices may stall past any timer." in (out / "table.md").read_text()
    assert cli.main(args + ["--no-stalls"]) == 0
    punctual = json.loads((out / "table.json").read_text())
    assert punctual["devices"] == "devices punctual" and punctual["command"].endswith(f"--no-stalls --out {out}")
    cell = json.loads((out / "runs" / "pin" / "exhaustive" / "seed-1" / "explore.json").read_text())
    assert cell["devices"] == "devices punctual"
    # a stall is a choice only under the first assumption: the punctual search has fewer schedules
    ex_stalls, ex_punctual = stalls["rows"][0]["exhaustive"], punctual["rows"][0]["exhaustive"]
    assert ex_stalls["exhausted"] and ex_punctual["exhausted"]
    assert ex_punctual["schedules"] < ex_stalls["schedules"], (ex_punctual, ex_stalls)
    capsys.readouterr()


def test_explore_table_state_cache_names_itself_and_is_not_reused_without_it(tmp_path: Path, capsys) -> None:
    """--state-cache runs the exhaustive cells with the cache (explore.json's states_cached says
    so), the table's command and header name it, and a cell run with it is run again without."""
    out = tmp_path / "xt"
    args = ["explore-table", "--strategies", "pin", "--seeds", "1", "--cap", "2", "--bound", "1", "--no-stalls",
            "--out", str(out)]
    assert cli.main(args + ["--state-cache"]) == 0
    table = json.loads((out / "table.json").read_text())
    assert table["state_cache"] and table["command"].endswith(f"--no-stalls --state-cache --out {out}")
    assert "| exhaustive (bound 1, state cache) |" in (out / "table.md").read_text()
    ex_dir = out / "runs" / "pin" / "exhaustive" / "seed-1"
    cached = json.loads((ex_dir / "explore.json").read_text())
    assert cached["exhausted"] and cached["states_cached"] > 0
    assert json.loads((out / "runs" / "pin" / "random" / "seed-1" / "explore.json").read_text())["states_cached"] is None
    assert cli.main(args) == 0
    plain = json.loads((ex_dir / "explore.json").read_text())
    assert plain["exhausted"] and plain["states_cached"] is None and "state cache" not in (out / "table.md").read_text()
    capsys.readouterr()
