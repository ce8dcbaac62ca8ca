"""move-notify: option 2 of the 2012 thread as first proposed. Tell the importers, move at once.

    "Adding a callback to request the importer to unmap the buffer. This might be racy, and
     locking might be difficult to handle."  (Laurent Pinchart, linux-media, 2 Feb 2012)

Rules:
- To move a buffer the exporter sends move_notify to every attachment and starts copying in the
  same breath, without waiting for anyone. It frees the old range when the copy ends.
- The exporter never hands out a placement while it is copying one (BASE_TABLE), so a map that
  arrives during the move gets the new placement.
- An importer's callback returns at once and invalidates its mapping; DMA already running cannot
  be recalled and runs to its end on the old placement.
Hazard: DMA still in flight when the exporter copies. A write that runs past copy_begin is lost
(the copy took the bytes before it), a read that runs past free reads whatever the freed range
holds next: another buffer's bytes.
"""

from protocol.exporter import BASE_TABLE as EXPORTER_BASE, ExporterSpec, Guard, MoveEvent, MoveState, Step
from protocol.importer import BASE_TABLE as IMPORTER_BASE, AttEvent, AttState, IGuard, ImporterSpec, IStep
from protocol.machine import ANY, SAME, Rule

NAME = "move-notify"
SUMMARY = "option 2 as proposed: move_notify to every importer, then move at once without waiting"

EXPORTER = ExporterSpec(
    strategy=NAME,
    table={
        **EXPORTER_BASE,
        (MoveState.IDLE, MoveEvent.MOVE_WANTED): (
            Rule(Guard.PINNED, MoveState.IDLE, (Step.REFUSE,)),
            Rule(Guard.ALWAYS, MoveState.COPYING, (Step.BEGIN, Step.NOTIFY, Step.COPY)),
        ),
    },
)

IMPORTER = ImporterSpec(
    strategy=NAME,
    table={
        **IMPORTER_BASE,
        (AttState.ACTIVE, AttEvent.MOVE_NOTIFY): (
            Rule(IGuard.ALWAYS, SAME, (IStep.RETURN, IStep.INVALIDATE)),),
        (ANY, AttEvent.MOVE_NOTIFY): (Rule(IGuard.ALWAYS, SAME, (IStep.RETURN,)),),
    },
)
