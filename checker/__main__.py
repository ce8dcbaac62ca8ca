"""`python -m checker RUN_DIR [--fail-on-race] [--fail-on-finding] [--no-merge]`: judge a run and
print a summary.

Exit status: 0 judged (or nothing found that a --fail-on flag names), 1 a race found with
--fail-on-race or a finding (deadlock, fence forced, timeout, revoke_incomplete, stuck) with
--fail-on-finding, 2 the run could not be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from checker.findings import DEADLOCK, FENCE_FORCED, REVOKE_INCOMPLETE, STUCK, TIMEOUT
from checker.history import HistoryError
from checker.run import check_run


def summary(report: dict[str, Any]) -> str:
    races = report["races"]
    ops = report["ops"]
    moves = report["moves"]
    corr = report["corruption"]
    lines = [
        f"strategy {report.get('strategy')}  seed {report.get('seed')}  events {report['events']}  "
        f"observed {report['duration_observed_s']:.3f} s",
        f"ops: attach {ops['attach']}  map {ops['map']}  unmap {ops['unmap']}  "
        f"dma read {ops['dma_read']}  write {ops['dma_write']}",
        f"moves: attempted {moves['attempted']}  completed {moves['completed']}  refused {moves['refused']}  "
        f"queued {moves['queued']}",
        f"races: {races['total']} (" + ", ".join(f"{k} {v}" for k, v in races.items()
                                                 if k not in ("total", "first_s")) + ")",
        f"corruption: {corr['jobs']} jobs, {corr['lines']} lines, {corr['linked']} linked to a race; "
        f"iommu faults {report['iommu_faults']}",
    ]
    f = report["findings"]
    if f["total"]:
        lines.append(f"findings: {f['total']} (deadlock {f[DEADLOCK]['count']}, fences forced "
                     f"{f[FENCE_FORCED]['count']}, timeouts {f[TIMEOUT]['count']}, revocations incomplete "
                     f"{f[REVOKE_INCOMPLETE]['count']}, stuck {f[STUCK]['count']})")
    if f[STUCK]["count"]:
        lines.append(f"stuck: {f[STUCK]['summary']}")
    for kind, items in report["witnesses"].items():
        if items:
            lines.append(f"  e.g. {kind}: {items[0]['sentence']}")
    if report.get("history_errors"):
        lines.append(f"history: {report['history_errors']} unreadable line(s) skipped")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m checker", description="Judge a dmabuf-emu run.")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--fail-on-race", action="store_true", help="exit 1 if any race is found")
    ap.add_argument("--fail-on-finding", action="store_true",
                    help="exit 1 if any finding (deadlock, fence forced, timeout, revoke_incomplete, stuck) "
                         "is reported")
    ap.add_argument("--no-merge", action="store_true", help="judge the existing history.jsonl as is")
    args = ap.parse_args(argv)
    try:
        report = check_run(args.run_dir, merge=not args.no_merge)
    except HistoryError as e:
        print(f"checker: {e}", file=sys.stderr)
        return 2
    print(summary(report))
    print(f"wrote {args.run_dir / 'report.json'}, report.md, trace.json")
    failed = (args.fail_on_race and report["races"]["total"]) or \
        (args.fail_on_finding and report["findings"]["total"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
