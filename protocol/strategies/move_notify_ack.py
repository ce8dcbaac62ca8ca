"""move-notify-ack: option 2 with acknowledgements and no lock. Tell, wait for every ack, move.

    "Adding a callback to request the importer to unmap the buffer. This might be racy, and
     locking might be difficult to handle."  (Laurent Pinchart, linux-media, 2 Feb 2012)

Rules:
- To move a buffer the exporter sends move_notify to every attachment and waits (bounded by
  --ack-timeout) for each one's `ack` before it copies; then it frees the old range. A callback
  return is logged and does not count.
- An importer acks at once if it has no DMA running on the buffer, else when that DMA drains.
- Nothing orders a concurrent `map` against the move: while the exporter waits for acks it keeps
  serving maps with the current (old) placement (the (NOTIFYING, MAP) row).
Hazard: a map reply that crosses the notification. The importer asked for a mapping just before
the move began; it receives move_notify first (nothing mapped yet: it acks at once), then the map
reply with the old placement, and starts DMA there. The exporter, holding every ack, copies and
frees under that DMA: the ack promised something the importer's next message broke.
"""

from protocol.exporter import BASE_TABLE as EXPORTER_BASE, ExporterSpec, Guard, MoveEvent, MoveState, Step
from protocol.importer import BASE_TABLE as IMPORTER_BASE, AttEvent, AttState, IGuard, ImporterSpec, IStep
from protocol.machine import ANY, SAME, Rule

NAME = "move-notify-ack"
SUMMARY = "option 2 with acks: wait for every importer's ack before copying; maps are not locked out"

EXPORTER = ExporterSpec(
    strategy=NAME,
    table={
        **EXPORTER_BASE,
        (MoveState.IDLE, MoveEvent.MOVE_WANTED): (
            Rule(Guard.PINNED, MoveState.IDLE, (Step.REFUSE,)),
            Rule(Guard.ALWAYS, MoveState.NOTIFYING,
                 (Step.BEGIN, Step.NOTIFY, Step.AWAIT_ANSWERS, Step.START_NOTIFY_TIMER)),
        ),
        # The hazard, as a row: while the acks are awaited, a map is served the old placement.
        (MoveState.NOTIFYING, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.SERVE_MAP,)),),
        # An ack completes the notification (a callback return does not).
        (MoveState.NOTIFYING, MoveEvent.ACK): (
            Rule(Guard.AWAITED, SAME, (Step.ANSWERED,)), Rule(Guard.ALWAYS, SAME, ())),
        (MoveState.NOTIFYING, MoveEvent.NOTIFY_DONE): (
            Rule(Guard.ALWAYS, MoveState.COPYING, (Step.CANCEL_NOTIFY_TIMER, Step.COPY)),),
        (MoveState.NOTIFYING, MoveEvent.NOTIFY_TIMEOUT): (
            Rule(Guard.ALWAYS, MoveState.COPYING, (Step.NOTIFY_TIMED_OUT, Step.GIVE_UP_NOTIFY, Step.COPY)),),
    },
)

IMPORTER = ImporterSpec(
    strategy=NAME,
    table={
        **IMPORTER_BASE,
        (AttState.ACTIVE, AttEvent.MOVE_NOTIFY): (
            Rule(IGuard.ALWAYS, SAME, (IStep.RETURN, IStep.INVALIDATE, IStep.ACK_AFTER_DRAIN)),),
        (ANY, AttEvent.MOVE_NOTIFY): (Rule(IGuard.ALWAYS, SAME, (IStep.RETURN, IStep.ACK)),),
        (AttState.ACTIVE, AttEvent.DMA_DONE): (
            Rule(IGuard.ALWAYS, AttState.UNMAPPING, (IStep.SEND_OWED_ACKS, IStep.SEND_UNMAP)),),
    },
)
