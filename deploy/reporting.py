"""`dmabuf-emu check` on a run directory: the report judged again keeps how the run was made.

Rules:
- A directory with schedule.json is a simulated run: its `mode` is "sim" and its `sim_speedup`
  and `sim` block are kept from the report it had; any other is "real" (sim/reporting.py
  finish_report writes both).
- The checker's part is untouched: these keys are added after it judged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sim.reporting import finish_report


def rejudged(run_dir: Path, report: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """`dmabuf-emu check`: the mode of the directory, and a simulated run's figures kept."""
    run_dir = Path(run_dir)
    made_by = {"version": previous["version"]} if previous and "version" in previous else {}   # who ran it
    if (run_dir / "schedule.json").exists():
        kept = {k: previous[k] for k in ("sim_speedup", "sim") if previous and k in previous}
        return finish_report(run_dir, report, "sim", **kept, **made_by)
    return finish_report(run_dir, report, "real", **made_by)


def read_report(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(run_dir) / "report.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
