"""Witnesses: the few events that prove a race, and one plain sentence saying what happened.

Rules:
- Times are relative to the history's first event, in milliseconds with three decimals
  ("t+1.204 ms"); offsets are hex ("vram+0x40000").
- A witness's events are rebuilt from what the oracle kept (the job and its generation's
  record), sorted by time: the job's dma_begin and dma_end (with its last real access when that
  came earlier; or its service's death, or the end of the history, for a job that never ended),
  and the exporter's move_begin / copy_begin / copy_end / free that make it a
  race. Fields: t_ns, svc, event, and whichever of buffer, gen, job, access, attachment,
  placement, move apply.
- One sentence template per race kind; each names the importer, the buffer, the placement and
  generation, and the times that decide the verdict. A race judged by a Linux 7.1 invalidation
  window (write_after_invalidate, or a stale_read of data used there) names the window: the
  invalidate_mappings return, the fences' retirement and the unmap.
"""

from __future__ import annotations

from typing import Any

from checker.model import (
    LOST_WRITE,
    STALE_READ,
    UNFENCED_ACCESS,
    USE_AFTER_UNMAP,
    WRITE_AFTER_INVALIDATE,
    GenRecord,
    Job,
    Placement,
    Race,
)

EXPORTER = "exporter"


def rel_ms(t_ns: int | None, t0_ns: int) -> str:
    if t_ns is None:
        return "t+?"
    return f"t+{(t_ns - t0_ns) / 1e6:.3f} ms"


def place_str(heap: str | None, offset: int | None) -> str:
    if heap is None and offset is None:
        return "an unknown placement"
    off = f"{offset:#x}" if isinstance(offset, int) else "?"
    return f"{heap or '?'}+{off}"


def _pl(p: Placement | None) -> str:
    return place_str(p.heap, p.offset) if p is not None else "an unknown placement"


def _job_pl(job: Job) -> str:
    return place_str(job.heap, job.offset)


def job_dict(job: Job, race: Race | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {
        "svc": job.svc,
        "job": job.job,
        "access": "write" if job.write else "read",
        "buffer": job.buffer,
        "attachment": job.attachment,
        "gen": job.gen,
        "placement": _job_pl(job),
        "begin_t_ns": job.begin_t,
        "end_t_ns": job.end_t,
        "status": job.status,
        "last_access_t_ns": job.access_end if job.access_end is not None else job.end_t,
        "rogue": job.rogue,
        "ended_by": job.cut,
    }
    if race is not None:
        d["unfinished"] = race.unfinished
    return d


def _exporter_events(rec: GenRecord | None, kind: str) -> list[dict[str, Any]]:
    if rec is None:
        return []
    b, g = rec.buffer, rec.gen
    out: list[dict[str, Any]] = []
    if kind in (LOST_WRITE, STALE_READ):
        to_gen = g + 1
        if rec.out_begin_t is not None:
            out.append({"t_ns": rec.out_begin_t, "svc": EXPORTER, "event": "move_begin", "buffer": b,
                        "move": rec.out_move, "from_gen": g, "to_gen": to_gen,
                        "placement": _pl(rec.out_to)})
        if rec.copy_begin_t is not None:
            out.append({"t_ns": rec.copy_begin_t, "svc": EXPORTER, "event": "copy_begin", "buffer": b,
                        "move": rec.out_move, "from_gen": g, "to_gen": to_gen})
        if rec.free_t is not None:
            out.append({"t_ns": rec.free_t, "svc": EXPORTER, "event": "free", "buffer": b,
                        "move": rec.out_move, "from_gen": g, "to_gen": to_gen,
                        "placement": _pl(rec.place)})
    elif kind == UNFENCED_ACCESS and not rec.initial:
        if rec.created_t is not None:
            out.append({"t_ns": rec.created_t, "svc": EXPORTER, "event": "move_begin", "buffer": b,
                        "move": rec.create_move, "from_gen": g - 1, "to_gen": g,
                        "placement": _pl(rec.place)})
        if rec.create_copy_begin_t is not None:
            out.append({"t_ns": rec.create_copy_begin_t, "svc": EXPORTER, "event": "copy_begin",
                        "buffer": b, "move": rec.create_move, "from_gen": g - 1, "to_gen": g})
        if rec.copy_end_t is not None:
            out.append({"t_ns": rec.copy_end_t, "svc": EXPORTER, "event": "copy_end", "buffer": b,
                        "move": rec.create_move, "from_gen": g - 1, "to_gen": g})
    return out


def witness_events(race: Race) -> list[dict[str, Any]]:
    job = race.job
    common = {"svc": job.svc, "job": job.job, "buffer": job.buffer, "gen": job.gen,
              "access": "write" if job.write else "read", "attachment": job.attachment,
              "placement": _job_pl(job)}
    events: list[dict[str, Any]] = [{"t_ns": job.begin_t, "event": "dma_begin", **common}]
    if job.rogue:
        events[0]["rogue"] = True
    if race.unfinished:
        events.append({"t_ns": race.end_t, "svc": job.svc, "event": "end_of_history", "job": job.job,
                       "note": "the job never ended; considered running until the last event"})
    elif job.cut is not None:
        events.append({"t_ns": race.end_t, "svc": job.svc, "event": f"service {job.cut}", "job": job.job,
                       "note": f"the job never ended: its service {job.cut}"})
    else:
        events.append({"t_ns": race.end_t, "event": "dma_end", **common, "status": job.status})
        if job.access_end is not None:
            events.append({"t_ns": job.access_end, "svc": job.svc, "event": "last_access", "job": job.job,
                           "buffer": job.buffer, "gen": job.gen})
    if race.kind == USE_AFTER_UNMAP and job.uau is not None and job.uau.t_ns is not None:
        events.append({"t_ns": job.uau.t_ns, "svc": job.svc, "event": job.uau.how, "buffer": job.buffer,
                       "attachment": job.attachment, "gen": job.uau.gen})
    events.extend(_exporter_events(job.rec, race.kind))
    w = job.win
    if w is not None and (race.by_window or race.kind == WRITE_AFTER_INVALIDATE):
        events.append({"t_ns": w.returned_t, "svc": job.svc, "event": "invalidate_mappings_returned",
                       "buffer": job.buffer, "attachment": job.attachment, w.key[0]: w.key[1]})
        if w.start is not None:
            events.append({"t_ns": w.start, "svc": EXPORTER if w.start != w.returned_t else job.svc,
                           "event": "fences retired", "buffer": job.buffer, "note": w.retired_by})
        if w.end is not None:
            events.append({"t_ns": w.end, "svc": job.svc, "event": w.ended_by or "unmap", "buffer": job.buffer,
                           "attachment": job.attachment})
    for t, kind in job.device_faults or ():
        events.append({"t_ns": t, "svc": job.svc, "event": f"fault: {kind}", "buffer": job.buffer,
                       "job": job.job})
    events.sort(key=lambda e: e["t_ns"])
    return events


def _span(job: Job, race: Race, t0: int, verb: str) -> str:
    if race.unfinished:
        until = f"until the end of the history at {rel_ms(race.end_t, t0)} (the job never ended)"
    elif job.cut is not None:
        until = f"until its service {job.cut} at {rel_ms(race.end_t, t0)} (the job never ended)"
    elif job.access_end is not None:
        until = (f"until its last access at {rel_ms(job.access_end, t0)} "
                 f"(dma_end {job.status or '?'} at {rel_ms(race.end_t, t0)})")
    else:
        until = f"until {rel_ms(race.end_t, t0)}"
    who = f"{job.svc} (a rogue device)" if job.rogue else job.svc
    return (f"{who} {verb} buffer {job.buffer} at {_job_pl(job)} (gen {job.gen}) "
            f"from {rel_ms(job.begin_t, t0)} {until}")


def _by(t0: int, as_of: int | None) -> str:
    return "by the end of the history" if as_of is None else f"by {rel_ms(as_of, t0)}"


def _freed_clause(rec: GenRecord, t0: int, as_of: int | None) -> str:
    if rec.free_t is None or (as_of is not None and rec.free_t > as_of):
        return f"had not freed the old range {_by(t0, as_of)}"
    return f"freed the old range at {rel_ms(rec.free_t, t0)}"


def sentence(race: Race, t0: int, as_of: int | None = None) -> str:
    """The race in one sentence. `as_of`: write it as known at that time (the trace writes each
    race as it is judged); None: as known at the end of the history (the report). A device fault
    injected while the job ran is named after it: it is what went wrong."""
    text = _sentence(race, t0, as_of)
    faults = race.job.device_faults
    if faults:
        t, kind = faults[0]
        what = {"early-ack": "said it was done with the buffer (early-ack) while this job still ran",
                "ignore-notify": "ignored the move_notify (ignore-notify)"}.get(kind, kind)
        text += f" The device {what}, at {rel_ms(t, t0)}."
    return text


def _window_sentence(race: Race, t0: int, as_of: int | None) -> str:
    job = race.job
    w = job.win
    assert w is not None and w.start is not None
    what = ("wrote" if job.write else "read, and used the data,")
    until = (f"before it unmapped at {rel_ms(w.end, t0)}" if w.end is not None and (as_of is None or w.end <= as_of)
             else f"and had not unmapped {_by(t0, as_of)}")
    rule = ("an importer may only read and discard there, never write" if job.write
            else "an importer may only read and discard there: the data may be stale")
    return (f"{_span(job, race, t0, 'accessed')}: it {what} after its invalidate_mappings of attachment "
            f"{job.attachment} returned at {rel_ms(w.returned_t, t0)} and its fences retired at "
            f"{rel_ms(w.start, t0)} ({w.retired_by}), {until}; {rule}.")


def _sentence(race: Race, t0: int, as_of: int | None = None) -> str:
    job, rec, kind = race.job, race.job.rec, race.kind
    if kind == WRITE_AFTER_INVALIDATE or race.by_window:
        return _window_sentence(race, t0, as_of)
    verb_ing = "writing" if job.write else "reading"
    if kind in (LOST_WRITE, STALE_READ) and (rec is None or job.dropped):
        what = ("its bytes may be missing from the new placement" if kind == LOST_WRITE
                else "it may have read another buffer's bytes")
        return (f"{_span(job, race, t0, 'wrote' if job.write else 'read')}, but the exporter had moved "
                f"buffer {job.buffer} off gen {job.gen} and freed that range several moves earlier; {what}.")
    if kind == LOST_WRITE:
        assert rec is not None
        to = f"{_pl(rec.out_to)} (gen {job.gen + 1})"
        if rec.copy_begin_t is None:
            return (f"{_span(job, race, t0, 'wrote')}; the exporter freed that range at "
                    f"{rel_ms(rec.free_t, t0)} (moving buffer {job.buffer} to {to}), so the write "
                    f"landed in released memory.")
        return (f"{_span(job, race, t0, 'wrote')}; the exporter began copying buffer {job.buffer} to "
                f"{to} at {rel_ms(rec.copy_begin_t, t0)} and {_freed_clause(rec, t0, as_of)}, "
                f"so the write may be missing from the new placement.")
    if kind == STALE_READ:
        assert rec is not None
        return (f"{_span(job, race, t0, 'read')}; the exporter moved buffer {job.buffer} to "
                f"{_pl(rec.out_to)} (gen {job.gen + 1}) and freed the old range at "
                f"{rel_ms(rec.free_t, t0)}, so the read may have seen another buffer's bytes.")
    if kind == USE_AFTER_UNMAP:
        cause = job.uau
        who = f"{job.svc} (a rogue device)" if job.rogue else job.svc
        start = (f"{who} began {verb_ing} buffer {job.buffer} at {_job_pl(job)} (gen {job.gen}) "
                 f"at {rel_ms(job.begin_t, t0)} on attachment {job.attachment}")
        if cause is None or cause.how == "never":
            return f"{start}, which it had never mapped."
        if cause.how == "invalidate":
            return (f"{start}, whose mapping it had invalidated on move_notify at "
                    f"{rel_ms(cause.t_ns, t0)} (gen {cause.gen}) with no map since.")
        return f"{start}, which it had unmapped at {rel_ms(cause.t_ns, t0)} with no map since."
    if kind == UNFENCED_ACCESS:
        start = (f"{job.svc} began {verb_ing} buffer {job.buffer} at {_job_pl(job)} (gen {job.gen}) "
                 f"at {rel_ms(job.begin_t, t0)}, before the exporter finished copying it there")
        if rec is None:
            return f"{start}: no copy creating gen {job.gen} had ended {_by(t0, as_of)}."
        src = f" from {_pl(rec.create_from)}" if rec.create_from is not None else ""
        began = (f"began at {rel_ms(rec.create_copy_begin_t, t0)} and "
                 if rec.create_copy_begin_t is not None else "")
        ended = (f"ended at {rel_ms(rec.copy_end_t, t0)}"
                 if rec.copy_end_t is not None and (as_of is None or rec.copy_end_t <= as_of)
                 else f"had not ended {_by(t0, as_of)}")
        return f"{start}: the copy{src} (move {rec.create_move}) {began}{ended}."
    raise ValueError(f"unknown race kind {kind!r}")


def witness(race: Race, t0: int) -> dict[str, Any]:
    return {"sentence": sentence(race, t0), "events": witness_events(race), "job": job_dict(race.job, race)}


def corruption_sentence(ex: dict[str, Any], t0: int) -> str:
    found = ex.get("found") or {}
    writer = found.get("writer")
    who = ("the exporter's initial stamp" if writer == 0
           else f"importer-{writer} job {found.get('seq')}" if writer is not None else "an unknown writer")
    return (f"{ex.get('svc')} job {ex.get('job')} read buffer {ex.get('buffer')} (gen {ex.get('gen')}) at "
            f"{rel_ms(ex.get('t_ns'), t0)} and found {ex.get('lines')} bad line(s); line {ex.get('line')} "
            f"held buffer {found.get('buffer')} line {found.get('line')} written by {who}.")
