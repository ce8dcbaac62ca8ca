"""trace.json: the run as a Chrome Trace Event file (opens in ui.perfetto.dev and chrome://tracing).

Rules:
- One process row per service: `pid` 1 is the exporter, 2 is deploy, 10+N is importer-N, others
  get 1000+ in order of appearance; `process_sort_index` puts the exporter first, importers by
  index, deploy last. Every pid gets process_name / process_sort_index / thread_name metadata the
  first time it is used.
- `ts` is microseconds (float, ns precision) since the history's first event.
- Async spans (`b`/`e`, same cat, name and id; ids are unique per span, so overlapping spans never
  have to nest; the name is "buffer B" so the spans of one buffer group together):
  DMA jobs (cat dma, dma_begin..dma_end), mappings (cat map, per importer+attachment, map..unmap;
  a second map without an unmap closes the first), moves (cat move, move_begin..move_end).
  Spans still open at the end close at the history's last event, marked `unfinished`; a
  service's spans still open when it dies (service_died) or starts again (a second
  service_start) close then, marked `died` / `restarted`.
  At most SPAN_CAP spans per cat are drawn (the rest are counted in otherData): every `b`
  written has its `e`.
- Messages are flow arrows (`s` at the sender, `f` with bp "e" at the receiver, same id, written
  together so they always pair up), each endpoint wrapped in a 1 ns `X` slice on thread 2
  ("messages") so the flow has a slice to bind to. 1 ns rather than 1 us: slices on one thread
  must nest, and two messages within a microsecond on one service would otherwise overlap.
  Pairs: importer request sent (t_ns - latency_ns of its map/unmap/attach/detach) -> exporter
  op_received (same peer+id; for a map or unmap served at once, map_served / unmap_served minus
  deferred_ns); exporter op_answered (or map_served / unmap_served) -> importer event; move_notify_sent ->
  move_notify_received (same importer+id); ack_sent -> exporter ack. Unpaired halves wait in
  bounded tables (PENDING_CAP each, oldest dropped first). At most FLOW_CAP flows are drawn.
- Instants (`i`, scope "p"): races (at the job's end, args: kind, sentence), fault (every field
  of the event; a process fault sits on its target's row), iommu_fault, corruption, move_refused,
  ack_timeout, service_died, service_restarted, job_failed, attachment_revoked, importer_lost,
  lease_expired, exporter_lost, rejoin, and the bytes check's findings (lost write / foreign lines
  in the final bytes, at the exporter's final_content, cat "bytes"). Findings (cat "finding",
  checker/findings.py): "deadlock" when a cycle of waits formed and "deadlock broken" when it
  ended (args: the cycle's nodes), "fence forced", "timeout: KIND".
- Counter `vram` (bytes in use): +size at buffer_created in vram and at move_begin whose
  destination is vram (allocated then), -size at a free in vram.
- Written streaming: each trace event goes to the file as it is made.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO, Any

from checker.catalogue import require_known
from checker.jsonio import dumps
from checker.model import Race, importer_name
from checker.witness import place_str, sentence

SPAN_CAP = 200_000
FLOW_CAP = 200_000
PENDING_CAP = 100_000
X_DUR_US = 0.001
WRITE_BATCH = 2048
EXPORTER_PID, DEPLOY_PID, IMPORTER_PID_BASE, OTHER_PID_BASE = 1, 2, 10, 1000
EVENTS_TID, MESSAGES_TID = 1, 2
REQUEST_OPS = frozenset({"map", "unmap", "attach", "detach"})
_IMPORTER_RE = re.compile(r"^importer-(\d+)$")


def _bounded_put(table: dict[Any, Any], key: Any, value: Any) -> None:
    table[key] = value
    if len(table) > PENDING_CAP:
        del table[next(iter(table))]


class TraceWriter:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fh: IO[bytes] = open(self.path, "wb", buffering=1 << 20)
        self._fh.write(b'{"traceEvents":[\n')
        self._first = True
        self._parts: list[bytes] = []   # serialised events not yet written (at most WRITE_BATCH)
        self.written = 0
        self.t0: int | None = None
        self._pids: dict[str, int] = {}
        self._next_other = OTHER_PID_BASE
        self._open: dict[str, dict[Any, tuple[str, str, int]]] = {"dma": {}, "map": {}, "move": {}}
        self._spans = {"dma": 0, "map": 0, "move": 0}
        self._spans_dropped = {"dma": 0, "map": 0, "move": 0}
        self._span_seq = 0
        self._flows = 0
        self._flows_dropped = 0
        self._op_recv: dict[tuple[str, Any], int] = {}
        self._op_ans: dict[tuple[str, Any], int] = {}
        self._notify: dict[tuple[str, Any], int] = {}
        self._acks: dict[tuple[str, Any], int] = {}
        self._vram = 0
        self._closed = False
        self._started: set[str] = set()

    # ------------------------------------------------------------------ output

    def _emit(self, obj: dict[str, Any]) -> None:
        parts = self._parts
        parts.append(dumps(obj))
        if len(parts) >= WRITE_BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._parts:
            return
        if not self._first:
            self._fh.write(b",\n")
        self._first = False
        self._fh.write(b",\n".join(self._parts))
        self.written += len(self._parts)
        self._parts.clear()

    def _ts(self, t: int) -> float:
        return (t - (self.t0 or 0)) / 1000.0

    def pid(self, svc: str) -> int:
        p = self._pids.get(svc)
        if p is not None:
            return p
        m = _IMPORTER_RE.match(svc)
        if svc == "exporter":
            p, sort = EXPORTER_PID, 0
        elif svc == "deploy":
            p, sort = DEPLOY_PID, 1_000_000
        elif m:
            p, sort = IMPORTER_PID_BASE + int(m.group(1)), 1 + int(m.group(1))
        else:
            p = self._next_other
            self._next_other += 1
            sort = 500_000 + p
        self._pids[svc] = p
        self._emit({"ph": "M", "name": "process_name", "pid": p, "tid": 0, "ts": 0, "args": {"name": svc}})
        self._emit({"ph": "M", "name": "process_sort_index", "pid": p, "tid": 0, "ts": 0,
                    "args": {"sort_index": sort}})
        self._emit({"ph": "M", "name": "thread_name", "pid": p, "tid": EVENTS_TID, "ts": 0,
                    "args": {"name": "events"}})
        self._emit({"ph": "M", "name": "thread_name", "pid": p, "tid": MESSAGES_TID, "ts": 0,
                    "args": {"name": "messages"}})
        return p

    # ------------------------------------------------------------------ spans

    def _begin(self, cat: str, key: Any, ident: str, name: str, svc: str, t: int,
               args: dict[str, Any]) -> None:
        open_ = self._open[cat]
        if key in open_:
            self._end(cat, key, t, {"closed_by": "reopened"})
        if self._spans[cat] >= SPAN_CAP:
            self._spans_dropped[cat] += 1
            return
        self._spans[cat] += 1
        pid = self.pid(svc)
        open_[key] = (ident, name, pid)
        self._emit({"ph": "b", "cat": cat, "name": name, "id": ident, "pid": pid, "tid": EVENTS_TID,
                    "ts": self._ts(t), "args": args})

    def _end(self, cat: str, key: Any, t: int, args: dict[str, Any] | None = None) -> None:
        span = self._open[cat].pop(key, None)
        if span is None:
            return
        ident, name, pid = span
        ev: dict[str, Any] = {"ph": "e", "cat": cat, "name": name, "id": ident, "pid": pid,
                              "tid": EVENTS_TID, "ts": self._ts(t)}
        if args:
            ev["args"] = args
        self._emit(ev)

    # ------------------------------------------------------------------ flows and instants

    def _flow(self, name: str, src_svc: str, src_t: int, dst_svc: str, dst_t: int,
              args: dict[str, Any]) -> None:
        if self._flows >= FLOW_CAP:
            self._flows_dropped += 1
            return
        self._flows += 1
        fid = self._flows
        sp, dp = self.pid(src_svc), self.pid(dst_svc)
        sts, dts = self._ts(src_t), self._ts(dst_t)
        self._emit({"ph": "X", "cat": "msg", "name": f"{name} sent", "pid": sp, "tid": MESSAGES_TID,
                    "ts": sts, "dur": X_DUR_US, "args": args})
        self._emit({"ph": "s", "cat": "msg", "name": name, "id": fid, "pid": sp, "tid": MESSAGES_TID,
                    "ts": sts})
        self._emit({"ph": "X", "cat": "msg", "name": f"{name} received", "pid": dp, "tid": MESSAGES_TID,
                    "ts": dts, "dur": X_DUR_US, "args": args})
        self._emit({"ph": "f", "bp": "e", "cat": "msg", "name": name, "id": fid, "pid": dp,
                    "tid": MESSAGES_TID, "ts": dts})

    def _instant(self, name: str, cat: str, svc: str, t: int, args: dict[str, Any]) -> None:
        self._emit({"ph": "i", "s": "p", "cat": cat, "name": name, "pid": self.pid(svc),
                    "tid": EVENTS_TID, "ts": self._ts(t), "args": args})

    def _counter(self, t: int, delta: int) -> None:
        self._vram += delta
        self._emit({"ph": "C", "name": "vram", "pid": self.pid("exporter"), "tid": EVENTS_TID,
                    "ts": self._ts(t), "args": {"bytes": self._vram}})

    # ------------------------------------------------------------------ hooks from the oracle

    def on_event(self, ev: dict[str, Any], t: int, svc: str, name: str) -> None:
        if self.t0 is None:
            self.t0 = t
            self.pid("exporter")  # the exporter's row first, whoever speaks first
        self.pid(svc)
        h = _HANDLERS.get(name)
        if h is not None:
            try:
                h(self, ev, t, svc)
            except (KeyError, TypeError, ValueError, AttributeError):
                pass  # the oracle counts malformed events; the trace just skips them

    def on_finding(self, name: str, svc: str, t: int, args: dict[str, Any]) -> None:
        self._instant(name, "finding" if "finding" in args else "bytes", svc, t, args)

    def on_race(self, race: Race) -> None:
        job = race.job
        self._instant(f"race: {race.kind}", "race", job.svc, race.end_t,
                      {"kind": race.kind, "sentence": sentence(race, self.t0 or 0, as_of=race.end_t), "job": job.job,
                       "buffer": job.buffer, "gen": job.gen, "unfinished": race.unfinished,
                       "rogue": job.rogue})

    def close(self, t_end: int | None, notes: dict[str, Any] | None = None) -> dict[str, Any]:
        if self._closed:
            return {}
        self._closed = True
        if t_end is not None:
            for cat in ("dma", "map", "move"):
                for key in list(self._open[cat]):
                    self._end(cat, key, t_end, {"unfinished": True})
        other = {
            "generator": "dmabuf-emu checker",
            "t0_ns": self.t0,
            "span_cap": SPAN_CAP,
            "spans": dict(self._spans),
            "spans_not_drawn": dict(self._spans_dropped),
            "flow_cap": FLOW_CAP,
            "flows": self._flows,
            "flows_not_drawn": self._flows_dropped,
        }
        if notes:
            other.update(notes)
        self._flush()
        self._fh.write(b'\n],"displayTimeUnit":"ms","otherData":' + dumps(other) + b"}\n")
        self._fh.close()
        return other

    # ------------------------------------------------------------------ per-event handlers

    def _dma_begin(self, ev: dict[str, Any], t: int, svc: str) -> None:
        job = ev["job"]
        args = {"job": job, "access": ev.get("access"), "gen": ev.get("gen"),
                "attachment": ev.get("attachment"), "placement": place_str(ev.get("heap"), ev.get("offset"))}
        if ev.get("rogue") is True:
            args["rogue"] = True
        self._begin("dma", (svc, job), f"dma-{svc}-job-{job}", f"buffer {ev['buffer']}", svc, t, args)

    def _dma_end(self, ev: dict[str, Any], t: int, svc: str) -> None:
        args = {"status": ev.get("status")}
        last = ev.get("last_access_ns")
        if last != t:  # the last access came earlier (an aborted job), or is unknown
            args["last_access_ns"] = last
        self._end("dma", (svc, ev["job"]), t, args)

    def _close_service(self, svc: str, t: int, how: str) -> None:
        for cat in ("dma", "map"):
            for key in [k for k in self._open[cat] if k[0] == svc]:
                self._end(cat, key, t, {how: True})

    def _service_start(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc in self._started:
            self._close_service(svc, t, "restarted")
        self._started.add(svc)

    def _service_died(self, ev: dict[str, Any], t: int, svc: str) -> None:
        name = str(ev["name"])
        self._instant("service_died", "service", svc, t, {k: ev.get(k) for k in ("name", "pid", "how")})
        self._close_service(name, t, "died")

    def _fault(self, ev: dict[str, Any], t: int, svc: str) -> None:
        args = {k: v for k, v in ev.items() if k not in ("t_ns", "svc", "pid", "event")}
        target = ev.get("target")
        row = svc
        if svc == "deploy" and isinstance(target, str) and (target == "exporter" or _IMPORTER_RE.match(target)):
            row = target
        self._instant(f"fault: {ev.get('kind')}", "fault", row, t, args)

    def _importer_reply(self, ev: dict[str, Any], t: int, svc: str, op: str) -> None:
        rid = ev.get("id")
        key = (svc, rid)
        recv = self._op_recv.pop(key, None)
        lat = ev.get("latency_ns")
        if recv is not None and isinstance(lat, int):
            self._flow(f"{op} request", svc, t - lat, "exporter", recv, {"id": rid, "op": op})
        ans = self._op_ans.pop(key, None)
        if ans is not None:
            self._flow(f"{op} reply", "exporter", ans, svc, t, {"id": rid, "op": op})

    def _map(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc == "exporter":
            return
        self._importer_reply(ev, t, svc, "map")
        att = ev.get("attachment")
        self._span_seq += 1
        self._begin("map", (svc, att), f"map-{svc}-att-{att}-{self._span_seq}", f"buffer {ev.get('buffer')}",
                    svc, t, {"attachment": att, "gen": ev.get("gen"), "reused": ev.get("reused"),
                             "placement": place_str(ev.get("heap"), ev.get("offset"))})

    def _unmap(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc == "exporter":
            return
        self._importer_reply(ev, t, svc, "unmap")
        self._end("map", (svc, ev.get("attachment")), t, {"kept_iommu": ev.get("kept_iommu")})

    def _attach(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc != "exporter":
            self._importer_reply(ev, t, svc, "attach")

    def _detach(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc != "exporter":
            self._importer_reply(ev, t, svc, "detach")

    def _op_received(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if ev.get("op") in REQUEST_OPS:
            _bounded_put(self._op_recv, (str(ev.get("peer")), ev.get("id")), t)

    def _op_answered(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if ev.get("op") in REQUEST_OPS:
            _bounded_put(self._op_ans, (str(ev.get("peer")), ev.get("id")), t)

    def _served(self, ev: dict[str, Any], t: int, svc: str) -> None:
        # A map or unmap served at once has no op_received/op_answered of its own: it arrived
        # deferred_ns before it was served, and its answer left when it was served.
        key = (str(ev.get("importer")), ev.get("id"))
        deferred = ev.get("deferred_ns")
        if key not in self._op_recv:
            _bounded_put(self._op_recv, key, t - (deferred if isinstance(deferred, int) else 0))
        _bounded_put(self._op_ans, key, t)

    def _move_notify_sent(self, ev: dict[str, Any], t: int, svc: str) -> None:
        imp = importer_name(ev.get("importer"))
        _bounded_put(self._notify, (imp, ev.get("id")), t)

    def _move_notify_received(self, ev: dict[str, Any], t: int, svc: str) -> None:
        sent = self._notify.pop((svc, ev.get("id")), None)
        if sent is not None:
            self._flow("move_notify", "exporter", sent, svc, t,
                       {"id": ev.get("id"), "buffer": ev.get("buffer"), "move": ev.get("move")})

    def _ack_sent(self, ev: dict[str, Any], t: int, svc: str) -> None:
        _bounded_put(self._acks, (svc, ev.get("id")), t)

    def _ack(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if svc != "exporter":
            return
        imp = importer_name(ev.get("importer"))
        sent = self._acks.pop((imp, ev.get("id")), None)
        if sent is not None:
            self._flow("ack", imp, sent, "exporter", t,
                       {"id": ev.get("id"), "buffer": ev.get("buffer"), "move": ev.get("move")})

    def _buffer_created(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if ev.get("heap") == "vram":
            self._counter(t, int(ev.get("size") or 0))

    def _move_begin(self, ev: dict[str, Any], t: int, svc: str) -> None:
        b, m = ev["buffer"], ev.get("move")
        to, src = ev.get("to") or {}, ev.get("from") or {}
        self._begin("move", (b, m), f"move-buffer-{b}-move-{m}", f"buffer {b}", svc, t,
                    {"move": m, "reason": ev.get("reason"), "from_gen": ev.get("from_gen"),
                     "to_gen": ev.get("to_gen"), "from": place_str(src.get("heap"), src.get("offset")),
                     "to": place_str(to.get("heap"), to.get("offset"))})
        if to.get("heap") == "vram":
            self._counter(t, int(to.get("size") or 0))

    def _move_end(self, ev: dict[str, Any], t: int, svc: str) -> None:
        self._end("move", (ev["buffer"], ev.get("move")), t, {"latency_ns": ev.get("latency_ns")})

    def _free(self, ev: dict[str, Any], t: int, svc: str) -> None:
        if ev.get("heap") == "vram":
            self._counter(t, -int(ev.get("size") or 0))


def _make_instant(cat: str, fields: tuple[str, ...]) -> Any:
    def handler(self: TraceWriter, ev: dict[str, Any], t: int, svc: str) -> None:
        self._instant(ev["event"], cat, svc, t, {k: ev.get(k) for k in fields if k in ev})
    return handler


_HANDLERS: dict[str, Any] = {
    "dma_begin": TraceWriter._dma_begin,
    "dma_end": TraceWriter._dma_end,
    "map": TraceWriter._map,
    "unmap": TraceWriter._unmap,
    "attach": TraceWriter._attach,
    "detach": TraceWriter._detach,
    "op_received": TraceWriter._op_received,
    "map_served": TraceWriter._served,
    "unmap_served": TraceWriter._served,
    "op_answered": TraceWriter._op_answered,
    "move_notify_sent": TraceWriter._move_notify_sent,
    "move_notify_received": TraceWriter._move_notify_received,
    "ack_sent": TraceWriter._ack_sent,
    "ack": TraceWriter._ack,
    "buffer_created": TraceWriter._buffer_created,
    "move_begin": TraceWriter._move_begin,
    "move_end": TraceWriter._move_end,
    "free": TraceWriter._free,
    "fault": TraceWriter._fault,
    "service_start": TraceWriter._service_start,
    "iommu_fault": _make_instant("fault", ("job", "buffer", "attachment", "access", "heap", "offset", "size")),
    "corruption": _make_instant("corruption", ("job", "buffer", "gen", "lines", "line", "expected", "found")),
    "move_refused": _make_instant("move", ("buffer", "from_gen", "to_gen", "reason")),
    "ack_timeout": _make_instant("move", ("buffer", "move", "importers")),
    "service_died": TraceWriter._service_died,
    "service_restarted": _make_instant("service", ("name", "pid", "incarnation")),
    "job_failed": _make_instant("dma", ("job", "buffer", "reason")),
    "attachment_revoked": _make_instant("map", ("importer", "buffer", "attachment", "reason", "was_mapped")),
    "importer_lost": _make_instant("service", ("importer", "slot", "reason")),
    "lease_expired": _make_instant("service", ("since_ns",)),
    "exporter_lost": _make_instant("service", ("silent_ns",)),
    "rejoin": _make_instant("service", ("reason",)),
}
require_known(_HANDLERS, "checker/trace.py")
