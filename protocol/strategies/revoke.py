"""revoke: Linux 7.1. resv-fence under the kernel's 7.1 names, plus revocation by the exporter.

    "Upon return importers may continue to access the DMA-buf memory. The caller must do two
     additional waits to ensure that the memory is no longer being accessed: 1) Until
     dma_resv_wait_timeout() retires fences the importer is allowed to fully access the memory.
     2) Until the importer calls unmap it is allowed to speculatively read-and-discard the memory.
     It must not write to the memory." (drivers/dma-buf/dma-buf.c, kernel-doc of
     dma_buf_invalidate_mappings(), as added by the dmabuf-revoke series merged for 7.1 through
     drm-misc-next: "[PULL] drm-misc-next", dri-devel, 26 Feb 2026)

What 7.1 added: the rename of move_notify to invalidate_mappings, the two waits above,
dma_buf_attach_revocable() and pinned revocable importers. VFIO's revocation itself (revoked,
-ENODEV) is older: commit 5d74781ebc86 "vfio/pci: Add dma-buf export support for MMIO regions"
(6.19), which the series names in its Fixes: tags.

Rules:
- move_notify is invalidate_mappings (its 7.1 name: the op, the messages and the events). A move
  is resv-fence's: under the reservation lock, invalidate_mappings to every attachment not
  pinned, wait for every callback's return, wait for the fences (usage BOOKKEEP), copy, free.
- After a return an importer may access the memory until its fences retire; from then until it
  unmaps it may only read speculatively and discard, never write. A dynamic importer keeps its
  mapping across jobs and unmaps at once when it is invalidated idle, or when the running job
  ends; it may map again once the call returned (the map waits for the lock).
- Revocation (VFIO's vfio_pci_dma_buf_move(revoked=true), when PCI memory decoding is disabled,
  e.g. around an FLR; the `revoke` fault): take the lock; mark the buffer revoked (maps are
  refused `no_device`, ENODEV, from now on); invalidate every attachment, pinned ones included;
  wait for fences, usage BOOKKEEP; unlock; drop the buffer's own reference of its unmap wait
  (kref_put) and wait for every importer's unmap: as merged in 7.1, `wait_for_completion()`, no
  bound and no warning. An importer that never unmaps holds the revocation for as long as it
  does; the checker reports the wait still open at the end (revoke.not_completed; excused from `stuck`, as the importer broke the rule). The posted v5/v6
  drafts waited 1 s, warned "Timed out waiting for DMABUF unmap, importer has a broken
  invalidate_mapping()" and went on with the mapping live; Christian König NAKed that on v5 (30
  Jan 2026): "it is mandatory that you keep the mapping around indefinitely until the importer
  closes it". It is the mutant revoke+v6-unmap-timeout (--unmap-wait-ms is its bound).
- When every unmap is in, the wait is re-armed (kref_init, reinit_completion) at the end of the
  revoke branch: the code after the May 2026 fix "vfio/pci: fix dma-buf kref underflow after
  revoke". v7 as merged re-armed in un-revoke instead, before clearing `revoked`; that left a
  second drain of a revoked buffer nothing to wait for (revoke+cleanup-redrain).
- Un-revoke (the fault's end; queued behind an unmap wait still running): under the lock, the
  invalidate_mappings and fence wait VFIO does in both directions, then the buffer is marked
  mappable, unlocked, and maps held by the lock are served.
- Close (the `close` fault: the device fd closed, vfio_pci_core_close_device ->
  vfio_pci_dma_buf_cleanup): after the fix, cleanup revokes through the same path, which "is
  idempotent for dma-bufs already in the revoked state": a buffer not revoked gets a full
  revocation, a revoked one (or one being revoked) nothing more. A close during a move or an
  un-revoke waits for it, as a revocation does.
- A revocation that comes while a move holds the lock waits for the move; no move begins while
  the buffer is revoked ("revoked").
- dma_buf_attach_revocable: an importer that is not revocable (a static importer: no
  invalidate_mappings) is refused at attach with `not_supported` (EOPNOTSUPP).
- Importer kinds (protocol/importer.py): dynamic (above); pinned-revocable (RDMA's pinned
  revocable import, ff85a2ebacbd "RDMA/umem: Add pinned revocable dmabuf import interface",
  March 2026): pins each buffer, so it is never moved; our model's assumption (the commit does
  not say so) is that its revoke callback stops its DMA before it returns (a synchronous
  revoke); it does not take the revocation as permanent (the kernel-doc allows it to), so it
  maps again after un-revoke; static: refused.
Hazard: none for the data, by construction, with importers that keep the rules. One that does
not unmap (ignore-notify) holds the revocation until it does: the run reports the revocation not
completed, and who held it.
The series' history before merge had a race here (posted v5/v6 4/8, fixed in v7 4/8), kept as
the mutant revoke+kref-reinit; the merged code had a bug at device close, fixed for 7.1-rc in May
2026, kept as revoke+cleanup-redrain (mutants.py).
"""
from protocol.exporter import BASE_TABLE as EXPORTER_BASE, ExporterSpec, Guard, MoveEvent, MoveState, Step
from protocol.importer import BASE_TABLE as IMPORTER_BASE, AttEvent, AttState, IGuard, ImporterSpec, IStep
from protocol.machine import ANY, SAME, VIOLATION, Rule
from protocol.strategies import resv_fence

NAME = "revoke"
SUMMARY = "Linux 7.1: resv-fence as invalidate_mappings, and revocation (VFIO): maps refused, unmaps awaited"

_IGNORE = Rule(Guard.ALWAYS, SAME, ())
_ANSWER = (Rule(Guard.AWAITED, SAME, (Step.ANSWERED,)), _IGNORE)
# The notify steps of a move, a revocation and an un-revocation alike (mutants.py kref-reinit too).
NOTIFY_STEPS = (Step.INVALIDATE_MAPPINGS, Step.AWAIT_ANSWERS, Step.START_NOTIFY_TIMER)
# Under the lock of a revocation a map is refused while the buffer is marked revoked; otherwise it
# waits for the lock (the kernel's map takes the lock first, then looks at `revoked`).
_LOCKED_MAP = (Rule(Guard.REVOKED, SAME, (Step.REFUSE_MAP_REVOKED,)), Rule(Guard.ALWAYS, SAME, (Step.DEFER_MAP,)))
_REFUSE_MAP = (Rule(Guard.ALWAYS, SAME, (Step.REFUSE_MAP_REVOKED,)),)
_NO_MOVE = (Rule(Guard.REVOKED, SAME, (Step.REFUSE,)), _IGNORE)


def _fence_timeout_rows(fence_wait: MoveState) -> dict:
    """resv-fence's: past --fence-timeout force the fences of responsive importers, then wait
    again, for their devices to confirm the reset too (--reset-grace-ms, else they are lost)."""
    return {
        (fence_wait, MoveEvent.FENCE_TIMEOUT): (
            Rule(Guard.ALWAYS, SAME, (Step.FORCE_COMPLETE, Step.AWAIT_RESETS, Step.WAIT_FENCES)),),
        (fence_wait, MoveEvent.RESET_TIMEOUT): (Rule(Guard.ALWAYS, SAME, (Step.REVOKE_UNCONFIRMED, Step.WAIT_FENCES)),),
    }


def _invalidate_and_wait(notifying: MoveState, fence_wait: MoveState, done: Rule) -> dict:
    """The locked part of a revocation (or un-revocation): invalidate_mappings is out; wait for
    every callback's return, then for the fences (BOOKKEEP), then `done`. A callback that does not
    return in --ack-timeout-ms is left to the waits that follow (its DMA to the fence wait, its
    mapping to the unmap wait), not revoked: that would hide its mapping."""
    return {
        (notifying, MoveEvent.NOTIFY_RETURNED): _ANSWER,
        (notifying, MoveEvent.ATTACHMENT_GONE): _ANSWER,
        (notifying, MoveEvent.NOTIFY_DONE): (
            Rule(Guard.ALWAYS, fence_wait, (Step.CANCEL_NOTIFY_TIMER, Step.WAIT_FENCES)),),
        (notifying, MoveEvent.NOTIFY_TIMEOUT): (
            Rule(Guard.ALWAYS, fence_wait, (Step.NOTIFY_TIMED_OUT, Step.GIVE_UP_NOTIFY, Step.WAIT_FENCES)),),
        (fence_wait, MoveEvent.FENCES_SIGNALED): (done,),
        **_fence_timeout_rows(fence_wait),
    }


_MOVING = (MoveState.NOTIFYING, MoveState.FENCE_WAIT, MoveState.COPYING)
_REVOKED = (MoveState.REVOKING, MoveState.REVOKE_FENCE_WAIT, MoveState.UNMAP_WAIT, MoveState.REVOKED)
_UNREVOKING = (MoveState.UNREVOKING, MoveState.UNREVOKE_FENCE_WAIT)

EXPORTER = ExporterSpec(
    strategy=NAME,
    table={
        **EXPORTER_BASE,
        # dma_buf_attach_revocable: an importer without invalidate_mappings cannot be revoked.
        (ANY, MoveEvent.ATTACH): (Rule(Guard.STATIC, SAME, (Step.REFUSE_ATTACH,)), _IGNORE),
        # ---- a move: resv-fence's, named invalidate_mappings
        (MoveState.IDLE, MoveEvent.MOVE_WANTED): (
            Rule(Guard.PINNED, MoveState.IDLE, (Step.REFUSE,)),
            Rule(Guard.ALWAYS, MoveState.NOTIFYING, (Step.BEGIN, Step.LOCK, *NOTIFY_STEPS)),
        ),
        (MoveState.NOTIFYING, MoveEvent.NOTIFY_RETURNED): _ANSWER,
        (MoveState.NOTIFYING, MoveEvent.NOTIFY_DONE): (
            Rule(Guard.ALWAYS, MoveState.FENCE_WAIT, (Step.CANCEL_NOTIFY_TIMER, Step.WAIT_FENCES)),),
        (MoveState.NOTIFYING, MoveEvent.NOTIFY_TIMEOUT): (
            Rule(Guard.ALWAYS, SAME, (Step.NOTIFY_TIMED_OUT, Step.REVOKE_SILENT)),),
        (MoveState.FENCE_WAIT, MoveEvent.FENCES_SIGNALED): (
            Rule(Guard.ALWAYS, MoveState.COPYING, (Step.END_FENCE_WAIT, Step.PUBLISH_KERNEL_FENCE, Step.COPY)),),
        **_fence_timeout_rows(MoveState.FENCE_WAIT),
        (MoveState.COPYING, MoveEvent.COPY_DONE): (
            Rule(Guard.ALWAYS, MoveState.IDLE,
                 (Step.SIGNAL_KERNEL_FENCE, Step.SWITCH, Step.FREE, Step.END, Step.UNLOCK,
                  Step.SERVE_DEFERRED_MAPS, Step.RUN_QUEUED_REVOKE)),),
        # A revocation waits for the move that holds the lock; an un-revoke before it began
        # cancels it (neither happens).
        **{(state, MoveEvent.REVOKE): (Rule(Guard.ALWAYS, SAME, (Step.QUEUE_REVOKE,)),) for state in _MOVING},
        (ANY, MoveEvent.UNREVOKE): (Rule(Guard.ALWAYS, SAME, (Step.DROP_QUEUED_REVOKE,)),),
        # ---- revocation: lock, mark revoked, invalidate everyone, fences, unlock, unmaps
        (MoveState.IDLE, MoveEvent.REVOKE): (
            Rule(Guard.ALWAYS, MoveState.REVOKING,
                 (Step.BEGIN_REVOCATION, Step.LOCK, Step.MARK_REVOKED, *NOTIFY_STEPS)),),
        **_invalidate_and_wait(MoveState.REVOKING, MoveState.REVOKE_FENCE_WAIT, Rule(
            Guard.ALWAYS, MoveState.UNMAP_WAIT, (Step.END_FENCE_WAIT, Step.UNLOCK, Step.PUT_UNMAP_REF, Step.AWAIT_UNMAPS))),
        (MoveState.UNMAP_WAIT, MoveEvent.UNMAPS_DONE): (
            Rule(Guard.ALWAYS, MoveState.REVOKED,
                 (Step.END_UNMAP_WAIT, Step.REARM_UNMAP_WAIT, Step.RUN_QUEUED_UNREVOKE)),),
        **{(state, MoveEvent.REVOKE): (_IGNORE,) for state in _REVOKED},   # revoked already
        **{(state, MoveEvent.UNREVOKE): (Rule(Guard.ALWAYS, SAME, (Step.QUEUE_UNREVOKE,)),)
           for state in _REVOKED if state is not MoveState.REVOKED},
        # ---- un-revoke: VFIO invalidates and waits in both directions, then marks it mappable
        (MoveState.REVOKED, MoveEvent.UNREVOKE): (
            Rule(Guard.ALWAYS, MoveState.UNREVOKING, (Step.BEGIN_UNREVOKE, Step.LOCK, *NOTIFY_STEPS)),),
        **_invalidate_and_wait(MoveState.UNREVOKING, MoveState.UNREVOKE_FENCE_WAIT, Rule(
            Guard.ALWAYS, MoveState.IDLE, (Step.END_FENCE_WAIT, Step.MARK_UNREVOKED, Step.UNLOCK, Step.END_REVOCATION,
                                           Step.SERVE_DEFERRED_MAPS, Step.RUN_QUEUED_REVOKE))),
        **{(state, MoveEvent.REVOKE): (Rule(Guard.ALWAYS, SAME, (Step.QUEUE_REVOKE,)),) for state in _UNREVOKING},
        # ---- close (vfio_pci_dma_buf_cleanup, after the May 2026 fix: the revoke path, idempotent)
        (MoveState.IDLE, MoveEvent.CLOSE): (
            Rule(Guard.ALWAYS, MoveState.REVOKING,
                 (Step.BEGIN_REVOCATION, Step.LOCK, Step.MARK_REVOKED, *NOTIFY_STEPS)),),
        **{(state, MoveEvent.CLOSE): (Rule(Guard.ALWAYS, SAME, (Step.QUEUE_REVOKE,)),)
           for state in (*_MOVING, *_UNREVOKING)},
        **{(state, MoveEvent.CLOSE): (_IGNORE,) for state in _REVOKED},   # revoked already: nothing more
        # ---- maps and moves while revoked
        **{(state, MoveEvent.MAP): _LOCKED_MAP
           for state in (MoveState.REVOKING, MoveState.REVOKE_FENCE_WAIT, *_UNREVOKING)},
        (MoveState.UNMAP_WAIT, MoveEvent.MAP): _REFUSE_MAP,
        (MoveState.REVOKED, MoveEvent.MAP): _REFUSE_MAP,
        **{(state, MoveEvent.MOVE_WANTED): _NO_MOVE for state in (*_REVOKED, *_UNREVOKING)},
    },
)

IMPORTER = ImporterSpec(
    strategy=NAME,
    table={
        **IMPORTER_BASE,
        # A dynamic importer keeps its mapping between jobs, and drops it when invalidated.
        (AttState.MAPPED, AttEvent.JOB): (
            Rule(IGuard.LEAVING, VIOLATION), Rule(IGuard.ALWAYS, AttState.ACTIVE, (IStep.TAKE_JOB, IStep.START_FENCED_DMA))),
        # resv-fence's: a map reply that crossed an invalidation of the generation it names is
        # refused; a map of a buffer whose copy may still run waits for its KERNEL fence.
        **{key: resv_fence.IMPORTER.table[key] for key in ((AttState.MAPPING, AttEvent.MAP_OK),
                                                             (AttState.FENCE_WAIT, AttEvent.FENCE_SIGNALED))},
        (AttState.ACTIVE, AttEvent.DMA_DONE): (
            # Invalidated while the job ran (under its fence): unmap now, in bounded time.
            Rule(IGuard.INVALIDATED, AttState.UNMAPPING, (IStep.SEND_UNMAP,)),
            Rule(IGuard.ALWAYS, AttState.MAPPED, (IStep.FINISH_JOB,)),
        ),
        (AttState.MAPPED, AttEvent.LEAVE): (Rule(IGuard.ALWAYS, AttState.UNMAPPING, (IStep.SEND_UNMAP,)),),
        (AttState.MAPPING, AttEvent.INVALIDATE_MAPPINGS): (
            Rule(IGuard.ALWAYS, SAME, (IStep.NOTE_CROSSING, IStep.RETURN)),),
        # The running job goes on under its fence; nothing new starts on the mapping.
        (AttState.ACTIVE, AttEvent.INVALIDATE_MAPPINGS): (Rule(IGuard.ALWAYS, SAME, (IStep.INVALIDATE, IStep.RETURN)),),
        (AttState.FENCE_WAIT, AttEvent.INVALIDATE_MAPPINGS): (
            Rule(IGuard.ALWAYS, SAME, (IStep.INVALIDATE, IStep.RETURN)),),
        (AttState.MAPPED, AttEvent.INVALIDATE_MAPPINGS): (
            Rule(IGuard.ALWAYS, AttState.UNMAPPING, (IStep.INVALIDATE, IStep.RETURN, IStep.SEND_UNMAP)),),
        (ANY, AttEvent.INVALIDATE_MAPPINGS): (Rule(IGuard.ALWAYS, SAME, (IStep.RETURN,)),),
    },
    kinds={
        # A synchronous revoke: the callback stops the DMA, then returns, then the mapping goes.
        "pinned-revocable": {
            (AttState.ACTIVE, AttEvent.INVALIDATE_MAPPINGS): (
                Rule(IGuard.ALWAYS, AttState.UNMAPPING,
                     (IStep.STOP_DMA, IStep.INVALIDATE, IStep.RETURN, IStep.SEND_UNMAP)),),
            (AttState.FENCE_WAIT, AttEvent.INVALIDATE_MAPPINGS): (
                Rule(IGuard.ALWAYS, AttState.UNMAPPING,
                     (IStep.INVALIDATE, IStep.FAIL_JOB, IStep.RETURN, IStep.SEND_UNMAP)),),
        },
    },
)
