"""stuck-notify: move-notify that waits for the callbacks to return, written with two rows missing.
A strategy that never finishes a move, kept to show what the tool says about one.

    "Once move_notify has returned, the importer no longer touches the old backing storage."
     (the dynamic importer contract, as the author of this variant read it)

move-notify copies as soon as it has sent move_notify; this variant means to wait until every
importer's callback has returned, bounded by the notify timer (--ack-timeout-ms), before it
copies, holding maps off meanwhile. Its author took the move's entry (BEGIN, NOTIFY,
AWAIT_ANSWERS, START_NOTIFY_TIMER) and its exit on NOTIFY_DONE from move-notify-ack, and forgot the two rows that get
it there: `(notifying, notify_returned)` with ANSWERED (AWAIT_ANSWERS only lists whom to wait
for: a return counts only if a row says ANSWERED) and `(notifying, notify_timeout)`. The base
table's `(ANY, notify_returned)` and `(ANY, notify_timeout)` rows, which do nothing, take both
events: the table loads, and a move that notified anyone waits for ever in NOTIFYING, with the
maps it deferred. (resv_fence.py has the two rows this variant lacks.)

Rules: those of move-notify (protocol/strategies/move_notify.py), except that a move waits in
NOTIFYING for every callback's return (or the notify timer) before it copies, and a map that
arrives meanwhile waits for the move.
Hazard: liveness, not safety. No move that notified an importer ever completes: no race, and no
progress. `dmabuf-emu strategies --check` warns at load; the checker reports each move as a
`stuck` finding (docs/reading-a-verdict.md). The fix is the two rows:
    (MoveState.NOTIFYING, MoveEvent.NOTIFY_RETURNED): (
        Rule(Guard.AWAITED, SAME, (Step.ANSWERED,)), Rule(Guard.ALWAYS, SAME, ())),
    (MoveState.NOTIFYING, MoveEvent.NOTIFY_TIMEOUT): (
        Rule(Guard.ALWAYS, MoveState.COPYING, (Step.NOTIFY_TIMED_OUT, Step.GIVE_UP_NOTIFY, Step.COPY)),),

Run it: dmabuf-emu sim --strategy docs/examples/stuck_notify.py --importers 2 --duration 1 --out runs/stuck
"""

from protocol.exporter import ExporterSpec, Guard, MoveEvent, MoveState, Step
from protocol.importer import ImporterSpec
from protocol.machine import SAME, Rule
from protocol.strategies import move_notify, move_notify_ack

NAME = "stuck-notify"
SUMMARY = "move-notify waiting for the callbacks to return, without the rows that count them or time out"

# move-notify-ack's way into NOTIFYING (BEGIN, NOTIFY, AWAIT_ANSWERS, START_NOTIFY_TIMER) and out of
# it on NOTIFY_DONE (CANCEL_NOTIFY_TIMER, COPY), and nothing of the rows between.
_WAIT = [(MoveState.IDLE, MoveEvent.MOVE_WANTED), (MoveState.NOTIFYING, MoveEvent.NOTIFY_DONE)]

EXPORTER = ExporterSpec(
    strategy=NAME,
    table={
        **move_notify.EXPORTER.table,
        **{key: move_notify_ack.EXPORTER.table[key] for key in _WAIT},
        (MoveState.NOTIFYING, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.DEFER_MAP,)),),
        # Missing: (NOTIFYING, NOTIFY_RETURNED) with ANSWERED, and (NOTIFYING, NOTIFY_TIMEOUT).
    },
)

IMPORTER = ImporterSpec(strategy=NAME, table=move_notify.IMPORTER.table)
