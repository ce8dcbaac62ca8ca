"""The importer half, sans-IO: one device's attachments, the life of each of them (attach, jobs,
detach, revocation) and of each DMA job on them, its lease, and the interpreter of a strategy's
importer table.

Rules of this file:
- Each attachment has one state (AttState). Everything it does on an event, in every state, is a
  row of its strategy's table (protocol/machine.py): the attach life cycle (ATTACHING, DETACHING,
  DETACHED, REVOKED) as much as a job's map, DMA and unmap. This file implements the guards and
  steps (explicit maps IGUARDS, ISTEPS), turns what comes in into events, and keeps the session's
  books: hello, request ids, bye.
- A reply is one event, or two: a map or unmap refused because the attachment is gone
  (no_such_attachment, access_denied) is MAP_FAILED or UNMAP_FAILED, then REVOKED. REPLIES
  (below the tables) says, by the op of the request answered, which event a reply is: the
  session's own replies (hello, bye) and the refusals of ack, pin and unpin (logged, nothing
  else) are not the attachment's.
- While the importer leaves, every attachment is offered LEAVE after each of its transitions (and
  at shutdown): the table says in which states it detaches. Once every attachment is DETACHED or
  REVOKED, bye.
- `iommu` is what the device's IOMMU entries for an attachment point at; `mapping` is the
  placement the current job uses. They differ only where a strategy reuses stale entries.
- move_notify is answered at once (the kernel callback returns without blocking); an `ack`, where a
  strategy sends one, is a separate message. Linux 7.1's invalidate_mappings is the same callback
  under its 7.1 name (INVALIDATE_MAPPINGS); its return is recorded (`invalidate_mappings_returned`,
  with `stopped`: no DMA of the driver was running on the attachment any more).
- An importer has a kind (protocol/params.py IMPORTER_KINDS): `dynamic` (the strategy's table),
  `pinned-revocable` (pins each buffer after attaching it, and its revoke callback stops the DMA
  before it returns: rows of the strategy's `kinds`, else KIND_ROWS), `static` (no
  invalidate_mappings: its attach says it is not revocable; the exporter pins it, or refuses it
  with not_supported if it revokes). Every kind's table is checked when the strategy is loaded.
- Entry points take `now` (monotonic ns, from the shell) and return actions. No I/O, no clock, no
  randomness: which buffer a job uses and when is the shell's workload's business. Time enters as
  `now` and as the heartbeat timer this half starts (StartTimer) and the shell fires.
- The lease (protocol/lease.py), with `lease_s`: every lease/4 the heartbeat timer notices our own
  pauses (woke), gives up on an exporter silent for two leases (ExporterLost), stops the device
  when the lease ran out (LeaseExpired, then reset), and sends a heartbeat (a member only). The
  shell reports every transmission of a request (`sent`) and asks before each DMA chunk
  (`may_access`); the replies it hands in renew the lease.
- Request ids start at `first_id`: a restarted importer (same name, same routing id) must not
  reuse its previous incarnation's ids, which the exporter's duplicate filter still remembers.
  Heartbeats take their ids from `heartbeat_first_id` on.
- Capabilities (protocol/capability.py): hello carries the join token, attach the buffer's export
  token, and every later request on an attachment the attachment token its attach reply handed
  out. The importer attaches exactly the buffers it holds export tokens for (its grants), and
  says nothing about the others.
- reset() forgets everything and says hello again: when the importer's lease ran out (the
  exporter has revoked or will revoke all it held) and when the exporter answers no_such_importer
  (it already has). The device's DMA is stopped first (LeaseExpired, or by the shell).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping

from protocol import machine
from protocol.actions import (AckOwed, Acked, Action, Emit, ExporterLost, Invalidated, JobFinished, Joined,
                              LeaseExpired, Left, ProgramIommu, Ready, Send, SignalFence, StartDma, StartTimer,
                              StopDma, TeardownIommu, WaitKernelFence)
from protocol.fence import usage_for_access
from protocol.lease import ImporterLease
from protocol.machine import ANY, SAME, VIOLATION, Rule, TableError, TransitionError, choose
from protocol.params import IMPORTER_KINDS
from protocol.wire import (Ack, Attach, AttachReply, Bye, Detach, ErrorCode, ErrorReply, Heartbeat, Hello,
                           HelloReply, InvalidateMappings, Map, MapReply, Message, MoveNotify, OkReply, Pin,
                           Placement, Unmap, UnmapReply, Unpin)


class AttState(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; Enum's hash(name) is a Python call per table lookup
    ATTACHING = "attaching"    # attach request out
    IDLE = "idle"              # attached; nothing mapped, no IOMMU entries
    CACHED = "cached"          # unmapped, but the IOMMU entries were kept
    MAPPING = "mapping"        # map request out
    FENCE_WAIT = "fence_wait"  # mapped; waiting for the move's KERNEL fence before touching it
    ACTIVE = "active"          # mapped; DMA running
    MAPPED = "mapped"          # mapped, no job: the mapping is kept for the next job until move_notify (or
                               # invalidate_mappings) invalidates it: a dynamic importer's cache (revoke), or
                               # a job that pinned, over and unpinned (resv-fence: dma_buf_unpin)
    KEPT = "mapped"            # MAPPED's former name, an alias (tests/test_mutants.py still says KEPT)
    UNMAPPING = "unmapping"    # unmap request out
    DETACHING = "detaching"    # detach request out
    DETACHED = "detached"      # detached: the attachment is gone for good
    REVOKED = "revoked"        # the exporter took the attachment away (and it is not attached again)
    REFUSED = "refused"        # the exporter refused the attach (not_supported: it cannot revoke this importer)


class AttEvent(enum.Enum):
    __hash__ = object.__hash__
    ATTACH_OK = "attach_ok"            # the attach reply (ctx: reply, latency)
    ATTACH_FAILED = "attach_failed"    # the exporter refused the attach (ctx: reply)
    JOB = "job"                        # the workload wants a DMA job on this buffer (ctx: job, access)
    MAP_OK = "map_ok"                  # ctx: reply, latency, request_id
    MAP_FAILED = "map_failed"          # ctx: reason
    FENCE_SIGNALED = "fence_signaled"  # the KERNEL fence named by the map reply signaled
    DMA_DONE = "dma_done"              # the shell: the job's DMA ended
    UNMAP_OK = "unmap_ok"              # ctx: reply, latency, request_id
    UNMAP_FAILED = "unmap_failed"      # the exporter no longer knows the mapping (ctx: latency, request_id)
    MOVE_NOTIFY = "move_notify"        # ctx: notify
    INVALIDATE_MAPPINGS = "invalidate_mappings"  # Linux 7.1's move_notify (ctx: notify, an InvalidateMappings)
    REVOKED = "revoked"                # a reply says the attachment is gone (ctx: code)
    LEAVE = "leave"                    # the importer is leaving: detach if you can
    DETACH_DONE = "detach_done"        # the detach reply, ok or not (ctx: reply, latency)
    RESET = "reset"                    # the importer starts over (ctx: reason)


@dataclass(frozen=True)
class ReplyRoute:
    """What a reply to one of our requests is to the attachment (REPLIES, by the op answered)."""

    accepted_by: type | None      # the reply type that accepts the request (None: any reply)
    accepted: AttEvent            # the event then (ctx: reply, latency, request_id)
    refused: AttEvent             # the event for any other reply (ctx: the same, or reason)
    refusal_as_reason: bool = False  # the refusal reaches the table as the job's failure reason
    then_revoked: bool = False    # a refusal naming the attachment gone (no_such_attachment,
                                  # access_denied) is REVOKED after


class IGuard(enum.Enum):
    __hash__ = object.__hash__
    ALWAYS = "always"            # holds always: a row's last rule (no other guard held)
    MOVED = "moved"              # the map reply says the buffer moved since this attachment's last map
    CACHED = "cached"            # IOMMU entries from an earlier mapping are still programmed
    FENCED = "fenced"            # the map reply names a KERNEL fence
    WILL_MOVE = "will_move"      # the unmap reply says the buffer will move
    INVALIDATED = "invalidated"  # a move_notify invalidated the mapping
    STALE_REPLY = "stale_reply"  # the map reply names a generation announced moving while it was out
    LEAVING = "leaving"          # the importer is leaving
    REATTACHING = "reattaching"  # this attach is an attachment attached again after a revocation
    MAY_REATTACH = "may_reattach"  # revoked as no_such_attachment, granted, and not leaving: attach again
    NOT_SUPPORTED = "not_supported"  # the attach was refused: this importer cannot be revoked
    PIN_JOB = "pin_job"          # the job asks to pin its buffer first and unpin it after (--pin-ratio)
    PIN_HELD = "pin_held"        # this attachment holds a pin


class IStep(enum.Enum):
    __hash__ = object.__hash__
    # the attach life cycle
    ADOPT = "adopt"                      # the attach reply's id and token are the attachment's (attach event)
    READY_IF_ALL = "ready_if_all"        # nothing attaching any more: the device is ready (Ready)
    REATTACH_REFUSED = "reattach_refused"  # the buffer stays lost to this device
    FATAL = "fatal"                      # the exporter refused what the importer cannot run without
    SEND_DETACH = "send_detach"          # ask the exporter to detach the attachment
    LOG_DETACH = "log_detach"            # the detach event
    FORGET = "forget"                    # revoked: the id means nothing any more (revoked event)
    SEND_ATTACH = "send_attach"          # attach the buffer again, as a driver imports a dma-buf anew
    PIN_AT_ATTACH = "pin_at_attach"      # pin the buffer for good (dma_buf_pin: a pinned importer, once attached)
    ATTACH_REFUSED = "attach_refused"    # the buffer stays out of this device's reach (attach_refused event)
    # a job
    TAKE_JOB = "take_job"                # the attachment takes the job (its id, access, fresh flags)
    SEND_PIN = "send_pin"                # dma_buf_pin, sent with the map: the exporter serves it first
    SEND_MAP = "send_map"                # ask for a mapping (dma_buf_map_attachment)
    PROGRAM_IOMMU = "program_iommu"      # tear down any old entries, program the reply's placement
    REUSE_IOMMU = "reuse_iommu"          # keep the cached entries; the job uses what they point at
    TEARDOWN_IOMMU = "teardown_iommu"    # (if any)
    LOG_MAP = "log_map"                  # the map event (the history's record of the reply)
    WAIT_KERNEL_FENCE = "wait_kernel_fence"  # wait for the KERNEL fence the map reply names (FENCE_SIGNALED)
    START_DMA = "start_dma"              # start the job's DMA on the mapping, unfenced (DMA_DONE when it ends)
    START_FENCED_DMA = "start_fenced_dma"  # publish a fence in shared memory, signal it at the end
    SEND_UNMAP = "send_unmap"            # give the mapping back (dma_buf_unmap_attachment)
    SEND_UNPIN = "send_unpin"            # dma_buf_unpin of the pin this attachment holds (if it holds one)
    LOG_UNMAP = "log_unmap"              # the unmap event; the job's mapping is gone
    FINISH_JOB = "finish_job"            # the job is over, ok
    FAIL_JOB = "fail_job"                # job_failed, and the job is over
    ABORT_JOB = "abort_job"              # the job is over, not ok (a reset)
    STOP_DMA = "stop_dma"                # stop the running job's DMA now, before anything else (a synchronous revoke)
    # move_notify
    RETURN = "return"                    # the move_notify / invalidate_mappings callback returns (reply ok)
    REFUSE_NOTIFY = "refuse_notify"      # this strategy has no move_notify: reply bad_state
    INVALIDATE = "invalidate"            # mark the mapping invalid: nothing new may start on it
    NOTE_CROSSING = "note_crossing"      # our map is out: remember the generation announced moving
    ACK = "ack"                          # send ack now
    ACK_AFTER_DRAIN = "ack_after_drain"  # send ack when the running job ends
    SEND_OWED_ACKS = "send_owed_acks"    # send the acks ACK_AFTER_DRAIN held back
    # Known bugs, for mutants only (protocol/strategies/mutants.py): compile_spec refuses them in
    # the table of a strategy that does not declare the rule it breaks.
    START_EARLY_SIGNALED_DMA = "start_early_signaled_dma"  # the job's fence signals at submission
    START_HELD_FENCE_DMA = "start_held_fence_dma"  # the job's fence does not signal when its DMA ends
    HOLD_FENCE = "hold_fence"                      # the job is over: keep its fence, unsignaled
    BLOCK_HELD_FENCE = "block_held_fence"          # the held fence now waits for the map just sent (fence_blocked)
    SIGNAL_HELD_FENCE = "signal_held_fence"        # the map was answered: signal the held fence (SignalFence)
    DROP_HELD_FENCE = "drop_held_fence"            # starting over: the held fence waits for no map any more
                                                   # (fence_unblocked), and signals: the device has stopped


MUTANT_ISTEPS = frozenset({IStep.START_EARLY_SIGNALED_DMA, IStep.START_HELD_FENCE_DMA, IStep.HOLD_FENCE,
                           IStep.BLOCK_HELD_FENCE, IStep.SIGNAL_HELD_FENCE, IStep.DROP_HELD_FENCE})


# A reply, by the op of the request it answers. The other ops are the session's (hello, bye) or,
# refused, only logged (REPLY_LOGGED: `<op>_refused`).
REPLIES: Mapping[str, ReplyRoute] = {
    "attach": ReplyRoute(AttachReply, AttEvent.ATTACH_OK, AttEvent.ATTACH_FAILED),
    "detach": ReplyRoute(None, AttEvent.DETACH_DONE, AttEvent.DETACH_DONE),
    "map": ReplyRoute(MapReply, AttEvent.MAP_OK, AttEvent.MAP_FAILED, refusal_as_reason=True, then_revoked=True),
    "unmap": ReplyRoute(UnmapReply, AttEvent.UNMAP_OK, AttEvent.UNMAP_FAILED, then_revoked=True),
}
REPLY_LOGGED = ("ack", "pin", "unpin")

ImporterTable = Mapping[tuple[Any, AttEvent], Any]

IGNORE = (Rule(IGuard.ALWAYS, SAME, ()),)

# What every strategy shares: the attach life cycle, and the job cycle map, DMA, unmap, with IOMMU
# entries torn down at unmap. A strategy replaces rows to keep entries, wait for fences or answer
# move_notify.
BASE_TABLE: dict[tuple[Any, AttEvent], Any] = {
    # attach
    (AttState.ATTACHING, AttEvent.ATTACH_OK): (
        Rule(IGuard.REATTACHING, AttState.IDLE, (IStep.ADOPT,)),
        Rule(IGuard.ALWAYS, AttState.IDLE, (IStep.ADOPT, IStep.READY_IF_ALL))),
    (AttState.ATTACHING, AttEvent.ATTACH_FAILED): (
        # A revoking exporter refuses an importer it cannot revoke: the device goes without the buffer.
        Rule(IGuard.NOT_SUPPORTED, AttState.REFUSED, (IStep.ATTACH_REFUSED, IStep.READY_IF_ALL)),
        Rule(IGuard.REATTACHING, AttState.REVOKED, (IStep.REATTACH_REFUSED,)),
        Rule(IGuard.ALWAYS, SAME, (IStep.FATAL,))),
    (ANY, AttEvent.ATTACH_OK): VIOLATION,
    (ANY, AttEvent.ATTACH_FAILED): VIOLATION,
    # a job
    (AttState.IDLE, AttEvent.JOB): (
        Rule(IGuard.LEAVING, VIOLATION), Rule(IGuard.ALWAYS, AttState.MAPPING, (IStep.TAKE_JOB, IStep.SEND_MAP))),
    (ANY, AttEvent.JOB): VIOLATION,
    (AttState.MAPPING, AttEvent.MAP_OK): (
        Rule(IGuard.ALWAYS, AttState.ACTIVE, (IStep.PROGRAM_IOMMU, IStep.LOG_MAP, IStep.START_DMA)),),
    (ANY, AttEvent.MAP_OK): VIOLATION,
    (AttState.MAPPING, AttEvent.MAP_FAILED): (Rule(IGuard.ALWAYS, AttState.IDLE, (IStep.FAIL_JOB,)),),
    (ANY, AttEvent.MAP_FAILED): VIOLATION,
    (ANY, AttEvent.FENCE_SIGNALED): IGNORE,   # the job it was for is over (revoked, reset)
    (AttState.ACTIVE, AttEvent.DMA_DONE): (Rule(IGuard.ALWAYS, AttState.UNMAPPING, (IStep.SEND_UNMAP,)),),
    (ANY, AttEvent.DMA_DONE): VIOLATION,
    (AttState.UNMAPPING, AttEvent.UNMAP_OK): (
        Rule(IGuard.ALWAYS, AttState.IDLE, (IStep.TEARDOWN_IOMMU, IStep.FINISH_JOB, IStep.LOG_UNMAP)),),
    (AttState.UNMAPPING, AttEvent.UNMAP_FAILED): (
        Rule(IGuard.ALWAYS, AttState.IDLE, (IStep.TEARDOWN_IOMMU, IStep.FINISH_JOB, IStep.LOG_UNMAP)),),
    (ANY, AttEvent.UNMAP_OK): VIOLATION,
    (ANY, AttEvent.UNMAP_FAILED): VIOLATION,
    (ANY, AttEvent.MOVE_NOTIFY): (Rule(IGuard.ALWAYS, SAME, (IStep.REFUSE_NOTIFY,)),),
    (ANY, AttEvent.INVALIDATE_MAPPINGS): (Rule(IGuard.ALWAYS, SAME, (IStep.REFUSE_NOTIFY,)),),
    # revocation, leaving, starting over
    (ANY, AttEvent.REVOKED): (
        Rule(IGuard.MAY_REATTACH, AttState.ATTACHING, (IStep.TEARDOWN_IOMMU, IStep.FORGET, IStep.SEND_ATTACH)),
        Rule(IGuard.ALWAYS, AttState.REVOKED, (IStep.TEARDOWN_IOMMU, IStep.FORGET))),
    (AttState.IDLE, AttEvent.LEAVE): (
        Rule(IGuard.ALWAYS, AttState.DETACHING, (IStep.TEARDOWN_IOMMU, IStep.SEND_DETACH)),),
    (AttState.CACHED, AttEvent.LEAVE): (
        Rule(IGuard.ALWAYS, AttState.DETACHING, (IStep.TEARDOWN_IOMMU, IStep.SEND_DETACH)),),
    (ANY, AttEvent.LEAVE): IGNORE,            # busy (it detaches when its job is over), or done
    (AttState.DETACHING, AttEvent.DETACH_DONE): (Rule(IGuard.ALWAYS, AttState.DETACHED, (IStep.LOG_DETACH,)),),
    (ANY, AttEvent.DETACH_DONE): VIOLATION,
    (ANY, AttEvent.RESET): (Rule(IGuard.ALWAYS, AttState.DETACHED, (IStep.TEARDOWN_IOMMU, IStep.ABORT_JOB)),),
}

# Rows of the importers that keep IOMMU entries across unmap (revalidate, unmap-hint): a job may
# start from CACHED, and a refused map leaves the kept entries where they were.
KEEP_ENTRIES_ROWS: dict[tuple[Any, AttEvent], Any] = {
    (AttState.CACHED, AttEvent.JOB): (
        Rule(IGuard.LEAVING, VIOLATION), Rule(IGuard.ALWAYS, AttState.MAPPING, (IStep.TAKE_JOB, IStep.SEND_MAP))),
    (AttState.MAPPING, AttEvent.MAP_FAILED): (
        Rule(IGuard.CACHED, AttState.CACHED, (IStep.FAIL_JOB,)),
        Rule(IGuard.ALWAYS, AttState.IDLE, (IStep.FAIL_JOB,)),
    ),
}


# A pinned-revocable importer pins each buffer as soon as it is attached (again). A strategy whose
# importer can be revoked adds its synchronous-revoke rows in its ImporterSpec.kinds.
KIND_ROWS: dict[str, dict[tuple[Any, AttEvent], Any]] = {
    "pinned-revocable": {
        (AttState.ATTACHING, AttEvent.ATTACH_OK): (
            Rule(IGuard.REATTACHING, AttState.IDLE, (IStep.ADOPT, IStep.PIN_AT_ATTACH)),
            Rule(IGuard.ALWAYS, AttState.IDLE, (IStep.ADOPT, IStep.PIN_AT_ATTACH, IStep.READY_IF_ALL))),
    },
}


@dataclass(frozen=True)
class ImporterSpec:
    """A strategy's importer half: its table (a dynamic importer's), and per importer kind the
    rows that replace the table's for that kind (merged over KIND_ROWS). `breaks`: the rule a
    mutant breaks on purpose; only then may the table name a step of MUTANT_ISTEPS."""

    strategy: str
    table: ImporterTable
    kinds: Mapping[str, ImporterTable] = field(default_factory=dict)
    breaks: str = ""


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
    fence_seq: int = 0
    reused: bool = False
    notified_gen: int = 0    # highest generation announced moving while this job's map was out
    token: str = ""          # the attachment token from the attach reply
    reattaching: bool = False  # attached again after the exporter revoked it
    pinned: bool = False     # a pin was sent and not unpinned since
    map_id: int = 0          # the last map request sent
    held: tuple[int, str, int] | None = None  # (seq, usage, job) of a fence held unsignaled (a mutant's)
    blocked: bool = False    # the held fence waits for the map `map_id` (fence_blocked said so)


HEARTBEAT_TIMER = ("heartbeat",)
HEARTBEATS_PER_LEASE = 4


class Importer:
    """One importer's protocol state. Not thread-safe: the shell calls it from its one loop."""

    def __init__(self, spec: ImporterSpec, name: str, pid: int, first_id: int = 1, *,
                 join_token: str = "", export_tokens: Mapping[int, str] | None = None,
                 lease_s: float | None = None, heartbeat_first_id: int | None = None,
                 kind: str = "dynamic") -> None:
        """join_token: this name's join token; export_tokens: buffer -> export token, the buffers
        this importer was granted (it attaches those, and only those). lease_s: keep the lease
        and send heartbeats (None: no lease, as in tests that drive the half by hand). kind: one
        of IMPORTER_KINDS (see the rules at the top)."""
        if kind not in IMPORTER_KINDS:
            raise ValueError(f"importer kind must be one of {', '.join(IMPORTER_KINDS)}, got {kind!r}")
        self.spec = spec
        self.kind = kind
        self.table = compile_spec(spec, kind)
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
        self._trigger: dict[str, str] = {}   # while a row runs: what fired it (machine.trigger)
        self._posted: list[_Att] = []               # attachments offered LEAVE after their transition
        self.lease_s = lease_s
        self.lease = ImporterLease(int(lease_s * 1e9)) if lease_s is not None else None
        self._hb_first = heartbeat_first_id if heartbeat_first_id is not None else first_id + (1 << 32)
        self._next_hb = self._hb_first
        self._last_tick: int | None = None

    # ------------------------------------------------------------------ entry points

    def start(self, now: int) -> list[Action]:
        """Say hello (and start the heartbeat timer). Requires: called once, first."""
        self._hello(now)
        if self.lease is not None:
            self._last_tick = now
            self._out.append(StartTimer(HEARTBEAT_TIMER, self.lease_s / HEARTBEATS_PER_LEASE))  # type: ignore[operator]
        return self._take(now)

    def reset(self, now: int, reason: str) -> list[Action]:
        """Start over: every job ends failed, every IOMMU entry goes, hello again.
        Requires the device's DMA stopped. Not while leaving: a leaving importer that lost its
        lease has nothing left to give back, so it has left."""
        self._reset(now, reason)
        return self._take(now)

    def job(self, job: int, buffer: int, access: str, now: int, pin: bool = False) -> list[Action]:
        """Start DMA job `job` on `buffer` (`pin`: pin the buffer first, unpin it after, where the
        table says how). Requires the attachment idle (see idle_buffers())."""
        att = self._atts.get(buffer)
        if att is None:
            raise TransitionError(self.spec.strategy, f"{self.name} buffer {buffer}", "unattached", AttEvent.JOB)
        self._dispatch(att, AttEvent.JOB, now, job=job, access=access, pin=pin)
        return self._take(now)

    def dma_done(self, job: int, now: int, fence: int = 0) -> list[Action]:
        """The device finished job `job`; `fence`: the seqno of the fence it published (0: none)."""
        buffer = self._jobs.get(job)
        if buffer is not None:
            self._dispatch(self._atts[buffer], AttEvent.DMA_DONE, now, fence=fence)
        return self._take(now)

    def kernel_fence_signaled(self, attachment: int, now: int) -> list[Action]:
        att = self._by_id.get(attachment)
        if att is not None:
            self._dispatch(att, AttEvent.FENCE_SIGNALED, now)
        return self._take(now)

    def handle_request(self, msg: Message, now: int) -> list[Action]:
        """A request from the exporter (move_notify, or invalidate_mappings). Errors become error
        replies."""
        if not isinstance(msg, (MoveNotify, InvalidateMappings)):
            self._reply(ErrorReply(id=msg.id, op=msg.OP, code=ErrorCode.BAD_STATE,
                                   message=f"importer {self.name} does not serve '{msg.OP}'"))
            return self._take(now)
        att = self._by_id.get(msg.attachment)
        if att is None or att.buffer != msg.buffer:
            self._reply(ErrorReply(id=msg.id, op=msg.OP, code=ErrorCode.NO_SUCH_ATTACHMENT,
                                   message=f"{msg.OP}: {self.name} has no attachment {msg.attachment} of buffer {msg.buffer}"))
            return self._take(now)
        event = AttEvent.MOVE_NOTIFY
        if isinstance(msg, InvalidateMappings):
            event = AttEvent.INVALIDATE_MAPPINGS
            self._emit("invalidate_mappings_received", id=msg.id, buffer=att.buffer, attachment=att.id,
                       **_op_of(msg), gen=msg.gen, state=att.state.value)
        else:
            self._emit("move_notify_received", id=msg.id, buffer=att.buffer, attachment=att.id,
                       move=msg.move, gen=msg.gen, state=att.state.value)
        try:
            self._dispatch(att, event, now, notify=msg)
        except TransitionError as err:
            self._reply(ErrorReply(id=msg.id, op=msg.OP, code=ErrorCode.BAD_STATE, message=str(err)))
        return self._take(now)

    def handle_reply(self, reply: Message, now: int) -> list[Action]:
        """The exporter's answer to one of our requests (or heartbeats), matched by id."""
        if self._hb_first <= reply.id < self._next_hb:
            if self.lease is not None:  # a heartbeat's answer: only a member's ok renews the lease
                self.lease.answered(reply.id, now, grant=not isinstance(reply, ErrorReply))
            return self._take(now)
        forgotten = isinstance(reply, ErrorReply) and reply.code == ErrorCode.NO_SUCH_IMPORTER
        if self.lease is not None:
            self.lease.answered(reply.id, now, grant=not forgotten)
        pending = self._pending.pop(reply.id, None)
        if pending is None:
            self._emit("stray_reply", id=reply.id, op=getattr(reply, "op", reply.OP))
            return self._take(now)
        op, buffer, sent = pending
        latency = now - sent
        if forgotten and op != "hello":
            # The exporter declared us lost (our lease ran out while we could not tell): whatever
            # we held is gone. Start over rather than act on handles that no longer exist.
            return self.reset(now, f"exporter answered {op} with no_such_importer")
        if op == "hello":
            self._on_hello_reply(reply, now)
        elif op == "bye":
            self._left = True
            self._out.append(Left())
        elif op in REPLY_LOGGED:
            if isinstance(reply, ErrorReply):
                self._emit(f"{op}_refused", buffer=buffer, code=reply.code, message=reply.message)
        else:
            route, att = REPLIES[op], self._atts[buffer]  # type: ignore[index]
            if route.accepted_by is None or isinstance(reply, route.accepted_by):
                self._dispatch(att, route.accepted, now, reply=reply, latency=latency, request_id=reply.id)
            elif route.refusal_as_reason:
                code = reply.code if isinstance(reply, ErrorReply) else "bad_reply"
                message = reply.message if isinstance(reply, ErrorReply) else _describe(reply)
                self._dispatch(att, route.refused, now, reason=f"{op} refused: {code}: {message}")
            else:
                self._dispatch(att, route.refused, now, reply=reply, latency=latency, request_id=reply.id)
            if route.then_revoked:
                self._if_revoked(att, reply, now)
        return self._take(now)

    def shutdown(self, now: int) -> list[Action]:
        """Leave: detach every attachment as soon as its job is over, then say bye.
        Requires the workload to have stopped giving jobs."""
        self._leaving = True
        for att in list(self._atts.values()):
            self._dispatch(att, AttEvent.LEAVE, now)
        return self._take(now)

    def sent(self, msg_id: int, now: int) -> None:
        """The shell transmitted request `msg_id` (first time or a retry): the lease counts from
        its first transmission."""
        if self.lease is not None:
            self.lease.sent(msg_id, now)

    def may_access(self, now: int) -> bool:
        """May the device touch memory now? Not once the lease has run out (then call
        lease_expired)."""
        return self.lease is None or not self.lease.expired(now)

    def lease_expired(self, now: int) -> list[Action]:
        """The lease ran out: stop the device (LeaseExpired), then start over (reset)."""
        self._lease_expired(now)
        return self._take(now)

    def timer_fired(self, key: Hashable, now: int) -> list[Action]:
        """A timer this half started has fired: the heartbeat (see the rules at the top)."""
        if key != HEARTBEAT_TIMER or self.lease is None:
            raise ValueError(f"timer {key!r} was not started by the importer half")
        lease, half = self.lease, self.lease.lease_ns // 2
        if self._last_tick is not None and now - self._last_tick > half:
            lease.woke(now)
            self._emit("woke", late_ns=now - self._last_tick)
        self._last_tick = now
        if lease.exporter_lost(now):
            self._out.append(ExporterLost(lease.exporter_silent_ns(now), self.lease_s))  # type: ignore[arg-type]
            return self._take(now)
        if lease.expired(now):
            self._lease_expired(now)
        if self.slot and not self._left:  # a lease is only held by a member
            hb = Heartbeat(id=self._next_hb)
            self._next_hb += 1
            lease.sent(hb.id, now)
            self._out.append(Send(b"", hb, reliable=False))
        self._out.append(StartTimer(HEARTBEAT_TIMER, self.lease_s / HEARTBEATS_PER_LEASE))  # type: ignore[operator]
        return self._take(now)

    def idle_buffers(self) -> list[int]:
        return [b for b, a in self._atts.items() if a.job is None and a.state in _TAKES_JOBS]

    @property
    def busy_jobs(self) -> int:
        return len(self._jobs)

    @property
    def has_left(self) -> bool:
        return self._left

    # ------------------------------------------------------------------ the session

    def _hello(self, now: int) -> None:
        self._request(Hello(id=self._new_id(), name=self.name, pid=self.pid, strategy=self.spec.strategy,
                            token=self.join_token), None, now)

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
            self._request(self._attach_request(info.buffer), info.buffer, now)
        if not granted:
            self._out.append(Ready())

    def _reset(self, now: int, reason: str) -> None:
        self._emit("rejoin", reason=reason, jobs=len(self._jobs),
                   attachments=sum(1 for a in self._atts.values() if a.id))
        for att in list(self._atts.values()):
            self._dispatch(att, AttEvent.RESET, now, reason=reason)
        self._posted.clear()
        self._atts.clear()
        self._by_id.clear()
        self._pending.clear()
        self._jobs.clear()
        self.slot = 0  # not a member until the new hello is answered
        if self._leaving:
            self._left = True
            self._out.append(Left())
        else:
            self._hello(now)

    def _lease_expired(self, now: int) -> None:
        if self.lease is not None:
            granted = self.lease.granted_send
            self._out.append(LeaseExpired(None if granted is None else now - granted))
            self.lease.revoke()
        self._reset(now, "lease expired")

    def _if_revoked(self, att: _Att, reply: Message, now: int) -> None:
        if isinstance(reply, ErrorReply) and reply.code in (ErrorCode.NO_SUCH_ATTACHMENT, ErrorCode.ACCESS_DENIED):
            self._dispatch(att, AttEvent.REVOKED, now, code=reply.code)

    def _may_bye(self, now: int) -> None:
        if self._leaving and not self._left \
                and all(a.state in _GONE for a in self._atts.values()) \
                and not any(op == "bye" for op, _, _ in self._pending.values()):
            self._request(Bye(id=self._new_id()), None, now)

    # ------------------------------------------------------------------ the table interpreter

    def _dispatch(self, att: _Att, event: AttEvent, now: int, **ctx: Any) -> None:
        rule = choose(self.table, att.state, event, lambda g: IGUARDS[g](self, att, ctx),
                      self.spec.strategy, f"{self.name} attachment {att.id} (buffer {att.buffer})")
        outer, self._trigger = self._trigger, machine.trigger(event, {})
        try:
            for step in rule.do:
                ISTEPS[step](self, att, now, ctx)
        finally:
            self._trigger = outer
        if rule.then is not SAME:
            att.state = rule.then
        if self._leaving and event is not AttEvent.LEAVE and event is not AttEvent.RESET:
            self._posted.append(att)

    def _run_posted(self, now: int) -> None:
        while self._posted:
            att = self._posted.pop(0)
            if self._atts.get(att.buffer) is att:
                self._dispatch(att, AttEvent.LEAVE, now)

    # ------------------------------------------------------------------ guards

    def _g_may_reattach(self, att: _Att, ctx: dict[str, Any]) -> bool:
        return ctx.get("code") == ErrorCode.NO_SUCH_ATTACHMENT and not self._leaving and att.buffer in self.export_tokens

    def _g_stale_reply(self, att: _Att, ctx: dict[str, Any]) -> bool:
        reply = ctx.get("reply")
        return isinstance(reply, MapReply) and reply.placement.gen <= att.notified_gen

    # ------------------------------------------------------------------ steps: the attach life cycle

    def _adopt(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        reply = ctx["reply"]
        att.id, att.token = reply.attachment, reply.token
        self._by_id[att.id] = att
        self._emit("attach", id=reply.id, buffer=att.buffer, attachment=att.id, latency_ns=ctx["latency"],
                   **({"again": True} if att.reattaching else {}))

    def _ready_if_all(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        if all(a is att or a.state is not AttState.ATTACHING for a in self._atts.values()):
            self._out.append(Ready())

    def _reattach_refused(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        self._emit("reattach_refused", buffer=att.buffer, reason=_describe(ctx["reply"]))

    def _fatal(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        raise _Fatal(f"the exporter refused to attach buffer {att.buffer}: {_describe(ctx['reply'])}")

    def _send_detach(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        self._request(Detach(id=self._new_id(), attachment=att.id, token=att.token), att.buffer, now)

    def _log_detach(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        reply = ctx["reply"]
        ok = not isinstance(reply, ErrorReply)
        self._emit("detach", id=reply.id, buffer=att.buffer, attachment=att.id, latency_ns=ctx["latency"],
                   ok=ok, **({} if ok else {"code": reply.code}))

    def _forget(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        self._by_id.pop(att.id, None)
        att.pinned = False  # the exporter dropped its pins with it
        self._emit("revoked", buffer=att.buffer, attachment=att.id, code=ctx["code"])

    def _send_attach(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        att.reattaching = True
        self._request(self._attach_request(att.buffer), att.buffer, now)

    def _attach_request(self, buffer: int) -> Attach:
        """dma_buf_attach (static) or dma_buf_dynamic_attach with invalidate_mappings (the others)."""
        return Attach(id=self._new_id(), buffer=buffer, token=self.export_tokens[buffer],
                      revocable=self.kind != "static")

    def _pin_at_attach(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        # For good: not the pin of a job (att.pinned, which the job's end unpins).
        self._request(Pin(id=self._new_id(), attachment=att.id, token=att.token), att.buffer, now)

    def _attach_refused(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        self._emit("attach_refused", buffer=att.buffer, reason=_describe(ctx["reply"]))

    # ------------------------------------------------------------------ steps: a job

    def _take_job(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        att.job, att.access = ctx["job"], ctx["access"]
        att.invalidated = att.reused = False
        att.notified_gen = 0
        self._jobs[att.job] = att.buffer  # type: ignore[index]

    def _send_map(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        att.map_id = self._new_id()
        self._request(Map(id=att.map_id, attachment=att.id, token=att.token), att.buffer, now)

    def _send_pin(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        # Not waited for: requests on a connection are served in order, so the exporter has
        # pinned the buffer before it sees the map that follows.
        att.pinned = True
        self._request(Pin(id=self._new_id(), attachment=att.id, token=att.token), att.buffer, now)

    def _send_unpin(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        if att.pinned:
            att.pinned = False
            self._request(Unpin(id=self._new_id(), attachment=att.id, token=att.token), att.buffer, now)

    def _program_iommu(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        placement = ctx["reply"].placement
        if att.iommu is not None:
            self._teardown(att)
        att.iommu = att.mapping = placement
        att.reused = False
        self._out.append(ProgramIommu(att.id, att.buffer, placement))

    def _reuse_iommu(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        # Trust the entries programmed before: the device keeps using what they point at.
        att.mapping = att.iommu
        att.reused = True

    def _teardown_iommu(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        if att.iommu is not None:
            self._teardown(att)

    def _log_map(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        reply = ctx["reply"]
        p = att.mapping or reply.placement  # no mapping: refused as stale
        self._emit("map", id=ctx["request_id"], buffer=att.buffer, attachment=att.id,
                   heap=p.heap, offset=p.offset, size=p.size, gen=p.gen,
                   latency_ns=ctx["latency"], reused=att.reused, moved=reply.moved)

    def _wait_kernel_fence(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        att.fence_seq = ctx["reply"].fence
        self._out.append(WaitKernelFence(att.id, att.buffer, att.fence_seq))

    def _start_dma(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        self._out.append(StartDma(att.job, att.buffer, att.id, att.access, att.mapping, False))  # type: ignore[arg-type]

    def _start_fenced_dma(self, att: _Att, now: int, ctx: dict[str, Any], signal: str = "end") -> None:
        self._out.append(StartDma(att.job, att.buffer, att.id, att.access, att.mapping, True, signal))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ steps: the mutants' held fences

    def _hold_fence(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        seq = ctx.get("fence") or 0
        if seq and (att.held is None or seq > att.held[0]):
            att.held = (seq, usage_for_access(att.access).name, att.job)  # type: ignore[assignment]

    def _block_held_fence(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        if att.held is not None:
            seq, usage, job = att.held
            att.blocked = True
            self._emit("fence_blocked", buffer=att.buffer, seq=seq, usage=usage, job=job,
                       waiting_for={"kind": "map", "buffer": att.buffer, "id": att.map_id})

    def _signal_held_fence(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        if att.held is not None:
            seq, usage, job = att.held
            att.held, att.blocked = None, False
            self._out.append(SignalFence(self.slot, att.buffer, seq, usage, job))

    def _drop_held_fence(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        if att.held is not None and att.blocked:
            self._emit("fence_unblocked", buffer=att.buffer, seq=att.held[0])
        self._signal_held_fence(att, now, ctx)

    def _send_unmap(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        self._request(Unmap(id=self._new_id(), attachment=att.id, token=att.token), att.buffer, now)

    def _log_unmap(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        reply = ctx.get("reply")
        p = att.mapping or att.iommu
        self._emit("unmap", id=ctx["request_id"], buffer=att.buffer, attachment=att.id,
                   heap=p.heap if p else None, offset=p.offset if p else None,
                   size=p.size if p else None, gen=p.gen if p else None,
                   latency_ns=ctx["latency"], kept_iommu=att.iommu is not None,
                   # an unmap the exporter refused (revoked) counts as one that said: it will move
                   will_move=reply.will_move if isinstance(reply, UnmapReply) else True)
        att.mapping = None

    def _finish_job(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        self._end_job(att, ok=True, reason="")

    def _fail_job(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        reason = ctx.get("reason", "invalidated before the first access")
        self._emit("job_failed", job=att.job, buffer=att.buffer, reason=reason)
        self._end_job(att, ok=False, reason=reason)

    def _abort_job(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        if att.job is not None:
            self._end_job(att, ok=False, reason=ctx["reason"])

    def _stop_dma(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        # RDMA's pinned revocable import: the revoke callback has stopped the hardware's access
        # before it returns. The device stops the job now (StopDma); the job is over, not ok.
        if att.job is not None and att.state is AttState.ACTIVE:
            reason = f"stopped by the revoke callback ({ctx['notify'].OP})"
            self._out.append(StopDma(att.job, att.buffer, reason))
            self._end_job(att, ok=False, reason=reason)

    # ------------------------------------------------------------------ steps: move_notify

    def _return(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        notify = ctx["notify"]
        self._reply(OkReply(id=notify.id, op=notify.OP))
        if isinstance(notify, InvalidateMappings):
            # stopped: no DMA of the driver runs on the attachment any more (a job still running
            # goes on under its fence; a pinned-revocable importer stopped it first).
            stopped = att.job is None or att.state is not AttState.ACTIVE
            self._emit("invalidate_mappings_returned", id=notify.id, buffer=att.buffer, attachment=att.id,
                       **_op_of(notify), gen=notify.gen, stopped=stopped)
            self._out.append(Invalidated(att.id, att.buffer))

    def _refuse_notify(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        op = ctx["notify"].OP
        self._reply(ErrorReply(id=ctx["notify"].id, op=op, code=ErrorCode.BAD_STATE,
                               message=f"strategy {self.spec.strategy} has no {op}"))

    def _invalidate(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        if att.mapping is not None and not att.invalidated:
            att.invalidated = True
            self._emit("invalidate", buffer=att.buffer, attachment=att.id, gen=att.mapping.gen)

    def _note_crossing(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        att.notified_gen = max(att.notified_gen, ctx["notify"].gen)

    def _ack(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        self._send_ack(att, ctx["notify"].move, now)

    def _ack_after_drain(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        att.owed_acks.append(ctx["notify"].move)
        self._out.append(AckOwed(att.id, att.buffer, ctx["notify"].move))

    def _send_owed_acks(self, att: _Att, now: int, ctx: dict[str, Any]) -> None:
        owed, att.owed_acks = att.owed_acks, []
        for move in owed:
            self._send_ack(att, move, now)

    # ------------------------------------------------------------------ helpers

    def _teardown(self, att: _Att) -> None:
        self._out.append(TeardownIommu(att.id, att.buffer, att.iommu))  # type: ignore[arg-type]
        att.iommu = None

    def _send_ack(self, att: _Att, move: int, now: int) -> None:
        req = Ack(id=self._new_id(), attachment=att.id, move=move)
        self._request(req, att.buffer, now)
        self._out.append(Acked(att.id, att.buffer, move))
        self._emit("ack_sent", id=req.id, buffer=att.buffer, attachment=att.id, move=move)

    def _end_job(self, att: _Att, *, ok: bool, reason: str) -> None:
        job = att.job
        att.job, att.invalidated = None, False
        if job is not None:
            self._jobs.pop(job, None)
            self._out.append(JobFinished(job, att.buffer, ok, reason))

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
        # While a row runs, its events record what fired it (protocol/machine.py's trigger).
        self._out.append(Emit(event, {**fields, **self._trigger} if self._trigger else fields))

    def _take(self, now: int) -> list[Action]:
        if self._leaving and not self._left:
            self._run_posted(now)
            self._may_bye(now)
        out, self._out = self._out, []
        return out


class _Fatal(Exception):
    """The exporter refused what the importer cannot run without (hello, attach)."""


ImporterFatal = _Fatal


_TAKES_JOBS = (AttState.IDLE, AttState.CACHED, AttState.MAPPED)   # a job may start here
_GONE = (AttState.DETACHED, AttState.REVOKED, AttState.REFUSED)      # nothing left to give back


def _op_of(msg: InvalidateMappings) -> dict[str, int]:
    """The operation an invalidate_mappings belongs to, as events name it."""
    return {"move": msg.move} if msg.move else {"revoke": msg.revoke}


def _describe(reply: Message) -> str:
    if isinstance(reply, ErrorReply):
        return f"{reply.code}: {reply.message}"
    return type(reply).__name__


IGuardFn = Callable[[Importer, _Att, dict[str, Any]], bool]
IStepFn = Callable[[Importer, _Att, int, dict[str, Any]], None]

IGUARDS: dict[IGuard, IGuardFn] = {
    IGuard.ALWAYS: lambda imp, att, ctx: True,
    IGuard.MOVED: lambda imp, att, ctx: bool(isinstance(ctx.get("reply"), MapReply) and ctx["reply"].moved),
    IGuard.CACHED: lambda imp, att, ctx: att.iommu is not None,
    IGuard.FENCED: lambda imp, att, ctx: bool(isinstance(ctx.get("reply"), MapReply) and ctx["reply"].fence),
    IGuard.WILL_MOVE: lambda imp, att, ctx: bool(isinstance(ctx.get("reply"), UnmapReply) and ctx["reply"].will_move),
    IGuard.INVALIDATED: lambda imp, att, ctx: att.invalidated,
    IGuard.STALE_REPLY: Importer._g_stale_reply,
    IGuard.LEAVING: lambda imp, att, ctx: imp._leaving,
    IGuard.REATTACHING: lambda imp, att, ctx: att.reattaching,
    IGuard.MAY_REATTACH: Importer._g_may_reattach,
    IGuard.NOT_SUPPORTED: lambda imp, att, ctx: (isinstance(ctx.get("reply"), ErrorReply)
                                                 and ctx["reply"].code == ErrorCode.NOT_SUPPORTED),
    IGuard.PIN_JOB: lambda imp, att, ctx: bool(ctx.get("pin")),
    IGuard.PIN_HELD: lambda imp, att, ctx: att.pinned,
}

ISTEPS: dict[IStep, IStepFn] = {
    IStep.ADOPT: Importer._adopt,
    IStep.READY_IF_ALL: Importer._ready_if_all,
    IStep.REATTACH_REFUSED: Importer._reattach_refused,
    IStep.FATAL: Importer._fatal,
    IStep.SEND_DETACH: Importer._send_detach,
    IStep.LOG_DETACH: Importer._log_detach,
    IStep.FORGET: Importer._forget,
    IStep.SEND_ATTACH: Importer._send_attach,
    IStep.PIN_AT_ATTACH: Importer._pin_at_attach,
    IStep.ATTACH_REFUSED: Importer._attach_refused,
    IStep.TAKE_JOB: Importer._take_job,
    IStep.SEND_MAP: Importer._send_map,
    IStep.SEND_PIN: Importer._send_pin,
    IStep.SEND_UNPIN: Importer._send_unpin,
    IStep.PROGRAM_IOMMU: Importer._program_iommu,
    IStep.REUSE_IOMMU: Importer._reuse_iommu,
    IStep.TEARDOWN_IOMMU: Importer._teardown_iommu,
    IStep.LOG_MAP: Importer._log_map,
    IStep.WAIT_KERNEL_FENCE: Importer._wait_kernel_fence,
    IStep.START_DMA: Importer._start_dma,
    IStep.START_FENCED_DMA: Importer._start_fenced_dma,
    IStep.SEND_UNMAP: Importer._send_unmap,
    IStep.LOG_UNMAP: Importer._log_unmap,
    IStep.FINISH_JOB: Importer._finish_job,
    IStep.FAIL_JOB: Importer._fail_job,
    IStep.ABORT_JOB: Importer._abort_job,
    IStep.STOP_DMA: Importer._stop_dma,
    IStep.RETURN: Importer._return,
    IStep.REFUSE_NOTIFY: Importer._refuse_notify,
    IStep.INVALIDATE: Importer._invalidate,
    IStep.NOTE_CROSSING: Importer._note_crossing,
    IStep.ACK: Importer._ack,
    IStep.ACK_AFTER_DRAIN: Importer._ack_after_drain,
    IStep.SEND_OWED_ACKS: Importer._send_owed_acks,
    IStep.START_EARLY_SIGNALED_DMA: lambda imp, att, now, ctx: imp._start_fenced_dma(att, now, ctx, "submit"),
    IStep.START_HELD_FENCE_DMA: lambda imp, att, now, ctx: imp._start_fenced_dma(att, now, ctx, "held"),
    IStep.HOLD_FENCE: Importer._hold_fence,
    IStep.BLOCK_HELD_FENCE: Importer._block_held_fence,
    IStep.SIGNAL_HELD_FENCE: Importer._signal_held_fence,
    IStep.DROP_HELD_FENCE: Importer._drop_held_fence,
}

VOCABULARY = machine.Vocabulary(
    half="importer", states=AttState, events=AttEvent, guards=IGuard, steps=IStep,
    initial=AttState.ATTACHING, always=IGuard.ALWAYS, guard_impl=IGUARDS, step_impl=ISTEPS)

_RECORDS = {AttEvent.MAP_OK: IStep.LOG_MAP, AttEvent.UNMAP_OK: IStep.LOG_UNMAP, AttEvent.UNMAP_FAILED: IStep.LOG_UNMAP}


def compile_spec(spec: ImporterSpec, kind: str | None = None) -> dict[tuple[Any, AttEvent], Any]:
    """Check a strategy's importer table for every importer kind (protocol/machine.py's checks,
    and: every rule of a map or unmap reply records it, LOG_MAP / LOG_UNMAP, for the history);
    the table the interpreter reads for `kind` (None: check every kind, return dynamic's).
    TableError naming the strategy, the kind, the row and what is wrong."""
    if not isinstance(spec, ImporterSpec):
        raise TableError(getattr(spec, "strategy", "?"), "importer", None,
                         f"IMPORTER must be an ImporterSpec, got {type(spec).__name__}")
    stray = [k for k in spec.kinds if k not in IMPORTER_KINDS]
    if stray:
        raise TableError(spec.strategy, "importer", None, f"kinds names {stray[0]!r}, not an importer kind "
                                                         f"({', '.join(IMPORTER_KINDS)})")
    try:
        key = (spec.strategy, tuple(spec.table.items()), tuple((k, tuple(v.items())) for k, v in spec.kinds.items()),
               spec.breaks, kind)
    except TypeError:                       # a table this cannot read as a key: checked when built
        key = None

    def build() -> dict[tuple[Any, AttEvent], Any]:
        tables = {k: _compile_kind(spec, k) for k in ((kind,) if kind is not None else IMPORTER_KINDS)}
        return tables[kind if kind is not None else "dynamic"]
    return _COMPILED.get((id(spec), kind), key, build)


# Checked tables by content and kind (protocol/machine.py CompiledCache says why).
_COMPILED: machine.CompiledCache[dict[tuple[Any, AttEvent], Any]] = machine.CompiledCache()


def running(spec: ImporterSpec, kind: str = "dynamic") -> list[machine.RunningRow]:
    """The table an importer of `kind` runs (compile_spec's), each row with its origin: BASE
    (BASE_TABLE's, unchanged), STRATEGY, or KIND (the kind's rows: KIND_ROWS, spec.kinds)."""
    rows = machine.check(spec.strategy, VOCABULARY, _kind_table(spec, kind))
    origins = machine.origins(spec.table, BASE_TABLE)
    origins.update({key: machine.KIND for key in (*KIND_ROWS.get(kind, {}), *spec.kinds.get(kind, {}))})
    return machine.running(VOCABULARY, rows, origins)


def _kind_table(spec: ImporterSpec, kind: str) -> dict[tuple[Any, AttEvent], Any]:
    return {**spec.table, **KIND_ROWS.get(kind, {}), **spec.kinds.get(kind, {})}


def _compile_kind(spec: ImporterSpec, kind: str) -> dict[tuple[Any, AttEvent], Any]:
    table = _kind_table(spec, kind)
    half = "importer" if kind == "dynamic" else f"importer ({kind})"
    try:
        rows = machine.check(spec.strategy, VOCABULARY, table)
    except TableError as err:
        raise TableError(err.strategy, half, None if err.row is None else err.row, err.problem) from None
    if not spec.breaks:
        for (state, event), rules in rows.items():
            for i, rule in enumerate(() if rules is VIOLATION else rules, 1):
                bug = next((step for step in rule.do if step in MUTANT_ISTEPS), None)
                if bug is not None:
                    raise TableError(spec.strategy, half, f"({getattr(state, 'value', state)}, {event.value})",
                                     f"rule {i}: {bug.value} is a known bug, for mutants only (a strategy that "
                                     f"breaks a rule on purpose declares it: protocol/strategies/mutants.py)")
    for (state, event), rules in rows.items():
        need = _RECORDS.get(event)
        if need is None or rules is VIOLATION:
            continue
        for i, rule in enumerate(rules, 1):
            if rule.then is not VIOLATION and need not in rule.do:
                raise TableError(spec.strategy, half, f"({getattr(state, 'value', state)}, {event.value})",
                                 f"rule {i} does not record the reply: add IStep.{need.name} (the history needs it)")
    return machine.expand(VOCABULARY, rows)
