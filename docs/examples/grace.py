"""grace: move_notify, wait a fixed time, copy. No acks, no fences: a timing assumption.

The dma-fence rules (drivers/dma-buf/dma-fence.c, "fence cross-driver contract") bound a fence
only by a timeout with hang recovery behind it; nothing promises that a device finishes within
some fixed time. This strategy assumes one does.

Rules:
- To move a buffer the exporter sends move_notify to every attachment and starts its own timer,
  `grace`, twice the mean DMA duration (`2 * dma_ms`: 12 ms at the default --dma-ms 6); when it
  fires it copies, whatever the importers did. It never waits for an ack and never looks at a
  fence. A callback return is logged and does not count.
- An importer's callback returns at once and invalidates its mapping (as move-notify's does); DMA
  already running cannot be recalled and runs to its end on the old placement.
Hazard: a device slower than the grace period. A job that started before the notification and is
still touching the old placement when the timer fires races with the copy: a write lost, a read
of whatever the freed range holds next. DMA durations as the workload draws them (0.5 to 1.5
times --dma-ms) never outlast 2 * dma_ms, so `sim` and a search that only varies the order of
steps say "no race"; a device that stalls (`--dma-stall`, or a search's stall choice) finds it.
A real run on a loaded machine may find it without either: its DMA jobs can overrun their drawn
duration (docs/faults.md measures the tail).

Run it: dmabuf-emu explore --strategy docs/examples/grace.py --search exhaustive --bound 1 --out runs/x-grace
"""

from protocol.exporter import (BASE_TABLE as EXPORTER_BASE, ExporterSpec, Guard, MoveEvent, MoveState, Step, start_timer,
                               timer_fired)
from protocol.importer import ImporterSpec
from protocol.machine import SAME, Rule
from protocol.strategies import move_notify

NAME = "grace"
SUMMARY = "move_notify, wait a grace period of its own (2 * dma_ms), copy: no acks, no fences"

EXPORTER = ExporterSpec(
    strategy=NAME,
    timers={"grace": "2 * dma_ms"},
    table={
        **EXPORTER_BASE,
        (MoveState.IDLE, MoveEvent.MOVE_WANTED): (
            Rule(Guard.PINNED, MoveState.IDLE, (Step.REFUSE,)),
            Rule(Guard.ALWAYS, MoveState.NOTIFYING, (Step.BEGIN, Step.NOTIFY, start_timer("grace"))),
        ),
        # The grace period is over: copy, whoever is still running.
        (MoveState.NOTIFYING, timer_fired("grace")): (
            Rule(Guard.ALWAYS, MoveState.COPYING, (Step.COPY,)),),
        # A map during the grace period waits for the copy and gets the new placement (as under
        # move-notify, no placement is handed out while it is about to move): the only hazard
        # left is a device still running when the period ends.
        (MoveState.NOTIFYING, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.DEFER_MAP,)),),
        # A callback return is logged by the interpreter and changes nothing.
        (MoveState.NOTIFYING, MoveEvent.NOTIFY_RETURNED): (Rule(Guard.ALWAYS, SAME, ()),),
    },
)

IMPORTER = ImporterSpec(strategy=NAME, table=move_notify.IMPORTER.table)
