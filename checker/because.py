"""Why a race happened: a chain of "because" sentences in the manner of Elle, and the events it cites.

Rules:
- A race has two sides: the exporter's edge (the copy began, the range was freed, the mapping
  was dropped) and the job that was still accessing. The chain says why each side was where it
  was, from the events alone. The exporter's side is read off what fired the row that copied (or
  freed): copy_begin's `trigger` and `timer` (a strategy's own timer, the notify timer, the last
  answer awaited, the fence wait's end, the move's beginning), never from which strategy ran, so
  a strategy of one's own is explained as truly as a shipped one; with the times and counts of
  what had come by then. A history without those fields is read off its waits. Why the job was still running
  (it began before move_notify reached its importer; the map reply that started it crossed
  move_notify; no move_notify went to its attachment; a rogue device).
- "Crossed" is read off four times: the map reply's send (map_served) and receipt (the importer's
  map), move_notify's send and receipt. The reply crossed the notification when the importer
  received the notification first and the reply after, whether the exporter sent the reply
  after the notification (it served a placement it was moving) or before (the two messages passed
  each other).
- Two events at one instant are not ordered in words: "at the same instant", never "first ...
  then" (the order in which one process wrote them is not an order in time).
- Every time in a sentence is one of the cited events, which `context_events` returns (the
  witness's own events are the race's proof; these are the messages and waits around it).
- Nothing here changes a verdict.
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
    MapInfo,
    MoveNotes,
    NotifyNote,
    Race,
)
from checker.witness import EXPORTER, place_str, rel_ms


def _names(items: list[str]) -> str:
    return ", ".join(items) if items else "nobody named"


def _last_from(importers: tuple[str, ...]) -> str:
    if len(importers) == 1:
        return f"the last from {importers[0]}"
    return f"the last from {', '.join(importers[:-1])} and {importers[-1]}, at one instant"


def _note(job: Job) -> tuple[MoveNotes | None, NotifyNote | None]:
    rec = job.rec
    notes = rec.notes if rec is not None and not job.dropped else None
    return notes, (notes.atts.get((job.svc, job.attachment)) if notes is not None else None)


def why_copy(rec: GenRecord, notes: MoveNotes | None, at: Any, edge_t: int) -> str:
    """Why the exporter began copying gen g away when it did (or freed it, when it never copied):
    read off what fired the row that did it (copy_begin's or free's `trigger` and `timer`), and
    what had come by then. A history without those fields is read as before (`_waited`)."""
    b, g = rec.buffer, rec.gen
    copying = rec.copy_begin_t is not None
    what = (f"the copy of buffer {b} off gen {g} began at {at(rec.copy_begin_t)}" if copying
            else f"the exporter freed buffer {b}'s gen {g} range at {at(rec.free_t)} without a copy")
    if notes is None:
        return f"{what} (the beginning of its move is not in the history)"
    cause = rec.copy_cause if copying else rec.free_cause
    if cause is None:
        return f"{what}, because {_waited(notes, at, edge_t, rec)}"
    return f"{what}, because {_fired(cause, notes, at, edge_t, rec)}"


def _op(notes: MoveNotes) -> tuple[list[NotifyNote], str]:
    sent = [n for n in notes.atts.values() if n.sent_t is not None]
    return sent, (sent[0].op if sent else "move_notify")


def _answers(notes: MoveNotes, edge_t: int) -> str:
    """What had answered the notification by `edge_t`, as counts (facts, not causes)."""
    sent, op = _op(notes)
    if not sent:
        return f"no {op} had gone out"
    acked = sum(1 for n in sent if n.ack_t is not None and n.ack_t <= edge_t)
    returned = sum(1 for n in sent if n.returned_t is not None and n.returned_t <= edge_t)
    acks = any(n.ack_t is not None or n.ack_sent_t is not None for n in sent)   # an importer that acks at all
    return (f"{returned} of {len(sent)} {op} callbacks had returned"
            + (f" and {acked} of {len(sent)} acks had come" if acks else "") + " by then")


def _fired(cause: dict[str, Any], notes: MoveNotes, at: Any, edge_t: int, rec: GenRecord) -> str:
    """The row's trigger, in words, with the times that show it."""
    trigger, timer = cause.get("trigger"), cause.get("timer")
    sent, op = _op(notes)
    if trigger == "timer_fired":
        return (f"the strategy's own timer {timer} fired at {at(edge_t)} and its row copies then ({_answers(notes, edge_t)}; "
                f"the row waits for none of them)")
    if trigger == "notify_timeout" or (timer == "notify"):
        none = f" (none from {_names(notes.ack_timeout[1])})" if notes.ack_timeout is not None else ""
        return f"the notify timer fired at {at(edge_t)}: the wait for answers to {op} timed out{none}"
    if trigger == "notify_done":
        last = _last_answer(sent, edge_t)
        if last is None:
            return f"nothing was awaited: no {op} went out for this move, so the notification was done at once"
        t, imp, how = last
        return (f"every attachment the move waited for had answered {op}: the last answer, {imp}'s {how}, came "
                f"at {at(t)}" + (" (the same instant)" if t == edge_t else ""))
    if trigger == "fences_signaled":
        began = f" (it had waited for them since {at(notes.fence_wait_begin_t)})" if notes.fence_wait_begin_t else ""
        forced = f", after forcing the fences of {_names(notes.forced)}" if notes.forced else ""
        return f"the exporter's wait for the buffer's fences ended at {at(edge_t)}{began}{forced}"
    if trigger in ("move_wanted", "last_unmap"):
        when = "as the move began" if trigger == "move_wanted" else "as the queued move began, on the last unmap"
        if not sent:
            return (f"its row copies {when} (on {trigger}), waiting for nothing: no {op} went out for this move "
                    f"(begun at {at(rec.out_begin_t)})")
        first = min(n.sent_t for n in sent)  # type: ignore[type-var]
        return (f"its row copies {when} (on {trigger}), waiting for no answer: it sent {op} at {at(first)} and "
                f"went on ({_answers(notes, edge_t)})")
    if timer:
        return f"the {timer} timer fired at {at(edge_t)} ({trigger})"
    return f"the table's row for {trigger} ran at {at(edge_t)}"


def _last_answer(sent: list[NotifyNote], edge_t: int) -> tuple[int, str, str] | None:
    """The answer that completed the notification: the latest ack or callback return by `edge_t`
    of the kind that every attachment notified gave."""
    best: tuple[int, str, str] | None = None
    for attr, how in (("ack_t", "ack"), ("returned_t", "callback return")):
        times = [(getattr(n, attr), n.importer) for n in sent]
        if sent and all(t is not None and t <= edge_t for t, _ in times):
            t, imp = max(times)  # type: ignore[type-var]
            if best is None or t > best[0]:
                best = (t, imp, how)
    return best


def _waited(notes: MoveNotes, at: Any, edge_t: int, rec: GenRecord) -> str:
    """For a history without triggers: what the exporter had waited for, read off the waits."""
    sent, op = _op(notes)
    if notes.fence_wait_end_t is not None and notes.fence_wait_end_t <= edge_t:
        began = f" (it had waited for them since {at(notes.fence_wait_begin_t)})" if notes.fence_wait_begin_t else ""
        forced = f", after forcing the fences of {_names(notes.forced)}" if notes.forced else ""
        return f"the exporter's wait for the buffer's fences ended at {at(notes.fence_wait_end_t)}{began}{forced}"
    if notes.ack_timeout is not None and notes.ack_timeout[0] <= edge_t:
        t, imps = notes.ack_timeout
        return f"the exporter's wait for answers to {op} timed out at {at(t)} (none from {_names(imps)})"
    if not sent:
        return (f"nothing held it back: no {op} went out for this move "
                f"(begun at {at(rec.out_begin_t)}): no attachment had the buffer mapped")
    acked = [n for n in sent if n.ack_t is not None and n.ack_t <= edge_t]
    returned = [n for n in sent if n.returned_t is not None and n.returned_t <= edge_t]
    if notes.last_ack is not None and len(acked) == len(sent):
        t, imps = notes.last_ack
        return f"the exporter had every ack by {at(t)} ({_last_from(imps)})"
    if notes.last_return is not None and len(returned) == len(sent):
        t, imps = notes.last_return
        return f"every {op} callback had returned by {at(t)} ({_last_from(imps)})"
    first = min(n.sent_t for n in sent)  # type: ignore[type-var]
    waited = f" ({len(acked)} of {len(sent)} acks had come)" if acked else ""
    return f"the exporter waited for no answer: it sent {op} at {at(first)} and went on{waited}"


def why_running(job: Job, notes: MoveNotes | None, n: NotifyNote | None, at: Any, edge_t: int,
                edge_what: str) -> str:
    """Why the job was still accessing the old placement at the exporter's edge (`edge_what` at
    `edge_t`: "the copy began", "the range was freed"), or began on it after."""
    verb = "write" if job.write else "read"
    head = (f"the {verb} was still running when {edge_what} at {at(edge_t)}" if job.begin_t < edge_t
            else f"the {verb} began at {at(job.begin_t)}, the same instant as {edge_what}" if job.begin_t == edge_t
            else f"the {verb} began at {at(job.begin_t)}, after {edge_what} at {at(edge_t)}")
    m = MapInfo.of(job.map)
    if job.rogue:
        return f"{head}, because it was a rogue device's job: it began at {at(job.begin_t)} with no map of its own"
    if m is not None and m.reused and m.served is not None and m.served.get("gen") != m.gen:
        sv = m.served
        promise = (" (an unmap reply had promised the buffer would not move)"
                   if job.rec is not None and job.rec.out_broke_promise else "")
        return (f"{head}, because {job.svc} used a stale cached mapping: the exporter answered its map "
                f"(request {m.id}) at {at(m.served_t)} with gen {sv.get('gen')} at "
                f"{place_str(sv.get('heap'), sv.get('offset'))}, but {job.svc} reused the IOMMU entries it had "
                f"kept for gen {m.gen} at {place_str(m.heap, m.offset)}{promise}, and began the job on them at "
                f"{at(job.begin_t)}")
    if n is None or n.sent_t is None:
        op = "move_notify"
        if m is not None and job.rec is not None and job.rec.out_begin_t is not None and m.served_t is not None \
                and m.served_t > job.rec.out_begin_t:
            return (f"{head}, because the map that started it (request {m.id}) was served at {at(m.served_t)}, "
                    f"after the move began at {at(job.rec.out_begin_t)}, and no {op} went to attachment "
                    f"{job.attachment}")
        reused = ""
        if m is not None and m.reused:
            reused = (f"; its map (request {m.id}, at {at(m.recv_t)}) reused the IOMMU entries kept from an "
                      f"earlier mapping")
        return (f"{head}, because no {op} went to {job.svc}'s attachment {job.attachment} for this move: "
                f"its job began at {at(job.begin_t)}{reused}")
    op = n.op
    if n.recv_t is None:
        return f"{head}, because {op}, sent to {job.svc} at {at(n.sent_t)}, never reached it"
    if job.begin_t < n.recv_t:
        text = f"{head}, because its job began at {at(job.begin_t)}, before {op} reached {job.svc} at {at(n.recv_t)}"
        end = job.access_end if job.access_end is not None else job.end_t
        if n.ack_sent_t is not None and (end is None or n.ack_sent_t < end):
            text += f"; {job.svc} acked at {at(n.ack_sent_t)} while the job still ran"
        return text
    if m is not None and m.gen == job.gen and m.recv_t >= n.recv_t:
        state = f" (its attachment was {n.state})" if n.state else ""
        if m.served_t is not None and m.served_t >= n.sent_t and m.sent_t is not None and m.sent_t > n.recv_t:
            ack = f" and acked at {at(n.ack_sent_t)}" if n.ack_sent_t is not None and n.ack_sent_t <= m.sent_t else ""
            began = f" (the move had begun at {at(job.rec.out_begin_t)})" if job.rec and job.rec.out_begin_t else ""
            return (f"{head}, because after {op} reached {job.svc} at {at(n.recv_t)}{state}{ack}, it asked for a "
                    f"mapping again (request {m.id}, sent at {at(m.sent_t)}) and the exporter answered at "
                    f"{at(m.served_t)} with gen {m.gen}, the placement it was moving the buffer off{began}; the "
                    f"job began on it at {at(job.begin_t)}")
        if m.served_t is not None and m.served_t >= n.sent_t:
            text = (f"{head}, because the map reply that started it crossed {op}: the exporter answered "
                    f"{job.svc}'s map (request {m.id}) at {at(m.served_t)} with gen {m.gen}, after sending {op} "
                    f"at {at(n.sent_t)}; {job.svc} received {op} at {at(n.recv_t)}{state} while the map was "
                    f"in flight, {_then(m.recv_t, n.recv_t, at, 'the reply')}, and began the job on the old placement at "
                    f"{at(job.begin_t)}")
        elif m.served_t is not None:
            got = (f"received {op} first, at {at(n.recv_t)}{state}, and the reply after, at {at(m.recv_t)}"
                   if m.recv_t > n.recv_t else
                   f"received {op} and the reply at the same instant, {at(n.recv_t)}{state}")
            text = (f"{head}, because the map reply that started it crossed {op} on the way: the exporter sent "
                    f"the reply to {job.svc}'s map (request {m.id}) at {at(m.served_t)}, before {op} at "
                    f"{at(n.sent_t)}, but {job.svc} {got}, and began the job on the old placement at {at(job.begin_t)}")
        else:
            rel = (f"after {op} at {at(n.recv_t)}{state}" if m.recv_t > n.recv_t
                   else f"the same instant as {op}{state}")
            text = (f"{head}, because the map reply that started it (request {m.id}) reached {job.svc} at "
                    f"{at(m.recv_t)}, {rel}, and the job began on the old placement at {at(job.begin_t)}")
        if n.ack_sent_t is not None and n.ack_sent_t <= m.recv_t:
            text += f"; {job.svc} had acked at {at(n.ack_sent_t)}, before the reply came"
        return text
    return (f"{head}, because {job.svc} began the job at {at(job.begin_t)} although {op} had reached it at "
            f"{at(n.recv_t)}")


def _then(t: int, before: int, at: Any, what: str) -> str:
    """`what` at `t`, after something at `before`, in words: "then WHAT at T", or "and WHAT at the
    same instant" (two events at one time are not ordered in words: the history's order of them is
    only the order they were written in)."""
    return f"then {what} at {at(t)}" if t > before else f"and {what} at the same instant"


def because(race: Race, t0: int) -> list[str]:
    """The chain for one race, each item one sentence."""
    job, kind = race.job, race.kind
    rec = job.rec if not job.dropped else None
    at = lambda t: rel_ms(t, t0)  # noqa: E731
    notes, n = _note(job)
    end = job.access_end if job.access_end is not None else race.end_t
    verb = "write" if job.write else "read"
    out: list[str] = []
    w = job.win
    if (kind == WRITE_AFTER_INVALIDATE or race.by_window) and w is not None:
        op = f"{w.key[0]} {w.key[1]}"
        out.append(f"{job.svc}'s invalidate_mappings callback for attachment {job.attachment} ({op}) returned at "
                   f"{at(w.returned_t)}")
        out.append(f"its fences retired at {at(w.start)} ({w.retired_by}): from then until its unmap an importer "
                   f"may only read and discard")
        until = f"it unmapped only at {at(w.end)}" if w.end is not None else "it had not unmapped by the end"
        used = ("wrote" if job.write else "read (and used the data, its dma_end counting the bytes)")
        if job.rogue:
            used += " as a rogue device, with no map of its own"
        out.append(f"the job {used} from {at(job.begin_t)} until {at(end)}, and {until}")
        return out
    if kind in (LOST_WRITE, STALE_READ) and rec is None:
        return [f"the job used gen {job.gen}, which the exporter had moved off and freed several moves before "
                f"its end at {at(end)}"]
    if kind == LOST_WRITE:
        assert rec is not None
        edge_t = rec.copy_begin_t if rec.copy_begin_t is not None else rec.free_t
        assert edge_t is not None
        out.append(why_copy(rec, notes, at, edge_t))
        out.append(why_running(job, notes, n, at, edge_t,
                               "the copy began" if rec.copy_begin_t is not None else "the range was freed"))
        out.append(f"so the {verb}'s last access at {at(end)} came after the copy had begun reading the old range: "
                   f"gen {job.gen + 1} may miss its bytes")
    elif kind == STALE_READ:
        assert rec is not None and rec.free_t is not None
        if rec.copy_begin_t is not None:
            out.append(why_copy(rec, notes, at, rec.copy_begin_t))
        out.append(f"the old range was freed at {at(rec.free_t)}, once the copy was done, and may hold another "
                   f"buffer's bytes from then on")
        out.append(why_running(job, notes, n, at, rec.free_t, "the old range was freed"))
    elif kind == USE_AFTER_UNMAP:
        cause = job.uau
        if cause is None or cause.how == "never":
            out.append(f"attachment {job.attachment} of {job.svc} had no mapping: it had never been mapped")
        elif cause.how == "invalidate":
            out.append(f"attachment {job.attachment} of {job.svc} had no usable mapping since {at(cause.t_ns)}, "
                       f"because {job.svc} invalidated it on move_notify then and mapped nothing since")
        else:
            out.append(f"attachment {job.attachment} of {job.svc} had no mapping since {at(cause.t_ns)}, because "
                       f"{job.svc} unmapped it then and mapped nothing since")
        if job.rogue:
            out.append(f"the job began at {at(job.begin_t)} all the same, because it was a rogue device's DMA: a "
                       f"real access with no map of its own")
        else:
            out.append(f"the job began at {at(job.begin_t)} all the same, on the placement of its last mapping "
                       f"({place_str(job.heap, job.offset)}, gen {job.gen})")
    elif kind == UNFENCED_ACCESS:
        m = MapInfo.of(job.map)
        if m is not None and m.gen == job.gen:
            served = f" at {at(m.served_t)}" if m.served_t is not None else ""
            after = (f", after the move creating it began at {at(rec.created_t)}"
                     if rec is not None and rec.created_t is not None and m.served_t is not None
                     and m.served_t >= rec.created_t else "")
            out.append(f"the job began at {at(job.begin_t)} on gen {job.gen}, because the exporter answered "
                       f"{job.svc}'s map (request {m.id}){served} with gen {job.gen}{after}, and {job.svc} "
                       f"received it at {at(m.recv_t)}")
        else:
            out.append(f"the job began at {at(job.begin_t)} on gen {job.gen}")
        if rec is not None and rec.copy_end_t is not None:
            out.append(f"the copy creating gen {job.gen} ended only at {at(rec.copy_end_t)}: until then the new "
                       f"placement held a partial copy")
        else:
            out.append(f"no copy creating gen {job.gen} had ended by the end of the history")
    return out


def context_events(race: Race) -> list[dict[str, Any]]:
    """The messages and waits the chain cites, as events (t_ns, svc, event, ...), in time order."""
    job = race.job
    out: list[dict[str, Any]] = []
    b = job.buffer
    m = MapInfo.of(job.map)
    if m is not None:
        if m.sent_t is not None:
            out.append({"t_ns": m.sent_t, "svc": job.svc, "event": "map_request", "buffer": b, "id": m.id,
                        "attachment": job.attachment, "note": "the map event's t_ns less its latency_ns"})
        if m.served_t is not None:
            sv = m.served or {}
            out.append({"t_ns": m.served_t, "svc": EXPORTER, "event": "map_served", "buffer": b, "id": m.id,
                        "importer": job.svc, "attachment": job.attachment, "gen": sv.get("gen", m.gen),
                        "placement": place_str(sv.get("heap", m.heap), sv.get("offset", m.offset)),
                        "deferred_ns": m.deferred_ns})
        out.append({"t_ns": m.recv_t, "svc": job.svc, "event": "map", "buffer": b, "id": m.id,
                    "attachment": job.attachment, "gen": m.gen, "placement": place_str(m.heap, m.offset),
                    "reused": m.reused})
    notes, n = _note(job)
    rec = job.rec
    if notes is not None and rec is not None:
        move = rec.out_move
        if n is not None:
            op = n.op
            for t, svc, name in ((n.sent_t, EXPORTER, f"{op}_sent"), (n.recv_t, job.svc, f"{op}_received"),
                                 (n.ack_sent_t, job.svc, "ack_sent"), (n.ack_t, EXPORTER, "ack"),
                                 (n.returned_t, EXPORTER, f"{op}_returned")):
                if t is not None:
                    e = {"t_ns": t, "svc": svc, "event": name, "buffer": b, "move": move,
                         "attachment": job.attachment, "gen": rec.gen}
                    if svc == EXPORTER:
                        e["importer"] = job.svc
                    if name.endswith("_sent") and svc == EXPORTER:
                        e["id"] = n.sent_id
                    if name.endswith("_received"):
                        e["id"], e["state"] = n.sent_id, n.state
                    out.append(e)
        if notes.last_ack is not None:
            for imp in notes.last_ack[1]:
                if n is None or imp != job.svc:
                    out.append({"t_ns": notes.last_ack[0], "svc": EXPORTER, "event": "ack", "buffer": b, "move": move,
                                "importer": imp, "note": "the last ack"})
        if notes.ack_timeout is not None:
            out.append({"t_ns": notes.ack_timeout[0], "svc": EXPORTER, "event": "ack_timeout", "buffer": b,
                        "move": move, "importers": notes.ack_timeout[1]})
        if notes.fence_wait_begin_t is not None:
            out.append({"t_ns": notes.fence_wait_begin_t, "svc": EXPORTER, "event": "fence_wait_begin",
                        "buffer": b, "move": move})
        if notes.fence_wait_end_t is not None:
            out.append({"t_ns": notes.fence_wait_end_t, "svc": EXPORTER, "event": "fence_wait_end", "buffer": b,
                        "move": move, "forced": list(notes.forced)})
    w = job.win
    if w is not None:
        out.append({"t_ns": w.returned_t, "svc": job.svc, "event": "invalidate_mappings_returned", "buffer": b,
                    "attachment": job.attachment})
        if w.start is not None:
            out.append({"t_ns": w.start, "svc": EXPORTER, "event": "fence_wait_end", "buffer": b,
                        "note": f"the fences retired ({w.retired_by})"})
        if w.end is not None:
            out.append({"t_ns": w.end, "svc": job.svc, "event": w.ended_by or "unmap", "buffer": b,
                        "attachment": job.attachment})
    out.sort(key=lambda e: e["t_ns"])
    return out
