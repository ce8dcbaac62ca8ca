"""The interpreter of a strategy's exporter table: the move machine of every buffer.

Rules of this file:
- A buffer's state changes only here, and only to the target of the rule its table chose
  (`dispatch`); steps do the bookkeeping and append actions, in the order of the rule.
- Every guard and every step has one implementation, found through the explicit maps GUARDS and
  STEPS (protocol/machine.py checks at import that none is missing); so has every Who, in WHO, and
  a step that goes through attachments one by one addresses those table.py's AUDIENCE names.
- What the move machine asks of the session (is an importer responsive, revoke an attachment, lose
  an importer) is the `Membership` it is handed: this module imports no session.
- An event's context is a typed `Ctx` (state.py); a step that decides something for the caller
  (the unmap hint, a refused attach or unpin) sets its field, and `dispatch` returns it.
- `compile_spec` checks a strategy's table before it runs (protocol/machine.py's checks, plus the
  exporter's own): a strategy that LOCKs holds the buffer's reservation lock in every state it
  reaches until UNLOCK; a map arriving in such a state is deferred unless the table has a row of
  its own for it, and a row that would serve a map (or the deferred maps) under the lock, unlock a
  lock it does not hold or take it twice is refused, and so is a row that marks a buffer revoked
  or un-revoked without the lock. A rule that BEGINs a move on an event other
  than MOVE_WANTED (which the memory manager admits only with room at the destination) must
  follow a NO_ROOM rule in its row, and a rule that REFUSEs a move must be guarded by a guard
  with a reason word (table.py's REFUSAL_REASONS: what move_refused says).
- SERVE_MAP and SERVE_DEFERRED_MAPS assert that no move holds the buffer's reservation lock, as
  dma_resv_assert_held does in the kernel: a table that got past the load check and still serves
  under the lock stops with ReservationLockError instead of handing out a placement.
- Follow-up events (posted by steps and by the session) run after the transition that caused
  them, in order (`run_posted`); a follow-up MOVE_WANTED (a promote into a freed range) runs only
  if the memory manager still admits it then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from protocol import machine
from protocol.actions import (CancelTimer, CopyBuffer, ForceCompleteFences, PublishKernelFence,
                              Send, SignalKernelFence, StartTimer, WaitFences)
from protocol.exporter.memory import MemoryManager
from protocol.exporter.state import (UNMAP_WAIT_WARNING, Attachment, Buffer, Ctx, ExporterState, Member, Move, Operation,
                                     Revocation)
from protocol.exporter.table import (AUDIENCE, BASE_TABLE, MUTANT_STEPS, NAMED, QUEUED_REASON, REFUSAL_REASONS,
                                     TIMER_EVENTS, ExporterSpec, Guard, MoveEvent, MoveState, Step, Who)
from protocol.fence import Usage
from protocol.heap import HeapFull
from protocol import timers
from protocol.machine import ANY, SAME, VIOLATION, Named, Rule, TableError, choose, rules_for
from protocol.wire import ErrorCode, ErrorReply, InvalidateMappings, Map, MapReply, MoveNotify, Placement


class Membership(Protocol):
    """What the move machine asks of the importers' session (session.py's Session is one)."""

    def responsive(self, imp: Member, now: int) -> bool:
        """Alive, and heard from within half a lease."""
        ...

    def revoke(self, att: Attachment, reason: str, now: int) -> None:
        """Take the attachment away (its mapping dropped, ATTACHMENT_GONE posted)."""
        ...

    def lose(self, slot: int, reason: str, now: int) -> None:
        """The importer is gone: every attachment revoked, its fences completed with `reason`."""
        ...

    def lose_once_stopped(self, slot: int, reason: str, now: int) -> None:
        """Lose the importer with `reason` once its device is known to have stopped (no access
        under way, or its process gone: ConfirmStopped); until then it holds what it may touch."""
        ...


class ReservationLockError(AssertionError):
    """A placement was about to be handed out while a move holds the buffer's reservation lock."""


class MoveMachine:
    """Runs the move machine of every buffer. Not thread-safe: called from the shell's one loop."""

    def __init__(self, spec: ExporterSpec, state: ExporterState, memory: MemoryManager) -> None:
        self.strategy = spec.strategy
        self.compiled = compile_spec(spec)
        self.table = self.compiled.table
        self.revokes = self.compiled.revokes
        # The unmap wait is unbounded (7.1 as merged: wait_for_completion) unless the table reacts
        # to its timer (the v5/v6 drafts' 1 s bound, a mutant): no timer for a wait nothing bounds.
        bound = self.table.get((MoveState.UNMAP_WAIT, MoveEvent.UNMAP_WAIT_TIMEOUT), ())
        self.unmap_wait_bounded = bound is not VIOLATION and any(r.do for r in bound)
        self.state = state
        self.memory = memory
        self.membership: Membership = None  # type: ignore[assignment]  (handed over by the Exporter)
        self.next_move = 0
        # Each declared timer's length in seconds, with this run's parameters (protocol/timers.py).
        values = {"ack_timeout_ms": state.config.ack_timeout_s * 1000, **state.config.params}
        self.timer_s = {name: (state.config.ack_timeout_s if length == timers.NOTIFY_LENGTH
                               and "ack_timeout_ms" not in state.config.params
                               else timers.length_s(name, length, values))
                        for name, length in self.compiled.timers.items()}

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, buf: Buffer, event: MoveEvent, now: int, ctx: Ctx | None = None, **fields: Any) -> Ctx:
        """Run `event` on `buf` by its table, with its context (`ctx`, or made of `fields`, Ctx's
        names); the context, with what the rule decided. TransitionError (nothing changed) if not
        allowed."""
        if ctx is None:
            ctx = Ctx(**fields)
        rule = choose(self.table, buf.state, event, lambda g: GUARDS[g](self, buf, ctx),
                      self.strategy, f"buffer {buf.id}")
        st = self.state
        outer, st.trigger = st.trigger, machine.trigger(event, TIMER_EVENTS)
        try:
            for step in rule.do:
                if isinstance(step, Named):
                    NAMED_STEPS[step.member](self, rule, buf, now, ctx, step.arg)
                else:
                    STEPS[step](self, rule, buf, now, ctx)
        finally:
            st.trigger = outer
        if rule.then is not SAME:
            buf.state = rule.then
        return ctx

    def run_posted(self) -> None:
        """Run the follow-up events, in order, each against the state it finds."""
        posted = self.state.posted
        while posted:
            buf_id, event, now, ctx, want = posted.pop(0)
            buf = self.state.buffers[buf_id]
            if want and not self.memory.admits(buf, ctx.to):
                continue  # the memory manager no longer wants it: another move took the room or the slot
            self.dispatch(buf, event, now, ctx)

    # ------------------------------------------------------------------ guards

    def _awaited(self, buf: Buffer, ctx: Ctx) -> bool:
        op = buf.operation
        return (op is not None and (ctx.op is None or ctx.op == op.id)
                and ctx.attachment in op.waiting)

    def _no_room(self, buf: Buffer, ctx: Ctx) -> bool:
        to_heap = self._destination(buf, ctx)
        return to_heap is None or not self.memory.can_fit(to_heap, buf.size)

    @staticmethod
    def _destination(buf: Buffer, ctx: Ctx) -> str | None:
        """Where the move goes: the wanted heap, else the queued move's."""
        return ctx.to if ctx.to is not None else buf.queued[0] if buf.queued else None

    def addresses(self, step: Step, imp: Member | None, att: Attachment | None, op: Operation, now: int) -> bool:
        """Whether `step` addresses this attachment (or importer): AUDIENCE's guards all hold."""
        return all(WHO[who](self, imp, att, op, now) for who in AUDIENCE[step])

    # ------------------------------------------------------------------ steps: the move's life

    def _refuse(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        self.state.emit("move_refused", buffer=buf.id, from_gen=buf.placement.gen,
                        to_gen=buf.placement.gen + 1, reason=REFUSAL_REASONS[rule.when],
                        to_heap=self._destination(buf, ctx))
        buf.queued = None

    def _queue(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        buf.queued = (ctx.to, ctx.reason)  # type: ignore[assignment]
        self.state.emit("move_queued", buffer=buf.id, from_gen=buf.placement.gen, reason=QUEUED_REASON,
                        to_heap=ctx.to)

    def _begin(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        to_heap, reason = (ctx.to, ctx.reason) if ctx.to is not None else buf.queued  # type: ignore[misc]
        buf.queued = None
        try:
            offset = self.memory.alloc(to_heap, buf.size)
        except HeapFull:
            raise AssertionError(f"{self.strategy}: buffer {buf.id}: BEGIN without room in {to_heap} "
                                 f"(compile_spec requires a NO_ROOM rule before it)") from None
        src = buf.placement
        dst = Placement(to_heap, offset, buf.size, src.gen + 1)
        st = self.state
        self.next_move += 1
        move = Move(self.next_move, buf.id, src, dst, reason, now, then_promote=ctx.then_promote)
        st.moves[move.id] = move
        buf.move = move
        st.emit("move_begin", buffer=buf.id, move=move.id, reason=reason, from_gen=src.gen, to_gen=dst.gen,
                **{"from": _placement_fields(src), "to": _placement_fields(dst)}, broke_promise=buf.promised)
        buf.promised = False

    def _cancel_queued(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        self.state.emit("move_cancelled", buffer=buf.id, from_gen=buf.placement.gen)
        buf.queued = None

    def _lock(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        if buf.locked:
            raise ReservationLockError(f"{self.strategy}: buffer {buf.id}: LOCK while already held")
        buf.locked = True
        buf.lock_holder = self._holder(buf)
        self.state.emit("resv_lock", buffer=buf.id, **buf.lock_holder)

    def _unlock(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        if not buf.locked:
            raise ReservationLockError(f"{self.strategy}: buffer {buf.id}: UNLOCK of a lock not held")
        buf.locked = False
        self.state.emit("resv_unlock", buffer=buf.id, **(buf.lock_holder or {"move": None}))
        buf.lock_holder = None

    # ------------------------------------------------------------------ steps: move_notify and its answers

    def _notify(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx, step: Step = Step.NOTIFY) -> None:
        st, move = self.state, self._move(buf)
        for att_id in sorted(buf.attachments):
            att = st.attachments[att_id]
            imp = st.members[att.slot]
            if not self.addresses(step, imp, att, move, now):
                continue
            req = MoveNotify(id=st.new_request_id(), buffer=buf.id, attachment=att.id, move=move.id, gen=move.src.gen)
            self._sent(move, att.id, req.id, now)
            st.out.append(Send(imp.peer, req, imp.name))
            st.emit("move_notify_sent", id=req.id, buffer=buf.id, move=move.id, importer=imp.name,
                    attachment=att.id, gen=move.src.gen)

    def _invalidate_mappings(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        """dma_buf_invalidate_mappings, Linux 7.1: to the attachments AUDIENCE names (a move skips
        pinned ones, a revocation does not). Requires the lock held."""
        st, op = self.state, self._op(buf)
        revoking = isinstance(op, Revocation)
        op.notified, op.sent_ns = {}, {}
        gen = buf.placement.gen
        for att_id in sorted(buf.attachments):
            att = st.attachments[att_id]
            imp = st.members[att.slot]
            if not self.addresses(Step.INVALIDATE_MAPPINGS, imp, att, op, now):
                continue
            req = InvalidateMappings(id=st.new_request_id(), buffer=buf.id, attachment=att.id, gen=gen,
                                     move=0 if revoking else op.id, revoke=op.id if revoking else 0)
            self._sent(op, att.id, req.id, now)
            st.out.append(Send(imp.peer, req, imp.name))
            st.emit("invalidate_mappings_sent", id=req.id, buffer=buf.id, **{op.KIND: op.id}, importer=imp.name,
                    attachment=att.id, gen=gen, pinned=att.pins > 0)

    def _sent(self, op: Operation, att: int, req: int, now: int) -> None:
        self.state.notify_ids[req] = (op.id, att)
        op.notified[att] = req
        op.sent_ns[att] = now

    def _await_answers(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        op = self._op(buf)
        op.waiting = dict(op.notified)
        if not op.waiting:  # nobody to wait for: done as soon as sent
            self.state.post(buf, MoveEvent.NOTIFY_DONE, now)

    def _answered(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        op = self._op(buf)
        if op.waiting.pop(ctx.attachment, None) is not None and not op.waiting:
            self.state.post(buf, MoveEvent.NOTIFY_DONE, now)

    def _start_notify_timer(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        self.state.out.append(StartTimer(("notify", self._op(buf).id), self.timer_s[timers.NOTIFY]))

    def _start_timer(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx, name: str) -> None:
        """start_timer(name): timer_fired(name) for this operation after the timer's length."""
        self.state.out.append(StartTimer(("timer", name, self._op(buf).id), self.timer_s[name]))

    def _cancel_timer(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx, name: str) -> None:
        self.state.out.append(CancelTimer(("timer", name, self._op(buf).id)))

    def _cancel_notify_timer(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        self.state.out.append(CancelTimer(("notify", self._op(buf).id)))

    def _notify_timed_out(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        st, op = self.state, self._op(buf)
        silent = [st.attachments[a] for a in sorted(op.waiting) if a in st.attachments]
        st.emit("ack_timeout", buffer=buf.id, **{op.KIND: op.id},
                importers=sorted({st.members[a.slot].name for a in silent}),
                attachments=[a.id for a in silent],
                responsive=sorted({st.members[a.slot].name for a in silent
                                   if self.membership.responsive(st.members[a.slot], now)}))

    def _give_up_notify(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        op = self._op(buf)
        for req_id in op.waiting.values():
            self.state.notify_ids.pop(req_id, None)
        op.waiting.clear()

    def _revoke_silent(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        st, op = self.state, self._op(buf)
        for att_id in sorted(op.waiting):
            att = st.attachments.get(att_id)
            if att is not None and self.addresses(Step.REVOKE_SILENT, st.members[att.slot], att, op, now):
                # Its fences stay as they are: they are the device's own word on its DMA, and the
                # fence wait that follows honours them (forcing them only at the fence timeout).
                self.membership.revoke(att, "notify_timeout", now)

    # ------------------------------------------------------------------ steps: fences

    def _wait_fences(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx, usage: Usage = Usage.BOOKKEEP) -> None:
        """Wait for the buffer's fences of `usage` and below (fence_wait_begin comes with the
        shell's snapshot: fences_snapshot), and for the devices still to confirm a reset. A move's
        or a revocation's: WaitFences names the operation by its id (one counter for both)."""
        st, op = self.state, self._op(buf)
        op.wait_usage = usage
        if not op.fence_wait_from:
            op.fence_wait_from = now
        op.unsignaled = ()
        st.out.append(WaitFences(op.id, buf.id, usage, tuple(sorted(op.confirming))))
        st.out.append(StartTimer(("fence", op.id), st.config.fence_timeout_s))

    def fences_snapshot(self, buf: Buffer, move: Operation, fences: dict[int, tuple[int, Any]], now: int) -> None:
        """What the wait just begun waits for (the shell's snapshot): fence_wait_begin."""
        st = self.state
        listed = []
        for slot, (seq, usage) in sorted(fences.items()):
            if slot in move.confirming:
                continue  # forced: what is awaited is its device's confirmation, not a fence
            imp = st.members.get(slot)
            listed.append({"importer": imp.name if imp else f"slot-{slot}", "slot": slot, "seq": seq,
                           "usage": getattr(usage, "name", usage)})
        st.emit("fence_wait_begin", buffer=buf.id, **{move.KIND: move.id}, usage=move.wait_usage.name, fences=listed,
                **({"confirming": [st.members[s].name for s in sorted(move.confirming) if s in st.members]}
                   if move.confirming else {}))

    def fences_pending(self, buf: Buffer, move: Operation, slots: tuple[int, ...], now: int) -> None:
        """The shell's report: these slots still hold unsignaled fences. A device being reset
        that is no longer among them has confirmed its engine stopped."""
        st = self.state
        move.unsignaled = tuple(sorted(slots))
        for slot in [s for s in move.confirming if s not in slots]:
            since = move.confirming.pop(slot)
            imp = st.members.get(slot)
            st.emit("reset_confirmed", buffer=buf.id, **{move.KIND: move.id}, importer=imp.name if imp else f"slot-{slot}",
                    waited_ns=now - since)
            if not move.confirming:
                st.out.append(CancelTimer(("reset", move.id)))
        if not slots:
            self.dispatch(buf, MoveEvent.FENCES_SIGNALED, now)

    def _end_fence_wait(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        op = self._op(buf)
        self.state.out.append(CancelTimer(("fence", op.id)))
        self.state.emit("fence_wait_end", buffer=buf.id, **{op.KIND: op.id}, usage=op.wait_usage.name,
                        waited_ns=now - op.fence_wait_from, forced=list(op.forced))

    def _force_complete(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        st, move = self.state, self._op(buf)
        move.resetting = set()
        for slot in ctx.slots if ctx.slots is not None else move.unsignaled:
            imp = st.members.get(slot)
            if not self.addresses(Step.FORCE_COMPLETE, imp, None, move, now):
                continue
            if slot in move.confirming:
                continue  # forced already: waiting for its device to confirm (AWAIT_RESETS)
            name = imp.name if imp else f"slot-{slot}"
            move.forced.append(name)
            st.out.append(ForceCompleteFences(slot, buf.id, "fence_timeout"))
            st.emit("fence_signal", buffer=buf.id, usage=move.wait_usage.name, seq=None,
                    **{move.KIND: move.id}, importer=name, error="timeout", forced=True)
            if imp is not None and imp.alive:
                move.resetting.add(slot)
            if imp is not None:
                for att_id in sorted(imp.attachments & buf.attachments):
                    self.membership.revoke(st.attachments[att_id], "fence_timeout", now)

    def _await_resets(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        """A forced fence completes the wait, not the device: a chunk it has under way may still
        be writing. Wait (bounded by --reset-grace-ms) until each live device forced just now
        confirms that its engine stopped: its own signal of the fence (it aborts the job before
        its next access and signals, importer_svc/dma.py). The kernel forces fences after the
        hardware is reset, not before."""
        st, move = self.state, self._op(buf)
        fresh = sorted(move.resetting - set(move.confirming))
        if not fresh:
            return
        for slot in fresh:
            move.confirming[slot] = now
        st.emit("reset_wait_begin", buffer=buf.id, **{move.KIND: move.id}, importers=[st.members[s].name for s in fresh],
                grace_ms=st.config.reset_grace_s * 1000)
        st.out.append(StartTimer(("reset", move.id), st.config.reset_grace_s))

    def _revoke_unconfirmed(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        """The grace is over: a device that did not confirm its engine stopped is to be revoked
        (lost: every attachment, every fence), its silence on record, once it is known to have
        stopped: a device paused between a chunk's check and its access touches memory when it
        resumes, whatever the grace (explore --pauses found it). The wait goes on for it until
        then (member_lost); a device already gone is dropped from it now."""
        st, move = self.state, self._op(buf)
        for slot, since in sorted(move.confirming.items()):
            imp = st.members.get(slot)
            if imp is not None and imp.alive:
                st.emit("reset_unconfirmed", buffer=buf.id, **{move.KIND: move.id}, importer=imp.name,
                        waited_ns=now - since, grace_ms=st.config.reset_grace_s * 1000)
                self.membership.lose_once_stopped(slot, "reset unconfirmed", now)
            else:
                del move.confirming[slot]

    def member_lost(self, slot: int, now: int) -> None:
        """Importer `slot` is lost, its device stopped and its fences completed: the operations
        still waiting for it to confirm a reset wait for it no more (their wait is asked again
        without it)."""
        st = self.state
        for op in [*st.moves.values(), *st.revocations.values()]:
            if slot in op.confirming:
                del op.confirming[slot]
                if not op.confirming:
                    st.out.append(CancelTimer(("reset", op.id)))
                st.out.append(WaitFences(op.id, op.buffer, op.wait_usage, tuple(sorted(op.confirming))))

    def _publish_kernel_fence(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        move = self._move(buf)
        buf.kernel_seq += 1
        move.kernel_seq = buf.kernel_seq
        self.state.out.append(PublishKernelFence(buf.id, move.kernel_seq))

    def _signal_kernel_fence(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        move = self._move(buf)
        self.state.out.append(SignalKernelFence(buf.id, move.kernel_seq))
        self.state.emit("fence_signal", buffer=buf.id, usage=Usage.KERNEL.name, seq=move.kernel_seq, move=move.id)

    # ------------------------------------------------------------------ steps: bytes

    def _copy(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        move = self._move(buf)
        self.state.out.append(CopyBuffer(move.id, buf.id, move.src, move.dst, tuple(self.state.trigger.items())))

    def _switch(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        self.memory.placed(buf, self._move(buf).dst)

    def _free(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        st, move = self.state, self._move(buf)
        self.memory.free(move.src)
        st.emit("free", buffer=buf.id, move=move.id, from_gen=move.src.gen, to_gen=move.dst.gen,
                heap=move.src.heap, offset=move.src.offset, size=move.src.size)
        if move.then_promote is not None:
            # The eviction was made for this allocation: it takes the room at once, as a memory
            # manager short of vram does. A late access to the freed range meets its bytes.
            st.post_want(st.buffers[move.then_promote], move.src.heap, "promote", now)

    def _end(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        st, move = self.state, self._move(buf)
        st.emit("move_end", buffer=buf.id, move=move.id, from_gen=move.src.gen, to_gen=move.dst.gen,
                latency_ns=now - move.began_ns)
        for req_id in move.waiting.values():
            st.notify_ids.pop(req_id, None)
        del st.moves[move.id]
        buf.move = None

    # ------------------------------------------------------------------ steps: mappings

    def _serve_map_step(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        self.serve_map(buf, ctx.peer, ctx.request, ctx.since, now)  # type: ignore[arg-type]

    def _serve_map_unlocked(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        # The map-unlocked bug: a map path that never takes the reservation lock, so nothing
        # stops it while a move holds it (no lockdep here to say so).
        self.serve_map(buf, ctx.peer, ctx.request, ctx.since, now, locked_ok=True)  # type: ignore[arg-type]

    def _defer_map(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        st, request, peer = self.state, ctx.request, ctx.peer
        assert request is not None and peer is not None, "DEFER_MAP on an event that is not a map"
        buf.deferred.append((peer, request, ctx.since))
        att = st.attachments[request.attachment]
        st.members[att.slot].waiting.add(att.id)
        # Who the map waits for: the holder of the reservation lock (null: it waits for a copy).
        st.emit("map_deferred", id=request.id, importer=st.peer_name(peer), buffer=buf.id,
                attachment=att.id, **(buf.lock_holder if buf.locked and buf.lock_holder else {"move": None}))

    def _serve_deferred_maps(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        st = self.state
        waiting, buf.deferred = buf.deferred, []
        for peer, request, since in waiting:
            att = st.attachments.get(request.attachment)
            if att is None or st.members[att.slot].peer != peer:
                continue  # detached or revoked while waiting: answered then (session.drop_attachment)
            st.members[att.slot].waiting.discard(att.id)
            self.serve_map(buf, peer, request, since, now)

    def _hint_will_move(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        ctx.will_move = True

    def _hint_stay(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        ctx.will_move = False
        buf.promised = True

    def _attachment(self, ctx: Ctx) -> Attachment:
        """The attachment of a PIN, UNPIN or ATTACH event."""
        if ctx.attaching is not None:
            return ctx.attaching
        assert ctx.attachment is not None, "a step of an attachment on an event that names none"
        return self.state.attachments[ctx.attachment]

    def _pin(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        att = self._attachment(ctx)
        att.pins += 1
        att.pinned_once = True
        buf.pins += 1
        self.state.emit("pin", importer=self.state.members[att.slot].name, buffer=buf.id,
                        attachment=att.id, pins=buf.pins)

    def _unpin(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        att = self._attachment(ctx)
        att.pins -= 1
        buf.pins -= 1
        self.state.emit("unpin", importer=self.state.members[att.slot].name, buffer=buf.id,
                        attachment=att.id, pins=buf.pins)

    def _refuse_unpin(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        ctx.refusal = (ErrorCode.BAD_STATE, f"unpin: attachment {ctx.attachment} holds no pin")

    # ------------------------------------------------------------------ steps: revocation (Linux 7.1)

    def _begin_revocation(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        self.next_move += 1
        rev = Revocation(self.next_move, buf.id, began_ns=now)
        self.state.revocations[rev.id] = rev
        buf.revocation = rev
        buf.revoke_queued = False

    def _mark_revoked(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        rev = self._revocation(buf)
        if not buf.locked:
            raise ReservationLockError(f"{self.strategy}: buffer {buf.id}: revoked without its reservation lock")
        buf.revoked = True
        self.state.emit("revoke", buffer=buf.id, revoke=rev.id, attachments=len(buf.attachments))

    def _mark_unrevoked(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        rev = self._revocation(buf)
        if not buf.locked:
            raise ReservationLockError(f"{self.strategy}: buffer {buf.id}: un-revoked without its reservation lock")
        buf.revoked = False
        self.state.emit("unrevoke", buffer=buf.id, revoke=rev.id)

    def _begin_unrevoke(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        rev = self._revocation(buf)
        buf.unrevoke_queued = False
        rev.waiting, rev.forced = {}, []

    def _end_revocation(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        rev = self._revocation(buf)
        for req_id in rev.notified.values():
            self.state.notify_ids.pop(req_id, None)
        del self.state.revocations[rev.id]
        buf.revocation = None

    def _refuse_map_revoked(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        request, rev = ctx.request, buf.revocation
        assert request is not None and ctx.peer is not None, "REFUSE_MAP_REVOKED on an event that is not a map"
        self.state.send(ctx.peer, ErrorReply(
            id=request.id, op=Map.OP, code=ErrorCode.NO_DEVICE,
            message=f"map: buffer {buf.id} is revoked{f' (revoke {rev.id})' if rev else ''}: map again after it is "
                    f"un-revoked"))

    def _refuse_attach(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        ctx.refusal = (ErrorCode.NOT_SUPPORTED,
                       f"attach: buffer {buf.id} can be revoked and this importer cannot be "
                       f"(no invalidate_mappings: dma_buf_attach_revocable is false)")

    def _put_unmap_ref(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        self.mapping_dropped(buf, now)

    def _await_unmaps(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        st, rev = self.state, self._revocation(buf)
        rev.unmap_wait_from = now
        mapped = [st.attachments[a] for a in sorted(buf.mapped)]
        st.emit("unmap_wait_begin", buffer=buf.id, revoke=rev.id,
                importers=sorted({st.members[a.slot].name for a in mapped}), attachments=[a.id for a in mapped],
                bound_ms=st.config.unmap_wait_s * 1000 if self.unmap_wait_bounded else None)
        if buf.unmap_wait.done:
            st.post(buf, MoveEvent.UNMAPS_DONE, now)
        elif self.unmap_wait_bounded:
            st.out.append(StartTimer(("unmap-wait", rev.id), st.config.unmap_wait_s))

    def _warn_unmaps(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        """The posted v5/v6 drafts' WARN after wait_for_completion_timeout(..., secs_to_jiffies(1)):
        "Timed out waiting for DMABUF unmap, importer has a broken invalidate_mapping()". One event
        per attachment still mapped; what follows is the table's (the drafts went on, mapping live)."""
        st, rev = self.state, self._revocation(buf)
        rev.warned = True
        for att_id in sorted(buf.mapped):
            att = st.attachments[att_id]
            name = st.members[att.slot].name
            rev.late.add(name)
            st.emit("unmap_wait_warning", buffer=buf.id, revoke=rev.id, importer=name, attachment=att.id,
                    waited_ns=now - rev.unmap_wait_from, message=UNMAP_WAIT_WARNING)

    def _end_unmap_wait(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        st, rev = self.state, self._revocation(buf)
        st.out.append(CancelTimer(("unmap-wait", rev.id)))
        st.emit("unmap_wait_end", buffer=buf.id, revoke=rev.id, waited_ns=now - rev.unmap_wait_from,
                late=sorted(rev.late))
        buf.unmap_wait.consume()

    def _rearm_unmap_wait(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        buf.unmap_wait.rearm()

    def _queue_revoke(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        buf.revoke_queued = True

    def _run_queued_revoke(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        if buf.revoke_queued:
            buf.revoke_queued = False
            self.state.post(buf, MoveEvent.REVOKE, now)

    def _queue_unrevoke(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        buf.unrevoke_queued = True

    def _run_queued_unrevoke(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        if buf.unrevoke_queued:
            buf.unrevoke_queued = False
            self.state.post(buf, MoveEvent.UNREVOKE, now)

    def _drop_queued_revoke(self, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        buf.revoke_queued = False

    # ------------------------------------------------------------------ helpers

    def serve_map(self, buf: Buffer, peer: bytes, request: Map, since: int, now: int, *,
                  locked_ok: bool = False) -> None:
        """dma_buf_map_attachment's answer: the current placement. Requires the reservation lock
        not held (dma_resv_assert_held's counterpart: no move may be under way under the lock);
        `locked_ok` only for SERVE_MAP_UNLOCKED, the bug of a mutant."""
        if buf.locked and not locked_ok:
            raise ReservationLockError(
                f"{self.strategy}: buffer {buf.id} in state {buf.state.value}: a map would be served "
                f"while move {buf.move.id if buf.move else '?'} holds the reservation lock")
        st = self.state
        att = st.attachments[request.attachment]
        att.mapped = True
        buf.mapped.add(att.id)
        if not buf.unmap_wait.get():
            st.emit("refcount_warning", buffer=buf.id, refs=buf.unmap_wait.refs,
                    message="refcount_t: addition on 0; use-after-free")
        st.members[att.slot].mapped.add(att.id)
        self.memory.touched(buf)
        moved = att.last_gen is not None and att.last_gen != buf.placement.gen
        att.last_gen = buf.placement.gen
        p = buf.placement
        st.send(peer, MapReply(id=request.id, placement=p, moved=moved, fence=buf.kernel_seq), recorded=True)
        st.emit("map_served", id=request.id, importer=st.peer_name(peer), buffer=buf.id, attachment=att.id,
                heap=p.heap, offset=p.offset, size=p.size, gen=p.gen, moved=moved, deferred_ns=now - since)

    def _move(self, buf: Buffer) -> Move:
        if buf.move is None:
            raise AssertionError(f"{self.strategy}: buffer {buf.id} has no move in state {buf.state.value}")
        return buf.move

    def _op(self, buf: Buffer) -> Operation:
        op = buf.operation
        if op is None:
            raise AssertionError(f"{self.strategy}: buffer {buf.id} has no move or revocation in state "
                                 f"{buf.state.value}")
        return op

    def _revocation(self, buf: Buffer) -> Revocation:
        if buf.revocation is None:
            raise AssertionError(f"{self.strategy}: buffer {buf.id} has no revocation in state {buf.state.value}")
        return buf.revocation

    def _holder(self, buf: Buffer) -> dict[str, Any]:
        """The lock holder as events name it: {"move": id} or {"revoke": id}."""
        op = buf.operation
        return {"move": None} if op is None else {op.KIND: op.id}

    def mapping_dropped(self, buf: Buffer, now: int) -> None:
        """A mapping of `buf` is gone (unmapped, or its attachment revoked): the exporter's unmap
        callback drops its reference (kref_put); the count reaching zero completes the unmap wait."""
        done, ok = buf.unmap_wait.put()
        if not ok:
            self.state.emit("refcount_warning", buffer=buf.id, refs=buf.unmap_wait.refs,
                            message="refcount_t: underflow; use-after-free")
        if done:
            self.state.post(buf, MoveEvent.UNMAPS_DONE, now)


def _placement_fields(p: Placement) -> dict[str, Any]:
    return {"heap": p.heap, "offset": p.offset, "size": p.size, "gen": p.gen}


GuardFn = Callable[[MoveMachine, Buffer, Ctx], bool]
StepFn = Callable[[MoveMachine, Rule, Buffer, int, Ctx], None]
WhoFn = Callable[[MoveMachine, "Member | None", "Attachment | None", Operation, int], bool]

GUARDS: dict[Guard, GuardFn] = {
    Guard.ALWAYS: lambda m, buf, ctx: True,
    Guard.PINNED: lambda m, buf, ctx: buf.pins > 0,
    Guard.MAPPED: lambda m, buf, ctx: bool(buf.mapped),
    Guard.CONSERVATIVE_HINTS: lambda m, buf, ctx: m.state.config.hint_policy == "conservative",
    Guard.MOVE_QUEUED: lambda m, buf, ctx: buf.state is MoveState.QUEUED,
    Guard.NO_ROOM: MoveMachine._no_room,
    Guard.AWAITED: MoveMachine._awaited,
    Guard.REVOKED: lambda m, buf, ctx: buf.revoked,
    Guard.STATIC: lambda m, buf, ctx: ctx.attaching is not None and not ctx.attaching.revocable,
    Guard.PIN_HELD: lambda m, buf, ctx: m._attachment(ctx).pins > 0,
}

WHO: dict[Who, WhoFn] = {
    Who.LIVE: lambda m, imp, att, op, now: imp is not None and imp.alive,
    Who.UNPINNED: lambda m, imp, att, op, now: att is not None and not att.pins,
    Who.UNPINNED_OR_REVOKING: lambda m, imp, att, op, now: (att is not None and not att.pins) or isinstance(op, Revocation),
    Who.NEVER_PINNED: lambda m, imp, att, op, now: att is not None and not att.pinned_once,
    Who.RESPONSIVE: lambda m, imp, att, op, now: imp is not None and m.membership.responsive(imp, now),
    Who.NOT_SILENT: lambda m, imp, att, op, now: imp is None or not imp.alive or m.membership.responsive(imp, now),
}
if set(WHO) != set(Who):
    raise TypeError(f"exporter: Who without an implementation: {', '.join(w.name for w in Who if w not in WHO)}")

NamedStepFn = Callable[[MoveMachine, Rule, Buffer, int, Ctx, str], None]
# The steps that take a timer's name (table.py's NAMED): their implementation gets the name.
NAMED_STEPS: dict[Step, NamedStepFn] = {
    Step.START_TIMER: MoveMachine._start_timer,
    Step.CANCEL_TIMER: MoveMachine._cancel_timer,
}


def _bare(step: Step) -> StepFn:
    def run(m: MoveMachine, rule: Rule, buf: Buffer, now: int, ctx: Ctx) -> None:
        raise AssertionError(f"{m.strategy}: {step.value} without a timer's name (compile_spec refuses it)")
    return run


STEPS: dict[Step, StepFn] = {
    **{step: _bare(step) for step in NAMED_STEPS},
    Step.REFUSE: MoveMachine._refuse,
    Step.QUEUE: MoveMachine._queue,
    Step.BEGIN: MoveMachine._begin,
    Step.CANCEL_QUEUED: MoveMachine._cancel_queued,
    Step.LOCK: MoveMachine._lock,
    Step.UNLOCK: MoveMachine._unlock,
    Step.NOTIFY: MoveMachine._notify,
    Step.NOTIFY_NEVER_PINNED: lambda m, rule, buf, now, ctx: m._notify(rule, buf, now, ctx, Step.NOTIFY_NEVER_PINNED),
    Step.AWAIT_ANSWERS: MoveMachine._await_answers,
    Step.ANSWERED: MoveMachine._answered,
    Step.START_NOTIFY_TIMER: MoveMachine._start_notify_timer,
    Step.CANCEL_NOTIFY_TIMER: MoveMachine._cancel_notify_timer,
    Step.NOTIFY_TIMED_OUT: MoveMachine._notify_timed_out,
    Step.GIVE_UP_NOTIFY: MoveMachine._give_up_notify,
    Step.REVOKE_SILENT: MoveMachine._revoke_silent,
    Step.WAIT_FENCES: MoveMachine._wait_fences,
    Step.WAIT_WRITE_FENCES: lambda m, rule, buf, now, ctx: m._wait_fences(rule, buf, now, ctx, Usage.WRITE),
    Step.WAIT_KERNEL_FENCES: lambda m, rule, buf, now, ctx: m._wait_fences(rule, buf, now, ctx, Usage.KERNEL),
    Step.END_FENCE_WAIT: MoveMachine._end_fence_wait,
    Step.FORCE_COMPLETE: MoveMachine._force_complete,
    Step.AWAIT_RESETS: MoveMachine._await_resets,
    Step.REVOKE_UNCONFIRMED: MoveMachine._revoke_unconfirmed,
    Step.PUBLISH_KERNEL_FENCE: MoveMachine._publish_kernel_fence,
    Step.SIGNAL_KERNEL_FENCE: MoveMachine._signal_kernel_fence,
    Step.COPY: MoveMachine._copy,
    Step.SWITCH: MoveMachine._switch,
    Step.FREE: MoveMachine._free,
    Step.END: MoveMachine._end,
    Step.SERVE_MAP: MoveMachine._serve_map_step,
    Step.SERVE_MAP_UNLOCKED: MoveMachine._serve_map_unlocked,
    Step.DEFER_MAP: MoveMachine._defer_map,
    Step.SERVE_DEFERRED_MAPS: MoveMachine._serve_deferred_maps,
    Step.HINT_WILL_MOVE: MoveMachine._hint_will_move,
    Step.HINT_STAY: MoveMachine._hint_stay,
    Step.PIN: MoveMachine._pin,
    Step.UNPIN: MoveMachine._unpin,
    Step.REFUSE_UNPIN: MoveMachine._refuse_unpin,
    Step.INVALIDATE_MAPPINGS: MoveMachine._invalidate_mappings,
    Step.BEGIN_REVOCATION: MoveMachine._begin_revocation,
    Step.MARK_REVOKED: MoveMachine._mark_revoked,
    Step.MARK_UNREVOKED: MoveMachine._mark_unrevoked,
    Step.BEGIN_UNREVOKE: MoveMachine._begin_unrevoke,
    Step.END_REVOCATION: MoveMachine._end_revocation,
    Step.REFUSE_MAP_REVOKED: MoveMachine._refuse_map_revoked,
    Step.REFUSE_ATTACH: MoveMachine._refuse_attach,
    Step.PUT_UNMAP_REF: MoveMachine._put_unmap_ref,
    Step.AWAIT_UNMAPS: MoveMachine._await_unmaps,
    Step.WARN_UNMAPS: MoveMachine._warn_unmaps,
    Step.END_UNMAP_WAIT: MoveMachine._end_unmap_wait,
    Step.REARM_UNMAP_WAIT: MoveMachine._rearm_unmap_wait,
    Step.QUEUE_REVOKE: MoveMachine._queue_revoke,
    Step.RUN_QUEUED_REVOKE: MoveMachine._run_queued_revoke,
    Step.QUEUE_UNREVOKE: MoveMachine._queue_unrevoke,
    Step.RUN_QUEUED_UNREVOKE: MoveMachine._run_queued_unrevoke,
    Step.DROP_QUEUED_REVOKE: MoveMachine._drop_queued_revoke,
}

VOCABULARY = machine.Vocabulary(
    half="exporter", states=MoveState, events=MoveEvent, guards=Guard, steps=Step,
    initial=MoveState.IDLE, always=Guard.ALWAYS, guard_impl=GUARDS, step_impl=STEPS, named=NAMED)

_DEFER = (Rule(Guard.ALWAYS, SAME, (Step.DEFER_MAP,)),)
_SERVING = (Step.SERVE_MAP, Step.SERVE_DEFERRED_MAPS)
_UNDER_LOCK = (Step.MARK_REVOKED, Step.MARK_UNREVOKED)


@dataclass(frozen=True)
class CompiledSpec:
    strategy: str
    rows: dict[tuple[Any, MoveEvent], Any]    # as checked, with the lock's default rows
    table: dict[tuple[Any, MoveEvent], Any]   # every (reachable state, event): what the interpreter reads
    locked_states: frozenset[MoveState]       # states in which a move holds the reservation lock
    revokes: bool = False                     # some reachable rule revokes a buffer (MARK_REVOKED)
    origins: dict[tuple[Any, MoveEvent], str] = field(default_factory=dict)
    # ... of each of `rows`: machine.BASE (BASE_TABLE's, unchanged), STRATEGY, or LOAD (added here)
    timers: dict[str, str] = field(default_factory=lambda: timers.declared({}))
    # the declared timers, name -> length (protocol/timers.py), the notify timer's included


# Checked tables by content (protocol/machine.py CompiledCache says why).
_COMPILED: machine.CompiledCache[CompiledSpec] = machine.CompiledCache()


def compile_spec(spec: ExporterSpec) -> CompiledSpec:
    """Check a strategy's exporter table and complete it (see the rules at the top); TableError
    naming the strategy, the row and what is wrong. Pure: the same content gives the same table
    (cached, _COMPILED)."""
    if not isinstance(spec, ExporterSpec):
        raise TableError(getattr(spec, "strategy", "?"), "exporter", None,
                         f"EXPORTER must be an ExporterSpec, got {type(spec).__name__}")
    try:
        key = (spec.strategy, tuple(spec.table.items()), spec.breaks, tuple(sorted(spec.timers.items())))
    except TypeError:                       # sorted() of something incomparable: checked when built
        key = None
    return _COMPILED.get(id(spec), key, lambda: _compile(spec))


def _compile(spec: ExporterSpec) -> CompiledSpec:
    name = spec.strategy
    try:
        declared = timers.check(spec.timers)
    except timers.TimerError as err:
        raise TableError(name, "exporter", None, str(err)) from None
    names = {"timer": [t for t in declared if t != timers.NOTIFY]}   # the notify timer has steps of its own
    _check_notify_named(name, spec.table)
    rows = machine.check_rows(name, VOCABULARY, spec.table, names)
    if not spec.breaks:
        _check_no_bugs(name, "exporter", rows, MUTANT_STEPS)
    origins = machine.origins(rows, BASE_TABLE)
    locked = locked_states(rows)
    for state in sorted(locked, key=lambda s: list(MoveState).index(s)):
        if (state, MoveEvent.MAP) not in rows:
            rows[(state, MoveEvent.MAP)] = _DEFER
            origins[(state, MoveEvent.MAP)] = machine.LOAD
    rows = machine.check(name, VOCABULARY, rows, names)
    _check_lock(name, rows, locked)
    _check_begin(name, rows)
    _check_refusals(name, rows)
    reach = machine.reachable(VOCABULARY, rows)
    revokes = any(Step.MARK_REVOKED in rule.do for (state, _), rule in machine.steps_of(rows)
                  if state is ANY or state in reach)
    return CompiledSpec(name, rows, machine.expand(VOCABULARY, rows), frozenset(locked), revokes, origins, declared)


def running(compiled: CompiledSpec) -> list[machine.RunningRow]:
    """The table the move machine runs (`compiled.table`), row by row, with each row's origin."""
    return machine.running(VOCABULARY, compiled.rows, compiled.origins)


def locked_states(rows: dict[tuple[Any, MoveEvent], Any]) -> set[MoveState]:
    """The states in which a move may hold the buffer's reservation lock: entered by a rule
    that LOCKs (and does not UNLOCK after), or from such a state by a rule that does not UNLOCK."""
    reach = machine.reachable(VOCABULARY, rows)
    held: set[MoveState] = set()
    changed = True
    while changed:
        changed = False
        for state in reach:
            for event in MoveEvent:
                for rule in _rules(rules_for(rows, state, event)):
                    target = state if rule.then is SAME else rule.then
                    if target is not VIOLATION and target not in held and _held_after(state in held, rule.do):
                        held.add(target)
                        changed = True
    return held


def _held_after(held: bool, do: tuple[Step, ...]) -> bool:
    for step in do:
        if step is Step.LOCK:
            held = True
        elif step is Step.UNLOCK:
            held = False
    return held


def _check_lock(name: str, rows: dict, locked: set[MoveState]) -> None:
    for state in machine.reachable(VOCABULARY, rows):
        for event in MoveEvent:
            for i, rule in enumerate(_rules(rules_for(rows, state, event)), 1):
                held = state in locked
                for step in rule.do:
                    problem = None
                    if step in _SERVING and held:
                        problem = (f"{step.value} while a move holds the reservation lock (held in "
                                   f"{', '.join(sorted(s.value for s in locked))}): defer the map (DEFER_MAP) "
                                   f"or UNLOCK first")
                    elif step is Step.LOCK and held:
                        problem = "LOCK of a reservation lock already held"
                    elif step is Step.UNLOCK and not held:
                        problem = "UNLOCK of a reservation lock not held"
                    elif step in _UNDER_LOCK and not held:
                        problem = f"{step.value} without the reservation lock (VFIO marks a buffer revoked under it)"
                    if problem is not None:
                        raise TableError(name, "exporter", f"({state.value}, {event.value})", f"rule {i}: {problem}")
                    held = _held_after(held, (step,))


def _check_notify_named(name: str, table: Any) -> None:
    """The notify timer is declared like the others, but its steps and its event keep their own
    names: start_timer("notify") is refused with them."""
    if not isinstance(table, dict):
        return
    for (state, event), rules in table.items():
        named = [event] + [step for rule in (rules if isinstance(rules, tuple) else ()) if isinstance(rule, Rule)
                           for step in rule.do]
        for x in named:
            if isinstance(x, Named) and x.arg == timers.NOTIFY:
                raise TableError(name, "exporter", f"({getattr(state, 'value', state)}, {getattr(event, 'value', event)})",
                                 f"{x.value}: the notify timer's steps are start_notify_timer and cancel_notify_timer, "
                                 f"and it fires notify_timeout")


def _check_no_bugs(name: str, half: str, rows: dict, bugs: frozenset) -> None:
    """A step that breaks a rule on purpose belongs in a mutant's table only."""
    for (state, event), rules in rows.items():
        for i, rule in enumerate(_rules(rules), 1):
            for step in rule.do:
                if step in bugs:
                    raise TableError(name, half, f"({getattr(state, 'value', state)}, {event.value})",
                                     f"rule {i}: {step.value} is a known bug, for mutants only (a strategy "
                                     f"that breaks a rule on purpose declares it: protocol/strategies/mutants.py)")


def _check_begin(name: str, rows: dict) -> None:
    for (state, event), rules in rows.items():
        if event is MoveEvent.MOVE_WANTED or rules is VIOLATION:
            continue
        guarded = False
        for i, rule in enumerate(rules, 1):
            if Step.BEGIN in rule.do and not guarded:
                raise TableError(name, "exporter", f"({getattr(state, 'value', state)}, {event.value})",
                                 f"rule {i} begins a move the memory manager did not admit: put a "
                                 f"Rule(Guard.NO_ROOM, ...) before it (the destination may be full by now)")
            guarded = guarded or rule.when is Guard.NO_ROOM


def _check_refusals(name: str, rows: dict) -> None:
    """move_refused says why in a word of its own: the guard of a rule that REFUSEs must have one."""
    for (state, event), rule in machine.steps_of(rows):
        if Step.REFUSE in rule.do and rule.when not in REFUSAL_REASONS:
            i = rows[(state, event)].index(rule) + 1
            raise TableError(name, "exporter", f"({getattr(state, 'value', state)}, {event.value})",
                             f"rule {i}: refuse under guard {rule.when.value}, which gives move_refused no reason "
                             f"(guards with one: {', '.join(g.name for g in REFUSAL_REASONS)})")


def _rules(rules: Any) -> tuple[Rule, ...]:
    return () if rules is None or rules is VIOLATION else rules

