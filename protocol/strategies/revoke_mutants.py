"""revoke's mutants: known bugs of the Linux 7.1 revocation, each a correct table with one rule broken.

Declared in the fields of issue 15's registry of mutants (its `Mutant`, protocol/strategies/
mutants.py on the branch `mutants`), so that the registry takes them as they are: the strategy
each breaks (`base`), its `name` (the strategy is BASE+MUTATION), the `rule` it breaks, its
`source`, what the tools must find (`expect`), the change to the base's exporter table as rows
that replace the base's (`exporter_rows`: the registry's set_rows), the run parameters its
workload needs (`params`: the revoke faults; nothing happens to a buffer that is never revoked)
and what the simulator's small configuration needs on top of its defaults to reach the bug
(`small`: run parameters and the driver's dma_jobs / moves, as explore's --dma-jobs, --moves).
Faults are given as `--fault` text (runtime/faults.py parse_cli), this file being protocol's.

Rules of this file:
- Data only: it imports the tables' vocabulary and revoke's own pieces, never the registry, so
  the registry may import it.
- Until that registry lands, protocol/strategies/__init__.py derives each entry (mutant()).
- What catches kref-reinit is a checker finding, revoke_incomplete, not a race: the data stays
  right (the importers keep the rules), the exporter's word that every mapping is gone is false.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from protocol.exporter import Guard, MoveEvent, MoveState, Step
from protocol.machine import Rule
from protocol.strategies.revoke import NOTIFY_STEPS


@dataclass(frozen=True)
class RevokeMutant:
    """The fields of the registry's Mutant, with the exporter transform given as its rows."""
    base: str
    name: str
    rule: str
    source: str
    expect: str
    exporter_rows: Mapping[tuple[Any, Any], Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    small: Mapping[str, Any] = field(default_factory=dict)


# vfio: Fix race between dma-buf attach and kref reinitialization (the dmabuf-revoke series,
# January 2026). Before the fix, un-revoke marked the buffer mappable under the lock and re-armed
# the unmap wait (kref_init, reinit_completion) only after unlocking: a map served in between
# took its reference on the count the revocation had drained to zero, and the re-arm wiped it.
# That mapping's unmap then completes the wait while nothing waits, and the next revocation ends
# its unmap wait at once, with mappings still live (refcount_t: underflow).
KREF_REINIT_ROWS = {
    (MoveState.UNMAP_WAIT, MoveEvent.UNMAPS_DONE): (
        Rule(Guard.ALWAYS, MoveState.REVOKED, (Step.END_UNMAP_WAIT, Step.RUN_QUEUED_UNREVOKE)),),
    (MoveState.REVOKED, MoveEvent.UNREVOKE): (
        Rule(Guard.ALWAYS, MoveState.UNREVOKING,
             (Step.BEGIN_UNREVOKE, Step.LOCK, Step.MARK_UNREVOKED, *NOTIFY_STEPS)),),
    (MoveState.UNREVOKE_FENCE_WAIT, MoveEvent.FENCES_SIGNALED): (
        Rule(Guard.ALWAYS, MoveState.IDLE,
             (Step.END_FENCE_WAIT, Step.UNLOCK, Step.END_REVOCATION, Step.SERVE_DEFERRED_MAPS,
              Step.REARM_UNMAP_WAIT, Step.RUN_QUEUED_REVOKE)),),
}

# Revocations every 0.6 s of a 2 s workload (as tests/test_revoke_e2e.py runs it); the
# invalidate_mappings delayed so that maps queue under an un-revoke's lock, unmaps so that
# mappings are live when the next revocation's unmap wait begins.
KREF_REINIT_FAULTS = ("revoke:at=0.3,for=0.3", "revoke:at=0.9,for=0.3", "revoke:at=1.5,for=0.3",
                      "delay:ms=3,op=invalidate_mappings,target=exporter", "delay:ms=5,op=unmap,target=importers")

# On the small configuration (50 ms, 2 jobs per importer by default): revoked 1 ms in, un-revoked
# 1 ms later while maps come (4 jobs per importer), revoked again at 4 ms; the search delays the
# frames that put a map inside the un-revocation's locked window (random: schedule 22, seed 1).
KREF_REINIT_SMALL = {"dma_jobs": 4, "faults": ("revoke:at=0.001,for=0.001", "revoke:at=0.004,for=0.001")}

MUTANTS: tuple[RevokeMutant, ...] = (
    RevokeMutant(
        "revoke", "kref-reinit",
        rule="the unmap wait is re-armed before the buffer is mappable again: every mapping served after "
             "un-revoke is counted by the next revocation's wait",
        source="vfio: Fix race between dma-buf attach and kref reinitialization (dmabuf-revoke v6, January 2026)",
        expect="revoke_incomplete (a finding: a revocation ends its unmap wait with a mapping live), "
               "refcount_warning events; no race",
        exporter_rows=KREF_REINIT_ROWS,
        params={"faults": KREF_REINIT_FAULTS, "move_rate": 0.0}, small=KREF_REINIT_SMALL),
)
