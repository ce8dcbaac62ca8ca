"""The vocabulary of the exporter's move machine: its states, events, guards and steps, and the
rows every strategy starts from.

Rules of this file:
- Each buffer has one move state. Everything a buffer does on a move event, in every state, is a
  row of its strategy's table: (state, event) -> rules (protocol/machine.py). The interpreter
  (protocol/exporter/moves.py) implements each guard and step below, and nothing else.
- Each step's comment says what it does and what it requires, the way dma-buf.c documents its
  entry points. The reservation lock is a fact of the table: a strategy that LOCKs holds the lock
  in every state it reaches until UNLOCK, and a map arriving in such a state is deferred unless
  the table says otherwise (moves.py completes the table at load, and refuses a row that would
  serve a map under the lock; SERVE_MAP asserts at run time that no move holds it).
- BASE_TABLE holds what is the same for every strategy: a placement is never handed out while its
  bytes are being copied; an unmap carries no hint; a buffer already moving takes no second move;
  stale timers and follow-ups change nothing; a copy ends in IDLE. A strategy adds its IDLE
  MOVE_WANTED row and the rows of every other state it enters. A static importer's attach pins
  the buffer; a pin and an unpin (dma_buf_pin, dma_buf_unpin) are events of every state. REVOKE
  and UNREVOKE are violations: only a strategy with revocation rows takes them.
- Whom a step that goes through the buffer's attachments addresses is declared here (AUDIENCE,
  in Who guards), not decided in its body; the words an event gives as a reason are declared
  here too (REFUSAL_REASONS): guards and steps are names in code, never history format.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping

from protocol.machine import ANY, SAME, VIOLATION, Named, Rule


class MoveState(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; Enum's hash(name) is a Python call per table lookup
    IDLE = "idle"              # resident, no move in progress
    QUEUED = "queued"          # a move waits for the last unmap (unmap-hint)
    NOTIFYING = "notifying"    # move_notify sent; waiting for acks or callback returns
    FENCE_WAIT = "fence_wait"  # waiting for the importers' fences (resv-fence)
    COPYING = "copying"        # bytes moving from the old range to the new
    # Linux 7.1 revocation (the revoke strategy)
    REVOKING = "revoking"                        # revoked under the lock; invalidate_mappings out, waiting for returns
    REVOKE_FENCE_WAIT = "revoke_fence_wait"      # revoked under the lock; waiting for fences (BOOKKEEP)
    UNMAP_WAIT = "unmap_wait"                    # revoked, lock released; waiting for every unmap (no bound in 7.1)
    REVOKED = "revoked"                          # revoked; maps refused (no_device) until un-revoke
    UNREVOKING = "unrevoking"                    # un-revoke under the lock; invalidate_mappings out
    UNREVOKE_FENCE_WAIT = "unrevoke_fence_wait"  # un-revoke under the lock; waiting for fences


class MoveEvent(enum.Enum):
    __hash__ = object.__hash__
    MOVE_WANTED = "move_wanted"          # the memory manager wants this buffer elsewhere (ctx: to, reason)
    MAP = "map"                          # an importer asks for the placement (ctx: peer, request, since)
    UNMAP = "unmap"                      # an importer gives its mapping back (ctx out: will_move)
    LAST_UNMAP = "last_unmap"            # follow-up: nobody has the buffer mapped any more
    ATTACH = "attach"                    # an importer attaches the buffer (ctx: attaching; out: refusal)
    PIN = "pin"                          # dma_buf_pin: an attachment pins the buffer (ctx: attachment)
    UNPIN = "unpin"                      # dma_buf_unpin: it drops a pin it holds (ctx: attachment)
    ACK = "ack"                          # an importer's ack of a move_notify (ctx: attachment, move)
    NOTIFY_RETURNED = "notify_returned"  # an importer's move_notify callback returned (ctx: attachment, move)
    ATTACHMENT_GONE = "attachment_gone"  # follow-up: an attachment was detached or revoked (ctx: attachment, move)
    NOTIFY_DONE = "notify_done"          # follow-up: every attachment awaited has answered
    NOTIFY_TIMEOUT = "notify_timeout"    # timer: the notify timer (its length: --ack-timeout unless declared)
    TIMER_FIRED = "timer_fired"          # timer: a timer the strategy declares fired; keyed by its name,
                                         # timer_fired("grace") (protocol/timers.py)
    FENCES_SIGNALED = "fences_signaled"  # the shell: every fence waited for has signaled
    FENCE_TIMEOUT = "fence_timeout"      # timer: --fence-timeout after the fence wait began
    RESET_TIMEOUT = "reset_timeout"      # timer: --reset-grace-ms after fences were forced (AWAIT_RESETS)
    COPY_DONE = "copy_done"              # the shell: the copy finished
    CANCEL = "cancel"                    # the run stops: moves not begun will not be
    REVOKE = "revoke"                    # the exporter takes the buffer away (VFIO: a device reset)
    UNREVOKE = "unrevoke"                # the exporter gives it back
    UNMAPS_DONE = "unmaps_done"          # follow-up: the unmap wait completed (its count reached zero)
    UNMAP_WAIT_TIMEOUT = "unmap_wait_timeout"  # timer: --unmap-wait-ms after the unmap wait began (started only
                                               # where the table has a rule for it: the v5/v6 drafts' bound)
    CLOSE = "close"                      # the exporting device is closed (VFIO: vfio_pci_core_close_device ->
                                         # vfio_pci_dma_buf_cleanup): the buffer revoked for good


class Guard(enum.Enum):
    __hash__ = object.__hash__
    ALWAYS = "always"                    # holds always: a row's last rule (no other guard held)
    PINNED = "pinned"                    # some attachment holds a pin
    MAPPED = "mapped"                    # some attachment has it mapped
    CONSERVATIVE_HINTS = "conservative"  # --hint-policy conservative
    MOVE_QUEUED = "move_queued"          # a move waits for the last unmap
    NO_ROOM = "no_room"                  # the destination heap has no room
    AWAITED = "awaited"                  # the move (or revocation) still waits for this attachment's answer
    REVOKED = "revoked"                  # the buffer is marked revoked
    STATIC = "static"                    # the attaching importer is not revocable (no invalidate_mappings)
    PIN_HELD = "pin_held"                # the attachment of an UNPIN holds a pin (else unpin is bad_state)


class Who(enum.Enum):
    """Guards on one attachment and its importer: whom a step that goes through the buffer's
    attachments (or the importers holding its fences) addresses. AUDIENCE says which step
    addresses whom: the ones for which every guard listed holds."""
    __hash__ = object.__hash__
    LIVE = "live"                        # its importer is alive (not lost, not gone)
    UNPINNED = "unpinned"                # the attachment holds no pin: a pinned buffer is not moved
    UNPINNED_OR_REVOKING = "unpinned_or_revoking"  # ... or the operation is a revocation (VFIO revokes
                                                   # pinned importers too)
    NEVER_PINNED = "never_pinned"        # the attachment never pinned (the unpin-stays-deaf bug)
    RESPONSIVE = "responsive"            # its importer is alive and was heard from within half a lease
    NOT_SILENT = "not_silent"            # its importer is responsive, or gone: one alive but silent may be
                                         # paused mid-DMA, and is left to its lease (session.py)


class Step(enum.Enum):
    __hash__ = object.__hash__
    # the move's life
    REFUSE = "refuse"                    # move_refused, reason: REFUSAL_REASONS of the rule's guard; forgets a
                                         # queued move
    QUEUE = "queue"                      # remember the move (to, reason); LAST_UNMAP begins it
    BEGIN = "begin"                      # allocate the destination, move_begin. Requires room (NO_ROOM first)
    CANCEL_QUEUED = "cancel_queued"      # move_cancelled: the queued move will not happen
    LOCK = "lock"                        # take the buffer's reservation lock (resv_lock)
    UNLOCK = "unlock"                    # release it (resv_unlock). Requires it held by this move
    # move_notify and its answers
    NOTIFY = "notify"                    # move_notify to the attachments of AUDIENCE
    AWAIT_ANSWERS = "await_answers"      # wait for an answer from each one notified (NOTIFY_DONE if none)
    ANSWERED = "answered"                # this attachment answered; NOTIFY_DONE once all have
    START_NOTIFY_TIMER = "start_notify_timer"    # NOTIFY_TIMEOUT after the notify timer's length (--ack-timeout)
    CANCEL_NOTIFY_TIMER = "cancel_notify_timer"  # NOTIFY_TIMEOUT will not come
    NOTIFY_TIMED_OUT = "notify_timed_out"        # ack_timeout: who did not answer, who is responsive
    GIVE_UP_NOTIFY = "give_up_notify"            # stop waiting for them
    REVOKE_SILENT = "revoke_silent"              # revoke the ones that did not answer, of AUDIENCE
    # the strategy's own timers (protocol/timers.py), by name: start_timer("grace"), cancel_timer("grace")
    START_TIMER = "start_timer"          # timer_fired(NAME) after its declared length, for this move or
                                         # revocation; a timer of that name already running is replaced
    CANCEL_TIMER = "cancel_timer"        # it will not fire (a no-op if it is not running)
    # fences
    WAIT_FENCES = "wait_fences"          # wait for every fence of the buffer (usage BOOKKEEP), bounded by --fence-timeout
    END_FENCE_WAIT = "end_fence_wait"    # every fence signaled: fence_wait_end, timer cancelled
    FORCE_COMPLETE = "force_complete"    # complete the unsignaled fences of the owners of AUDIENCE, revoke them
    AWAIT_RESETS = "await_resets"        # after FORCE_COMPLETE: the next WAIT_FENCES also waits for each forced
                                         # device to confirm its engine stopped, bounded by --reset-grace-ms
    REVOKE_UNCONFIRMED = "revoke_unconfirmed"    # the grace is over: lose every device that did not confirm
    PUBLISH_KERNEL_FENCE = "publish_kernel_fence"  # the move's KERNEL fence, named by later map replies
    SIGNAL_KERNEL_FENCE = "signal_kernel_fence"  # signal it: the new placement's bytes are all there
    # bytes
    COPY = "copy"                        # copy the bytes to the destination; COPY_DONE when finished
    SWITCH = "switch"                    # the buffer's placement becomes the destination
    FREE = "free"                        # release the old range for reuse. Requires the copy done
    END = "end"                          # move_end; the move is over
    # mappings
    SERVE_MAP = "serve_map"              # hand out the current placement. Requires the lock not held
    DEFER_MAP = "defer_map"              # hold the map until SERVE_DEFERRED_MAPS
    SERVE_DEFERRED_MAPS = "serve_deferred_maps"  # serve the held maps. Requires the lock released
    HINT_WILL_MOVE = "hint_will_move"    # the unmap reply says: this buffer will move
    HINT_STAY = "hint_stay"              # the unmap reply promises it will not
    PIN = "pin"                          # the attachment pins the buffer (a pin, or a static importer's attach)
    UNPIN = "unpin"                      # the attachment drops one of its pins
    REFUSE_UNPIN = "refuse_unpin"        # answer the unpin bad_state: the attachment holds no pin
    # Linux 7.1: invalidate_mappings and revocation (VFIO's vfio_pci_dma_buf_move)
    INVALIDATE_MAPPINGS = "invalidate_mappings"  # 7.1's move_notify, to the attachments of AUDIENCE
    BEGIN_REVOCATION = "begin_revocation"  # a new revocation (its id), before its lock is taken
    MARK_REVOKED = "mark_revoked"        # maps are refused from now on (the revoke event). Requires the lock
    MARK_UNREVOKED = "mark_unrevoked"    # the buffer is mappable again (unrevoke). Requires the lock
    BEGIN_UNREVOKE = "begin_unrevoke"    # the revocation's next part: un-revoke (its notifications start afresh)
    END_REVOCATION = "end_revocation"    # the revocation is over (after un-revoke)
    REFUSE_MAP_REVOKED = "refuse_map_revoked"    # answer the map no_device (ENODEV)
    REFUSE_ATTACH = "refuse_attach"      # answer the attach not_supported (EOPNOTSUPP: dma_buf_attach_revocable)
    PUT_UNMAP_REF = "put_unmap_ref"      # drop the buffer's own reference of its unmap wait (kref_put)
    AWAIT_UNMAPS = "await_unmaps"        # unmap_wait_begin; UNMAPS_DONE when the count is zero (wait_for_completion)
    WARN_UNMAPS = "warn_unmaps"          # unmap_wait_warning for every attachment still mapped (the v5/v6 WARN)
    END_UNMAP_WAIT = "end_unmap_wait"    # unmap_wait_end, timer cancelled; consumes the completion
    REARM_UNMAP_WAIT = "rearm_unmap_wait"  # kref_init and reinit_completion: the count back to the buffer's own
    QUEUE_REVOKE = "queue_revoke"        # a revocation waits for the operation holding the lock
    RUN_QUEUED_REVOKE = "run_queued_revoke"      # the operation is over: a queued revocation begins (follow-up)
    QUEUE_UNREVOKE = "queue_unrevoke"    # the un-revoke waits for the revocation's unmap wait
    RUN_QUEUED_UNREVOKE = "run_queued_unrevoke"  # the unmap wait is over: a queued un-revoke begins (follow-up)
    DROP_QUEUED_REVOKE = "drop_queued_revoke"    # an un-revoke before its revocation began: neither happens
    # Known bugs, for mutants only (protocol/strategies/mutants.py): compile_spec refuses them in
    # the table of a strategy that does not declare the rule it breaks.
    WAIT_WRITE_FENCES = "wait_write_fences"      # wait with usage WRITE: KERNEL and WRITE fences, not READ
    WAIT_KERNEL_FENCES = "wait_kernel_fences"    # wait with usage KERNEL: the move's own fences only
    NOTIFY_NEVER_PINNED = "notify_never_pinned"  # as NOTIFY, but an attachment that ever pinned stays deaf (AUDIENCE)
    SERVE_MAP_UNLOCKED = "serve_map_unlocked"    # hand out the placement without the reservation lock


MUTANT_STEPS = frozenset({Step.WAIT_WRITE_FENCES, Step.WAIT_KERNEL_FENCES, Step.NOTIFY_NEVER_PINNED,
                          Step.SERVE_MAP_UNLOCKED})

# Whom each step that goes through attachments one by one addresses (Who): every guard listed holds.
AUDIENCE: Mapping[Step, tuple[Who, ...]] = {
    Step.NOTIFY: (Who.LIVE, Who.UNPINNED),
    Step.NOTIFY_NEVER_PINNED: (Who.LIVE, Who.UNPINNED, Who.NEVER_PINNED),
    Step.INVALIDATE_MAPPINGS: (Who.LIVE, Who.UNPINNED_OR_REVOKING),
    # A notify timeout revokes only importers that are alive and ignoring us (session.py).
    Step.REVOKE_SILENT: (Who.RESPONSIVE,),
    # No fence is forced under a silent device, which could not see the reset.
    Step.FORCE_COMPLETE: (Who.NOT_SILENT,),
}

# The words events carry as a reason (history format, declared once): a guard or a step is a name
# in code, and renaming it changes no history. move_refused's reason is the word of the guard of
# the rule that refused (compile_spec refuses a REFUSE under a guard without one); move_queued's
# is QUEUED_REASON.
REFUSAL_REASONS: Mapping[Guard, str] = {
    Guard.PINNED: "pinned",
    Guard.MAPPED: "mapped",
    Guard.NO_ROOM: "no_space",
    Guard.REVOKED: "revoked",
}
QUEUED_REASON = "mapped"


# The timers behind the events a timer fires, as events' `timer` field names them (machine.trigger);
# TIMER_FIRED names its own (timer_fired("grace")).
TIMER_EVENTS: Mapping[MoveEvent, str] = {
    MoveEvent.NOTIFY_TIMEOUT: "notify", MoveEvent.FENCE_TIMEOUT: "fence", MoveEvent.RESET_TIMEOUT: "reset",
    MoveEvent.UNMAP_WAIT_TIMEOUT: "unmap-wait"}

# The steps and the event that take a timer's name (protocol/machine.py's Named members).
NAMED: Mapping[Any, str] = {Step.START_TIMER: "timer", Step.CANCEL_TIMER: "timer", MoveEvent.TIMER_FIRED: "timer"}


def start_timer(name: str) -> Named:
    """The step that starts the strategy's timer `name` (declared in its ExporterSpec.timers)."""
    return Named(Step.START_TIMER, name)


def cancel_timer(name: str) -> Named:
    """The step that cancels it."""
    return Named(Step.CANCEL_TIMER, name)


def timer_fired(name: str) -> Named:
    """The event of its firing, as a row's key: (state, timer_fired("grace"))."""
    return Named(MoveEvent.TIMER_FIRED, name)


ExporterTable = Mapping[tuple[Any, MoveEvent], Any]

IGNORE = (Rule(Guard.ALWAYS, SAME, ()),)

BASE_TABLE: dict[tuple[Any, MoveEvent], Any] = {
    # Resident: serve maps. Its MOVE_WANTED row is the strategy's.
    (MoveState.IDLE, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.SERVE_MAP,)),),
    # A buffer already moving (or waiting to) takes no second move.
    (MoveState.QUEUED, MoveEvent.MOVE_WANTED): IGNORE,
    (MoveState.NOTIFYING, MoveEvent.MOVE_WANTED): IGNORE,
    (MoveState.FENCE_WAIT, MoveEvent.MOVE_WANTED): IGNORE,
    (MoveState.COPYING, MoveEvent.MOVE_WANTED): IGNORE,
    # The exporter never hands out a placement while its bytes are being copied.
    (MoveState.COPYING, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.DEFER_MAP,)),),
    (MoveState.COPYING, MoveEvent.COPY_DONE): (
        Rule(Guard.ALWAYS, MoveState.IDLE, (Step.SWITCH, Step.FREE, Step.END, Step.SERVE_DEFERRED_MAPS)),),
    (ANY, MoveEvent.COPY_DONE): VIOLATION,
    # An attachment that goes away while the move waits for its answer has answered.
    (MoveState.NOTIFYING, MoveEvent.ATTACHMENT_GONE): (
        Rule(Guard.AWAITED, SAME, (Step.ANSWERED,)), Rule(Guard.ALWAYS, SAME, ())),
    # Everywhere else these change nothing: an unmap carries no hint, an attach no pin, an answer
    # nobody waits for is late, a timer or follow-up that lost its point is stale.
    (ANY, MoveEvent.UNMAP): IGNORE,
    (ANY, MoveEvent.LAST_UNMAP): IGNORE,
    # A static importer (not revocable: no invalidate_mappings) gets the buffer pinned at attach.
    (ANY, MoveEvent.ATTACH): (Rule(Guard.STATIC, SAME, (Step.PIN,)), Rule(Guard.ALWAYS, SAME, ())),
    # dma_buf_pin and dma_buf_unpin, in every state: a pinned buffer is not moved (the strategies'
    # MOVE_WANTED rows refuse on PINNED) and its pinning attachments get no move_notify (AUDIENCE).
    # A pin taken while a move runs does not stop it: the kernel's pin waits for the lock instead.
    (ANY, MoveEvent.PIN): (Rule(Guard.ALWAYS, SAME, (Step.PIN,)),),
    (ANY, MoveEvent.UNPIN): (Rule(Guard.PIN_HELD, SAME, (Step.UNPIN,)), Rule(Guard.ALWAYS, SAME, (Step.REFUSE_UNPIN,))),
    (ANY, MoveEvent.ACK): IGNORE,
    (ANY, MoveEvent.NOTIFY_RETURNED): IGNORE,
    (ANY, MoveEvent.ATTACHMENT_GONE): IGNORE,
    (ANY, MoveEvent.NOTIFY_DONE): IGNORE,
    (ANY, MoveEvent.NOTIFY_TIMEOUT): IGNORE,
    (ANY, MoveEvent.TIMER_FIRED): IGNORE,
    (ANY, MoveEvent.FENCES_SIGNALED): IGNORE,
    (ANY, MoveEvent.FENCE_TIMEOUT): IGNORE,
    (ANY, MoveEvent.RESET_TIMEOUT): IGNORE,
    (ANY, MoveEvent.CANCEL): IGNORE,
    # Revocation is the 7.1 strategies' (protocol/strategies/revoke.py): a strategy without it
    # cannot be asked to revoke (deploy refuses the fault), and an unmap wait it never began is stale.
    (ANY, MoveEvent.REVOKE): VIOLATION,
    (ANY, MoveEvent.UNREVOKE): VIOLATION,
    (ANY, MoveEvent.CLOSE): VIOLATION,
    (ANY, MoveEvent.UNMAPS_DONE): IGNORE,
    (ANY, MoveEvent.UNMAP_WAIT_TIMEOUT): IGNORE,
}


@dataclass(frozen=True)
class ExporterSpec:
    """A strategy's exporter half: its table. Checked and completed by moves.compile_spec.
    `breaks`: the rule a mutant breaks on purpose (protocol/strategies/mutants.py); only then may
    the table name a step of MUTANT_STEPS. `timers`: the strategy's own timers, name -> length
    (protocol/timers.py: "2 * dma_ms"); the notify timer is one, of length ack_timeout_ms unless
    declared here."""

    strategy: str
    table: ExporterTable
    breaks: str = ""
    timers: Mapping[str, str] = field(default_factory=dict)
