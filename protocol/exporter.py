"""The exporter half, sans-IO: importers, buffers, attachments, mappings, pins, the memory
manager's choice of moves, and the interpreter of a strategy's exporter table.

Rules of this file:
- Each buffer has one move state (MoveState). What happens on a move event in a state is the
  strategy's table (see protocol/machine.py); this file implements the guards and steps the
  tables name, and the bookkeeping that is the same for every strategy.
- A placement is only handed out (`map`) when the table's (state, MAP) row says SERVE_MAP;
  DEFER_MAP queues the request until SERVE_DEFERRED_MAPS (that is how the reservation lock, and
  the exporter's own copy, exclude new mappings).
- Ranges are freed only by the FREE step, after the copy away from them: the allocator hands the
  freed range to the next allocation at once (protocol/heap.py), so a late access hits reused memory.
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
- Leases: every message from an importer renews its lease; one silent for `lease_s` is lost: its
  attachments are revoked, its pins dropped, its fences completed with an error. A hello under a
  known name replaces the previous incarnation the same way (a restart, or a rejoin after the
  importer's own lease ran out).
- A notify or fence timeout revokes only importers that are responsive (heard from within half a
  lease) yet did not answer: they are alive and ignoring us. A notify timeout leaves their fences
  alone; a fence timeout completes them with an error, which the device takes as a reset: it
  aborts the job before its next access (importer_svc/dma.py). A silent one may merely be paused,
  with DMA that resumes where it stopped; it is left to its lease, which it honours by stopping
  its DMA before the exporter's lease on it runs out (importer_svc). So every wait is bounded by
  max(timeout, lease), and no fence is forced under a silent device, which could not see the reset.
- Follow-up events (a notification completed, the last mapping went away) are queued and run
  after the transition that caused them has finished, never inside it.
- Every entry point takes `now` (monotonic ns, from the shell) and returns the actions to perform,
  in order. Nothing here reads a clock, draws a random number or does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping

from protocol.actions import (Action, CancelTimer, CopyBuffer, Emit, ForceCompleteFences,
                              PublishKernelFence, Send, SignalKernelFence, StampBuffer,
                              StartTimer, WaitFences)
from protocol import capability
from protocol.fence import Usage
from protocol.heap import HeapFull, RangeAllocator
from protocol.machine import ANY, SAME, Rule, TransitionError, choose
from protocol.wire import (Ack, Attach, AttachReply, Bye, BufferInfo, Detach, ErrorCode,
                           ErrorReply, Heartbeat, Hello, HelloReply, HeapInfo, Map, MapReply,
                           Message, MoveNotify, Pin, PinReply, Ping, Placement,
                           ProtocolError, Unmap, UnmapReply, Unpin, error_reply, ok_reply)


class MoveState(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; Enum's hash(name) is a Python call per table lookup
    IDLE = "idle"              # resident, no move in progress
    QUEUED = "queued"          # a move waits for the last unmap (unmap-hint)
    NOTIFYING = "notifying"    # move_notify sent; waiting for acks or callback returns
    FENCE_WAIT = "fence_wait"  # waiting for the importers' fences (resv-fence)
    COPYING = "copying"        # bytes moving from the old range to the new


class MoveEvent(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; Enum's hash(name) is a Python call per table lookup
    MOVE_WANTED = "move_wanted"          # the memory manager wants this buffer elsewhere
    MAP = "map"                          # an importer asks for the placement
    UNMAP = "unmap"                      # an importer gives its mapping back
    LAST_UNMAP = "last_unmap"            # ... and nobody has the buffer mapped any more
    NOTIFY_DONE = "notify_done"          # every notified attachment acked / returned
    NOTIFY_TIMEOUT = "notify_timeout"
    FENCES_SIGNALED = "fences_signaled"
    FENCE_TIMEOUT = "fence_timeout"
    COPY_DONE = "copy_done"


class Guard(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; Enum's hash(name) is a Python call per table lookup
    ALWAYS = "always"
    PINNED = "pinned"                    # some attachment holds a pin
    MAPPED = "mapped"                    # some attachment has it mapped
    CONSERVATIVE_HINTS = "conservative"  # --hint-policy conservative
    MOVE_QUEUED = "move_queued"


class Step(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; Enum's hash(name) is a Python call per table lookup
    REFUSE = "refuse"                    # move_refused; the reason is the rule's guard
    QUEUE = "queue"                      # remember the move; LAST_UNMAP will start it
    BEGIN = "begin"                      # allocate the destination; move_begin
    LOCK = "lock"                        # take the reservation lock
    UNLOCK = "unlock"
    NOTIFY = "notify"                    # move_notify to every attachment of the buffer
    START_NOTIFY_TIMER = "start_notify_timer"
    CANCEL_NOTIFY_TIMER = "cancel_notify_timer"
    NOTIFY_TIMED_OUT = "notify_timed_out"      # log who did not answer
    GIVE_UP_NOTIFY = "give_up_notify"          # stop waiting for them
    REVOKE_SILENT = "revoke_silent"            # revoke the responsive ones that did not answer
    WAIT_FENCES = "wait_fences"          # wait for all fences of the buffer (usage BOOKKEEP)
    END_FENCE_WAIT = "end_fence_wait"    # every fence signaled
    FORCE_COMPLETE = "force_complete"    # complete timed-out fences of responsive owners, revoke them
    PUBLISH_KERNEL_FENCE = "publish_kernel_fence"
    COPY = "copy"
    SIGNAL_KERNEL_FENCE = "signal_kernel_fence"
    SWITCH = "switch"                    # the buffer's placement becomes the destination
    FREE = "free"                        # release the old range for reuse
    END = "end"                          # move_end
    SERVE_MAP = "serve_map"
    DEFER_MAP = "defer_map"
    SERVE_DEFERRED_MAPS = "serve_deferred_maps"
    HINT_WILL_MOVE = "hint_will_move"    # the unmap reply says: this buffer will move
    HINT_STAY = "hint_stay"              # the unmap reply promises it will not


ExporterTable = Mapping[tuple[Any, MoveEvent], tuple[Rule, ...]]

# Rows every strategy starts from. The exporter never hands out a placement while its bytes are
# being copied, and an unmap reply carries no hint unless a strategy says otherwise.
BASE_TABLE: dict[tuple[Any, MoveEvent], tuple[Rule, ...]] = {
    (ANY, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.SERVE_MAP,)),),
    (MoveState.COPYING, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.DEFER_MAP,)),),
    (ANY, MoveEvent.UNMAP): (Rule(Guard.ALWAYS, SAME, ()),),
    (ANY, MoveEvent.LAST_UNMAP): (Rule(Guard.ALWAYS, SAME, ()),),
    (MoveState.COPYING, MoveEvent.COPY_DONE): (
        Rule(Guard.ALWAYS, MoveState.IDLE,
             (Step.SWITCH, Step.FREE, Step.END, Step.SERVE_DEFERRED_MAPS)),),
}


@dataclass(frozen=True)
class ExporterSpec:
    """A strategy's exporter half: its table and the few facts the bookkeeping needs."""

    strategy: str
    table: ExporterTable
    pin_on_attach: bool = False      # attach pins the buffer (static importers)
    notify_done_on: str = "none"     # what completes a notification: "none", "ack", "return"
    kernel_fences: bool = False      # moves publish a KERNEL fence; map replies name it


@dataclass(frozen=True)
class HeapConfig:
    name: str
    shm: str
    size: int


@dataclass(frozen=True)
class ExporterConfig:
    buffers: int
    buffer_size: int
    heaps: tuple[HeapConfig, ...]    # the first is the scarce one (vram), the last the spill (sys)
    fences_shm: str
    fence_slots: int                 # importers + 1 (slot 0: the exporter's KERNEL fences)
    ack_timeout_s: float = 0.25
    fence_timeout_s: float = 1.0
    hint_policy: str = "optimistic"
    max_moves_in_flight: int = 2
    lease_s: float = 0.5
    secret: bytes = b""              # keys the tokens (protocol/capability.py); at least 16 bytes
    max_attachments: int = 8192      # per importer
    max_mappings: int = 256          # per importer: mapped, or waiting to be
    max_in_flight: int = 128         # per importer: requests not answered yet (maps waiting for the lock)


@dataclass
class _Importer:
    slot: int
    name: str
    peer: bytes
    pid: int
    alive: bool = True
    attachments: set[int] = field(default_factory=set)
    last_seen: int = 0
    mapped: set[int] = field(default_factory=set)     # its attachments that are mapped
    waiting: set[int] = field(default_factory=set)    # its attachments with a deferred map


@dataclass
class _Attachment:
    id: int
    buffer: int
    slot: int
    mapped: bool = False
    pins: int = 0
    last_gen: int | None = None      # the generation this attachment was last handed
    token: str = ""                  # its attachment token, for the connection it was made on
    peer: bytes = b""


@dataclass
class _Move:
    id: int
    buffer: int
    src: Placement
    dst: Placement
    reason: str
    began_ns: int
    waiting: dict[int, int] = field(default_factory=dict)   # attachment -> notify request id
    sent_ns: dict[int, int] = field(default_factory=dict)   # attachment -> when notified
    kernel_seq: int = 0
    then_promote: int | None = None                         # buffer to move into the freed range
    fence_wait_from: int = 0
    forced: list[str] = field(default_factory=list)         # importers whose fences were forced


@dataclass
class _Buffer:
    id: int
    size: int
    placement: Placement
    state: MoveState = MoveState.IDLE
    attachments: set[int] = field(default_factory=set)
    mapped: set[int] = field(default_factory=set)
    pins: int = 0
    lru: int = 0                                 # importers' demand: logical time of the last map
    resident_since: int = 0                      # the exporter's own use: when it last placed it
    move: _Move | None = None
    queued: tuple[str, str] | None = None        # (to heap, reason) of a queued move
    deferred: list[tuple[bytes, Map, int]] = field(default_factory=list)
    kernel_seq: int = 0                          # seqno of the last move's KERNEL fence
    promised: bool = False                       # an unmap reply promised it would not move


class _MoveAborted(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


class Exporter:
    """One exporter's protocol state. Not thread-safe: the shell calls it from its one loop."""

    def __init__(self, spec: ExporterSpec, config: ExporterConfig) -> None:
        if len(config.secret) < capability.MIN_SECRET:
            raise ValueError(f"the exporter's secret must be at least {capability.MIN_SECRET} bytes, "
                             f"got {len(config.secret)}")
        self.spec = spec
        self.config = config
        self._heaps = {h.name: RangeAllocator(h.name, h.size) for h in config.heaps}
        self._scarce = config.heaps[0].name
        self._spill = config.heaps[-1].name
        self._buffers: dict[int, _Buffer] = {}
        self._attachments: dict[int, _Attachment] = {}
        self._importers: dict[int, _Importer] = {}
        self._by_peer: dict[bytes, _Importer] = {}
        self._by_name: dict[str, _Importer] = {}
        self._moves: dict[int, _Move] = {}
        self._notify_ids: dict[int, tuple[int, int]] = {}   # request id -> (move, attachment)
        self._next_attachment = 1
        self._next_move = 1
        self._next_request = 1
        self._clock = 0                                     # logical clock: one tick per map
        self._placements = 0                                # logical clock: one tick per placement
        self._out: list[Action] = []
        self._posted: list[tuple[int, MoveEvent, int, dict[str, Any]]] = []  # follow-ups
        self._handlers: dict[type, Callable[[bytes, Any, int], None]] = {
            Ping: self._on_ping, Hello: self._on_hello, Bye: self._on_bye,
            Attach: self._on_attach, Detach: self._on_detach, Map: self._on_map,
            Unmap: self._on_unmap, Pin: self._on_pin, Unpin: self._on_unpin, Ack: self._on_ack,
            Heartbeat: self._on_heartbeat,
        }

    # ------------------------------------------------------------------ entry points

    def boot(self, now: int) -> list[Action]:
        """Allocate every buffer (scarce heap first, then the spill heap) and stamp it.
        Requires: called once, before any other entry point."""
        for b in range(self.config.buffers):
            heap = self._scarce if self._heaps[self._scarce].can_fit(self.config.buffer_size) else self._spill
            try:
                offset = self._heaps[heap].alloc(self.config.buffer_size)
            except HeapFull as exc:
                raise ValueError(f"{exc}: the heaps cannot hold {self.config.buffers} buffers "
                                 f"of {self.config.buffer_size} bytes") from None
            placement = Placement(heap, offset, self.config.buffer_size, 1)
            self._buffers[b] = _Buffer(b, self.config.buffer_size, placement)
            self._out.append(StampBuffer(b, placement))
            self._emit("buffer_created", buffer=b, heap=heap, offset=offset,
                       size=self.config.buffer_size, gen=1)
        return self._take()

    def handle_request(self, peer: bytes, msg: Message, now: int) -> list[Action]:
        """A decoded request from `peer`. Errors become error replies; state is unchanged then."""
        handler = self._handlers.get(type(msg))
        self._touch(peer, now)
        try:
            if handler is None:
                raise ProtocolError(ErrorCode.BAD_STATE, f"the exporter does not serve '{msg.OP}' on this socket")
            handler(peer, msg, now)
        except ProtocolError as err:
            err.op, err.id = msg.OP, msg.id
            self._send(peer, error_reply(err))
        except TransitionError as err:
            self._send(peer, ErrorReply(id=msg.id, op=msg.OP, code=ErrorCode.BAD_STATE, message=str(err)))
        return self._take()

    def handle_reply(self, peer: bytes, reply: Message, now: int) -> list[Action]:
        """An importer's reply to a request of ours (move_notify): the callback returned."""
        self._touch(peer, now)
        target = self._notify_ids.pop(reply.id, None)
        if target is None:
            self._emit("stray_reply", peer=self._peer_name(peer), id=reply.id, op=getattr(reply, "op", "?"))
            return self._take()
        move_id, att_id = target
        move = self._moves.get(move_id)
        fields: dict[str, Any] = dict(buffer=move.buffer if move else None, move=move_id,
                                      importer=self._peer_name(peer), attachment=att_id)
        if isinstance(reply, ErrorReply):
            fields.update(code=reply.code, message=reply.message)
        self._emit("move_notify_returned", **fields)
        if move is not None and self.spec.notify_done_on == "return":
            self._notification_done(move, att_id, now)
        return self._take()

    def pressure_tick(self, now: int) -> list[Action]:
        """The memory manager's turn: at most one move wanted (promote the most recently used
        buffer of the spill heap if it fits in the scarce one, else evict the least recently
        used buffer of the scarce heap)."""
        if len(self._moves) >= self.config.max_moves_in_flight:
            return self._take()
        choice = self._choose_move()
        if choice is not None:
            buf, to_heap, reason, then = choice
            self._dispatch(buf, MoveEvent.MOVE_WANTED, now, to=to_heap, reason=reason, then_promote=then)
        return self._take()

    def copy_done(self, move_id: int, now: int) -> list[Action]:
        move = self._moves[move_id]
        self._dispatch(self._buffers[move.buffer], MoveEvent.COPY_DONE, now)
        return self._take()

    def fences_signaled(self, move_id: int, now: int) -> list[Action]:
        move = self._moves.get(move_id)
        if move is not None:
            self._dispatch(self._buffers[move.buffer], MoveEvent.FENCES_SIGNALED, now)
        return self._take()

    def fences_timed_out(self, move_id: int, slots: tuple[int, ...], now: int) -> list[Action]:
        move = self._moves.get(move_id)
        if move is not None:
            self._dispatch(self._buffers[move.buffer], MoveEvent.FENCE_TIMEOUT, now, slots=slots)
        return self._take()

    def timer_fired(self, key: Hashable, now: int) -> list[Action]:
        kind, move_id = key  # type: ignore[misc]
        move = self._moves.get(move_id)
        if kind == "notify" and move is not None and move.waiting:
            self._dispatch(self._buffers[move.buffer], MoveEvent.NOTIFY_TIMEOUT, now)
        return self._take()

    def importer_lost(self, slot: int, reason: str, now: int) -> list[Action]:
        """The importer is gone (bye with attachments left, or dead): revoke everything it held,
        complete its fences with an error, and let moves waiting for it go on."""
        self._lose(slot, reason, now)
        return self._take()

    def _lose(self, slot: int, reason: str, now: int) -> None:
        imp = self._importers.get(slot)
        if imp is None or not imp.alive:
            return
        imp.alive = False
        for att_id in sorted(imp.attachments):
            self._revoke(self._attachments[att_id], reason, now)
        self._out.append(ForceCompleteFences(slot, None, reason))
        self._emit("importer_lost", importer=imp.name, slot=slot, reason=reason)

    def check_leases(self, now: int) -> list[Action]:
        """Declare lost every importer silent for longer than its lease."""
        for imp in list(self._importers.values()):
            if imp.alive and now - imp.last_seen > self.config.lease_s * 1e9:
                self._lose(imp.slot, "lease expired", now)
        return self._take()

    def cancel_queued_moves(self, now: int) -> list[Action]:
        """Stop: moves still waiting for their last unmap will not happen."""
        for buf in self._buffers.values():
            if buf.state is MoveState.QUEUED:
                self._emit("move_cancelled", buffer=buf.id, from_gen=buf.placement.gen)
                buf.state, buf.queued = MoveState.IDLE, None
        return self._take()

    @property
    def moves_in_flight(self) -> int:
        return len(self._moves)

    def importer_slot(self, peer: bytes) -> int | None:
        imp = self._by_peer.get(peer)
        return imp.slot if imp else None

    def placement_of(self, buffer: int) -> Placement:
        return self._buffers[buffer].placement

    def heap_usage(self) -> dict[str, int]:
        return {name: heap.used_bytes for name, heap in self._heaps.items()}

    # ------------------------------------------------------------------ requests

    def _on_ping(self, peer: bytes, msg: Ping, now: int) -> None:
        """Answered in every state, from anyone."""
        self._send(peer, ok_reply(msg))

    def _on_heartbeat(self, peer: bytes, msg: Heartbeat, now: int) -> None:
        self._importer(peer)
        self._send(peer, ok_reply(msg))

    def _on_hello(self, peer: bytes, msg: Hello, now: int) -> None:
        """Join: requires the name's join token and the strategy to match; a name that left or
        died may come back."""
        if not capability.matches(msg.token, capability.join_token(self.config.secret, msg.name)):
            self._deny(peer, "hello", "bad join token", name=msg.name[:64])
        if msg.strategy != self.spec.strategy:
            raise ProtocolError(ErrorCode.BAD_STATE, f"hello: this exporter runs strategy '{self.spec.strategy}', not '{msg.strategy}'")
        same_peer = self._by_peer.get(peer)
        if same_peer is not None and same_peer.alive and same_peer.name != msg.name:
            raise ProtocolError(ErrorCode.BAD_STATE, f"hello: this connection has already joined as {same_peer.name}")
        old = self._by_name.get(msg.name)
        if old is not None and old.alive:
            # A restart (new pid) or a rejoin after the importer's own lease ran out: the previous
            # incarnation has stopped its DMA; give back everything it held.
            self._lose(old.slot, "restarted" if old.pid != msg.pid else "rejoined", now)
        if old is not None:
            slot = old.slot
            self._by_peer.pop(old.peer, None)
        else:
            slot = len(self._importers) + 1
            if slot >= self.config.fence_slots:
                raise ProtocolError(ErrorCode.BUSY, f"hello: all {self.config.fence_slots - 1} importer slots are taken")
        imp = _Importer(slot, msg.name, peer, msg.pid, last_seen=now)
        self._importers[slot] = imp
        self._by_peer[peer] = imp
        self._by_name[msg.name] = imp
        self._emit("hello", importer=msg.name, slot=slot, peer_pid=msg.pid)
        self._send(peer, HelloReply(
            id=msg.id, slot=slot, strategy=self.spec.strategy,
            heaps=[HeapInfo(h.name, h.shm, h.size) for h in self.config.heaps],
            fences_shm=self.config.fences_shm, fence_slots=self.config.fence_slots,
            buffers=[BufferInfo(b.id, b.size) for b in self._buffers.values()]))

    def _on_bye(self, peer: bytes, msg: Bye, now: int) -> None:
        imp = self._importer(peer)
        self._send(peer, ok_reply(msg))
        if imp.attachments:
            self._lose(imp.slot, "bye with attachments", now)
        imp.alive = False
        self._emit("bye", importer=imp.name, slot=imp.slot)

    def _on_attach(self, peer: bytes, msg: Attach, now: int) -> None:
        """dma_buf_attach. A static importer's attach pins the buffer (pin_on_attach)."""
        imp = self._importer(peer)
        buf = self._buffer(msg.buffer, "attach")
        if not capability.matches(msg.token, capability.export_token(self.config.secret, buf.id)):
            self._deny(peer, "attach", "bad export token", buffer=buf.id)
        if len(imp.attachments) >= self.config.max_attachments:
            self._busy(imp, "attach", "attachments", len(imp.attachments), self.config.max_attachments)
        att = _Attachment(self._next_attachment, buf.id, imp.slot, peer=peer)
        # Derived once: checking it is then a constant-time compare, not an HMAC per map.
        att.token = capability.attachment_token(self.config.secret, att.id, peer)
        self._next_attachment += 1
        self._attachments[att.id] = att
        buf.attachments.add(att.id)
        imp.attachments.add(att.id)
        self._emit("attach", importer=imp.name, buffer=buf.id, attachment=att.id)
        if self.spec.pin_on_attach:
            att.pins += 1
            buf.pins += 1
            self._emit("pin", importer=imp.name, buffer=buf.id, attachment=att.id, pins=buf.pins)
        self._send(peer, AttachReply(id=msg.id, attachment=att.id, buffer=buf.id, size=buf.size,
                                     token=att.token))

    def _on_detach(self, peer: bytes, msg: Detach, now: int) -> None:
        """dma_buf_detach. Requires the attachment unmapped; drops the pins attach took."""
        imp = self._importer(peer)
        att = self._attachment(peer, msg.attachment, "detach", msg.token)
        if att.mapped:
            raise ProtocolError(ErrorCode.BAD_STATE, f"detach: attachment {att.id} is still mapped; unmap it first")
        self._send(peer, ok_reply(msg))
        self._drop_attachment(att, now)
        self._emit("detach", importer=imp.name, buffer=att.buffer, attachment=att.id)

    def _on_map(self, peer: bytes, msg: Map, now: int) -> None:
        """dma_buf_map_attachment. What it may do while the buffer moves is the table's
        (state, MAP) row: serve the current placement, or wait (DEFER_MAP)."""
        att = self._attachment(peer, msg.attachment, "map", msg.token)
        imp = self._importers[att.slot]
        if att.mapped or att.id in imp.waiting:
            raise ProtocolError(ErrorCode.BAD_STATE, f"map: attachment {att.id} is already mapped")
        if len(imp.mapped) + len(imp.waiting) >= self.config.max_mappings:
            self._busy(imp, "map", "mappings", len(imp.mapped) + len(imp.waiting), self.config.max_mappings)
        if len(imp.waiting) >= self.config.max_in_flight:
            self._busy(imp, "map", "in_flight", len(imp.waiting), self.config.max_in_flight)
        self._dispatch(self._buffers[att.buffer], MoveEvent.MAP, now, peer=peer, request=msg, since=now)

    def _on_unmap(self, peer: bytes, msg: Unmap, now: int) -> None:
        """dma_buf_unmap_attachment. The reply may carry the strategy's hint (`will_move`)."""
        att = self._attachment(peer, msg.attachment, "unmap", msg.token)
        if not att.mapped:
            raise ProtocolError(ErrorCode.BAD_STATE, f"unmap: attachment {att.id} is not mapped")
        buf = self._buffers[att.buffer]
        att.mapped = False
        buf.mapped.discard(att.id)
        self._importers[att.slot].mapped.discard(att.id)
        hint: dict[str, bool] = {"will_move": False}
        self._dispatch(buf, MoveEvent.UNMAP, now, hint=hint)
        self._send(peer, UnmapReply(id=msg.id, will_move=hint["will_move"]))
        self._emit("unmap_served", id=msg.id, importer=self._peer_name(peer), buffer=buf.id,
                   attachment=att.id, will_move=hint["will_move"])
        if not buf.mapped:
            self._post(buf, MoveEvent.LAST_UNMAP, now)

    def _on_pin(self, peer: bytes, msg: Pin, now: int) -> None:
        """dma_buf_pin: a pinned buffer is never moved (the tables refuse on Guard.PINNED)."""
        att = self._attachment(peer, msg.attachment, "pin", msg.token)
        buf = self._buffers[att.buffer]
        att.pins += 1
        buf.pins += 1
        self._emit("pin", importer=self._peer_name(peer), buffer=buf.id, attachment=att.id, pins=buf.pins)
        self._send(peer, PinReply(id=msg.id, pins=buf.pins))

    def _on_unpin(self, peer: bytes, msg: Unpin, now: int) -> None:
        att = self._attachment(peer, msg.attachment, "unpin", msg.token)
        if att.pins == 0:
            raise ProtocolError(ErrorCode.BAD_STATE, f"unpin: attachment {att.id} holds no pin")
        buf = self._buffers[att.buffer]
        att.pins -= 1
        buf.pins -= 1
        self._emit("unpin", importer=self._peer_name(peer), buffer=buf.id, attachment=att.id, pins=buf.pins)
        self._send(peer, ok_reply(msg))

    def _on_ack(self, peer: bytes, msg: Ack, now: int) -> None:
        """The importer no longer uses the old placement. A late or repeated ack is answered
        ok and changes nothing (acks are idempotent)."""
        att = self._attachment(peer, msg.attachment, "ack", None)
        self._send(peer, ok_reply(msg))
        move = self._moves.get(msg.move)
        current = move is not None and move.buffer == att.buffer and att.id in move.waiting
        latency = now - move.sent_ns[att.id] if current and move and att.id in move.sent_ns else None
        self._emit("ack", id=msg.id, buffer=att.buffer, move=msg.move, importer=self._peer_name(peer),
                   attachment=att.id, latency_ns=latency, current=current)
        if current and move is not None and self.spec.notify_done_on == "ack":
            self._notification_done(move, att.id, now)

    # ------------------------------------------------------------------ the table interpreter

    def _dispatch(self, buf: _Buffer, event: MoveEvent, now: int, **ctx: Any) -> None:
        rule = choose(self.spec.table, buf.state, event, lambda g: self._guard(g, buf),
                      self.spec.strategy, f"buffer {buf.id}")
        before = buf.state
        try:
            for step in rule.do:
                self._step(step, rule, buf, now, ctx)
        except _MoveAborted as abort:
            self._abort_move(buf, abort.reason, now)
            return
        if rule.then is not SAME and buf.state is before:
            buf.state = rule.then
        if buf.state is MoveState.NOTIFYING and buf.move is not None and not buf.move.waiting:
            # A notification with nobody (left) to wait for is done as soon as it is sent.
            self._post(buf, MoveEvent.NOTIFY_DONE, now)

    def _post(self, buf: _Buffer, event: MoveEvent, now: int, **ctx: Any) -> None:
        self._posted.append((buf.id, event, now, ctx))

    def _run_posted(self) -> None:
        """Run follow-up events in order; each is re-checked against the state it finds, since
        an earlier one may have made it moot."""
        while self._posted:
            buf_id, event, now, ctx = self._posted.pop(0)
            buf = self._buffers[buf_id]
            if event is MoveEvent.MOVE_WANTED:
                if (buf.state is not MoveState.IDLE or len(self._moves) >= self.config.max_moves_in_flight
                        or not self._heaps[ctx["to"]].can_fit(buf.size)):
                    continue
            elif event is MoveEvent.NOTIFY_DONE:
                if not (buf.state is MoveState.NOTIFYING and buf.move is not None and not buf.move.waiting):
                    continue
            elif event is MoveEvent.LAST_UNMAP:
                if buf.mapped:
                    continue
            self._dispatch(buf, event, now, **ctx)

    def _guard(self, guard: Guard, buf: _Buffer) -> bool:
        if guard is Guard.ALWAYS:
            return True
        if guard is Guard.PINNED:
            return buf.pins > 0
        if guard is Guard.MAPPED:
            return bool(buf.mapped)
        if guard is Guard.CONSERVATIVE_HINTS:
            return self.config.hint_policy == "conservative"
        if guard is Guard.MOVE_QUEUED:
            return buf.state is MoveState.QUEUED
        raise AssertionError(guard)

    def _step(self, step: Step, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        getattr(self, "_step_" + step.value)(rule, buf, now, ctx)

    def _step_refuse(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        self._emit("move_refused", buffer=buf.id, from_gen=buf.placement.gen,
                   to_gen=buf.placement.gen + 1, reason=rule.when.value, to_heap=ctx.get("to"))

    def _step_queue(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        buf.queued = (ctx["to"], ctx["reason"])
        self._emit("move_queued", buffer=buf.id, from_gen=buf.placement.gen, reason="mapped",
                   to_heap=ctx["to"])

    def _step_begin(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        to_heap, reason = (ctx["to"], ctx["reason"]) if "to" in ctx else buf.queued  # type: ignore[misc]
        buf.queued = None
        try:
            offset = self._heaps[to_heap].alloc(buf.size)
        except HeapFull:
            raise _MoveAborted("no_space") from None
        src = buf.placement
        dst = Placement(to_heap, offset, buf.size, src.gen + 1)
        move = _Move(self._next_move, buf.id, src, dst, reason, now, then_promote=ctx.get("then_promote"))
        self._next_move += 1
        self._moves[move.id] = move
        buf.move = move
        self._emit("move_begin", buffer=buf.id, move=move.id, reason=reason,
                   from_gen=src.gen, to_gen=dst.gen,
                   **{"from": _placement_fields(src), "to": _placement_fields(dst)},
                   broke_promise=buf.promised)
        buf.promised = False

    def _step_lock(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        self._emit("resv_lock", buffer=buf.id, move=buf.move.id if buf.move else None)

    def _step_unlock(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        self._emit("resv_unlock", buffer=buf.id, move=buf.move.id if buf.move else None)

    def _step_notify(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        move = self._current_move(buf)
        for att_id in sorted(buf.attachments):
            att = self._attachments[att_id]
            imp = self._importers[att.slot]
            if not imp.alive or att.pins:
                continue  # a pinned attachment receives no move notifications
            req = MoveNotify(id=self._new_request_id(), buffer=buf.id, attachment=att.id,
                             move=move.id, gen=move.src.gen)
            self._notify_ids[req.id] = (move.id, att.id)
            if self.spec.notify_done_on != "none":
                move.waiting[att.id] = req.id
            move.sent_ns[att.id] = now
            self._out.append(Send(imp.peer, req, imp.name))
            self._emit("move_notify_sent", id=req.id, buffer=buf.id, move=move.id,
                       importer=imp.name, attachment=att.id, gen=move.src.gen)

    def _step_start_notify_timer(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        self._out.append(StartTimer(("notify", self._current_move(buf).id), self.config.ack_timeout_s))

    def _step_cancel_notify_timer(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        self._out.append(CancelTimer(("notify", self._current_move(buf).id)))

    def _step_notify_timed_out(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        move = self._current_move(buf)
        silent = [self._attachments[a] for a in sorted(move.waiting) if a in self._attachments]
        self._emit("ack_timeout", buffer=buf.id, move=move.id,
                   importers=sorted({self._importers[a.slot].name for a in silent}),
                   attachments=[a.id for a in silent],
                   responsive=sorted({self._importers[a.slot].name for a in silent
                                      if self._responsive(self._importers[a.slot], now)}))

    def _step_give_up_notify(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        move = self._current_move(buf)
        for req_id in move.waiting.values():
            self._notify_ids.pop(req_id, None)
        move.waiting.clear()

    def _step_revoke_silent(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        move = self._current_move(buf)
        for att_id in sorted(move.waiting):
            att = self._attachments.get(att_id)
            if att is not None and self._responsive(self._importers[att.slot], now):
                # Its fences stay as they are: they are the device's own word on its DMA, and the
                # fence wait that follows honours them (forcing them only at the fence timeout).
                self._revoke(att, "notify_timeout", now)

    def _step_wait_fences(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        move = self._current_move(buf)
        self._emit("fence_wait_begin", buffer=buf.id, move=move.id, usage=Usage.BOOKKEEP.name)
        move.fence_wait_from = now
        self._out.append(WaitFences(move.id, buf.id, Usage.BOOKKEEP, self.config.fence_timeout_s))

    def _step_end_fence_wait(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        move = self._current_move(buf)
        self._emit("fence_wait_end", buffer=buf.id, move=move.id, usage=Usage.BOOKKEEP.name,
                   waited_ns=now - move.fence_wait_from, forced=list(move.forced))

    def _step_force_complete(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        move = self._current_move(buf)
        for slot in ctx.get("slots", ()):
            imp = self._importers.get(slot)
            if imp is not None and imp.alive and not self._responsive(imp, now):
                continue  # silent: maybe paused mid-DMA; its lease decides (see the rules)
            name = imp.name if imp else f"slot-{slot}"
            move.forced.append(name)
            self._out.append(ForceCompleteFences(slot, buf.id, "fence_timeout"))
            self._emit("fence_signal", buffer=buf.id, usage=Usage.BOOKKEEP.name, seq=None,
                       move=move.id, importer=name, error="timeout", forced=True)
            if imp is not None:
                for att_id in sorted(imp.attachments & buf.attachments):
                    self._revoke(self._attachments[att_id], "fence_timeout", now)

    def _step_publish_kernel_fence(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        move = self._current_move(buf)
        buf.kernel_seq += 1
        move.kernel_seq = buf.kernel_seq
        self._out.append(PublishKernelFence(buf.id, move.kernel_seq))

    def _step_copy(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        move = self._current_move(buf)
        self._out.append(CopyBuffer(move.id, buf.id, move.src, move.dst))

    def _step_signal_kernel_fence(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        move = self._current_move(buf)
        self._out.append(SignalKernelFence(buf.id, move.kernel_seq))
        self._emit("fence_signal", buffer=buf.id, usage=Usage.KERNEL.name, seq=move.kernel_seq, move=move.id)

    def _step_switch(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        buf.placement = self._current_move(buf).dst
        self._placements += 1
        buf.resident_since = self._placements

    def _step_free(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        move = self._current_move(buf)
        self._heaps[move.src.heap].free(move.src.offset, move.src.size)
        self._emit("free", buffer=buf.id, move=move.id, from_gen=move.src.gen, to_gen=move.dst.gen,
                   heap=move.src.heap, offset=move.src.offset, size=move.src.size)
        if move.then_promote is not None:
            # The eviction was made for this allocation: it takes the room at once, as a memory
            # manager short of vram does. A late access to the freed range meets its bytes.
            self._post(self._buffers[move.then_promote], MoveEvent.MOVE_WANTED, now,
                       to=move.src.heap, reason="promote")

    def _step_end(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        move = self._current_move(buf)
        self._emit("move_end", buffer=buf.id, move=move.id, from_gen=move.src.gen,
                   to_gen=move.dst.gen, latency_ns=now - move.began_ns)
        for req_id in move.waiting.values():
            self._notify_ids.pop(req_id, None)
        del self._moves[move.id]
        buf.move = None

    def _step_serve_map(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        self._serve_map(buf, ctx["peer"], ctx["request"], ctx["since"], now)

    def _step_defer_map(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        buf.deferred.append((ctx["peer"], ctx["request"], ctx["since"]))
        att = self._attachments[ctx["request"].attachment]
        self._importers[att.slot].waiting.add(att.id)

    def _step_serve_deferred_maps(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        waiting, buf.deferred = buf.deferred, []
        for peer, request, since in waiting:
            att = self._attachments.get(request.attachment)
            if att is None or self._importers[att.slot].peer != peer:
                continue  # detached or revoked while waiting: nothing to answer
            self._importers[att.slot].waiting.discard(att.id)
            self._serve_map(buf, peer, request, since, now)

    def _step_hint_will_move(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        ctx["hint"]["will_move"] = True

    def _step_hint_stay(self, rule: Rule, buf: _Buffer, now: int, ctx: dict[str, Any]) -> None:
        ctx["hint"]["will_move"] = False
        buf.promised = True

    # ------------------------------------------------------------------ helpers

    def _serve_map(self, buf: _Buffer, peer: bytes, request: Map, since: int, now: int) -> None:
        att = self._attachments[request.attachment]
        att.mapped = True
        buf.mapped.add(att.id)
        self._importers[att.slot].mapped.add(att.id)
        self._clock += 1
        buf.lru = self._clock
        moved = att.last_gen is not None and att.last_gen != buf.placement.gen
        att.last_gen = buf.placement.gen
        fence = buf.kernel_seq if self.spec.kernel_fences else 0
        p = buf.placement
        self._send(peer, MapReply(id=request.id, placement=p, moved=moved, fence=fence))
        self._emit("map_served", id=request.id, importer=self._peer_name(peer), buffer=buf.id,
                   attachment=att.id, heap=p.heap, offset=p.offset, size=p.size, gen=p.gen,
                   moved=moved, deferred_ns=now - since)

    def _notification_done(self, move: _Move, att_id: int, now: int) -> None:
        if move.waiting.pop(att_id, None) is None:
            return
        if not move.waiting:
            self._post(self._buffers[move.buffer], MoveEvent.NOTIFY_DONE, now)

    def _revoke(self, att: _Attachment, reason: str, now: int) -> None:
        imp = self._importers[att.slot]
        self._emit("attachment_revoked", importer=imp.name, buffer=att.buffer, attachment=att.id,
                   reason=reason, was_mapped=att.mapped)
        buf = self._buffers[att.buffer]
        if att.mapped:
            att.mapped = False
            buf.mapped.discard(att.id)
            imp.mapped.discard(att.id)
        self._drop_attachment(att, now)
        if not buf.mapped:
            self._post(buf, MoveEvent.LAST_UNMAP, now)

    def _drop_attachment(self, att: _Attachment, now: int) -> None:
        buf = self._buffers[att.buffer]
        buf.pins -= att.pins
        att.pins = 0
        buf.attachments.discard(att.id)
        # A map waiting for the lock on a handle that is going away is answered now, with the
        # reason: left unanswered it would be retried for ever (and deduplicated for ever).
        for peer, request, _ in [d for d in buf.deferred if d[1].attachment == att.id]:
            self._send(peer, ErrorReply(id=request.id, op=Map.OP, code=ErrorCode.NO_SUCH_ATTACHMENT,
                                        message=f"map: attachment {att.id} was revoked or detached while the map waited"))
        buf.deferred = [d for d in buf.deferred if d[1].attachment != att.id]
        self._importers[att.slot].attachments.discard(att.id)
        self._importers[att.slot].waiting.discard(att.id)
        self._importers[att.slot].mapped.discard(att.id)
        del self._attachments[att.id]
        if buf.move is not None and att.id in buf.move.waiting:
            self._notification_done(buf.move, att.id, now)

    def _abort_move(self, buf: _Buffer, reason: str, now: int) -> None:
        self._emit("move_refused", buffer=buf.id, from_gen=buf.placement.gen,
                   to_gen=buf.placement.gen + 1, reason=reason)
        buf.state, buf.queued = MoveState.IDLE, None

    def _choose_move(self) -> tuple[_Buffer, str, str, int | None] | None:
        """Promote the spill buffer importers mapped most recently into the scarce heap; if it does
        not fit, first evict the scarce buffer this exporter placed longest ago, and promote into
        its range once freed. The eviction order is the exporter's own use of its memory (an
        exporting GPU driver's LRU follows its own work, not the importers' DMA), so it may well
        pick a buffer a device is using right now: that is the 2012 problem."""
        idle = [b for b in self._buffers.values() if b.state is MoveState.IDLE]
        spill = [b for b in idle if b.placement.heap == self._spill]
        scarce = [b for b in idle if b.placement.heap == self._scarce]
        hot = max(spill, key=lambda b: (b.lru, -b.id)) if spill else None
        if hot is not None and self._heaps[self._scarce].can_fit(hot.size):
            return hot, self._scarce, "promote", None
        if scarce:
            cold = min(scarce, key=lambda b: (b.resident_since, b.id))
            return cold, self._spill, "evict", hot.id if hot is not None else None
        return None

    def _current_move(self, buf: _Buffer) -> _Move:
        if buf.move is None:
            raise AssertionError(f"buffer {buf.id} has no move in state {buf.state}")
        return buf.move

    def _importer(self, peer: bytes) -> _Importer:
        imp = self._by_peer.get(peer)
        if imp is None or not imp.alive:
            raise ProtocolError(ErrorCode.NO_SUCH_IMPORTER, "say hello first: this peer has not joined")
        return imp

    def _buffer(self, buffer: int, op: str) -> _Buffer:
        buf = self._buffers.get(buffer)
        if buf is None:
            raise ProtocolError(ErrorCode.NO_SUCH_BUFFER, f"{op}: no buffer {buffer} (this exporter has buffers 0..{len(self._buffers) - 1})")
        return buf

    def _attachment(self, peer: bytes, att_id: int, op: str, token: str | None) -> _Attachment:
        """The attachment `att_id` of the importer on `peer`, if `token` is its attachment token
        (None: an op that needs no token, ack)."""
        imp = self._importer(peer)
        att = self._attachments.get(att_id)
        if att is None:
            raise ProtocolError(ErrorCode.NO_SUCH_ATTACHMENT, f"{op}: no attachment {att_id}")
        if att.slot != imp.slot:
            self._deny(peer, op, "another importer's attachment", attachment=att_id)
        if token is not None and (peer != att.peer or not capability.matches(token, att.token)):
            self._deny(peer, op, "bad attachment token", attachment=att_id)
        return att

    def _deny(self, peer: bytes, op: str, reason: str, **fields: Any) -> None:
        """Refuse a request for a capability it does not hold: an event, then access_denied."""
        self._emit("access_denied", op=op, peer=self._peer_label(peer), reason=reason, **fields)
        what = " ".join(f"{k} {v}" for k, v in fields.items())
        raise ProtocolError(ErrorCode.ACCESS_DENIED, f"{op}: {reason}" + (f" ({what})" if what else ""))

    def _busy(self, imp: _Importer, op: str, what: str, count: int, limit: int) -> None:
        """Refuse a request past a per-importer limit: an event, then busy (backpressure)."""
        self._emit("busy", op=op, importer=imp.name, limit=what, count=count, max=limit)
        raise ProtocolError(ErrorCode.BUSY, f"{op}: {imp.name} holds {count} {what.replace('_', ' ')} "
                                            f"(limit {limit}); try again later")

    def _touch(self, peer: bytes, now: int) -> None:
        imp = self._by_peer.get(peer)
        if imp is not None and imp.alive:
            imp.last_seen = max(imp.last_seen, now)

    def _responsive(self, imp: _Importer, now: int) -> bool:
        return imp.alive and now - imp.last_seen <= self.config.lease_s * 1e9 / 2

    def _peer_name(self, peer: bytes) -> str:
        imp = self._by_peer.get(peer)
        return imp.name if imp else "?"

    def _peer_label(self, peer: bytes) -> str:
        """The importer's name, or `?` and the routing id in hex for a peer that has not joined."""
        imp = self._by_peer.get(peer)
        return imp.name if imp is not None and imp.alive else "?" + peer.hex()[:64]

    def _new_request_id(self) -> int:
        rid = self._next_request
        self._next_request += 1
        return rid

    def _send(self, peer: bytes, msg: Message) -> None:
        self._out.append(Send(peer, msg, self._peer_name(peer)))

    def _emit(self, event: str, **fields: Any) -> None:
        self._out.append(Emit(event, fields))

    def _take(self) -> list[Action]:
        self._run_posted()
        out, self._out = self._out, []
        return out


def _placement_fields(p: Placement) -> dict[str, Any]:
    return {"heap": p.heap, "offset": p.offset, "size": p.size, "gen": p.gen}
