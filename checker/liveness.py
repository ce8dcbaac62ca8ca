"""Liveness: the `stuck` finding. Something the protocol began that never got anywhere.

Rules (docs/events.md, "Findings"; docs/reading-a-verdict.md):
- What is watched, each from the event that opens it to the events that close it:
  `move`          move_begin .. its move_end (same buffer and move). No event aborts a begun move.
  `queued_move`   move_queued .. the buffer's move_begin, move_refused or move_cancelled.
  `deferred_map`  map_deferred .. map_served of that importer and id, its refusal (op_answered,
                  op map, ok false, same peer and id), or its attachment's attachment_revoked or
                  the exporter's detach.
  `fence`         a fence somebody waits for: each of fence_wait_begin's `fences` that had not
                  signalled, and each fence_blocked fence .. that importer's fence_signal on the
                  buffer with that seq or later, the exporter forcing the importer's fences on the
                  buffer (fence_signal forced), or (an awaited one) the end of the wait that listed
                  it (fence_wait_end: every fence it awaited signalled or was forced).
  `unmap_wait`    unmap_wait_begin .. unmap_wait_end of that buffer and revocation (Linux 7.1).
- The bound is the drain. The workload ends when the driver asks the services to stop; each
  group (the importers, then the exporter) then has the stop timeout (runtime/lifecycle.py
  STOP_TIMEOUT_S, 10 s, wall-clock in a real run, virtual in a simulated one) to finish what it
  began: the exporter answers stop only with no move in flight, an importer only with no job
  running. deploy's workload_stop marks the end of that drain. Whatever is still open then is
  `stuck`: one finding per item, reported at workload_stop (the trace's instant, explore's catch).
  The history is followed to its end all the same: an item that ends later (in the shutdown)
  says when and by what; it is still a finding (the drain's bound had passed).
- Histories cut short on purpose are not judged, and the report says why (`judged` false,
  `why_not`): no workload_stop (interrupted before it, `up`/`down`, a crashed driver, a
  history cut on purpose); a run_interrupted (the drain was cut to a few seconds); the exporter's
  death (service_died). A service that dies or starts again during the run explains what it
  leaves open: an importer's own deferred maps and fences open at its death or restart, and
  every exporter operation (move, queued move, unmap wait) open then (it may wait for that
  importer, which the exporter learns of only by its lease), are `excused`, counted by reason,
  never stuck. So is an unmap wait held by an importer that keeps its mapping (the oracle says
  which, from checker/revoke.py's record, at workload_stop): 7.1 waits for it without bound, and
  the revoke summary counts it as a revocation not completed.
- Memory: what is open now (live moves, maps, fences, waits) and the stuck items (at most
  MAX_ITEMS kept).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from checker.model import importer_name
from checker.witness import rel_ms

# What a stuck item is, and how the report says N of them ("2 moves never completed").
WHAT: dict[str, tuple[str, str, str]] = {
    "move": ("move", "moves", "never completed"),
    "queued_move": ("queued move", "queued moves", "never begun, refused nor cancelled"),
    "deferred_map": ("deferred map", "deferred maps", "never served nor refused"),
    "fence": ("fence", "fences", "never signalled nor forced"),
    "unmap_wait": ("unmap wait", "unmap waits", "never ended"),
}
MAX_ITEMS = 256
_KEPT = ("buffer", "move", "revoke", "importer", "id", "attachment", "seq", "reason")
_PROGRESS = ("move_notify_sent", "invalidate_mappings_sent", "move_notify_returned", "invalidate_mappings_returned",
             "ack", "ack_timeout", "fence_wait_end", "copy_begin", "copy_end", "free", "resv_lock", "resv_unlock",
             "reset_wait_begin", "reset_confirmed", "reset_unconfirmed", "unmap_wait_warning", "revoke", "unrevoke")

# Every event the tracker reads (checked against the catalogue by the oracle).
HANDLED = ("move_begin", "move_end", "move_queued", "move_refused", "move_cancelled", "map_deferred", "map_served",
           "op_answered", "attachment_revoked", "detach", "fence_wait_begin", "fence_signal", "fence_blocked",
           "unmap_wait_begin", "unmap_wait_end", "service_died", "service_start", "run_interrupted",
           "workload_stop", *_PROGRESS)

Handler = Callable[[dict[str, Any], int, str], None]
FindingHook = Callable[[str, str, int, dict[str, Any]], None]


def phrase(by_what: dict[str, int]) -> str:
    """"2 moves never completed, 3 deferred maps never served nor refused" (kinds with a count)."""
    parts = []
    for what, (one, many, never) in WHAT.items():
        n = by_what.get(what, 0)
        if n:
            parts.append(f"{n} {one if n == 1 else many} {never}")
    return ", ".join(parts)


def _brief(ev: dict[str, Any], t: int, svc: str, note: str) -> dict[str, Any]:
    out: dict[str, Any] = {"t_ns": t, "svc": svc, "event": ev.get("event")}
    for k in _KEPT:
        if ev.get(k) is not None:
            out[k] = ev[k]
    out["note"] = note
    return out


class _Open:
    """One thing begun and not yet over."""

    __slots__ = ("what", "key", "t", "fields", "first", "last", "owner", "item", "notified", "returned", "acked",
                 "awaits")

    def __init__(self, what: str, key: tuple, t: int, fields: dict[str, Any], first: dict[str, Any],
                 owner: str) -> None:
        self.what, self.key, self.t, self.fields, self.first = what, key, t, fields, first
        self.last: dict[str, Any] | None = None
        self.owner = owner                    # the service whose death explains it
        self.item: dict[str, Any] | None = None   # its finding, once stuck
        self.notified = self.returned = self.acked = 0
        self.awaits: list[tuple] = []         # a fence wait: the fences it listed


class Liveness:
    """Fed the events of `HANDLED` (the oracle chains them to its own handlers); reports each stuck
    item to `found` (checker/findings.py Findings.stuck) and, if given, `on_finding`."""

    def __init__(self, found: Callable[[dict[str, Any]], None], on_finding: FindingHook | None = None) -> None:
        self.found = found
        self.on_finding = on_finding
        self.open: dict[tuple, _Open] = {}
        self.fences: dict[tuple[str, Any], dict[Any, _Open]] = {}     # (importer, buffer) -> seq -> open fence
        self.signaled: dict[tuple[str, Any], int] = {}                # (importer, buffer) -> highest seq signalled
        self.maps_of: dict[tuple[str, Any], set[tuple]] = {}          # (importer, attachment) -> deferred maps
        self.waits: dict[tuple, _Open] = {}                           # (buffer, "move"|"revoke", id) -> its fence wait
        self.started: set[str] = set()
        self.excused: Counter[str] = Counter()
        self.judged: bool | None = None
        self.why_not = "the history has no workload_stop: its drain never ended (cut short)"
        self.bound_t: int | None = None
        self.interrupted = False
        self.exporter_died: int | None = None
        self.stuck: list[_Open] = []

    def handlers(self) -> dict[str, Handler]:
        h: dict[str, Handler] = {
            "move_begin": self._move_begin, "move_end": self._move_end, "move_queued": self._move_queued,
            "move_refused": self._queue_over, "move_cancelled": self._queue_over,
            "map_deferred": self._map_deferred, "map_served": self._map_served, "op_answered": self._op_answered,
            "attachment_revoked": self._attachment_gone, "detach": self._detach,
            "fence_wait_begin": self._fence_wait_begin, "fence_signal": self._fence_signal,
            "fence_blocked": self._fence_blocked, "unmap_wait_begin": self._unmap_wait_begin,
            "unmap_wait_end": self._unmap_wait_end, "service_died": self._service_died,
            "service_start": self._service_start, "run_interrupted": self._run_interrupted,
            "workload_stop": self._workload_stop,
        }
        for name in _PROGRESS:
            h.setdefault(name, self._progress)
        assert set(h) == set(HANDLED)
        return h

    # ------------------------------------------------------------------ opening and closing

    def _begin(self, what: str, key: tuple, ev: dict[str, Any], t: int, svc: str, note: str, owner: str,
               **fields: Any) -> _Open | None:
        if key in self.open or self.exporter_died is not None:
            return None
        o = self.open[key] = _Open(what, key, t, fields, _brief(ev, t, svc, note), owner)
        return o

    def _end(self, key: tuple, ev: dict[str, Any], t: int, svc: str, how: str) -> _Open | None:
        o = self.open.pop(key, None)
        if o is None:
            return None
        if o.what == "deferred_map":
            att = self.maps_of.get((o.fields["importer"], o.fields.get("attachment")))
            if att is not None:
                att.discard(key)
        elif o.what == "fence":
            per = self.fences.get((o.fields["importer"], o.fields["buffer"]))
            if per is not None:
                per.pop(o.fields["seq"], None)
        if o.item is not None:
            o.item["ended"] = _brief(ev, t, svc, how)
        return o

    def _progress(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc != "exporter":
            return
        name = ev["event"]
        if name == "fence_wait_end":
            self._wait_over(ev, t, svc)
        buf = ev.get("buffer")
        o = None
        if ev.get("move") is not None:
            o = self.open.get(("move", buf, ev["move"]))
        elif ev.get("revoke") is not None:
            o = self.open.get(("unmap_wait", buf, ev["revoke"]))
        if o is None:
            return
        o.last = _brief(ev, t, svc, "its last event")
        if name.endswith("_sent"):
            o.notified += 1
        elif name.endswith("_returned"):
            o.returned += 1
        elif name == "ack":
            o.acked += 1

    # ------------------------------------------------------------------ moves

    def _move_begin(self, ev: dict[str, Any], t: int, svc: str) -> None:
        buf = ev.get("buffer")
        self._end(("queued_move", buf), ev, t, svc, "the queued move began")
        frm, to = ev.get("from") or {}, ev.get("to") or {}
        self._begin("move", ("move", buf, ev.get("move")), ev, t, svc,
                    f"the move began ({ev.get('reason')}, {frm.get('heap')} -> {to.get('heap')})", "exporter",
                    buffer=buf, move=ev.get("move"), reason=ev.get("reason"), from_heap=frm.get("heap"),
                    to_heap=to.get("heap"))

    def _move_end(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self._end(("move", ev.get("buffer"), ev.get("move")), ev, t, svc, "the move completed")

    def _move_queued(self, ev: dict[str, Any], t: int, svc: str) -> None:
        buf = ev.get("buffer")
        self._begin("queued_move", ("queued_move", buf), ev, t, svc, "the move was queued (waiting for the last unmap)",
                    "exporter", buffer=buf, to_heap=ev.get("to_heap"))

    def _queue_over(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self._end(("queued_move", ev.get("buffer")), ev, t, svc, f"the queued move was {ev['event'][5:]}")

    # ------------------------------------------------------------------ deferred maps

    def _map_deferred(self, ev: dict[str, Any], t: int, svc: str) -> None:
        imp = importer_name(ev.get("importer"))
        key = ("deferred_map", imp, ev.get("id"))
        holder = (f"move {ev['move']}" if ev.get("move") is not None
                  else f"revoke {ev['revoke']}" if ev.get("revoke") is not None else None)
        note = "the map was deferred" + (f" behind {holder}" if holder else "")
        o = self._begin("deferred_map", key, ev, t, svc, note, imp, importer=imp, id=ev.get("id"),
                        buffer=ev.get("buffer"), attachment=ev.get("attachment"), holder=holder)
        if o is not None:
            self.maps_of.setdefault((imp, ev.get("attachment")), set()).add(key)

    def _map_served(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self._end(("deferred_map", importer_name(ev.get("importer")), ev.get("id")), ev, t, svc, "the map was served")

    def _op_answered(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if ev.get("op") == "map" and ev.get("ok") is False and svc == "exporter":
            self._end(("deferred_map", importer_name(ev.get("peer")), ev.get("id")), ev, t, svc,
                      f"the map was refused ({ev.get('code')})")

    def _attachment_gone(self, ev: dict[str, Any], t: int, svc: str) -> None:
        imp = importer_name(ev.get("importer"))
        for key in list(self.maps_of.pop((imp, ev.get("attachment")), ())):
            self._end(key, ev, t, svc, f"its attachment went away ({ev['event']})")

    def _detach(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc == "exporter":
            self._attachment_gone(ev, t, svc)

    # ------------------------------------------------------------------ fences

    def _open_fence(self, imp: str, buf: Any, seq: Any, ev: dict[str, Any], t: int, svc: str, note: str,
                    **fields: Any) -> _Open | None:
        if not isinstance(seq, int) or self.signaled.get((imp, buf), -1) >= seq:
            return None
        key = ("fence", imp, buf, seq)
        o = self.open.get(key) or self._begin("fence", key, ev, t, svc, note, imp, importer=imp, buffer=buf,
                                               seq=seq, **fields)
        if o is not None:
            self.fences.setdefault((imp, buf), {})[seq] = o
        return o

    def _fence_wait_begin(self, ev: dict[str, Any], t: int, svc: str) -> None:
        buf = ev.get("buffer")
        op = ("move", ev["move"]) if ev.get("move") is not None else ("revoke", ev.get("revoke"))
        wait = self.waits.setdefault((buf, *op), _Open("wait", (buf, *op), t, {}, {}, "exporter"))
        by = f"{op[0]} {op[1]}"
        for f in ev.get("fences") or ():
            if not isinstance(f, dict):
                continue
            imp = importer_name(f.get("importer"))
            o = self._open_fence(imp, buf, f.get("seq"), ev, t, svc, f"{by} began to wait for it",
                                 usage=f.get("usage"), awaited_by=by)
            if o is not None:
                wait.awaits.append(o.key)
        self._progress(ev, t, svc)

    def _wait_over(self, ev: dict[str, Any], t: int, svc: str) -> None:
        buf = ev.get("buffer")
        op = ("move", ev["move"]) if ev.get("move") is not None else ("revoke", ev.get("revoke"))
        wait = self.waits.pop((buf, *op), None)
        for key in wait.awaits if wait is not None else ():
            self._end(key, ev, t, svc, "the fence wait that listed it ended")

    def _fence_blocked(self, ev: dict[str, Any], t: int, svc: str) -> None:
        waiting = ev.get("waiting_for") or {}
        self._open_fence(svc, ev.get("buffer"), ev.get("seq"), ev, t, svc,
                         f"its signalling waits for a {waiting.get('kind', '?')}", blocked_on=waiting.get("kind"))

    def _fence_signal(self, ev: dict[str, Any], t: int, svc: str) -> None:
        buf = ev.get("buffer")
        if svc == "exporter":
            if ev.get("forced") is not True:
                return
            imp = importer_name(ev.get("importer"))
            for o in list(self.fences.get((imp, buf), {}).values()):
                self._end(o.key, ev, t, svc, f"the exporter forced it ({ev.get('error')})")
            return
        seq = ev.get("seq")
        if not isinstance(seq, int):
            return
        if seq > self.signaled.get((svc, buf), -1):
            self.signaled[(svc, buf)] = seq
        per = self.fences.get((svc, buf))
        if per:
            for s in [s for s in per if s <= seq]:
                self._end(per[s].key, ev, t, svc, f"it signalled (seq {seq})")

    # ------------------------------------------------------------------ unmap waits (Linux 7.1)

    def _unmap_wait_begin(self, ev: dict[str, Any], t: int, svc: str) -> None:
        buf = ev.get("buffer")
        self._begin("unmap_wait", ("unmap_wait", buf, ev.get("revoke")), ev, t, svc,
                    f"the unmap wait began ({', '.join(map(str, ev.get('importers') or [])) or 'nobody'})", "exporter",
                    buffer=buf, revoke=ev.get("revoke"), importers=list(ev.get("importers") or []))

    def _unmap_wait_end(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self._end(("unmap_wait", ev.get("buffer"), ev.get("revoke")), ev, t, svc, "the unmap wait ended")

    # ------------------------------------------------------------------ what cuts a history short

    def _service_start(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc in self.started:
            self._excuse(svc, f"{svc} restarted")
        self.started.add(svc)

    def _service_died(self, ev: dict[str, Any], t: int, svc: str) -> None:
        name = str(ev.get("name"))
        if name == "exporter" and self.judged is None:
            self.exporter_died = t
        self._excuse(name, f"{name} died")

    def excuse_unmap_wait(self, buffer: Any, revoke: Any, reason: str) -> None:
        """An unmap wait that an importer holds by keeping its mapping (checker/revoke.py knows
        the mappings): the importer broke the rule, not the protocol; counted, never stuck."""
        o = self.open.get(("unmap_wait", buffer, revoke))
        if o is not None and self.judged is None:
            self.excused[f"{WHAT[o.what][0]}: {reason}"] += 1
            self._end(o.key, {}, 0, "", reason)

    def _excuse(self, name: str, reason: str) -> None:
        if self.judged is not None:
            return           # after the drain: what dies in the shutdown explains nothing
        for key, o in list(self.open.items()):
            if name == "exporter" or o.owner == name or o.owner == "exporter" and o.what != "fence":
                self.excused[f"{WHAT[o.what][0]}: {reason}"] += 1
                self._end(key, {}, 0, "", reason)
        for key in [k for k in self.signaled if k[0] == name]:
            del self.signaled[key]    # a new incarnation's fences are its own

    def _run_interrupted(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self.interrupted = True

    def _workload_stop(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if self.judged is not None:
            return
        if self.interrupted:
            self.judged, self.why_not = False, "the run was interrupted: its drain was cut short"
            return
        if self.exporter_died is not None:
            self.judged, self.why_not = False, "the exporter died during the run"
            return
        self.judged, self.why_not, self.bound_t = True, "", t
        bound = {"t_ns": t, "svc": svc, "event": "workload_stop", "note": "the drain ended with it still open"}
        for o in sorted(self.open.values(), key=lambda o: (o.t, str(o.key))):
            events = [o.first] + ([o.last] if o.last is not None else []) + [bound]
            item = {"what": o.what, "t_ns": o.t, "bound_t_ns": t, "open_ns": t - o.t, **o.fields,
                    "events": events, "ended": None}
            if o.what in ("move", "unmap_wait"):
                item.update(notified=o.notified, returned=o.returned, acked=o.acked)
            o.item = item
            self.found(item)
            if self.on_finding is not None:
                self.on_finding(f"stuck: {WHAT[o.what][0]}", svc, t, {"finding": "stuck", **item})

    def status(self) -> dict[str, Any]:
        return {"judged": bool(self.judged), "why_not": self.why_not or None, "bound_t_ns": self.bound_t,
                "excused": dict(sorted(self.excused.items()))}


def sentence(x: dict[str, Any], t0: int) -> str:
    """One stuck item in words."""
    what, began, bound = x.get("what"), rel_ms(x.get("t_ns"), t0), rel_ms(x.get("bound_t_ns"), t0)
    waited = f"{(x.get('open_ns') or 0) / 1e9:.3f} s"
    end = x.get("ended")
    then = (f"; it ended only at {rel_ms(end.get('t_ns'), t0)}, in the shutdown ({end.get('note')})"
            if isinstance(end, dict) else "; it never ended")
    if what == "move":
        text = (f"move {x.get('move')} of buffer {x.get('buffer')} ({x.get('reason')}, {x.get('from_heap')} -> "
                f"{x.get('to_heap')}) began at {began} and had not completed when the drain ended at {bound}, "
                f"{waited} later")
        if x.get("notified"):
            text += (f"; it notified {x['notified']} attachment(s), of which {x.get('returned', 0)} callback(s) "
                     f"returned and {x.get('acked', 0)} acked")
    elif what == "queued_move":
        text = (f"a move of buffer {x.get('buffer')} to {x.get('to_heap')} queued at {began} was neither begun, "
                f"refused nor cancelled when the drain ended at {bound}")
    elif what == "deferred_map":
        text = (f"{x.get('importer')}'s map of buffer {x.get('buffer')} (request {x.get('id')}) was deferred at "
                f"{began}" + (f" behind {x['holder']}" if x.get("holder") else "")
                + f" and was neither served nor refused when the drain ended at {bound}")
    elif what == "fence":
        how = (f"awaited by {x['awaited_by']}" if x.get("awaited_by")
               else f"blocked on a {x.get('blocked_on')}" if x.get("blocked_on") else "awaited")
        text = (f"{x.get('importer')}'s fence {x.get('seq')} on buffer {x.get('buffer')} ({how} from {began}) was "
                f"neither signalled nor forced when the drain ended at {bound}")
    elif what == "unmap_wait":
        text = (f"the unmap wait of revoke {x.get('revoke')} on buffer {x.get('buffer')} (for "
                f"{', '.join(map(str, x.get('importers') or [])) or 'nobody'}) began at {began} and had not ended "
                f"when the drain ended at {bound}")
    else:
        text = f"a {what} begun at {began} was still open when the drain ended at {bound}"
    last = next((e for e in x.get("events") or () if e.get("note") == "its last event"), None)
    if last is not None:
        text += f"; its last event was {last.get('event')} at {rel_ms(last.get('t_ns'), t0)}"
    return text + then + "."
