"""grace: move_notify, wait a fixed time, copy. No acks, no fences: a timing assumption.

    "a fence may take arbitrarily long"  (the dma-fence rule: only a fence timeout, with a reset,
     bounds it; drivers/dma-buf/dma-fence.c)

Rules:
- To move a buffer the exporter sends move_notify to every attachment and starts its notify
  timer; when the timer fires it copies, whatever the importers did. It never waits for an ack
  and never looks at a fence. A callback return is logged and does not count.
- An importer's callback returns at once and invalidates its mapping (as move-notify's does); DMA
  already running cannot be recalled and runs to its end on the old placement.
- The grace period is the notify timer, whose length is the run's --ack-timeout-ms (250 ms by
  default): the table vocabulary on main has no timer a strategy owns with a length of its own,
  so this strategy borrows the notify timer (a strategy-owned `grace` timer is issue 26 item 3).
Hazard: a device slower than the grace period. A job that started before the notification and is
still touching the old placement when the timer fires races with the copy: a write lost, a read
of whatever the freed range holds next. DMA durations as drawn by the workload (0.5 to 1.5 times
--dma-ms) never outlast 250 ms, so `run`, `sim` and a search that only varies the order of steps
all say "no race"; a device that stalls (`--dma-stall`, or a search's stall choice) finds it.

Run it: dmabuf-emu explore --strategy docs/examples/grace.py --search exhaustive --bound 1 --out runs/x-grace
"""

from protocol.exporter import BASE_TABLE as EXPORTER_BASE, ExporterSpec, Guard, MoveEvent, MoveState, Step
from protocol.importer import ImporterSpec
from protocol.machine import SAME, Rule
from protocol.strategies import move_notify

NAME = "grace"
SUMMARY = "move_notify, wait a fixed grace period (the notify timer), copy: no acks, no fences"

EXPORTER = ExporterSpec(
    strategy=NAME,
    table={
        **EXPORTER_BASE,
        (MoveState.IDLE, MoveEvent.MOVE_WANTED): (
            Rule(Guard.PINNED, MoveState.IDLE, (Step.REFUSE,)),
            Rule(Guard.ALWAYS, MoveState.NOTIFYING, (Step.BEGIN, Step.NOTIFY, Step.START_NOTIFY_TIMER)),
        ),
        # The grace period is over: copy, whoever is still running.
        (MoveState.NOTIFYING, MoveEvent.NOTIFY_TIMEOUT): (
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
