"""grace-timer-test: move_notify, wait a grace period of its own, copy. No acks, no fences.

A test strategy (tests/test_timers.py): it owns one timer, `grace`, twice the mean DMA duration,
started when the notification goes out; when it fires the move copies. The callback returns
are logged and nothing waits for them.

Rules: move-notify's, except that the copy waits for the grace timer.
Hazard: a device slower than the grace period: a write still running when the timer fires is lost.
"""

from protocol.exporter import (ExporterSpec, Guard, MoveEvent, MoveState, Step, start_timer, timer_fired)
from protocol.importer import ImporterSpec
from protocol.machine import SAME, Rule
from protocol.strategies import move_notify

NAME = "grace-timer-test"
SUMMARY = "move_notify, then copy when a grace timer of 2 * dma_ms fires"

EXPORTER = ExporterSpec(
    strategy=NAME,
    timers={"grace": "2 * dma_ms"},
    table={
        **move_notify.EXPORTER.table,
        (MoveState.IDLE, MoveEvent.MOVE_WANTED): (
            Rule(Guard.PINNED, MoveState.IDLE, (Step.REFUSE,)),
            Rule(Guard.ALWAYS, MoveState.NOTIFYING, (Step.BEGIN, Step.NOTIFY, start_timer("grace"))),
        ),
        (MoveState.NOTIFYING, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.DEFER_MAP,)),),
        (MoveState.NOTIFYING, timer_fired("grace")): (Rule(Guard.ALWAYS, MoveState.COPYING, (Step.COPY,)),),
    },
)

IMPORTER = ImporterSpec(strategy=NAME, table=move_notify.IMPORTER.table)
