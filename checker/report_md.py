"""report.md: the run's report for people, in plain GitHub markdown.

Rules:
- Rendered only from the report dict (never from the history), so it cannot disagree with
  report.json.
- Sections: parameters, faults (schedule and applied), counters, latency percentiles, race
  witnesses (sentence, its "because" chain, a small event table; `dmabuf-emu check DIR --witness N`
  writes the N-th of them, counted down this section, as witness.md with a sequence diagram), findings (deadlocks with their cycle's
  events, fences forced, timeouts; the first MD_ITEMS of each), corruption examples, final bytes (the bytes
  check's verdict, said in words), services (deaths, restarts, importer stops) and recovery.
  Tables stay narrow enough for a terminal.
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
               else f"**{races.get('total')} race(s) found"
               + (f", the first {races['first_s']:.3f} s into the workload" if isinstance(races.get("first_s"), float)
                  else "") + ".**")
    bc = r.get("bytes_check") or {}
    svcs = r.get("services") or {}
    lines: list[str] = [f"# dmabuf-emu run report: {_cell(r.get('strategy'))}", ""]
    stop = r.get("interrupted")
    if isinstance(stop, dict):
        lines += [f"**Interrupted** by {_cell(stop.get('signal'))} during the {_cell(stop.get('during'))}, "
                  f"{_secs(stop.get('t_s'))} in ({_cell(stop.get('at'))}): the counts below cover only "
                  f"what ran before it.", ""]
    lines += [verdict, ""]
    mutant = r.get("mutant")
    if isinstance(mutant, dict):
        lines += [f"This run's strategy is the mutant **{_cell(mutant.get('name'))}**: it breaks the rule "
                  f"*{_cell(mutant.get('rule'))}* ({_cell(mutant.get('source'))}). Expected: "
                  f"{_cell(mutant.get('expect'))}.", ""]
    stuck = (r.get("findings") or {}).get("stuck") or {}
    if stuck.get("count"):
        lines += [f"**Stuck: {_cell(stuck.get('summary'))}** by the end of the drain (see Findings).", ""]
    if bc:
        lines += [f"Final bytes: **{bc.get('verdict')}**.", ""]
    died = svcs.get("died") or []
    if died:
        lines += ["Died: " + "; ".join(f"{d.get('name')} at {_secs(d.get('t_s'))} ({d.get('how')})"
                                       for d in died) + ".", ""]

    lines += ["## Parameters", ""]
    params = dict(r.get("params") or {})
    for k in ("strategy", "seed", "importers", "buffers", "duration_s"):
        params.setdefault(k, r.get(k))
    lines += _table(["parameter", "value"], sorted(params.items()))
    faults = r.get("faults") or {}
    if faults.get("schedule") or faults.get("applied"):
        lines += ["", "## Faults", "", "Scheduled:", ""]
        lines += [f"- {_cell(f)}" for f in faults.get("schedule") or []] or ["- none"]
        lines += ["", "Applied (fault events in the history):", ""]
        lines += _table(["kind", "count"], sorted((faults.get("applied") or {}).items()))
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
        ("races: unfenced_access", races.get("unfenced_access")),
        ("races: write_after_invalidate", races.get("write_after_invalidate")), ("races: total", races.get("total")),
        ("speculative reads (read and discarded after invalidate_mappings)", r.get("speculative_reads")),
        ("corrupt reads (jobs)", corr.get("jobs")), ("corrupt lines", corr.get("lines")),
        ("corruptions linked to a race", corr.get("linked")),
        ("IOMMU faults", r.get("iommu_faults")), ("fences force-completed", r.get("fences_forced")),
        ("mappings held at shutdown", r.get("mappings_held_at_shutdown")),
        ("jobs unfinished", r.get("jobs_unfinished")),
        ("jobs aborted", (r.get("jobs") or {}).get("aborted")),
        ("jobs ended by their service's death", (r.get("jobs") or {}).get("ended_by_death")),
        ("jobs with no real access (IOMMU blocked)", (r.get("jobs") or {}).get("no_access")),
        ("rogue jobs", (r.get("rogue_jobs") or {}).get("total")),
        ("rogue jobs that raced", (r.get("rogue_jobs") or {}).get("raced")),
        ("rogue jobs blocked by the IOMMU", (r.get("rogue_jobs") or {}).get("iommu_faults")),
    ]
    for svc, n in (r.get("races_by_importer") or {}).items():
        rows.append((f"races by {svc}", n))
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
            lines += [f"{i}. {w.get('sentence')}", ""] + _broken_rule(w)
            because = w.get("because") or []
            if because:
                lines += [f"   - {b[0].upper() + b[1:]}." for b in because] + [""]
            lines += ["   " + ln for ln in _table(
                ["time", "service", "event", *_WITNESS_FIELDS],
                [(_rel(e.get("t_ns"), t0), e.get("svc"), e.get("event"), *(_field(e, f) for f in _WITNESS_FIELDS))
                 for e in w.get("events", [])])]
            lines.append("")

    lines += _findings(r.get("findings") or {})
    lines += _predicted(r.get("predicted"), t0)
    lines += _revoke(r.get("revoke") or {})

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

    lines += _final_bytes(bc)
    lines += _services(svcs, t0)
    rec = r.get("recovery") or {}
    if rec:
        lines += ["## Recovery", ""]
        rrows: list[tuple[str, Any]] = []
        for key, label in (("importer_lost", "importers lost"), ("attachment_revoked", "attachments revoked")):
            for reason, n in (rec.get(key) or {}).items():
                rrows.append((f"{label}: {reason}", n))
        for key in ("retries", "dedups", "lease_expired", "rejoin", "exporter_lost"):
            rrows.append((key, rec.get(key)))
        lines += _table(["what", "count"], rrows)
        lines.append("")
    return "\n".join(lines)


MD_ITEMS = 10  # findings listed per kind in report.md (report.json holds up to 256)


def _findings(f: dict[str, Any]) -> list[str]:
    if not f:
        return []
    out = ["## Findings", ""]
    if not f.get("total"):
        return out + ["None: no deadlock, no fence forced, no timeout, nothing stuck.", ""] + _not_judged(f)
    dl, ff, to = f.get("deadlock") or {}, f.get("fence_forced") or {}, f.get("timeout") or {}
    ri, st = f.get("revoke_incomplete") or {}, f.get("stuck") or {}
    pd = f.get("potential_deadlock") or {}
    by_kind = ", ".join(f"{k} {n}" for k, n in (to.get("by_kind") or {}).items() if n)
    out += _table(["finding", "count"], [("deadlock", dl.get("count", 0)),
                                         ("deadlocks still present at the end", dl.get("present_at_end", 0)),
                                         ("fences forced", ff.get("count", 0)),
                                         ("timeouts" + (f" ({by_kind})" if by_kind else ""), to.get("count", 0)),
                                         ("revocations ended with a mapping live", ri.get("count", 0)),
                                         ("stuck (still open when the drain ended)"
                                          + (f": {st['summary']}" if st.get("summary") else ""), st.get("count", 0)),
                                         ("potential deadlocks (lockdep: formed or not)", pd.get("count", 0))])
    out.append("")
    out += _not_judged(f)
    for title, part in (("Deadlocks", dl), ("Fences forced", ff), ("Timeouts", to),
                        ("Revocations ended with a mapping live", ri), (STUCK_TITLE, st), ("Potential deadlocks", pd)):
        items = part.get("items") or []
        if not items:
            continue
        shown = items[:MD_ITEMS]
        out += [f"### {title} ({part.get('count', len(items))} in all; {len(shown)} shown)", ""]
        for i, it in enumerate(shown, 1):
            out += finding_lines(it, f"{i}. ", events=title in ("Deadlocks", STUCK_TITLE))
    return out


STUCK_TITLE = "Stuck: still open when the drain ended"


def _not_judged(f: dict[str, Any]) -> list[str]:
    """Why nothing was judged stuck, when the history could not say (checker/liveness.py)."""
    st = f.get("stuck") or {}
    out = []
    if st and not st.get("judged") and st.get("why_not"):
        out += [f"Liveness not judged: {st['why_not']}.", ""]
    if st.get("excused"):
        out += ["Open but explained, not stuck: " + ", ".join(f"{k} ({n})" for k, n in st["excused"].items()) + ".", ""]
    return out


def finding_lines(it: dict[str, Any], bullet: str = "", *, events: bool = True) -> list[str]:
    """One finding as report.md shows it: its sentence, the rule its mutant breaks, and its events:
    for a deadlock those that made the cycle's waits, for a revoke_incomplete the map, the
    revocation, the unmap wait's end and the late unmap (explore's witness.md of either too)."""
    out = [f"{bullet}{it.get('sentence')}", ""] + _broken_rule(it)
    if events and it.get("events"):
        out += ["   " + ln for ln in _table(
            ["time", "service", "event", "the wait it began" if it.get("cycle") else "what it shows"],
            [(_secs_ms(e.get("t_ns"), it), e.get("svc"), e.get("event"), e.get("note"))
             for e in it["events"]])]
        out.append("")
    return out


def _broken_rule(item: dict[str, Any]) -> list[str]:
    rule = item.get("broken_rule")
    if not isinstance(rule, dict):
        return []
    return [f"   The rule broken (the run's strategy is the mutant {_cell(rule.get('name'))}): "
            f"{_cell(rule.get('rule'))}.", ""]


def _predicted(p: dict[str, Any] | None, t0: Any) -> list[str]:
    """`check --predict` (checker/predict.py): the pairs nothing orders; never counted as races."""
    if not p:
        return []
    kinds = ", ".join(f"{k} {v}" for k, v in (p.get("by_kind") or {}).items()) or "none"
    out = ["## Could have raced", "",
           f"{p.get('candidates', 0)} candidate(s) ({kinds}); {p.get('overlapped', 0)} of them overlapped in this "
           f"run (those are among the races above). A candidate is a DMA access and a copy or free of its "
           f"placement that no rule of checker/predict.py orders; it is never counted as a race.", ""]
    items = p.get("items") or []
    for i, it in enumerate(items, 1):
        j, o = it.get("job") or {}, it.get("other") or {}
        out.append(f"{i}. {it.get('kind')} on buffer {it.get('buffer')} gen {it.get('gen')}"
                   f"{' (overlapped this time)' if it.get('overlapped') else ''}: {j.get('svc')} job {j.get('job')} "
                   f"({j.get('access')}) from {_rel(j.get('begin_ns'), t0)} to {_rel(j.get('end_ns'), t0)}; "
                   f"the exporter's {o.get('event')} at {_rel(o.get('t_ns'), t0)}. Why nothing orders them: "
                   f"{it.get('why')}.")
    if len(items) < p.get("candidates", 0):
        out.append(f"({p.get('candidates', 0) - len(items)} more in the count, not listed)")
    if p.get("not_examined"):
        out.append(f"({p['not_examined']} ended job(s) were not examined: past the per-generation bound)")
    return out + [""]


def _revoke(rv: dict[str, Any]) -> list[str]:
    if not rv or not (rv.get("revocations") or rv.get("maps_refused") or rv.get("broken_importers")):
        return []
    wait = rv.get("unmap_wait_ms") or {}
    out = ["## Revocation (Linux 7.1)", ""]
    out += _table(["what", "value"], [
        ("revocations", rv.get("revocations")), ("unrevocations", rv.get("unrevocations")),
        ("maps refused (no_device)", rv.get("maps_refused")),
        ("unmap waits", wait.get("n")), ("unmap wait p50 (ms)", wait.get("p50")), ("unmap wait max (ms)", wait.get("max")),
        ("broken importers (did not unmap within the bound)", ", ".join(rv.get("broken_importers") or []) or "none"),
        ("revocations not completed (unmap wait still open at the end)", rv.get("not_completed", 0))])
    return out + [""]


def _secs_ms(t: Any, item: dict[str, Any]) -> str:
    # a deadlock item carries t_ns and t_s of its forming: place the events on the same scale
    if isinstance(t, int) and isinstance(item.get("t_ns"), int) and isinstance(item.get("t_s"), (int, float)):
        return f"{item['t_s'] + (t - item['t_ns']) / 1e9:.6f} s"
    return "-"


def _secs(t: Any) -> str:
    return f"{t:.3f} s" if isinstance(t, (int, float)) else "-"


def _final_bytes(bc: dict[str, Any]) -> list[str]:
    if not bc:
        return []
    out = ["## Final bytes", ""]
    verdict = bc.get("verdict")
    if verdict == "not checked (no final_content)":
        out += ["Not checked: the history has no final_content event (the exporter did not report "
                "its buffers' bytes at stop).", ""]
        return out
    out.append(f"Verdict: **{verdict}**. {bc.get('buffers')} buffer(s) checked; "
               f"{bc.get('last_writes_present')} last write(s) found whole; "
               f"{bc.get('foreign_lines')} line(s) stamped with another buffer's id.")
    nc = bc.get("not_checked") or {}
    if nc:
        out.append("Last write not checked: " + ", ".join(f"{k} {v}" for k, v in nc.items()) + ".")
    out.append("")
    lost = bc.get("lost_writes") or []
    if lost:
        out += ["Lost writes (the buffer's last completed write is missing from its final bytes):", ""]
        out += _table(["buffer", "service", "job", "lines found", "lines expected", "rogue"],
                      [(x.get("buffer"), x.get("svc"), x.get("job"), x.get("lines_found"),
                        x.get("lines_expected"), x.get("rogue")) for x in lost])
        out.append("")
    foreign = bc.get("foreign") or []
    if foreign:
        out += ["Foreign lines (another buffer's bytes in this buffer):", ""]
        out += _table(["buffer", "lines", "from buffers"],
                      [(x.get("buffer"), x.get("lines"), ", ".join(str(b) for b in x.get("from_buffers") or []))
                       for x in foreign])
        out.append("")
    return out


def _services(svcs: dict[str, Any], t0: Any) -> list[str]:
    if not svcs:
        return []
    out = ["## Services", ""]
    died, restarted, stops = svcs.get("died") or [], svcs.get("restarted") or [], svcs.get("importer_stops") or []
    if died:
        out += _table(["died", "at", "how", "pid"],
                      [(d.get("name"), _secs(d.get("t_s")), d.get("how"), d.get("pid")) for d in died])
        out.append("")
    else:
        out += ["No service died.", ""]
    if restarted:
        out += _table(["restarted", "at", "incarnation", "pid"],
                      [(d.get("name"), _secs(d.get("t_s")), d.get("incarnation"), d.get("pid")) for d in restarted])
        out.append("")
    if stops:
        out += _table(["importer stopped", "at", "because"],
                      [(d.get("name"), _secs(d.get("t_s")), d.get("event")) for d in stops])
        out.append("")
    inc = svcs.get("incarnations") or {}
    by_name = svcs.get("by_name") or {}
    if by_name:
        out += _table(["service", "incarnations", "started", "stopped", "died", "last event"],
                      [(n, inc.get(n), s.get("started"), s.get("stopped"), s.get("died"),
                        _rel(s.get("last_t_ns"), t0)) for n, s in by_name.items()])
        out.append("")
    return out
