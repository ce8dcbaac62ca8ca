"""What a run's driver adds to the checker's report: how the run was made.

Rules:
- report.json gets `mode`: "real" (services as OS processes: deploy/run.py) or "sim" (sim/run.py:
  the same services in one process on virtual time). A simulated run also gets `sim_speedup`
  (virtual seconds simulated per wall-clock second spent simulating them) and a `sim` block
  (sim/run.py says what is in it).
- report.md gets a closing section saying the same for people.
- report.json gets `version`: the dmabuf-emu that made the run (a re-judged report keeps it), so
  `explore --around` can refuse a run of another version.
- The checker's part is untouched: these keys are added after it judged, and `dmabuf-emu check`
  keeps them when it judges a directory again (deploy/reporting.py rejudged).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from checker.report_md import render_report_md


def _sim_md(report: dict[str, Any]) -> str:
    sim = report.get("sim") or {}
    lines = ["", "## Simulation", "",
             f"Simulated by `dmabuf-emu sim`: the real services in one process on virtual time, every "
             f"choice made by one seeded scheduler. {sim.get('virtual_s', 0):.3f} virtual seconds in "
             f"{sim.get('wall_s', 0):.3f} s of wall clock (sim_speedup {report.get('sim_speedup')}), "
             f"{sim.get('steps', 0)} steps, {sim.get('decisions', 0)} decisions, history sha256 "
             f"`{sim.get('history_sha256', '')}`.",
             "",
             f"Replay it byte for byte: `dmabuf-emu replay {report.get('run_dir', 'DIR')} --out DIR2`."]
    if sim.get("guided"):
        g = sim["guided"]
        lines += ["", f"Decisions taken from the schedule: {g.get('from_guide', 0)}; made by the scheduler: {g.get('made', 0)}."]
    if sim.get("crashes"):
        lines += ["", "Services that crashed (tracebacks in logs/): " + ", ".join(sim["crashes"])]
    return "\n".join(lines) + "\n"


def tool_version() -> str:
    """This dmabuf-emu's version (the installed package's), "unknown" from a checkout never installed."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("dmabuf-emu")
    except PackageNotFoundError:
        return "unknown"


def finish_report(run_dir: Path, report: dict[str, Any], mode: str, **extra: Any) -> dict[str, Any]:
    """Add `mode`, `version` (and `extra` keys), rewrite report.json and report.md; returns the report."""
    report["mode"] = mode
    report["version"] = tool_version()
    report.update(extra)
    run_dir = Path(run_dir)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    md = render_report_md(report)
    if mode == "sim":
        md += _sim_md(report)
    (run_dir / "report.md").write_text(md)
    return report
