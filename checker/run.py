"""Judging a finished run: the entry points other code calls.

Rules:
- `judge_history` reads the merged history once, streaming, and returns the report dict.
- `check_run` (re)builds `run_dir/history.jsonl` from `run_dir/events/` when asked to merge,
  judges it in one pass that also writes `trace.json`, then writes `report.json` (indent 2,
  sorted keys) and `report.md`. It returns the report dict.
- A missing history or events directory is a `HistoryError` (a FileNotFoundError) naming the
  path; garbled lines are counted in the report, never fatal: `history_errors` counts the lines
  the merge skipped (truncated or garbled, also in `merge`) plus those the judge could not read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from checker.history import HistoryError, merge_history, open_history
from checker.oracle import Oracle
from checker.report_md import render_report_md
from checker.trace import TraceWriter


def judge_history(history_path: Path) -> dict[str, Any]:
    """The report of one history, computed in one streaming pass."""
    oracle = Oracle()
    with open_history(Path(history_path)) as fh:
        oracle.run(fh)
    return oracle.report()


def judge_and_trace(history_path: Path, trace_path: Path) -> dict[str, Any]:
    """The report of one history, writing its trace.json in the same pass."""
    with open_history(Path(history_path)) as fh:
        tracer = TraceWriter(Path(trace_path))
        oracle = Oracle(on_race=tracer.on_race, on_event=tracer.on_event, on_finding=tracer.on_finding)
        try:
            oracle.run(fh)
            # report() judges the unfinished jobs first, so their race instants reach the trace
            report = oracle.report()
        finally:
            tracer.close(oracle.t1)
    return report


def check_run(run_dir: Path, *, merge: bool = True) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HistoryError(f"no run directory at {run_dir}")
    history = run_dir / "history.jsonl"
    merge_stats: dict[str, int] | None = None
    if merge:
        if not (run_dir / "events").is_dir() and history.exists():
            raise HistoryError(f"no events directory at {run_dir / 'events'} to merge; "
                               f"{history} exists: judge it as is with merge=False (--no-merge)")
        merge_stats = {}
        merge_history(run_dir / "events", history, stats=merge_stats)
    report = judge_and_trace(history, run_dir / "trace.json")
    if merge_stats is not None:
        report["merge"] = merge_stats
        # lines the merge could not read (a SIGKILLed service's cut-short last line) are history errors too
        report["history_errors"] += merge_stats.get("truncated", 0) + merge_stats.get("garbled", 0)
    report["run_dir"] = str(run_dir)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    (run_dir / "report.md").write_text(render_report_md(report))
    return report
