"""resv-fence: the design Linux shipped as dynamic dma-buf (around 5.7). Lock, notify, fence.

    "Mappings stay valid and are not directly affected by this callback." [...] "New mappings
     can be created after this callback returns, and will point to the new location of the
     DMA-buf." (include/linux/dma-buf.h, dma_buf_attach_ops.move_notify, which is "called with
     the lock of the reservation object associated with the dma_buf held")

    "Dynamic importers should set fences for any access that they can't disable immediately from
     their &dma_buf_attach_ops.move_notify callback." (include/linux/dma-buf.h, struct dma_buf,
     @resv, DYNAMIC IMPORTER RULES)

Rules:
- Every buffer has a reservation lock and fences. A move takes the lock and holds it across
  move_notify, the wait for fences and the start of the copy, with the move's KERNEL fence
  published and the buffer switched to its new placement; then it releases the lock and the copy
  runs on, pipelined as TTM pipelines moves (ttm_bo_move_accel_cleanup). A map arriving while the
  lock is held waits for it (DEFER_MAP: the table needs no row for it, the lock implies it); a map
  served while the copy runs gets the new placement, and the KERNEL fence that it must wait for
  ("Drivers *always* must wait for those fences before accessing the resource protected by the
  dma_resv object. The only exception for that is when the resource is known to be locked down in
  place by pinning it previously.", include/linux/dma-resv.h, DMA_RESV_USAGE_KERNEL: a pinned
  buffer is never moved, so a pinning job has no KERNEL fence to wait for). The old range is
  freed when the copy ends.
- move_notify goes to every attachment that is not pinned; the exporter waits for every callback
  to return, then for every fence on the buffer, usage BOOKKEEP, and only then copies. A wait is
  bounded: past --ack-timeout an importer that is alive but does not return is revoked, its fences
  left to speak for its DMA; past --fence-timeout the fences of a live importer are completed with
  an error, which its device takes as a reset (it aborts the job before its next access), and the
  move waits for the device to confirm that its engine stopped (its own signal), bounded by
  --reset-grace-ms, before it copies: a device that does not confirm is revoked (lost), its
  silence recorded. One that is silent (paused, dead) is revoked when its lease expires, after it
  has stopped its DMA.
- A map reply that names a generation announced as moving while the map was out (a reply lost
  and resent) is stale: the importer refuses it before the first access (STALE_REPLY).
- Importers publish a fence in shared memory before each DMA job (usage WRITE or READ) and signal
  it when the job ends. Their move_notify callback does not block: it invalidates the mapping and
  lets running work finish under its fence; work that has not started must map again.
- The importer waits for the KERNEL fence a map reply names before touching the new placement.
- A pinned buffer is never moved and its pinning attachments receive no move_notify. A job that
  pins (--pin-ratio) sends pin with its map and unpins when its DMA ends, keeping its mapping:
  dma_buf_unpin() "allows the exporter to move any mapping of @attach again and inform the
  importer through &dma_buf_attach_ops.move_notify" (drivers/dma-buf/dma-buf.c, text before 7.1). The next job on the buffer uses the kept mapping (fenced, then unmapped);
  a move_notify first unmaps it.
Hazard: none for the data, by construction; the price is the lock (maps wait for moves until the
copy starts: see the map latency) and the wait for the slowest fence (see move latency).
"""

from protocol.exporter import BASE_TABLE as EXPORTER_BASE, ExporterSpec, Guard, MoveEvent, MoveState, Step
from protocol.importer import BASE_TABLE as IMPORTER_BASE, AttEvent, AttState, IGuard, ImporterSpec, IStep
from protocol.machine import ANY, SAME, VIOLATION, Rule

NAME = "resv-fence"
SUMMARY = "the fenced design Linux shipped: reservation lock over notify, fence wait, copy and free"

EXPORTER = ExporterSpec(
    strategy=NAME,
    table={
        **EXPORTER_BASE,
        (MoveState.IDLE, MoveEvent.MOVE_WANTED): (
            Rule(Guard.PINNED, MoveState.IDLE, (Step.REFUSE,)),
            Rule(Guard.ALWAYS, MoveState.NOTIFYING,
                 (Step.BEGIN, Step.LOCK, Step.NOTIFY, Step.AWAIT_ANSWERS, Step.START_NOTIFY_TIMER)),
        ),
        # The callback's return completes the notification (an ack does not).
        (MoveState.NOTIFYING, MoveEvent.NOTIFY_RETURNED): (
            Rule(Guard.AWAITED, SAME, (Step.ANSWERED,)), Rule(Guard.ALWAYS, SAME, ())),
        (MoveState.NOTIFYING, MoveEvent.NOTIFY_DONE): (
            Rule(Guard.ALWAYS, MoveState.FENCE_WAIT, (Step.CANCEL_NOTIFY_TIMER, Step.WAIT_FENCES)),),
        (MoveState.NOTIFYING, MoveEvent.NOTIFY_TIMEOUT): (
            # Still NOTIFYING: the silent ones are left to their lease, which completes the
            # notification when it revokes them.
            Rule(Guard.ALWAYS, SAME, (Step.NOTIFY_TIMED_OUT, Step.REVOKE_SILENT)),),
        (MoveState.FENCE_WAIT, MoveEvent.FENCES_SIGNALED): (
            # The copy is pipelined: its KERNEL fence published and the placement switched under
            # the lock, which is then released; maps are served the new placement and that fence.
            Rule(Guard.ALWAYS, MoveState.COPYING,
                 (Step.END_FENCE_WAIT, Step.PUBLISH_KERNEL_FENCE, Step.COPY, Step.SWITCH, Step.UNLOCK,
                  Step.SERVE_DEFERRED_MAPS)),),
        (MoveState.FENCE_WAIT, MoveEvent.FENCE_TIMEOUT): (
            # Force the fences of responsive importers that hold them too long, then wait again,
            # for their devices to confirm the reset too: a silent importer's fences are completed
            # when its lease expires.
            Rule(Guard.ALWAYS, SAME, (Step.FORCE_COMPLETE, Step.AWAIT_RESETS, Step.WAIT_FENCES)),),
        (MoveState.FENCE_WAIT, MoveEvent.RESET_TIMEOUT): (
            Rule(Guard.ALWAYS, SAME, (Step.REVOKE_UNCONFIRMED, Step.WAIT_FENCES)),),
        (MoveState.COPYING, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.SERVE_MAP,)),),
        (MoveState.COPYING, MoveEvent.COPY_DONE): (
            Rule(Guard.ALWAYS, MoveState.IDLE, (Step.SIGNAL_KERNEL_FENCE, Step.FREE, Step.END)),),
        # No MAP rows for NOTIFYING and FENCE_WAIT: a move holds the reservation lock there, so a
        # map waits for it (DEFER_MAP), by the lock rule of protocol/exporter/moves.py.
    },
)

IMPORTER = ImporterSpec(
    strategy=NAME,
    table={
        **IMPORTER_BASE,
        (AttState.IDLE, AttEvent.JOB): (
            Rule(IGuard.LEAVING, VIOLATION),
            Rule(IGuard.PIN_JOB, AttState.MAPPING, (IStep.TAKE_JOB, IStep.SEND_PIN, IStep.SEND_MAP)),
            Rule(IGuard.ALWAYS, AttState.MAPPING, (IStep.TAKE_JOB, IStep.SEND_MAP))),
        (AttState.MAPPING, AttEvent.MAP_OK): (
            # A reply lost and resent (or overtaken) after its move was announced: under the
            # kernel's lock this cannot happen; over a lossy link the importer must check.
            Rule(IGuard.STALE_REPLY, AttState.UNMAPPING,
                 (IStep.LOG_MAP, IStep.FAIL_JOB, IStep.SEND_UNMAP, IStep.SEND_UNPIN)),
            Rule(IGuard.FENCED, AttState.FENCE_WAIT, (IStep.PROGRAM_IOMMU, IStep.LOG_MAP, IStep.WAIT_KERNEL_FENCE)),
            Rule(IGuard.ALWAYS, AttState.ACTIVE, (IStep.PROGRAM_IOMMU, IStep.LOG_MAP, IStep.START_FENCED_DMA)),
        ),
        (AttState.MAPPING, AttEvent.MAP_FAILED): (Rule(IGuard.ALWAYS, AttState.IDLE, (IStep.FAIL_JOB, IStep.SEND_UNPIN)),),
        (AttState.FENCE_WAIT, AttEvent.FENCE_SIGNALED): (
            # Invalidated before the first access: the job must not start on the old placement.
            Rule(IGuard.INVALIDATED, AttState.UNMAPPING, (IStep.FAIL_JOB, IStep.SEND_UNMAP, IStep.SEND_UNPIN)),
            Rule(IGuard.ALWAYS, AttState.ACTIVE, (IStep.START_FENCED_DMA,)),
        ),
        (AttState.ACTIVE, AttEvent.DMA_DONE): (
            Rule(IGuard.INVALIDATED, AttState.UNMAPPING, (IStep.SEND_UNMAP, IStep.SEND_UNPIN)),
            # A job that pinned unpins and keeps its mapping, for move_notify to invalidate.
            Rule(IGuard.PIN_HELD, AttState.MAPPED, (IStep.SEND_UNPIN, IStep.FINISH_JOB)),
            Rule(IGuard.ALWAYS, AttState.UNMAPPING, (IStep.SEND_UNMAP,)),
        ),
        (AttState.MAPPED, AttEvent.JOB): (
            Rule(IGuard.LEAVING, VIOLATION), Rule(IGuard.ALWAYS, AttState.ACTIVE, (IStep.TAKE_JOB, IStep.START_FENCED_DMA))),
        (AttState.MAPPED, AttEvent.MOVE_NOTIFY): (
            Rule(IGuard.ALWAYS, AttState.UNMAPPING, (IStep.RETURN, IStep.INVALIDATE, IStep.SEND_UNMAP)),),
        (AttState.MAPPED, AttEvent.LEAVE): (Rule(IGuard.ALWAYS, AttState.UNMAPPING, (IStep.SEND_UNMAP,)),),
        (AttState.MAPPING, AttEvent.MOVE_NOTIFY): (
            # Our map and the move crossed: remember the generation, for STALE_REPLY.
            Rule(IGuard.ALWAYS, SAME, (IStep.NOTE_CROSSING, IStep.RETURN)),),
        (AttState.ACTIVE, AttEvent.MOVE_NOTIFY): (
            Rule(IGuard.ALWAYS, SAME, (IStep.RETURN, IStep.INVALIDATE)),),
        (AttState.FENCE_WAIT, AttEvent.MOVE_NOTIFY): (
            Rule(IGuard.ALWAYS, SAME, (IStep.RETURN, IStep.INVALIDATE)),),
        (ANY, AttEvent.MOVE_NOTIFY): (Rule(IGuard.ALWAYS, SAME, (IStep.RETURN,)),),
    },
)
