"""The exporter's session with its importers: membership, leases, capability tokens, limits, and
the requests that reach the move machine.

Rules of this file:
- Handles (attachments) are checked on every request: unknown -> no_such_attachment, another
  importer's -> access_denied. A request that cannot be served changes nothing.
- Capabilities (protocol/capability.py): hello presents the join token of its name, attach the
  buffer's export token, map/unmap/pin/unpin/detach the attachment token the attach reply handed
  out, which is bound to the connection (peer) and the attachment. A wrong, forged or replayed
  token is access_denied with an `access_denied` event, and changes nothing. The secret that
  keys them comes in with the config: nothing here draws a random number.
- Limits, per importer: attachments held (`max_attachments`), mappings held or waiting
  (`max_mappings`), maps waiting for the reservation lock (`max_in_flight`, the only requests
  that stay unanswered). Past a limit a request is answered `busy` (a `busy` event) and changes
  nothing: backpressure instead of unbounded tables.
- Leases: every message from an importer renews its lease; the lease check is a timer of this
  half (every lease/4, started at boot); one silent for `lease_s` is lost once its device is
  known to have stopped (ConfirmStopped: no chunk access under way, or its process gone;
  device_stopped): its attachments are revoked, its pins dropped, its fences completed with an
  error. The device stops at its next check, before the lease runs out here, but an access it
  checked earlier runs when a paused device resumes: losing it before would let that access
  touch memory the exporter moved or freed (a race seen once in CI, and at will in the
  simulator: tests/test_lease_stop.py). Its expiry stands once noticed (`expired`): a message
  from it meanwhile renews nothing, and a request is answered no_such_importer, which grants
  no lease (an ok would renew the importer's own lease: protocol/lease.py) and makes it start
  over; a hello from it loses it at once (it stopped its DMA before saying hello). A hello
  under a known name replaces the previous incarnation the same way (a restart, or a rejoin
  after the importer's own lease ran out).
- The same holds for a device whose reset went unconfirmed past --reset-grace-ms (moves.py,
  _revoke_unconfirmed): it is lost, reason `reset unconfirmed`, once its device is known to have
  stopped, and the wait for it goes on until then.
- A notify or fence timeout revokes only importers that are responsive (heard from within half a
  lease) yet did not answer: they are alive and ignoring us. A notify timeout leaves their fences
  alone; a fence timeout completes them with an error, which the device takes as a reset: it
  aborts the job before its next access (importer_svc/dma.py). A silent one may merely be paused,
  with DMA that resumes where it stopped; it is left to its lease, which it honours by stopping
  its DMA before the exporter's lease on it runs out (importer_svc). So every wait is bounded by
  max(timeout, lease), and no fence is forced under a silent device, which could not see the reset.
- What a map, unmap, attach, pin, unpin, ack, callback return or lost attachment does to the
  buffer's move is the strategy's table: this file checks the request, keeps the session's books
  and dispatches the event (moves.py), with its context (state.py Ctx), whose answer fields
  (`will_move`, `refusal`) the reply is made of.
- The session is the move machine's Membership (moves.py): the machine asks it whether an
  importer is responsive, and to revoke an attachment or lose an importer.
"""

from __future__ import annotations

from typing import Any, Callable

from protocol import capability
from protocol.actions import ConfirmStopped, Emit, ForceCompleteFences, StartTimer
from protocol.exporter.moves import MoveMachine
from protocol.exporter.state import Attachment, Buffer, Ctx, ExporterState, Member
from protocol.exporter.table import MoveEvent
from protocol.fence import FORCE_REASONS
from protocol.wire import (Ack, Attach, AttachReply, BufferInfo, Bye, Detach, ErrorCode, ErrorReply,
                           Heartbeat, HeapInfo, Hello, HelloReply, InvalidateMappings, Map, Message, Pin,
                           PinReply, Ping, ProtocolError, Unmap, UnmapReply, Unpin, ok_reply)

LEASE_TIMER = ("leases",)
# How the shell confirms that a device whose lease ran out has stopped (ConfirmStopped).
STOPPED_HOW = ("no access under way", "process gone")
LEASE_CHECKS_PER_LEASE = 4


class Session:
    def __init__(self, state: ExporterState, moves: MoveMachine, strategy: str) -> None:
        self.state = state
        self.moves = moves
        self.strategy = strategy
        self.next_attachment = 1
        self.handlers: dict[type, Callable[[bytes, Any, int], None]] = {
            Ping: self.on_ping, Hello: self.on_hello, Bye: self.on_bye,
            Attach: self.on_attach, Detach: self.on_detach, Map: self.on_map,
            Unmap: self.on_unmap, Pin: self.on_pin, Unpin: self.on_unpin, Ack: self.on_ack,
            Heartbeat: self.on_heartbeat,
        }

    # ------------------------------------------------------------------ leases

    def start_lease_timer(self) -> None:
        self.state.out.append(StartTimer(LEASE_TIMER, self.state.config.lease_s / LEASE_CHECKS_PER_LEASE))

    def check_leases(self, now: int) -> None:
        """Every importer silent for longer than its lease: lost once its device stopped."""
        st = self.state
        for imp in list(st.members.values()):
            if imp.alive and imp.expired is None and now - imp.last_seen > st.config.lease_s * 1e9:
                st.emit("lease_lapsed", importer=imp.name, slot=imp.slot, silent_ns=now - imp.last_seen)
                self.lose_once_stopped(imp.slot, "lease expired", now)

    def lose_once_stopped(self, slot: int, reason: str, now: int) -> None:
        """Ask the shell to confirm that the importer's device stopped (ConfirmStopped), once;
        device_stopped then loses it with `reason` (the first asked for, if asked twice)."""
        imp = self.state.members.get(slot)
        if imp is None or not imp.alive or imp.expired is not None:
            return
        imp.expired, imp.expiry = now, reason
        self.state.out.append(ConfirmStopped(slot, imp.pid))

    def device_stopped(self, slot: int, pid: int, how: str, now: int) -> None:
        """The shell's answer to ConfirmStopped: the device of `slot` (process `pid`) touches
        memory no more (`how`: STOPPED_HOW). Its incarnation, if still here and expired, is lost;
        otherwise (it rejoined or restarted meanwhile, and was lost then) nothing happens."""
        if how not in STOPPED_HOW:
            raise ValueError(f"device_stopped: {how!r} is not how a stop is confirmed ({', '.join(STOPPED_HOW)})")
        imp = self.state.members.get(slot)
        if imp is not None and imp.alive and imp.pid == pid and imp.expired is not None:
            self.state.emit("stop_confirmed", importer=imp.name, slot=slot, how=how, waited_ns=now - imp.expired)
            self.lose(slot, imp.expiry, now)

    def touch(self, peer: bytes, now: int) -> None:
        imp = self.state.by_peer.get(peer)
        if imp is not None and imp.alive and imp.expired is None:
            imp.last_seen = max(imp.last_seen, now)

    def responsive(self, imp: Member, now: int) -> bool:
        return imp.alive and now - imp.last_seen <= self.state.config.lease_s * 1e9 / 2

    def lose(self, slot: int, reason: str, now: int) -> None:
        """The importer is gone (bye with attachments left, dead, replaced): revoke everything it
        held, complete its fences with `reason`, and let moves waiting for it go on."""
        if reason not in FORCE_REASONS:
            raise ValueError(f"importer lost for {reason!r}: not a reason the fences can record "
                             f"({', '.join(FORCE_REASONS)})")
        st = self.state
        imp = st.members.get(slot)
        if imp is None or not imp.alive:
            return
        imp.alive = False
        for att_id in sorted(imp.attachments):
            self.revoke(st.attachments[att_id], reason, now)
        st.out.append(ForceCompleteFences(slot, None, reason))
        st.emit("importer_lost", importer=imp.name, slot=slot, reason=reason)
        self.moves.member_lost(slot, now)

    def revoke(self, att: Attachment, reason: str, now: int) -> None:
        st = self.state
        imp = st.members[att.slot]
        st.emit("attachment_revoked", importer=imp.name, buffer=att.buffer, attachment=att.id,
                reason=reason, was_mapped=att.mapped)
        buf = st.buffers[att.buffer]
        if att.mapped:
            att.mapped = False
            buf.mapped.discard(att.id)
            imp.mapped.discard(att.id)
            self.moves.mapping_dropped(buf, now)
        self.drop_attachment(att, now)
        if not buf.mapped:
            st.post(buf, MoveEvent.LAST_UNMAP, now)

    def drop_attachment(self, att: Attachment, now: int) -> None:
        st = self.state
        buf = st.buffers[att.buffer]
        buf.pins -= att.pins
        att.pins = 0
        buf.attachments.discard(att.id)
        # A map waiting for the lock on a handle that is going away is answered now, with the
        # reason: left unanswered it would be retried for ever (and deduplicated for ever).
        for peer, request, _ in [d for d in buf.deferred if d[1].attachment == att.id]:
            st.send(peer, ErrorReply(id=request.id, op=Map.OP, code=ErrorCode.NO_SUCH_ATTACHMENT,
                                     message=f"map: attachment {att.id} was revoked or detached while the map waited"))
        buf.deferred = [d for d in buf.deferred if d[1].attachment != att.id]
        imp = st.members[att.slot]
        imp.attachments.discard(att.id)
        imp.waiting.discard(att.id)
        imp.mapped.discard(att.id)
        del st.attachments[att.id]
        op = buf.operation
        st.post(buf, MoveEvent.ATTACHMENT_GONE, now, Ctx(attachment=att.id, op=op.id if op is not None else None))

    # ------------------------------------------------------------------ requests

    def on_ping(self, peer: bytes, msg: Ping, now: int) -> None:
        """Answered in every state, from anyone."""
        self.state.send(peer, ok_reply(msg))

    def on_heartbeat(self, peer: bytes, msg: Heartbeat, now: int) -> None:
        """Renews the lease (every message does); only a member gets ok."""
        self.member(peer)
        self.state.send(peer, ok_reply(msg))

    def on_hello(self, peer: bytes, msg: Hello, now: int) -> None:
        """Join: requires the name's join token and the strategy to match; a name that left or
        died may come back."""
        st, config = self.state, self.state.config
        if not capability.matches(msg.token, capability.join_token(config.secret, msg.name)):
            self.deny(peer, "hello", "bad join token", name=msg.name[:64])
        if msg.strategy != self.strategy:
            raise ProtocolError(ErrorCode.BAD_STATE, f"hello: this exporter runs strategy '{self.strategy}', not '{msg.strategy}'")
        same_peer = st.by_peer.get(peer)
        if same_peer is not None and same_peer.alive and same_peer.name != msg.name:
            raise ProtocolError(ErrorCode.BAD_STATE, f"hello: this connection has already joined as {same_peer.name}")
        old = st.by_name.get(msg.name)
        if old is not None and old.alive:
            # A restart (new pid) or a rejoin after the importer's own lease ran out: the previous
            # incarnation has stopped its DMA; give back everything it held.
            self.lose(old.slot, "restarted" if old.pid != msg.pid else "rejoined", now)
        if old is not None:
            slot = old.slot
            st.by_peer.pop(old.peer, None)
        else:
            slot = len(st.members) + 1
            if slot >= config.fence_slots:
                raise ProtocolError(ErrorCode.BUSY, f"hello: all {config.fence_slots - 1} importer slots are taken")
        imp = Member(slot, msg.name, peer, msg.pid, last_seen=now)
        st.members[slot] = imp
        st.by_peer[peer] = imp
        st.by_name[msg.name] = imp
        st.emit("hello", importer=msg.name, slot=slot, peer_pid=msg.pid)
        st.send(peer, HelloReply(
            id=msg.id, slot=slot, strategy=self.strategy,
            heaps=[HeapInfo(h.name, h.shm, h.size) for h in config.heaps],
            fences_shm=config.fences_shm, fence_slots=config.fence_slots,
            buffers=[BufferInfo(b.id, b.size) for b in st.buffers.values()]))

    def on_bye(self, peer: bytes, msg: Bye, now: int) -> None:
        imp = self.member(peer)
        self.state.send(peer, ok_reply(msg))
        if imp.attachments:
            self.lose(imp.slot, "bye with attachments", now)
        imp.alive = False
        self.state.emit("bye", importer=imp.name, slot=imp.slot)

    def on_attach(self, peer: bytes, msg: Attach, now: int) -> None:
        """dma_buf_attach. What the attach does to the buffer (a static importer's pins it; a
        revoking exporter refuses one it cannot revoke) is the table's (state, ATTACH) row; a
        refused attach changes nothing."""
        st, config = self.state, self.state.config
        imp = self.member(peer)
        buf = self.buffer(msg.buffer, "attach")
        if not capability.matches(msg.token, capability.export_token(config.secret, buf.id)):
            self.deny(peer, "attach", "bad export token", buffer=buf.id)
        if len(imp.attachments) >= config.max_attachments:
            self.busy(imp, "attach", "attachments", len(imp.attachments), config.max_attachments)
        att = Attachment(self.next_attachment, buf.id, imp.slot, peer=peer, revocable=msg.revocable)
        mark = len(st.out)
        ctx = self.moves.dispatch(buf, MoveEvent.ATTACH, now, Ctx(attaching=att))
        if ctx.refusal is not None:
            del st.out[mark:]
            raise ProtocolError(*ctx.refusal)
        # Derived once: checking it is then a constant-time compare, not an HMAC per map.
        att.token = capability.attachment_token(config.secret, att.id, peer)
        self.next_attachment += 1
        st.attachments[att.id] = att
        buf.attachments.add(att.id)
        imp.attachments.add(att.id)
        # The attach event goes before what the row did (a pin): the history reads attach, then pin.
        st.out.insert(mark, Emit("attach", dict(importer=imp.name, buffer=buf.id, attachment=att.id,
                                                **({} if att.revocable else {"revocable": False}))))
        st.send(peer, AttachReply(id=msg.id, attachment=att.id, buffer=buf.id, size=buf.size, token=att.token))

    def on_detach(self, peer: bytes, msg: Detach, now: int) -> None:
        """dma_buf_detach. Requires the attachment unmapped; drops the pins it holds."""
        imp = self.member(peer)
        att = self.attachment(peer, msg.attachment, "detach", msg.token)
        if att.mapped:
            raise ProtocolError(ErrorCode.BAD_STATE, f"detach: attachment {att.id} is still mapped; unmap it first")
        self.state.send(peer, ok_reply(msg))
        self.drop_attachment(att, now)
        self.state.emit("detach", importer=imp.name, buffer=att.buffer, attachment=att.id)

    def on_map(self, peer: bytes, msg: Map, now: int) -> None:
        """dma_buf_map_attachment. Requires the attachment unmapped and within the limits; what it
        may do while the buffer moves is the table's (state, MAP) row."""
        st, config = self.state, self.state.config
        att = self.attachment(peer, msg.attachment, "map", msg.token)
        imp = st.members[att.slot]
        if att.mapped or att.id in imp.waiting:
            raise ProtocolError(ErrorCode.BAD_STATE, f"map: attachment {att.id} is already mapped")
        if len(imp.mapped) + len(imp.waiting) >= config.max_mappings:
            self.busy(imp, "map", "mappings", len(imp.mapped) + len(imp.waiting), config.max_mappings)
        if len(imp.waiting) >= config.max_in_flight:
            self.busy(imp, "map", "in_flight", len(imp.waiting), config.max_in_flight)
        self.moves.dispatch(st.buffers[att.buffer], MoveEvent.MAP, now, Ctx(peer=peer, request=msg, since=now))

    def on_unmap(self, peer: bytes, msg: Unmap, now: int) -> None:
        """dma_buf_unmap_attachment. Requires the attachment mapped. The reply may carry the
        strategy's hint (`will_move`): the table's (state, UNMAP) row."""
        st = self.state
        att = self.attachment(peer, msg.attachment, "unmap", msg.token)
        if not att.mapped:
            raise ProtocolError(ErrorCode.BAD_STATE, f"unmap: attachment {att.id} is not mapped")
        buf = st.buffers[att.buffer]
        att.mapped = False
        buf.mapped.discard(att.id)
        st.members[att.slot].mapped.discard(att.id)
        self.moves.mapping_dropped(buf, now)
        hint = self.moves.dispatch(buf, MoveEvent.UNMAP, now).will_move
        st.send(peer, UnmapReply(id=msg.id, will_move=hint), recorded=True)
        st.emit("unmap_served", id=msg.id, importer=st.peer_name(peer), buffer=buf.id,
                attachment=att.id, will_move=hint)
        if not buf.mapped:
            st.post(buf, MoveEvent.LAST_UNMAP, now)

    def on_pin(self, peer: bytes, msg: Pin, now: int) -> None:
        """dma_buf_pin: what a pin does is the table's (state, PIN) row (BASE_TABLE: the buffer is
        pinned; a pinned buffer is never moved, the tables refuse on Guard.PINNED)."""
        st = self.state
        att = self.attachment(peer, msg.attachment, "pin", msg.token)
        buf = st.buffers[att.buffer]
        self.moves.dispatch(buf, MoveEvent.PIN, now, Ctx(attachment=att.id))
        st.send(peer, PinReply(id=msg.id, pins=buf.pins))

    def on_unpin(self, peer: bytes, msg: Unpin, now: int) -> None:
        """dma_buf_unpin: the table's (state, UNPIN) row; refused (bad_state) if the attachment
        holds no pin, and then nothing changes."""
        st = self.state
        att = self.attachment(peer, msg.attachment, "unpin", msg.token)
        ctx = self.moves.dispatch(st.buffers[att.buffer], MoveEvent.UNPIN, now, Ctx(attachment=att.id))
        if ctx.refusal is not None:
            raise ProtocolError(*ctx.refusal)
        st.send(peer, ok_reply(msg))

    def on_ack(self, peer: bytes, msg: Ack, now: int) -> None:
        """The importer no longer uses the old placement. Answered ok whatever it is about (acks
        are idempotent); whether it completes a notification is the table's (state, ACK) row."""
        st = self.state
        att = self.attachment(peer, msg.attachment, "ack", None)
        st.send(peer, ok_reply(msg))
        move = st.moves.get(msg.move)
        current = move is not None and move.buffer == att.buffer and att.id in move.waiting
        latency = now - move.sent_ns[att.id] if current and move and att.id in move.sent_ns else None
        st.emit("ack", id=msg.id, buffer=att.buffer, move=msg.move, importer=st.peer_name(peer),
                attachment=att.id, latency_ns=latency, current=current)
        self.moves.dispatch(st.buffers[att.buffer], MoveEvent.ACK, now, Ctx(attachment=att.id, op=msg.move))

    def on_reply(self, peer: bytes, reply: Message, now: int) -> None:
        """An importer's reply to a move_notify or invalidate_mappings of ours: its callback
        returned. What that does is the table's (state, NOTIFY_RETURNED) row."""
        st = self.state
        target = st.notify_ids.pop(reply.id, None)
        if target is None:
            st.emit("stray_reply", peer=st.peer_name(peer), id=reply.id, op=getattr(reply, "op", "?"))
            return
        op_id, att_id = target
        op = st.operation(op_id)
        kind = "revoke" if op is not None and op.KIND == "revoke" else "move"
        name = "invalidate_mappings" if getattr(reply, "op", "") == InvalidateMappings.OP else "move_notify"
        fields: dict[str, Any] = dict(buffer=op.buffer if op else None, **{kind: op_id},
                                      importer=st.peer_name(peer), attachment=att_id)
        if isinstance(reply, ErrorReply):
            fields.update(code=reply.code, message=reply.message)
        st.emit(f"{name}_returned", **fields)
        if op is not None:
            self.moves.dispatch(st.buffers[op.buffer], MoveEvent.NOTIFY_RETURNED, now, Ctx(attachment=att_id, op=op_id))

    # ------------------------------------------------------------------ checks

    def member(self, peer: bytes) -> Member:
        imp = self.state.by_peer.get(peer)
        if imp is None or not imp.alive:
            raise ProtocolError(ErrorCode.NO_SUCH_IMPORTER, "say hello first: this peer has not joined")
        if imp.expired is not None:
            # Its lease lapsed and it is about to be lost: an answer would grant it a new lease
            # (protocol/lease.py), and its device would go on with handles about to be revoked.
            raise ProtocolError(ErrorCode.NO_SUCH_IMPORTER, "your lease lapsed: say hello again")
        return imp

    def buffer(self, buffer: int, op: str) -> Buffer:
        buf = self.state.buffers.get(buffer)
        if buf is None:
            raise ProtocolError(ErrorCode.NO_SUCH_BUFFER, f"{op}: no buffer {buffer} (this exporter has buffers 0..{len(self.state.buffers) - 1})")
        return buf

    def attachment(self, peer: bytes, att_id: int, op: str, token: str | None) -> Attachment:
        """The attachment `att_id` of the importer on `peer`, if `token` is its attachment token
        (None: an op that needs no token, ack)."""
        imp = self.member(peer)
        att = self.state.attachments.get(att_id)
        if att is None:
            raise ProtocolError(ErrorCode.NO_SUCH_ATTACHMENT, f"{op}: no attachment {att_id}")
        if att.slot != imp.slot:
            self.deny(peer, op, "another importer's attachment", attachment=att_id)
        if token is not None and (peer != att.peer or not capability.matches(token, att.token)):
            self.deny(peer, op, "bad attachment token", attachment=att_id)
        return att

    def deny(self, peer: bytes, op: str, reason: str, **fields: Any) -> None:
        """Refuse a request for a capability it does not hold: an event, then access_denied."""
        self.state.emit("access_denied", op=op, peer=self.state.peer_label(peer), reason=reason, **fields)
        what = " ".join(f"{k} {v}" for k, v in fields.items())
        raise ProtocolError(ErrorCode.ACCESS_DENIED, f"{op}: {reason}" + (f" ({what})" if what else ""))

    def busy(self, imp: Member, op: str, what: str, count: int, limit: int) -> None:
        """Refuse a request past a per-importer limit: an event, then busy (backpressure)."""
        self.state.emit("busy", op=op, importer=imp.name, limit=what, count=count, max=limit)
        raise ProtocolError(ErrorCode.BUSY, f"{op}: {imp.name} holds {count} {what.replace('_', ' ')} "
                                            f"(limit {limit}); try again later")
