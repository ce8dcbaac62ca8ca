"""report.md: the run's report for people, in plain GitHub markdown.

Rules:
- Rendered only from the report dict (never from the history), so it cannot disagree with
  report.json.
- Sections: parameters, counters, latency percentiles, race witnesses (sentence plus a small
  event table), corruption examples. Tables stay narrow enough for a terminal.
- Table cells escape `|` so a field cannot break a table.
"""

from __future__ import annotations

from typing import Any, Iterable

_LAT_NAMES = {
    "map": "map",
    "unmap": "unmap",
    "move": "move (begin to end)",
    "notify_ack": "move_notify to ack",
    "fence_wait": "fence wait",
}
_WITNESS_FIELDS = ("buffer", "gen", "job", "access", "placement", "move")


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        out.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return out


def _rel(t: Any, t0: Any) -> str:
    if not isinstance(t, int) or not isinstance(t0, int):
        return "-"
    return f"t+{(t - t0) / 1e6:.3f} ms"


def _field(e: dict[str, Any], name: str) -> Any:
    # exporter events concern two generations: show the switch
    if name == "gen" and e.get("gen") is None and e.get("from_gen") is not None:
        return f"{e.get('from_gen')}->{e.get('to_gen')}"
    return e.get(name)


def render_report_md(r: dict[str, Any]) -> str:
    t0 = r.get("t0_ns")
    races = r.get("races", {})
    verdict = ("**No race found.**" if not races.get("total")
               else f"**{races.get('total')} race(s) found.**")
    lines: list[str] = [f"# dmabuf-emu run report: {_cell(r.get('strategy'))}", "", verdict, ""]

    lines += ["## Parameters", ""]
    params = dict(r.get("params") or {})
    for k in ("strategy", "seed", "importers", "buffers", "duration_s"):
        params.setdefault(k, r.get(k))
    lines += _table(["parameter", "value"], sorted(params.items()))
    lines += ["", f"History: {r.get('events', 0)} events over {r.get('duration_observed_s', 0):.3f} s "
              f"observed; {r.get('history_errors', 0)} unreadable line(s).", ""]

    lines += ["## Counters", ""]
    ops, maps, moves, notify = r.get("ops", {}), r.get("maps", {}), r.get("moves", {}), r.get("notify", {})
    corr = r.get("corruption", {})
    rows: list[tuple[str, Any]] = [
        ("attach", ops.get("attach")), ("map", ops.get("map")), ("unmap", ops.get("unmap")),
        ("DMA reads", ops.get("dma_read")), ("DMA writes", ops.get("dma_write")),
        ("maps reusing IOMMU entries", maps.get("reused")), ("maps programming anew", maps.get("remapped")),
        ("moves attempted", moves.get("attempted")), ("moves completed", moves.get("completed")),
        ("moves refused", moves.get("refused")), ("moves queued", moves.get("queued")),
        ("move_notify sent", notify.get("sent")), ("acks", notify.get("acked")),
        ("ack timeouts", notify.get("ack_timeouts")),
        ("races: lost_write", races.get("lost_write")), ("races: stale_read", races.get("stale_read")),
        ("races: use_after_unmap", races.get("use_after_unmap")),
        ("races: unfenced_access", races.get("unfenced_access")), ("races: total", races.get("total")),
        ("corrupt reads (jobs)", corr.get("jobs")), ("corrupt lines", corr.get("lines")),
        ("corruptions linked to a race", corr.get("linked")),
        ("IOMMU faults", r.get("iommu_faults")), ("fences force-completed", r.get("fences_forced")),
        ("mappings held at shutdown", r.get("mappings_held_at_shutdown")),
        ("jobs unfinished", r.get("jobs_unfinished")),
    ]
    for reason, n in sorted((moves.get("refused_by_reason") or {}).items()):
        rows.append((f"moves refused: {reason}", n))
    lines += _table(["counter", "value"], rows)
    lines.append("")

    lines += ["## Latency (microseconds)", ""]
    lat = r.get("latency_us", {})
    lines += _table(["what", "n", "p50", "p99", "max"],
                    [(label, (lat.get(k) or {}).get("n"), (lat.get(k) or {}).get("p50"),
                      (lat.get(k) or {}).get("p99"), (lat.get(k) or {}).get("max"))
                     for k, label in _LAT_NAMES.items()])
    lines.append("")

    lines += ["## Race witnesses", ""]
    witnesses = r.get("witnesses", {})
    if not any(witnesses.values()):
        lines += ["None.", ""]
    for kind, items in witnesses.items():
        if not items:
            continue
        lines += [f"### {kind} ({races.get(kind, 0)} in all; {len(items)} shown)", ""]
        for i, w in enumerate(items, 1):
            lines += [f"{i}. {w.get('sentence')}", ""]
            lines += ["   " + ln for ln in _table(
                ["time", "service", "event", *_WITNESS_FIELDS],
                [(_rel(e.get("t_ns"), t0), e.get("svc"), e.get("event"), *(_field(e, f) for f in _WITNESS_FIELDS))
                 for e in w.get("events", [])])]
            lines.append("")

    lines += ["## Corruption", ""]
    examples = corr.get("examples") or []
    if not examples:
        lines += ["None seen.", ""]
    for ex in examples:
        lines.append(f"- {ex.get('sentence')}")
        race = ex.get("race")
        if race:
            lines.append(f"  Linked ({race.get('via')}) to a {race.get('kind')}: {race.get('sentence')}")
        else:
            lines.append("  Not linked to a race.")
    lines.append("")

    services = r.get("services") or {}
    if services:
        lines += ["## Services", ""]
        lines += _table(["service", "started", "stopped", "died", "last event"],
                        [(n, s.get("started"), s.get("stopped"), s.get("died"), _rel(s.get("last_t_ns"), t0))
                         for n, s in services.items()])
        lines.append("")
    return "\n".join(lines)
