"""checker: the race oracle of dmabuf-emu.

It reads a finished run's history (JSON lines ordered by t_ns, docs/events.md) and judges it:
names every race with a witness and derives every counter of the run's report.

Rules of the package:
- It imports nothing from protocol/, the services or the strategies: a judge that shares code
  with the judged shares its bugs. Standard library, numpy and (optionally) orjson only.
- Every verdict and counter comes from the events, never from a service's own tally.
- One streaming pass; memory bounded by live buffers, jobs and attachments, not history length.
- It owns the run's vocabulary, declared once: the event catalogue (checker/catalogue.py: every
  event and its fields; docs/events.md's tables are generated from it), the race kinds
  (checker/model.py RACE_KINDS) and the finding kinds (checker/findings.py FINDING_KINDS,
  CATCHES). deploy and sim import them.

Public API:
    merge_history(events_dir, out_path) -> int
    judge_history(history_path) -> dict
    check_run(run_dir, *, merge=True) -> dict
    checker.explain.write_witness_md(history, index, out_path) -> dict   (witness.md of one race)
    checker.catalogue.problems(event) -> list[str]   (what in an event the catalogue does not declare)
"""

from typing import Any

__all__ = ["merge_history", "judge_history", "check_run", "HistoryError"]


def __getattr__(name: str) -> Any:
    """The public API, imported when first asked for: `python -m checker.catalogue` (plain data)
    then runs without the oracle imported first."""
    if name in ("HistoryError", "merge_history"):
        from checker import history
        return getattr(history, name)
    if name in ("check_run", "judge_history"):
        from checker import run
        return getattr(run, name)
    raise AttributeError(f"module 'checker' has no attribute {name!r}")
