"""The importer half, sans-IO: one device's attachments, the life of each DMA job on them, and the
interpreter of a strategy's importer table.

Rules of this file:
- Each attachment has one state (AttState). A job takes an idle attachment through map, DMA and
  unmap; what each reply or notification does in each state is the strategy's table (see
  protocol/machine.py). This file implements the guards and steps, and the bookkeeping that is
  the same for every strategy: hello, attaching every buffer, request ids, detaching, bye.
- `iommu` is what the device's IOMMU entries for an attachment point at; `mapping` is the
  placement the current job uses. They differ only where a strategy reuses stale entries.
- move_notify is answered at once (the kernel callback returns without blocking); an `ack`, where a
  strategy sends one, is a separate message.
- Entry points take `now` (monotonic ns, from the shell) and return actions. No I/O, no clock, no
  randomness: which buffer a job uses and when is the shell's workload's business.
- Request ids start at `first_id`: a restarted importer (same name, same routing id) must not
  reuse its previous incarnation's ids, which the exporter's duplicate filter still remembers.
- Capabilities (protocol/capability.py): hello carries the join token, attach the buffer's export
  token, and every later request on an attachment the attachment token its attach reply handed
  out. The importer attaches exactly the buffers it holds export tokens for (its grants), and
  says nothing about the others.
- reset() forgets everything and says hello again: the shell calls it when the importer's lease
  ran out (the exporter has revoked or will revoke all it held) and when the exporter answers
  no_such_importer (it already has). The shell stops the device's DMA before calling it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping

from protocol.actions import (Action, Emit, JobFinished, Joined, Left, ProgramIommu, Ready,
                              Send, StartDma, TeardownIommu, WaitKernelFence)
from protocol.machine import ANY, SAME, Rule, TransitionError, choose
from protocol.wire import (Ack, Attach, AttachReply, Bye, Detach, ErrorCode, ErrorReply, Hello,
                           HelloReply, Map, MapReply, Message, MoveNotify, OkReply, Placement,
                           Unmap, UnmapReply)


class AttState(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; Enum's hash(name) is a Python call per table lookup
    ATTACHING = "attaching"
    IDLE = "idle"              # attached; nothing mapped, no IOMMU entries
    CACHED = "cached"          # unmapped, but the IOMMU entries were kept
    MAPPING = "mapping"        # map request out
    FENCE_WAIT = "fence_wait"  # mapped; waiting for the move's KERNEL fence before touching it
    ACTIVE = "active"          # mapped; DMA running
    UNMAPPING = "unmapping"    # unmap request out
    DETACHING = "detaching"
    DETACHED = "detached"
    REVOKED = "revoked"        # the exporter took the attachment away


class AttEvent(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; Enum's hash(name) is a Python call per table lookup
    JOB = "job"                        # the workload wants a DMA job on this buffer
    MAP_OK = "map_ok"
    MAP_FAILED = "map_failed"
    FENCE_SIGNALED = "fence_signaled"  # the KERNEL fence named by the map reply signaled
    DMA_DONE = "dma_done"
    UNMAP_OK = "unmap_ok"
    MOVE_NOTIFY = "move_notify"


class IGuard(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; Enum's hash(name) is a Python call per table lookup
    ALWAYS = "always"
    MOVED = "moved"              # the map reply says the buffer moved since this attachment's last map
    CACHED = "cached"            # IOMMU entries from an earlier mapping are still programmed
    FENCED = "fenced"            # the map reply names a KERNEL fence
    WILL_MOVE = "will_move"      # the unmap reply says the buffer will move
    INVALIDATED = "invalidated"  # a move_notify invalidated the mapping
    STALE_REPLY = "stale_reply"  # the map reply names a generation announced moving while it was out


class IStep(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; Enum's hash(name) is a Python call per table lookup
    SEND_MAP = "send_map"
    PROGRAM_IOMMU = "program_iommu"      # tear down any old entries, program the reply's placement
    REUSE_IOMMU = "reuse_iommu"          # keep the cached entries; the job uses what they point at
    TEARDOWN_IOMMU = "teardown_iommu"
    WAIT_KERNEL_FENCE = "wait_kernel_fence"
    START_DMA = "start_dma"
    START_FENCED_DMA = "start_fenced_dma"  # publish a fence in shared memory, signal it at the end
    SEND_UNMAP = "send_unmap"
    FINISH_JOB = "finish_job"
    FAIL_JOB = "fail_job"
    RETURN = "return"                    # the move_notify callback returns (reply ok)
    REFUSE_NOTIFY = "refuse_notify"      # this strategy has no move_notify: reply bad_state
    INVALIDATE = "invalidate"            # mark the mapping invalid: nothing new may start on it
    ACK = "ack"                          # send ack now
    ACK_AFTER_DRAIN = "ack_after_drain"  # send ack when the running job ends
    SEND_OWED_ACKS = "send_owed_acks"


ImporterTable = Mapping[tuple[Any, AttEvent], tuple[Rule, ...]]

# The job cycle every strategy shares: map, DMA, unmap, IOMMU entries torn down at unmap.
BASE_TABLE: dict[tuple[Any, AttEvent], tuple[Rule, ...]] = {
    (AttState.IDLE, AttEvent.JOB): (Rule(IGuard.ALWAYS, AttState.MAPPING, (IStep.SEND_MAP,)),),
    (AttState.MAPPING, AttEvent.MAP_OK): (
        Rule(IGuard.ALWAYS, AttState.ACTIVE, (IStep.PROGRAM_IOMMU, IStep.START_DMA)),),
    (AttState.MAPPING, AttEvent.MAP_FAILED): (Rule(IGuard.ALWAYS, AttState.IDLE, (IStep.FAIL_JOB,)),),
    (AttState.ACTIVE, AttEvent.DMA_DONE): (Rule(IGuard.ALWAYS, AttState.UNMAPPING, (IStep.SEND_UNMAP,)),),
    (AttState.UNMAPPING, AttEvent.UNMAP_OK): (
        Rule(IGuard.ALWAYS, AttState.IDLE, (IStep.TEARDOWN_IOMMU, IStep.FINISH_JOB)),),
    (ANY, AttEvent.MOVE_NOTIFY): (Rule(IGuard.ALWAYS, SAME, (IStep.REFUSE_NOTIFY,)),),
}

# Rows of the importers that keep IOMMU entries across unmap (revalidate, unmap-hint): a job may
# start from CACHED, and a refused map leaves the kept entries where they were.
KEEP_ENTRIES_ROWS: dict[tuple[Any, AttEvent], tuple[Rule, ...]] = {
    (AttState.CACHED, AttEvent.JOB): (Rule(IGuard.ALWAYS, AttState.MAPPING, (IStep.SEND_MAP,)),),
    (AttState.MAPPING, AttEvent.MAP_FAILED): (
        Rule(IGuard.CACHED, AttState.CACHED, (IStep.FAIL_JOB,)),
        Rule(IGuard.ALWAYS, AttState.IDLE, (IStep.FAIL_JOB,)),
    ),
}


@dataclass(frozen=True)
class ImporterSpec:
    strategy: str
    table: ImporterTable


@dataclass
class _Att:
    buffer: int
    size: int
    id: int = 0
    state: AttState = AttState.ATTACHING
    iommu: Placement | None = None      # what the IOMMU entries point at
    mapping: Placement | None = None    # what the current job uses
    job: int | None = None
    access: str = ""
    invalidated: bool = False
    owed_acks: list[int] = field(default_factory=list)  # moves to ack when the job drains
    map_reply: MapReply | None = None
    unmap_reply: UnmapReply | None = None
    fence_seq: int = 0
    reused: bool = False
    notified_gen: int = 0    # highest generation announced moving while this job's map was out
    token: str = ""          # the attachment token from the attach reply
    reattaching: bool = False  # attached again after the exporter revoked it


class Importer:
    """One importer's protocol state. Not thread-safe: the shell calls it from its one loop."""

    def __init__(self, spec: ImporterSpec, name: str, pid: int, first_id: int = 1, *,
                 join_token: str = "", export_tokens: Mapping[int, str] | None = None) -> None:
        """join_token: this name's join token; export_tokens: buffer -> export token, the buffers
        this importer was granted (it attaches those, and only those)."""
        self.spec = spec
        self.name = name
        self.pid = pid
        self.join_token = join_token
        self.export_tokens = dict(export_tokens or {})
        self.slot = 0
        self._atts: dict[int, _Att] = {}            # by buffer
        self._by_id: dict[int, _Att] = {}           # by attachment id
        self._pending: dict[int, tuple[str, int | None, int]] = {}  # request id -> (op, buffer, sent)
        self._jobs: dict[int, int] = {}             # job -> buffer
        self._next_id = first_id
        self._leaving = False
        self._left = False
        self._out: list[Action] = []

    # ------------------------------------------------------------------ entry points

    def start(self, now: int) -> list[Action]:
        """Say hello. Requires: called once, first."""
        self._request(Hello(id=self._new_id(), name=self.name, pid=self.pid, strategy=self.spec.strategy,
                            token=self.join_token), None, now)
        return self._take()

    def reset(self, now: int, reason: str) -> list[Action]:
        """Start over: every job ends failed, every IOMMU entry goes, hello again.
        Requires the device's DMA stopped (the shell aborts it first). Not while leaving: a
        leaving importer that lost its lease has nothing left to give back, so it has left."""
        self._emit("rejoin", reason=reason, jobs=len(self._jobs),
                   attachments=sum(1 for a in self._atts.values() if a.id))
        for att in self._atts.values():
            if att.iommu is not None:
                self._teardown(att)
            if att.job is not None:
                self._end_job(att, ok=False, reason=reason)
        self._atts.clear()
        self._by_id.clear()
        self._pending.clear()
        self._jobs.clear()
        self.slot = 0  # not a member until the new hello is answered
        if self._leaving:
            self._left = True
            self._out.append(Left())
            return self._take()
        return self.start(now)

    def job(self, job: int, buffer: int, access: str, now: int) -> list[Action]:
        """Start DMA job `job` on `buffer`. Requires the attachment idle (see idle_buffers())."""
        att = self._atts.get(buffer)
        if att is None or att.job is not None or self._leaving:
            raise TransitionError(self.spec.strategy, f"{self.name} buffer {buffer}",
                                  att.state if att else "unattached", AttEvent.JOB)
        att.job, att.access, att.invalidated, att.reused = job, access, False, False
        att.notified_gen = 0
        self._jobs[job] = buffer
        self._dispatch(att, AttEvent.JOB, now)
        return self._take()

    def dma_done(self, job: int, now: int) -> list[Action]:
        buffer = self._jobs.get(job)
        if buffer is not None:
            self._dispatch(self._atts[buffer], AttEvent.DMA_DONE, now)
        return self._take()

    def kernel_fence_signaled(self, attachment: int, now: int) -> list[Action]:
        att = self._by_id.get(attachment)
        if att is not None and att.state is AttState.FENCE_WAIT:
            self._dispatch(att, AttEvent.FENCE_SIGNALED, now)
        return self._take()

    def handle_request(self, msg: Message, now: int) -> list[Action]:
        """A request from the exporter (move_notify). Errors become error replies."""
        if not isinstance(msg, MoveNotify):
            self._reply(ErrorReply(id=msg.id, op=msg.OP, code=ErrorCode.BAD_STATE,
                                   message=f"importer {self.name} does not serve '{msg.OP}'"))
            return self._take()
        att = self._by_id.get(msg.attachment)
        if att is None or att.buffer != msg.buffer:
            self._reply(ErrorReply(id=msg.id, op=msg.OP, code=ErrorCode.NO_SUCH_ATTACHMENT,
                                   message=f"move_notify: {self.name} has no attachment {msg.attachment} of buffer {msg.buffer}"))
            return self._take()
        self._emit("move_notify_received", id=msg.id, buffer=att.buffer, attachment=att.id,
                   move=msg.move, gen=msg.gen, state=att.state.value)
        if att.state is AttState.MAPPING:  # our map and its move crossed: its reply may be stale
            att.notified_gen = max(att.notified_gen, msg.gen)
        try:
            self._dispatch(att, AttEvent.MOVE_NOTIFY, now, notify=msg)
        except TransitionError as err:
            self._reply(ErrorReply(id=msg.id, op=msg.OP, code=ErrorCode.BAD_STATE, message=str(err)))
        return self._take()

    def handle_reply(self, reply: Message, now: int) -> list[Action]:
        """The exporter's answer to one of our requests, matched by id."""
        pending = self._pending.pop(reply.id, None)
        if pending is None:
            self._emit("stray_reply", id=reply.id, op=getattr(reply, "op", reply.OP))
            return self._take()
        op, buffer, sent = pending
        latency = now - sent
        if isinstance(reply, ErrorReply) and reply.code == ErrorCode.NO_SUCH_IMPORTER and op != "hello":
            # The exporter declared us lost (our lease ran out while we could not tell): whatever
            # we held is gone. Start over rather than act on handles that no longer exist.
            return self.reset(now, f"exporter answered {op} with no_such_importer")
        if op == "hello":
            self._on_hello_reply(reply, now)
        elif op == "attach":
            self._on_attach_reply(reply, buffer, latency, now)
        elif op == "detach":
            self._on_detach_reply(reply, buffer, latency, now)
        elif op == "bye":
            self._left = True
            self._out.append(Left())
        elif op == "map":
            self._on_map_reply(reply, self._atts[buffer], latency, now)  # type: ignore[index]
        elif op == "unmap":
            self._on_unmap_reply(reply, self._atts[buffer], latency, now)  # type: ignore[index]
        elif op == "ack" and isinstance(reply, ErrorReply):
            self._emit("ack_refused", buffer=buffer, code=reply.code, message=reply.message)
        return self._take()

    def shutdown(self, now: int) -> list[Action]:
        """Leave: detach every attachment as soon as its job is over, then say bye.
        Requires the workload to have stopped giving jobs."""
        self._leaving = True
        self._continue_leaving(now)
        return self._take()

    def idle_buffers(self) -> list[int]:
        return [b for b, a in self._atts.items() if a.job is None and a.state in (AttState.IDLE, AttState.CACHED)]

    @property
    def busy_jobs(self) -> int:
        return len(self._jobs)

    @property
    def has_left(self) -> bool:
        return self._left

    # ------------------------------------------------------------------ replies

    def _on_hello_reply(self, reply: Message, now: int) -> None:
        if not isinstance(reply, HelloReply):
            raise _Fatal(f"the exporter refused hello: {_describe(reply)}")
        if reply.strategy != self.spec.strategy:
            raise _Fatal(f"the exporter runs '{reply.strategy}', this importer '{self.spec.strategy}'")
        self.slot = reply.slot
        self._out.append(Joined(reply.slot, tuple((h.name, h.shm, h.size) for h in reply.heaps),
                                reply.fences_shm, reply.fence_slots,
                                tuple((b.buffer, b.size) for b in reply.buffers)))
        granted = [info for info in reply.buffers if info.buffer in self.export_tokens]
        for info in granted:
            self._atts[info.buffer] = _Att(info.buffer, info.size)
            self._request(Attach(id=self._new_id(), buffer=info.buffer, token=self.export_tokens[info.buffer]),
                          info.buffer, now)
        if not granted:
            self._out.append(Ready())

    def _on_attach_reply(self, reply: Message, buffer: int | None, latency: int, now: int) -> None:
        att = self._atts[buffer]  # type: ignore[index]
        if not isinstance(reply, AttachReply):
            if att.reattaching:  # the buffer stays lost to this device; the rest goes on
                att.state = AttState.REVOKED
                self._emit("reattach_refused", buffer=buffer, reason=_describe(reply))
                self._continue_leaving(now)
                return
            raise _Fatal(f"the exporter refused to attach buffer {buffer}: {_describe(reply)}")
        att.id, att.state, att.token = reply.attachment, AttState.IDLE, reply.token
        self._by_id[att.id] = att
        self._emit("attach", id=reply.id, buffer=buffer, attachment=att.id, latency_ns=latency,
                   **({"again": True} if att.reattaching else {}))
        if att.reattaching:
            self._continue_leaving(now)  # leaving meanwhile: detach it like the others
        elif all(a.state is not AttState.ATTACHING for a in self._atts.values()):
            self._out.append(Ready())

    def _on_detach_reply(self, reply: Message, buffer: int | None, latency: int, now: int) -> None:
        att = self._atts[buffer]  # type: ignore[index]
        ok = not isinstance(reply, ErrorReply)
        self._emit("detach", id=reply.id, buffer=buffer, attachment=att.id, latency_ns=latency,
                   ok=ok, **({} if ok else {"code": reply.code}))  # type: ignore[union-attr]
        att.state = AttState.DETACHED
        self._continue_leaving(now)

    def _on_map_reply(self, reply: Message, att: _Att, latency: int, now: int) -> None:
        if isinstance(reply, MapReply):
            att.map_reply = reply
            self._dispatch(att, AttEvent.MAP_OK, now, latency=latency, request_id=reply.id)
            return
        code = reply.code if isinstance(reply, ErrorReply) else "bad_reply"
        message = reply.message if isinstance(reply, ErrorReply) else _describe(reply)
        self._dispatch(att, AttEvent.MAP_FAILED, now, reason=f"map refused: {code}: {message}")
        if code in (ErrorCode.NO_SUCH_ATTACHMENT, ErrorCode.ACCESS_DENIED):
            self._revoked(att, code, now)

    def _on_unmap_reply(self, reply: Message, att: _Att, latency: int, now: int) -> None:
        if isinstance(reply, UnmapReply):
            att.unmap_reply = reply
        else:
            # The exporter no longer knows the mapping (revoked): nothing is mapped any more.
            att.unmap_reply = UnmapReply(id=reply.id, will_move=True)
        self._dispatch(att, AttEvent.UNMAP_OK, now, latency=latency, request_id=reply.id)
        if isinstance(reply, ErrorReply) and reply.code in (ErrorCode.NO_SUCH_ATTACHMENT, ErrorCode.ACCESS_DENIED):
            self._revoked(att, reply.code, now)

    # ------------------------------------------------------------------ the table interpreter

    def _dispatch(self, att: _Att, event: AttEvent, now: int, **ctx: Any) -> None:
        rule = choose(self.spec.table, att.state, event, lambda g: self._guard(g, att),
                      self.spec.strategy, f"{self.name} attachment {att.id} (buffer {att.buffer})")
        before = att.state
        for step in rule.do:
            getattr(self, "_step_" + step.value)(att, now, ctx)
        if rule.then is not SAME and att.state is before:
            att.state = rule.then
        if event is AttEvent.MAP_OK:
            p = att.mapping or att.map_reply.placement  # type: ignore[union-attr]  (no mapping: refused as stale)
            self._emit("map", id=ctx["request_id"], buffer=att.buffer, attachment=att.id,
                       heap=p.heap, offset=p.offset, size=p.size, gen=p.gen,  # type: ignore[union-attr]
                       latency_ns=ctx["latency"], reused=att.reused,
                       moved=att.map_reply.moved if att.map_reply else False)
            if att.state is AttState.ACTIVE and ctx.get("start"):
                self._out.append(ctx["start"])
        elif event is AttEvent.UNMAP_OK:
            p = att.mapping or att.iommu
            self._emit("unmap", id=ctx["request_id"], buffer=att.buffer, attachment=att.id,
                       heap=p.heap if p else None, offset=p.offset if p else None,
                       size=p.size if p else None, gen=p.gen if p else None,
                       latency_ns=ctx["latency"], kept_iommu=att.iommu is not None,
                       will_move=att.unmap_reply.will_move if att.unmap_reply else None)
            att.mapping = None
            if self._leaving:
                self._continue_leaving(now)

    def _guard(self, guard: IGuard, att: _Att) -> bool:
        if guard is IGuard.ALWAYS:
            return True
        if guard is IGuard.MOVED:
            return bool(att.map_reply and att.map_reply.moved)
        if guard is IGuard.CACHED:
            return att.iommu is not None
        if guard is IGuard.FENCED:
            return bool(att.map_reply and att.map_reply.fence)
        if guard is IGuard.WILL_MOVE:
            return bool(att.unmap_reply and att.unmap_reply.will_move)
        if guard is IGuard.INVALIDATED:
            return att.invalidated
        if guard is IGuard.STALE_REPLY:
            return bool(att.map_reply and att.map_reply.placement.gen <= att.notified_gen)
        raise AssertionError(guard)

    def _step_send_map(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        self._request(Map(id=self._new_id(), attachment=att.id, token=att.token), att.buffer, now)

    def _step_program_iommu(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        placement = att.map_reply.placement  # type: ignore[union-attr]
        if att.iommu is not None:
            self._teardown(att)
        att.iommu = att.mapping = placement
        att.reused = False
        self._out.append(ProgramIommu(att.id, att.buffer, placement))

    def _step_reuse_iommu(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        # Trust the entries programmed before: the device keeps using what they point at.
        att.mapping = att.iommu
        att.reused = True

    def _step_teardown_iommu(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        if att.iommu is not None:
            self._teardown(att)

    def _step_wait_kernel_fence(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        att.fence_seq = att.map_reply.fence  # type: ignore[union-attr]
        self._out.append(WaitKernelFence(att.id, att.buffer, att.fence_seq))

    def _step_start_dma(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        self._start_dma(att, ctx, fenced=False)

    def _step_start_fenced_dma(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        self._start_dma(att, ctx, fenced=True)

    def _step_send_unmap(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        self._request(Unmap(id=self._new_id(), attachment=att.id, token=att.token), att.buffer, now)

    def _step_finish_job(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        self._end_job(att, ok=True, reason="")

    def _step_fail_job(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        reason = ctx.get("reason", "invalidated before the first access")
        self._emit("job_failed", job=att.job, buffer=att.buffer, reason=reason)
        self._end_job(att, ok=False, reason=reason)

    def _step_return(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        self._reply(OkReply(id=ctx["notify"].id, op=MoveNotify.OP))

    def _step_refuse_notify(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        self._reply(ErrorReply(id=ctx["notify"].id, op=MoveNotify.OP, code=ErrorCode.BAD_STATE,
                               message=f"strategy {self.spec.strategy} has no move_notify"))

    def _step_invalidate(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        if att.mapping is not None and not att.invalidated:
            att.invalidated = True
            self._emit("invalidate", buffer=att.buffer, attachment=att.id, gen=att.mapping.gen)

    def _step_ack(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        self._send_ack(att, ctx["notify"].move, now)

    def _step_ack_after_drain(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        att.owed_acks.append(ctx["notify"].move)

    def _step_send_owed_acks(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        owed, att.owed_acks = att.owed_acks, []
        for move in owed:
            self._send_ack(att, move, now)

    # ------------------------------------------------------------------ helpers

    def _start_dma(self, att: _Att, ctx: dict[str, Any], *, fenced: bool) -> None:
        start = StartDma(att.job, att.buffer, att.id, att.access, att.mapping, fenced)  # type: ignore[arg-type]
        if "latency" in ctx and "request_id" in ctx and att.state is AttState.MAPPING:
            ctx["start"] = start  # after the `map` event, so the history reads map -> dma_begin
        else:
            self._out.append(start)

    def _teardown(self, att: _Att) -> None:
        self._out.append(TeardownIommu(att.id, att.buffer, att.iommu))  # type: ignore[arg-type]
        att.iommu = None

    def _send_ack(self, att: _Att, move: int, now: int) -> None:
        req = Ack(id=self._new_id(), attachment=att.id, move=move)
        self._request(req, att.buffer, now)
        self._emit("ack_sent", id=req.id, buffer=att.buffer, attachment=att.id, move=move)

    def _end_job(self, att: _Att, *, ok: bool, reason: str) -> None:
        job = att.job
        att.job, att.invalidated, att.map_reply = None, False, None
        if job is not None:
            self._jobs.pop(job, None)
            self._out.append(JobFinished(job, att.buffer, ok, reason))

    def _revoked(self, att: _Att, code: str, now: int) -> None:
        """The exporter no longer knows the attachment (it revoked it: a notify or fence timeout).
        The driver attaches the buffer again, as it would import a dma-buf anew; a device that
        keeps misbehaving keeps losing it."""
        if att.iommu is not None:
            self._teardown(att)
        self._by_id.pop(att.id, None)
        att.state = AttState.REVOKED
        self._emit("revoked", buffer=att.buffer, attachment=att.id, code=code)
        if code == ErrorCode.NO_SUCH_ATTACHMENT and not self._leaving and att.buffer in self.export_tokens:
            att.state, att.reattaching = AttState.ATTACHING, True
            self._request(Attach(id=self._new_id(), buffer=att.buffer, token=self.export_tokens[att.buffer]),
                          att.buffer, now)

    def _continue_leaving(self, now: int) -> None:
        if not self._leaving or self._left:
            return
        for att in self._atts.values():
            if att.job is None and att.state in (AttState.IDLE, AttState.CACHED):
                if att.iommu is not None:
                    self._teardown(att)
                att.state = AttState.DETACHING
                self._request(Detach(id=self._new_id(), attachment=att.id, token=att.token), att.buffer, now)
        if all(a.state in (AttState.DETACHED, AttState.REVOKED) for a in self._atts.values()) \
                and not any(op == "bye" for op, _, _ in self._pending.values()):
            self._request(Bye(id=self._new_id()), None, now)

    def _request(self, msg: Message, buffer: int | None, now: int) -> None:
        self._pending[msg.id] = (msg.OP, buffer, now)
        self._out.append(Send(b"", msg))

    def _reply(self, msg: Message) -> None:
        self._out.append(Send(b"", msg))

    def _new_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def _emit(self, event: str, **fields: Any) -> None:
        self._out.append(Emit(event, fields))

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out


class _Fatal(Exception):
    """The exporter refused what the importer cannot run without (hello, attach)."""


ImporterFatal = _Fatal


def _describe(reply: Message) -> str:
    if isinstance(reply, ErrorReply):
        return f"{reply.code}: {reply.message}"
    return type(reply).__name__
