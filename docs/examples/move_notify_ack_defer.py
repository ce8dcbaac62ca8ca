"""move-notify-ack-defer: move-notify-ack, with maps held off while the acks are awaited.

    "Adding a callback to request the importer to unmap the buffer. This might be racy, and
     locking might be difficult to handle."  (Laurent Pinchart, linux-media, 2 Feb 2012)

move-notify-ack's hazard is a map reply that crosses the notification: while the exporter waits
for the acks it keeps serving maps with the old placement (its (NOTIFYING, MAP) row says
SERVE_MAP), and an importer that acked before its map reply arrived starts DMA where the copy is
about to read and the free to reuse. This variant changes that one row: a map that arrives during
the ack wait waits too (DEFER_MAP) and is served once the copy is done, with the new placement,
by the COPY_DONE row every strategy inherits (SERVE_DEFERRED_MAPS). It is a lock in all but name,
held across the notification only, without fences: the importer still acks when its running job
drains, not when a fence says so.

Rules: those of move-notify-ack (protocol/strategies/move_notify_ack.py), except that a map
arriving while a move waits for acks is deferred until the move is over.
Hazard: what is left of move-notify-ack's. A map reply sent before the move began that reaches
the importer after the move_notify (delayed, reordered, or lost and resent) still carries the old
placement, and this importer does not check for it (resv-fence's STALE_REPLY guard does): under
the `net` fault plan it races. An ack timeout still copies under a device that did not answer.

Run it: dmabuf-emu run --strategy docs/examples/move_notify_ack_defer.py --importers 4 --out runs/defer
(docs/writing-a-strategy.md walks through it).
"""

from protocol.exporter import ExporterSpec, Guard, MoveEvent, MoveState, Step
from protocol.importer import ImporterSpec
from protocol.machine import SAME, Rule
from protocol.strategies import move_notify_ack

NAME = "move-notify-ack-defer"
SUMMARY = "move-notify-ack, but a map that arrives while the acks are awaited waits for the move"

EXPORTER = ExporterSpec(
    strategy=NAME,
    table={
        **move_notify_ack.EXPORTER.table,
        # The one change: hold the map until the move is over (COPY_DONE serves it).
        (MoveState.NOTIFYING, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.DEFER_MAP,)),),
    },
)

IMPORTER = ImporterSpec(strategy=NAME, table=move_notify_ack.IMPORTER.table)
