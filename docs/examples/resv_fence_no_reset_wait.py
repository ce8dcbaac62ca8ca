"""resv-fence-no-reset-wait: resv-fence as it was before the forced-fence window was closed, the
"before" of that fix in docs/results.md.

    "The kernel's force-completion comes after the device is reset."  (issue 15, the
     forced-fence window)

At a fence timeout resv-fence completes a live device's fences with an error and then waits for
the device to confirm that its engine stopped (its own signal, or --reset-grace-ms) before it
copies. This variant copies as soon as the fences are forced: a DMA chunk that checked its fence
just before the force still makes its access, after the copy began (a device looks at its fence
between chunks, not during one: importer_svc/dma.py). One row changed: the FENCE_TIMEOUT row
without AWAIT_RESETS.

Rules: those of resv-fence (protocol/strategies/resv_fence.py), except that a forced fence is
taken as the device stopped.
Hazard: lost_write or stale_read when a chunk is under way at the force (the forced-fence window).

Find it: dmabuf-emu explore --strategy docs/examples/resv_fence_no_reset_wait.py --dma-ms 6 --fence-timeout-ms 1 --out runs/no-reset-wait
"""

from protocol.exporter import ExporterSpec, Guard, MoveEvent, MoveState, Step
from protocol.importer import ImporterSpec
from protocol.machine import SAME, Rule
from protocol.strategies import resv_fence

NAME = "resv-fence-no-reset-wait"
SUMMARY = "resv-fence before the forced-fence window was closed: force the fences, copy at once"

EXPORTER = ExporterSpec(
    strategy=NAME,
    table={
        **resv_fence.EXPORTER.table,
        (MoveState.FENCE_WAIT, MoveEvent.FENCE_TIMEOUT): (
            Rule(Guard.ALWAYS, SAME, (Step.FORCE_COMPLETE, Step.WAIT_FENCES)),),
    },
)
IMPORTER = ImporterSpec(NAME, resv_fence.IMPORTER.table)
