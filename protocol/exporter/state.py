"""What the exporter half knows, in one place: its importers, attachments, buffers and moves, the
actions it has decided and the follow-up events it has queued.

Rules of this file:
- One `ExporterState` per exporter, shared by its session (session.py), its memory manager
  (memory.py) and its move machine (moves.py); each of them changes only what its own rules say.
- Actions are appended to `out` in the order they must be performed; `take()` hands them over.
- Follow-up events (`post`) run after the transition that caused them has finished, never inside
  it, in the order they were posted (moves.py runs them before the actions are handed over).
- An event emitted while a table row runs records what fired the row (`trigger`, and `timer`:
  protocol/machine.py's trigger), set by the move machine for the row's steps only.
- What an event brings to the move machine, and what its rule decided for the caller, is a `Ctx`:
  typed fields, one per fact, no dict passed in to be filled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from protocol.actions import Action, Emit, Send
from protocol.exporter.table import MoveEvent, MoveState
from protocol.fence import Usage
from protocol.params import default, default_s
from protocol.wire import Map, Message, Placement


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
    # The run parameters' defaults are protocol/params.py's.
    ack_timeout_s: float = default_s("ack_timeout_ms")
    fence_timeout_s: float = default_s("fence_timeout_ms")
    unmap_wait_s: float = default_s("unmap_wait_ms")
    reset_grace_s: float = default_s("reset_grace_ms")
    hint_policy: str = default("hint_policy")
    max_moves_in_flight: int = 2
    lease_s: float = default_s("lease_ms")
    secret: bytes = b""              # keys the tokens (protocol/capability.py); at least 16 bytes
    max_attachments: int = 8192      # per importer
    max_mappings: int = 256          # per importer: mapped, or waiting to be
    max_in_flight: int = 128         # per importer: requests not answered yet (maps waiting for the lock)
    params: Mapping[str, float] = field(default_factory=dict)  # run parameters by name, as given (ms): what
                                     # the strategy's timer lengths name (protocol/timers.py); default if absent


@dataclass
class Member:
    """An importer that said hello."""

    slot: int
    name: str
    peer: bytes
    pid: int
    alive: bool = True
    attachments: set[int] = field(default_factory=set)
    last_seen: int = 0
    mapped: set[int] = field(default_factory=set)     # its attachments that are mapped
    waiting: set[int] = field(default_factory=set)    # its attachments with a deferred map
    expired: int | None = None    # since when it is to be lost (lose_once_stopped), its stop unconfirmed
    expiry: str = ""              # the reason it will be lost with


@dataclass
class Attachment:
    id: int
    buffer: int
    slot: int
    mapped: bool = False
    pins: int = 0
    last_gen: int | None = None      # the generation this attachment was last handed
    token: str = ""                  # its attachment token, for the connection it was made on
    peer: bytes = b""
    revocable: bool = True           # the importer has invalidate_mappings (dma_buf_attach_revocable)
    pinned_once: bool = False        # it has pinned at least once (what NOTIFY_NEVER_PINNED reads)


@dataclass
class Operation:
    """What a move and a revocation share: the notifications they send and wait for, and their
    fence wait. Ids come from one counter, so an id names one operation (timers, fence waits)."""

    id: int
    buffer: int
    waiting: dict[int, int] = field(default_factory=dict, kw_only=True)   # attachment -> notify request id, awaited
    sent_ns: dict[int, int] = field(default_factory=dict, kw_only=True)   # attachment -> when notified
    notified: dict[int, int] = field(default_factory=dict, kw_only=True)  # attachment -> notify request id, all sent
    fence_wait_from: int = field(default=0, kw_only=True)
    unsignaled: tuple[int, ...] = field(default=(), kw_only=True)         # slots the fence wait still waits for
    forced: list[str] = field(default_factory=list, kw_only=True)         # importers whose fences were forced
    wait_usage: Usage = field(default=Usage.BOOKKEEP, kw_only=True)       # the usage its fence wait waits with
    confirming: dict[int, int] = field(default_factory=dict, kw_only=True)  # slot -> when forced: the device has
                                                                          # not confirmed its engine stopped (AWAIT_RESETS)
    resetting: set[int] = field(default_factory=set, kw_only=True)        # slots forced by the last FORCE_COMPLETE

    KIND = "move"                       # the field that names it in events: move or revoke


@dataclass
class Move(Operation):
    src: Placement
    dst: Placement
    reason: str
    began_ns: int
    kernel_seq: int = 0
    then_promote: int | None = None                         # buffer to move into the freed range


@dataclass
class Revocation(Operation):
    """A buffer taken away and, later, given back: one id for both (the revoke and unrevoke events)."""

    began_ns: int
    unmap_wait_from: int = 0
    late: set[str] = field(default_factory=set)             # importers the unmap wait warned about
    warned: bool = False

    KIND = "revoke"


# The posted v5/v6 drafts' WARN when their 1 s wait for unmaps ran out ([PATCH v5 4/8] and [PATCH
# v6 4/8] "vfio: Wait for dma-buf invalidation to complete", vfio_pci_dma_buf_move()); v7, as
# merged for 7.1, waits with wait_for_completion() and prints nothing.
UNMAP_WAIT_WARNING = "Timed out waiting for DMABUF unmap, importer has a broken invalidate_mapping()"


@dataclass
class UnmapWait:
    """VFIO's kref and completion for a revocation's wait for unmaps: one reference is the buffer's
    own (kref_init), one more per mapping served; the revocation drops the buffer's own and waits
    until the count reaches zero. complete() and wait_for_completion() are a counted handshake: a
    completion made while nobody waits stays until a wait takes it (or reinit_completion), and the
    wait that ends takes it (END_UNMAP_WAIT: `consume`). Which is why re-arming at the wrong moment
    loses track (revoke+kref-reinit), and a second drain with nothing re-armed never ends
    (revoke+cleanup-redrain)."""

    refs: int = 1
    done: bool = False

    def get(self) -> bool:
        """A mapping served (kref_get). False if the count was zero: refcount_t's "addition on 0"."""
        self.refs += 1
        return self.refs > 1

    def put(self) -> tuple[bool, bool]:
        """A reference dropped (kref_put): (it completed the wait, the count stayed >= 0)."""
        self.refs -= 1
        if self.refs == 0:
            self.done = True
            return True, True
        return False, self.refs >= 0

    def rearm(self) -> None:
        self.refs, self.done = 1, False

    def consume(self) -> None:
        """wait_for_completion() returned: it took the completion (done is 0 again)."""
        self.done = False


@dataclass(slots=True)
class Ctx:
    """The context of one move-machine event (MoveEvent says which fields each event brings), and
    what its rule decided for the caller (`will_move`, `refusal`)."""

    to: str | None = None                # MOVE_WANTED: the destination heap
    reason: str | None = None            # MOVE_WANTED: promote or evict
    then_promote: int | None = None      # MOVE_WANTED: the buffer to move into the freed range
    peer: bytes | None = None            # MAP: who asks
    request: Map | None = None           # MAP: the request
    since: int = 0                       # MAP: when it arrived
    attaching: Attachment | None = None  # ATTACH: the attachment being made (not in the books yet)
    attachment: int | None = None        # PIN, UNPIN, ACK, NOTIFY_RETURNED, ATTACHMENT_GONE: which one
    op: int | None = None                # ACK, NOTIFY_RETURNED, ATTACHMENT_GONE: the operation answered
                                         # (None: the buffer's current one)
    slots: tuple[int, ...] | None = None  # FENCE_TIMEOUT: the importer slots still unsignaled
    # decided by the rule, read by the caller
    will_move: bool = False              # UNMAP: the reply's hint
    refusal: tuple[str, str] | None = None  # ATTACH, UNPIN: refused, with (error code, message)


@dataclass
class Buffer:
    id: int
    size: int
    placement: Placement
    state: MoveState = MoveState.IDLE
    attachments: set[int] = field(default_factory=set)
    mapped: set[int] = field(default_factory=set)
    pins: int = 0
    lru: int = 0                                 # importers' demand: logical time of the last map
    resident_since: int = 0                      # the exporter's own use: when it last placed it
    move: Move | None = None
    queued: tuple[str, str] | None = None        # (to heap, reason) of a queued move
    deferred: list[tuple[bytes, Map, int]] = field(default_factory=list)
    kernel_seq: int = 0                          # seqno of the last move's KERNEL fence
    promised: bool = False                       # an unmap reply promised it would not move
    locked: bool = False                         # a move (or revocation) holds its reservation lock
    lock_holder: dict[str, Any] | None = None    # ... which: {"move": id} or {"revoke": id}, as LOCK
                                                 # recorded it (what resv_unlock names, even after END)
    revocation: Revocation | None = None         # in progress, or in effect until un-revoked
    revoked: bool = False                        # maps are refused (no_device)
    unmap_wait: UnmapWait = field(default_factory=UnmapWait)
    revoke_queued: bool = False                  # a revocation waits for the lock's holder
    unrevoke_queued: bool = False                # an un-revoke waits for the revocation's unmap wait

    @property
    def operation(self) -> Operation | None:
        """The operation its notifications and fence wait belong to: its move, else its revocation
        (never both: a revocation waits for a move, and no move begins while revoked)."""
        return self.move if self.move is not None else self.revocation


class ExporterState:
    def __init__(self, config: ExporterConfig) -> None:
        self.config = config
        self.buffers: dict[int, Buffer] = {}
        self.attachments: dict[int, Attachment] = {}
        self.members: dict[int, Member] = {}       # by slot
        self.by_peer: dict[bytes, Member] = {}
        self.by_name: dict[str, Member] = {}
        self.moves: dict[int, Move] = {}
        self.revocations: dict[int, Revocation] = {}
        self.notify_ids: dict[int, tuple[int, int]] = {}   # request id -> (move, attachment)
        self.next_request = 1
        self.out: list[Action] = []
        # follow-ups: (buffer, event, now, ctx, a want the memory manager re-checks when it runs)
        self.posted: list[tuple[int, MoveEvent, int, Ctx, bool]] = []
        self.trigger: dict[str, Any] = {}    # while a row runs: what fired it (machine.trigger), in its events

    def emit(self, event: str, **fields: Any) -> None:
        self.out.append(Emit(event, {**fields, **self.trigger} if self.trigger else fields))

    def send(self, peer: bytes, msg: Message, *, recorded: bool = False) -> None:
        self.out.append(Send(peer, msg, self.peer_name(peer), recorded=recorded))

    def post(self, buf: Buffer, event: MoveEvent, now: int, ctx: Ctx | None = None) -> None:
        self.posted.append((buf.id, event, now, ctx or Ctx(), False))

    def post_want(self, buf: Buffer, to_heap: str, reason: str, now: int) -> None:
        """A follow-up MOVE_WANTED that the memory manager re-checks (admits) when it runs."""
        self.posted.append((buf.id, MoveEvent.MOVE_WANTED, now, Ctx(to=to_heap, reason=reason), True))

    def operation(self, op_id: int) -> Operation | None:
        """The move or revocation with this id (one counter: ids are never shared)."""
        op = self.moves.get(op_id)
        return op if op is not None else self.revocations.get(op_id)

    def new_request_id(self) -> int:
        rid = self.next_request
        self.next_request += 1
        return rid

    def peer_name(self, peer: bytes) -> str:
        """The importer's name for events about it ("?" for a peer that never joined)."""
        imp = self.by_peer.get(peer)
        return imp.name if imp else "?"

    def peer_label(self, peer: bytes) -> str:
        """The `peer` field of events about a connection: the name of the importer that joined on
        it (alive or not), else `?` and the routing id in hex (at most 32 bytes of it)."""
        imp = self.by_peer.get(peer)
        return imp.name if imp is not None else "?" + peer.hex()[:64]

    def take(self) -> list[Action]:
        out, self.out = self.out, []
        return out
