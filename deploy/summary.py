"""The human summary of a run, derived from report.json (itself derived from the history)."""

from __future__ import annotations

from typing import Any

from checker.findings import DEADLOCK, FENCE_FORCED, REVOKE_INCOMPLETE, STUCK, TIMEOUT
from checker.model import RACE_KINDS


def _pct(lat: dict[str, Any] | None, key: str) -> str:
    if not lat or lat.get(key) is None:
        return "-"
    return f"{lat[key]:.0f}"


def summary_lines(report: dict[str, Any], run_dir: str) -> list[str]:
    ops = report.get("ops", {})
    moves = report.get("moves", {})
    races = report.get("races", {})
    corr = report.get("corruption", {})
    lat = report.get("latency_us", {})
    maps = report.get("maps", {})
    verdict = "RACES FOUND" if races.get("total") else "no races"
    stuck = (report.get("findings") or {}).get(STUCK) or {}
    if stuck.get("count"):
        verdict += f"; STUCK: {stuck.get('summary')}"
    stop = report.get("interrupted")
    lines = [
        f"{report.get('strategy')}: {verdict}"
        + (f" (INTERRUPTED by {stop.get('signal')} during the {stop.get('during')}: partial)" if stop else ""),
        f"  ops        attach {ops.get('attach', 0)}  map {ops.get('map', 0)}  unmap {ops.get('unmap', 0)}  "
        f"dma read {ops.get('dma_read', 0)}  dma write {ops.get('dma_write', 0)}",
        f"  maps       reused cached IOMMU entries {maps.get('reused', 0)}  remapped {maps.get('remapped', 0)}",
        f"  moves      attempted {moves.get('attempted', 0)}  completed {moves.get('completed', 0)}  "
        f"refused {moves.get('refused', 0)}"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(moves.get('refused_by_reason', {}).items()))})"
           if moves.get("refused") else ""),
        f"  races      total {races.get('total', 0)}  "
        + "  ".join(f"{k} {races.get(k, 0)}" for k in RACE_KINDS),
        f"  bytes      corrupted jobs {corr.get('jobs', 0)}  lines {corr.get('lines', 0)}  "
        f"iommu faults {report.get('iommu_faults', 0)}",
        f"  latency us map p50 {_pct(lat.get('map'), 'p50')} p99 {_pct(lat.get('map'), 'p99')}  "
        f"unmap p50 {_pct(lat.get('unmap'), 'p50')} p99 {_pct(lat.get('unmap'), 'p99')}  "
        f"move p50 {_pct(lat.get('move'), 'p50')} p99 {_pct(lat.get('move'), 'p99')}",
    ]
    mutant = report.get("mutant")
    if mutant:
        lines.append(f"  mutant     {mutant.get('name')} breaks the rule: {mutant.get('rule')}")
    for kind in RACE_KINDS:
        for w in report.get("witnesses", {}).get(kind, [])[:1]:
            lines.append(f"  witness    {kind}: {w.get('sentence', '')}")
    findings = report.get("findings") or {}
    if findings.get("total"):
        lines.append(f"  findings   deadlock {findings[DEADLOCK]['count']}  "
                     f"fences forced {findings[FENCE_FORCED]['count']}  timeouts {findings[TIMEOUT]['count']}"
                     + (f"  revocations incomplete {findings[REVOKE_INCOMPLETE]['count']}"
                        if (findings.get(REVOKE_INCOMPLETE) or {}).get("count") else "")
                     + (f"  stuck {stuck['count']}" if stuck.get("count") else "")
                     + (f"  refcount warnings {findings['refcount_warning']['count']}"
                        if (findings.get("refcount_warning") or {}).get("count") else ""))
        for d in findings[DEADLOCK]["items"][:1]:
            lines.append(f"  deadlock   {d.get('sentence', '')}")
        for d in stuck.get("items", [])[:1]:
            lines.append(f"  stuck      {d.get('sentence', '')}")
    not_completed = (report.get("revoke") or {}).get("not_completed")
    if not_completed:
        lines.append(f"  revoke     revocations not completed: {not_completed} (unmap wait still open at the end)")
    faults = report.get("faults", {})
    if faults.get("applied"):
        lines.append("  faults     " + "  ".join(f"{k} {n}" for k, n in sorted(faults["applied"].items())))
    rec = report.get("recovery", {})
    if rec:
        lost = sum(rec.get("importer_lost", {}).values())
        revoked = sum(rec.get("attachment_revoked", {}).values())
        if lost or revoked or rec.get("retries") or rec.get("lease_expired") or rec.get("exporter_lost"):
            lines.append(f"  recovery   retries {rec.get('retries', 0)}  dedups {rec.get('dedups', 0)}  "
                         f"importers lost {lost}  attachments revoked {revoked}  "
                         f"leases expired {rec.get('lease_expired', 0)}  rejoins {rec.get('rejoin', 0)}  "
                         f"exporter lost {rec.get('exporter_lost', 0)}")
    check = report.get("bytes_check")
    if check:
        # The bytes check compares what it can: each buffer's last write (checker/oracle.py), so a
        # lost_write race on an earlier write whose lines a later write rewrote leaves them ok.
        skipped = check.get("not_checked") or {}
        judged = (f"last writes present {check.get('last_writes_present', 0)} of {check.get('buffers', 0)} buffers"
                  + (f", not checked {sum(skipped.values())}: " + ", ".join(f"{k} {n}" for k, n in skipped.items())
                     if skipped else ""))
        lines.append(f"  final bytes {check.get('verdict')}  ({judged}; foreign lines {check.get('foreign_lines', 0)}, "
                     f"lost writes {len(check.get('lost_writes', []))})")
        raced = report.get("races", {}).get("lost_write", 0)
        if raced and not check.get("lost_writes"):
            lines.append(f"             why ok with {raced} lost_write race(s): only each buffer's last write is "
                         f"compared, and those races hit earlier writes, whose lines later writes rewrote"
                         + (" (or a buffer not checked)" if skipped else ""))
    died = report.get("services", {}).get("died", [])
    if died:
        lines.append("  died       " + ", ".join(
            f"{d['name']} at {d['t_s']:.2f} s ({d.get('how', '?')})" if d.get("t_s") is not None
            else f"{d['name']} ({d.get('how', '?')})" for d in died))
    for stop in report.get("services", {}).get("importer_stops", []):
        if stop.get("event") == "exporter_lost":
            lines.append(f"  stopped    {stop['name']} stopped its DMA and exited at {stop['t_s']:.2f} s: exporter lost")
    lines.append(f"  report     {run_dir}/report.md  (trace: {run_dir}/trace.json, open in ui.perfetto.dev)")
    return lines
