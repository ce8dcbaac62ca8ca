"""resv-fence-unpipelined: resv-fence as it was before its copy was pipelined, the baseline of the
map latency figures in docs/results.md.

    "TTM pipelines moves: it publishes the move's fence and releases the lock before the copy
     ends, which is why importers must always wait for KERNEL fences before touching memory."
     (the primer, after include/linux/dma-resv.h)

resv-fence holds the reservation lock across move_notify, the fence wait and the start of the
copy, then releases it: a map arriving while the copy runs is served the new placement with the
move's KERNEL fence, which the importer waits for. This variant holds the lock until the copy
has ended and the old range is freed, as resv-fence did first: a map arriving during the copy
waits for all of it (COPYING is a state under the lock, so DEFER_MAP). One row changed, and the
copy's start without SWITCH / UNLOCK / SERVE_DEFERRED_MAPS: those move to the end of the copy.

Rules: those of resv-fence (protocol/strategies/resv_fence.py), except that the lock is held until
the copy is done.
Hazard: none for the data; maps wait for whole moves, copies included.

Run it: dmabuf-emu run --strategy docs/examples/resv_fence_unpipelined.py --importers 4 --out runs/unpipelined
"""

from protocol.exporter import ExporterSpec, Guard, MoveEvent, MoveState, Step
from protocol.importer import ImporterSpec
from protocol.machine import Rule
from protocol.strategies import resv_fence

NAME = "resv-fence-unpipelined"
SUMMARY = "resv-fence with the reservation lock held until the copy has ended (no pipelined move)"

_table = {k: v for k, v in resv_fence.EXPORTER.table.items() if k != (MoveState.COPYING, MoveEvent.MAP)}
EXPORTER = ExporterSpec(
    strategy=NAME,
    table={
        **_table,
        (MoveState.FENCE_WAIT, MoveEvent.FENCES_SIGNALED): (
            Rule(Guard.ALWAYS, MoveState.COPYING, (Step.END_FENCE_WAIT, Step.PUBLISH_KERNEL_FENCE, Step.COPY)),),
        (MoveState.COPYING, MoveEvent.COPY_DONE): (
            Rule(Guard.ALWAYS, MoveState.IDLE, (Step.SIGNAL_KERNEL_FENCE, Step.SWITCH, Step.FREE, Step.UNLOCK,
                                                Step.END, Step.SERVE_DEFERRED_MAPS)),),
    },
)

IMPORTER = ImporterSpec(strategy=NAME, table=resv_fence.IMPORTER.table)
