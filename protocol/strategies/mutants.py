"""Mutants: a correct strategy with one documented kernel rule broken, a row or a step changed.

Each mutant's `kind` says where its bug comes from: a "merged bug" (it was in a kernel that was
merged, and was fixed later: the fix is its source), a "review catch" (it was in a posted patch
and caught before merge), or a "plausible mistake" (no recorded kernel bug: the rule broken is
documented, and the source is where). docs/kernel-sources.md has each with its verbatim quote.

A mutant is named `BASE+MUTATION` wherever a strategy is named (`--strategy
resv-fence+wait-kernel-only`); `dmabuf-emu strategies --mutants` lists them with the rule each
breaks and where the rule (or the bug) is written down, and `dmabuf-emu campaign --strategies
mutants` runs them all. The tools must catch every one (the mutation score is their power to
expose races) and never cry wolf on the correct strategies.

Rules of this file:
- One `Mutant(...)` entry per mutant in MUTANTS: the strategy it breaks (`base`, a NAME), its
  `name`, the `rule` it breaks (a sentence; kernel text in quotation marks only where verbatim,
  with its file and function), its `source` (file and function, or list, date and subject), its
  `kind` (KINDS), what the tools must find (`expect`), and how it changes the base's tables: `exporter` and
  `importer` are transforms of a table (the helpers below: replace a step, replace or drop a rule,
  add a step), nothing else. A known bug that needs a step of its own uses one of the halves'
  MUTANT_STEPS, which compile_spec refuses in a table that does not declare `breaks`.
- `params`: run parameters the mutant's workload needs to show the bug at all (pins for the pin
  mutants, revocations for revoke's); campaigns run it with them. `faults` among them is a tuple
  of `--fault` texts (runtime/faults.py parse_cli: protocol imports no runtime), which campaigns
  add to each fault plan's and explore-table to the small configuration's; labels leave them out.
- `small`: what the simulator's small configuration (dmabuf-emu explore, explore-table
  --strategies mutants) needs on top of its defaults to reach the bug: run parameters, and
  `dma_jobs` / `moves`, the simulated driver's budgets (explore's --dma-jobs, --moves). Each
  entry says why; a bug the defaults reach has none.
- Mutations compose: `BASE+M1+M2` applies M1 then M2, each declared for BASE; the mutant breaks
  both rules. DOUBLES lists the compositions campaigns run (a mutant masked by another rule,
  caught once that rule is removed too).
- `derive(spec)` builds the mutant as a strategy module (NAME, SUMMARY, EXPORTER, IMPORTER,
  SOURCE, and MUTANT: what service_start and run_start carry, so that the checker, which knows no
  strategy, can quote the broken rule beside its witnesses), its tables checked as any strategy's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, Callable, Mapping

from protocol.exporter import ExporterSpec, Guard, MoveEvent, MoveState, Step
from protocol.importer import AttEvent, AttState, IGuard, ImporterSpec, IStep
from protocol.machine import ANY, SAME, VIOLATION, Rule
from protocol.strategies.revoke import NOTIFY_STEPS

Table = Mapping[tuple[Any, Any], Any]
Transform = Callable[[Table], dict]

PIN_RATIO = 0.25   # the share of pinning jobs the pin mutants' workload needs (and their control's)
# The pin mutants on the small configuration: a job that pins, then a move, then a job on the kept
# mapping needs three jobs of one importer (two, the default budget, reach it for few seeds).
SMALL_PINS: Mapping[str, Any] = {"pin_ratio": 0.5, "dma_jobs": 3}
# no-kernel-fence-wait on the small configuration: a 4 KiB copy is one chunk (25 us in the
# simulator's cost model, sim/world.py LANE_COST_NS), over before any map reply can arrive (30 us
# at least), so no schedule reaches the bug (exhausted at bound 2); a 1 MiB copy takes 100 us.
SMALL_LONG_COPY: Mapping[str, Any] = {"buffer_size": 1 << 20, "vram_size": 1 << 20}
# kref-reinit's workload: revocations every 0.6 s through the standard 3 s workload (a 2 s run, as
# tests/test_revoke_e2e.py's, has the first three); the invalidate_mappings delayed so that maps
# queue under an un-revoke's lock, unmaps so that mappings are live when the next revocation's
# unmap wait begins; no moves. The bug shows at a revocation after an un-revocation: three
# revocations gave two chances per buffer, and a seed of the standard workload missed it (0
# findings in 1 of 10 runs, 1 in another); five give four.
KREF_REINIT_FAULTS = ("revoke:at=0.3,for=0.3", "revoke:at=0.9,for=0.3", "revoke:at=1.5,for=0.3",
                      "revoke:at=2.1,for=0.3", "revoke:at=2.7,for=0.25",
                      "delay:ms=3,op=invalidate_mappings,target=exporter", "delay:ms=5,op=unmap,target=importers")
# v6-unmap-timeout's workload: importer-1 drops every invalidate_mappings from 0.2 s on, so it
# never unmaps while it runs; every buffer revoked at 0.3 s, un-revoked 0.6 s later; no moves (a
# move's notify timeout would revoke importer-1's attachments and so end the wait). The drafts'
# bound was 1 s (--unmap-wait-ms 1000, the default); 300 ms shows it in a 1.5 s run.
V6_UNMAP_TIMEOUT_FAULTS = ("revoke:at=0.3,for=0.6", "ignore-notify:target=importer-1,at=0.2")
# On the small configuration (50 ms): the revocation's wait for importer-1's callback return is
# cut to 2 ms (--ack-timeout-ms; 250 ms by default would outlast the run), its unmap wait to 5 ms.
SMALL_V6_UNMAP_TIMEOUT: Mapping[str, Any] = {
    "ack_timeout_ms": 2.0, "unmap_wait_ms": 5.0,
    "faults": ("revoke:at=0.002,for=0.01", "ignore-notify:target=importer-1,at=0.001")}
# cleanup-redrain's workload: every buffer revoked at 0.3 s (no un-revoke: VFIO's memory decoding
# stays off), then the device closed at 0.9 s. The bug needs nothing more: "trivially reachable".
CLEANUP_REDRAIN_FAULTS = ("revoke:at=0.3", "close:at=0.9")
SMALL_CLEANUP_REDRAIN: Mapping[str, Any] = {"faults": ("revoke:at=0.001", "close:at=0.004")}
# On the small configuration (50 ms, 2 jobs per importer by default): revoked 1 ms in, un-revoked
# 1 ms later while maps come (4 jobs per importer), revoked again at 4 ms; the search delays the
# frames that put a map inside the un-revocation's locked window (random: schedule 22, seed 1).
SMALL_KREF_REINIT: Mapping[str, Any] = {"dma_jobs": 4,
                                        "faults": ("revoke:at=0.001,for=0.001", "revoke:at=0.004,for=0.001")}


# ---------------------------------------------------------------------------------- table edits

def keep(table: Table) -> dict:
    return dict(table)


def replace_step(old: Any, new: Any) -> Transform:
    """Every rule that performs step `old` performs `new` in its place."""
    def edit(table: Table) -> dict:
        return {key: rules if rules is VIOLATION else
                tuple(replace(r, do=tuple(new if s is old else s for s in r.do)) for r in rules)
                for key, rules in table.items()}
    return edit


def drop_rule(key: tuple[Any, Any], guard: Any) -> Transform:
    """Row `key` loses its rule guarded by `guard`: the next rule decides instead."""
    def edit(table: Table) -> dict:
        out = dict(table)
        rules = out[key]
        kept = tuple(r for r in rules if r.when is not guard)
        if len(kept) == len(rules):
            raise KeyError(f"row {key} has no rule guarded by {guard}")
        out[key] = kept
        return out
    return edit


def set_rows(rows: Table) -> Transform:
    """These rows replace (or add to) the table's."""
    def edit(table: Table) -> dict:
        return {**table, **rows}
    return edit


def add_step(key: tuple[Any, Any], step: Any, *, after: Any = None) -> Transform:
    """Every rule of row `key` (that does not lead to VIOLATION) also performs `step`: first, or
    right after `after` where the rule performs it."""
    def edit(table: Table) -> dict:
        out = dict(table)
        rules = []
        for r in out[key]:
            if r.then is VIOLATION:
                rules.append(r)
            elif after is None:
                rules.append(replace(r, do=(step, *r.do)))
            elif after in r.do:
                i = r.do.index(after) + 1
                rules.append(replace(r, do=(*r.do[:i], step, *r.do[i:])))
            else:
                rules.append(r)
        out[key] = tuple(rules)
        return out
    return edit


def chain(*edits: Transform) -> Transform:
    def edit(table: Table) -> dict:
        out = dict(table)
        for e in edits:
            out = e(out)
        return out
    return edit


# ---------------------------------------------------------------------------------- the mutants

# Before the May 2026 fix the revoke branch ended its unmap wait without re-arming it (v5-v7 re-armed
# at un-revoke): kref-reinit's and cleanup-redrain's row.
NO_REARM_AT_REVOKE_END: Table = {
    (MoveState.UNMAP_WAIT, MoveEvent.UNMAPS_DONE): (
        Rule(Guard.ALWAYS, MoveState.REVOKED, (Step.END_UNMAP_WAIT, Step.RUN_QUEUED_UNREVOKE)),),
}

MERGED_BUG, REVIEW_CATCH, PLAUSIBLE = "merged bug", "review catch", "plausible mistake"
KINDS = (MERGED_BUG, REVIEW_CATCH, PLAUSIBLE)


@dataclass(frozen=True)
class Mutant:
    base: str
    name: str
    rule: str
    source: str
    expect: str
    kind: str
    exporter: Transform = keep
    importer: Transform = keep
    params: Mapping[str, Any] = field(default_factory=dict)
    small: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"mutant {self.base}+{self.name}: kind must be one of {', '.join(KINDS)}, "
                             f"got {self.kind!r}")


MUTANTS: tuple[Mutant, ...] = (
    # VFIO revokes a BAR: it does not copy or free. This mutant carries a review catch about the
    # revocation's fence wait over to moves, which do.
    Mutant(
        "resv-fence", "wait-kernel-only",
        rule="before a move copies and frees the old range it waits for every fence of the buffer, usage "
             "BOOKKEEP, not only the KERNEL ones (Christian König, of the revocation's wait: \"This should be "
             "DMA_RESV_USAGE_BOOKKEEP so that we wait for everything.\")",
        source="[PATCH v3 6/7] vfio: Wait for dma-buf invalidation to complete (dri-devel, 20 Jan 2026) waited "
               "with DMA_RESV_USAGE_KERNEL in vfio_pci_dma_buf_move() and vfio_pci_dma_buf_cleanup(); Christian "
               "König's review the next day asked for BOOKKEEP, and [PATCH v5 4/8] (24 Jan 2026) used it. Never "
               "merged; VFIO revokes, it does not move: the carry-over to moves is ours",
        kind=REVIEW_CATCH,
        expect="lost_write, stale_read",
        exporter=replace_step(Step.WAIT_FENCES, Step.WAIT_KERNEL_FENCES)),
    Mutant(
        "resv-fence", "wait-write-only",
        rule="a move waits for readers as well as writers: usage BOOKKEEP, not WRITE, which leaves out the "
             "READ fences",
        source="include/linux/dma-resv.h, dma_resv_usage_rw(): the usage a new access waits for (READ for a "
               "write, WRITE for a read), easily taken for the usage to wait with before freeing memory; no "
               "recorded kernel bug",
        kind=PLAUSIBLE,
        expect="stale_read",
        exporter=replace_step(Step.WAIT_FENCES, Step.WAIT_WRITE_FENCES)),
    Mutant(
        "resv-fence", "early-signal",
        rule="a job's fence signals when its DMA has ended, never before: dma_fence_signal(), \"signal "
             "completion of a fence\" (drivers/dma-buf/dma-fence.c, kernel-doc), of the work it stands for",
        source="drivers/dma-buf/dma-fence.c, dma_fence_signal(); the same lie as this project's early-ack "
               "device fault, made by the driver; no recorded kernel bug",
        kind=PLAUSIBLE,
        expect="lost_write, stale_read",
        importer=replace_step(IStep.START_FENCED_DMA, IStep.START_EARLY_SIGNALED_DMA)),
    Mutant(
        "resv-fence", "move-pinned",
        rule="a pinned buffer stays in place: the exporter does not move it while any attachment holds a pin, "
             "and its pinning attachments get no move_notify (dma_buf_ops.pin: \"This is called by "
             "dma_buf_pin() and lets the exporter know that the DMA-buf can't be moved any more.\", "
             "include/linux/dma-buf.h)",
        source="drivers/dma-buf/dma-buf.c, dma_buf_pin() (\"Lock down the DMA-buf\"); include/linux/dma-buf.h, "
               "dma_buf_ops.pin; TTM does not evict a pinned BO (ttm_bo_pin; not checked against the source); "
               "no recorded kernel bug",
        kind=PLAUSIBLE,
        expect="races on buffers moved while pinned (through the mapping the pinning job keeps)",
        exporter=drop_rule((MoveState.IDLE, MoveEvent.MOVE_WANTED), Guard.PINNED),
        params={"pin_ratio": PIN_RATIO}, small=SMALL_PINS),
    Mutant(
        "resv-fence", "unpin-stays-deaf",
        rule="after unpin the attachment is told of moves again: dma_buf_unpin() \"allows the exporter to move "
             "any mapping of @attach again and inform the importer through &dma_buf_attach_ops.move_notify\" "
             "(drivers/dma-buf/dma-buf.c, text before 7.1)",
        source="drivers/dma-buf/dma-buf.c, dma_buf_unpin() (7.1 ends the sentence \"&dma_buf_attach_ops."
               "invalidate_mappings\"); no recorded kernel bug",
        kind=PLAUSIBLE,
        expect="races after unpin (a kept mapping never invalidated)",
        exporter=replace_step(Step.NOTIFY, Step.NOTIFY_NEVER_PINNED),
        params={"pin_ratio": PIN_RATIO}, small=SMALL_PINS),
    Mutant(
        "resv-fence", "no-kernel-fence-wait",
        rule="an importer waits for the move's KERNEL fence before it touches the new placement: \"Drivers "
             "*always* must wait for those fences before accessing the resource protected by the dma_resv "
             "object. The only exception for that is when the resource is known to be locked down in place by "
             "pinning it previously.\" (include/linux/dma-resv.h, DMA_RESV_USAGE_KERNEL)",
        source="include/linux/dma-resv.h, DMA_RESV_USAGE_KERNEL (TTM publishes the move's fence and unlocks "
               "before the copy ends); a merged analogue in Xe: \"drm/xe: Wait on external BO kernel fences in "
               "exec IOCTL\" (intel-xe and stable, 2 Jul 2026; Fixes: dd08ebf6c352; CVE-2026-74440), where "
               "the exec path skipped the external BOs' KERNEL slots",
        kind=MERGED_BUG,
        expect="unfenced_access",
        importer=drop_rule((AttState.MAPPING, AttEvent.MAP_OK), IGuard.FENCED), small=SMALL_LONG_COPY),
    Mutant(
        "resv-fence", "map-unlocked",
        rule="a map takes the reservation lock, so no mapping is handed out while a move holds it: \"the "
             "mapping function must be called with this lock held as well. This makes sure that no mapping is "
             "created concurrently with an ongoing move operation.\" (include/linux/dma-buf.h, "
             "dma_buf_attach_ops.move_notify)",
        source="include/linux/dma-buf.h, dma_buf_attach_ops.move_notify; drivers/dma-buf/dma-buf.c, "
               "dma_buf_map_attachment(): dma_resv_assert_held (for a dynamic importer in 5.7-6.1; for every "
               "importer since 6.2); no recorded kernel bug",
        kind=PLAUSIBLE,
        expect="lost_write, stale_read (maps served the old placement during the fence wait)",
        exporter=set_rows({
            (MoveState.NOTIFYING, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.SERVE_MAP_UNLOCKED,)),),
            (MoveState.FENCE_WAIT, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.SERVE_MAP_UNLOCKED,)),),
        })),
    Mutant(
        "resv-fence", "signal-after-next-map",
        rule="\"any code required for fence completion cannot acquire a &dma_resv lock\" (drivers/dma-buf/"
             "dma-fence.c, DOC: fence cross-driver contract): a fence whose signalling waits for a map, which "
             "waits for the lock its waiter holds, never signals",
        source="drivers/dma-buf/dma-fence.c, DOC \"fence cross-driver contract\": \"Drivers are allowed to "
               "call dma_fence_wait() while holding dma_resv_lock().\"; no recorded kernel bug",
        kind=PLAUSIBLE,
        expect="deadlock, broken only by the fence timeout",
        importer=chain(
            replace_step(IStep.START_FENCED_DMA, IStep.START_HELD_FENCE_DMA),
            add_step((AttState.ACTIVE, AttEvent.DMA_DONE), IStep.HOLD_FENCE),
            add_step((AttState.IDLE, AttEvent.JOB), IStep.BLOCK_HELD_FENCE, after=IStep.SEND_MAP),
            add_step((AttState.MAPPING, AttEvent.MAP_OK), IStep.SIGNAL_HELD_FENCE),
            add_step((AttState.MAPPING, AttEvent.MAP_FAILED), IStep.SIGNAL_HELD_FENCE),
            add_step((AttState.IDLE, AttEvent.LEAVE), IStep.SIGNAL_HELD_FENCE),
            add_step((ANY, AttEvent.RESET), IStep.DROP_HELD_FENCE))),
    # vfio, before v7: un-revoke marked the buffer mappable under the lock and re-armed the unmap
    # wait (kref_init, reinit_completion) only after unlocking. A map served in between
    # (vfio_pci_dma_buf_map's kref_get) took its reference on the count the revocation had drained
    # to zero (refcount_t: "addition on 0; use-after-free"), and the re-arm wiped it. That
    # mapping's unmap then completes the wait while nothing waits, and the next revocation ends its
    # unmap wait at once, with mappings still live (refcount_t: underflow). The data stays right
    # (the importers keep the rules): what catches it is the checker's revoke_incomplete finding,
    # and the exporter's refcount warnings (the refcount_warning finding).
    Mutant(
        "revoke", "kref-reinit",
        rule="the unmap wait is re-armed before the buffer is mappable again: every mapping served after "
             "un-revoke is counted by the next revocation's wait",
        source="posted [PATCH v5 4/8] and [PATCH v6 4/8] vfio: Wait for dma-buf invalidation to complete (24 and "
               "30 Jan 2026), un-revoke branch of vfio_pci_dma_buf_move(): `revoked` cleared under the lock, "
               "kref_init and reinit_completion after unlocking; [PATCH v7 4/8] (31 Jan 2026, as merged) re-arms "
               "first. The fix's commit on the author's dmabuf-revoke-v6 branch is titled \"vfio: Fix race "
               "between dma-buf attach and kref reinitialization\"; the racing operation is a map's kref_get, "
               "not an attach",
        kind=REVIEW_CATCH,
        expect="revoke_incomplete (a finding: a revocation ends its unmap wait with a mapping live), "
               "refcount_warning (a finding); no race",
        exporter=set_rows({
            **NO_REARM_AT_REVOKE_END,
            (MoveState.REVOKED, MoveEvent.UNREVOKE): (
                Rule(Guard.ALWAYS, MoveState.UNREVOKING,
                     (Step.BEGIN_UNREVOKE, Step.LOCK, Step.MARK_UNREVOKED, *NOTIFY_STEPS)),),
            (MoveState.UNREVOKE_FENCE_WAIT, MoveEvent.FENCES_SIGNALED): (
                Rule(Guard.ALWAYS, MoveState.IDLE,
                     (Step.END_FENCE_WAIT, Step.UNLOCK, Step.END_REVOCATION, Step.SERVE_DEFERRED_MAPS,
                      Step.REARM_UNMAP_WAIT, Step.RUN_QUEUED_REVOKE)),),
        }),
        params={"faults": KREF_REINIT_FAULTS, "move_rate": 0.0}, small=SMALL_KREF_REINIT),
    # vfio, posted v5/v6: wait_for_completion_timeout(&priv->comp, secs_to_jiffies(1)), then
    # WARN(!wait, ...), and the revoke branch returned: the revocation went on with the mapping of
    # an importer that had not unmapped still live. As merged (v7) the wait has no bound.
    Mutant(
        "revoke", "v6-unmap-timeout",
        rule="the revocation waits for every unmap without bound (7.1: wait_for_completion()); Christian "
             "König: \"it is mandatory that you keep the mapping around indefinitely until the importer "
             "closes it\"",
        source="posted [PATCH v5 4/8] and [PATCH v6 4/8] vfio: Wait for dma-buf invalidation to complete (24 and "
               "30 Jan 2026), vfio_pci_dma_buf_move(): wait_for_completion_timeout(&priv->comp, "
               "secs_to_jiffies(1)) then WARN \"Timed out waiting for DMABUF unmap, importer has a broken "
               "invalidate_mapping()\"; NAKed by Christian König on v5 (linux-rdma, 30 Jan 2026); v7 (31 Jan "
               "2026, as merged) waits with wait_for_completion(). --unmap-wait-ms is its bound (v5/v6: 1 s)",
        kind=REVIEW_CATCH,
        expect="revoke_incomplete (the revocation ends its unmap wait with the ignoring importer's mapping "
               "live), an unmap timeout (the warning); no race",
        exporter=set_rows({
            (MoveState.UNMAP_WAIT, MoveEvent.UNMAP_WAIT_TIMEOUT): (
                Rule(Guard.ALWAYS, MoveState.REVOKED,
                     (Step.WARN_UNMAPS, Step.END_UNMAP_WAIT, Step.RUN_QUEUED_UNREVOKE)),),
        }),
        params={"faults": V6_UNMAP_TIMEOUT_FAULTS, "move_rate": 0.0, "unmap_wait_ms": 300.0},
        small=SMALL_V6_UNMAP_TIMEOUT),
    # vfio, 1a8a5227f229 as merged for 7.1 (v7 4/8): vfio_pci_dma_buf_cleanup() ran the drain
    # unconditionally, and the revoke branch did not re-arm (un-revoke did). Closing the device fd
    # after a revocation drained twice: "the second kref_put underflowed and the subsequent
    # wait_for_completion() blocked on a completion that the first run had already consumed".
    Mutant(
        "revoke", "cleanup-redrain",
        rule="closing the device does not drain a revoked buffer again: cleanup goes through the revoke "
             "path, which \"is idempotent for dma-bufs already in the revoked state\", and the revoke "
             "branch re-arms the kref and completion (\"vfio/pci: fix dma-buf kref underflow after revoke\")",
        source="1a8a5227f229 vfio: Wait for dma-buf invalidation to complete (v7 4/8, merged for 7.1), "
               "vfio_pci_dma_buf_cleanup(); fixed by \"[PATCH] vfio/pci: fix dma-buf kref underflow after "
               "revoke\" (Alex Williamson, kvm, 7 May 2026; applied for v7.1-rc on 14 May 2026; Cc: stable)",
        kind=MERGED_BUG,
        expect="refcount_warning (\"refcount_t: underflow; use-after-free\" at the close), stuck "
               "(the second unmap wait never ends, with no mapping live); no race",
        exporter=set_rows({
            # v7: the revoke branch ends without re-arming ...
            **NO_REARM_AT_REVOKE_END,
            # ... un-revoke re-arms, before the buffer is mappable again ...
            (MoveState.UNREVOKE_FENCE_WAIT, MoveEvent.FENCES_SIGNALED): (
                Rule(Guard.ALWAYS, MoveState.IDLE,
                     (Step.END_FENCE_WAIT, Step.REARM_UNMAP_WAIT, Step.MARK_UNREVOKED, Step.UNLOCK,
                      Step.END_REVOCATION, Step.SERVE_DEFERRED_MAPS, Step.RUN_QUEUED_REVOKE)),),
            # ... and cleanup drains a revoked buffer again: mark, invalidate, fences, kref_put, wait.
            (MoveState.REVOKED, MoveEvent.CLOSE): (
                Rule(Guard.ALWAYS, MoveState.REVOKING,
                     (Step.BEGIN_REVOCATION, Step.LOCK, Step.MARK_REVOKED, *NOTIFY_STEPS)),),
        }),
        params={"faults": CLEANUP_REDRAIN_FAULTS}, small=SMALL_CLEANUP_REDRAIN),
)

# Compositions that campaigns run beside the single mutants.
DOUBLES: tuple[str, ...] = ()

BY_NAME: dict[tuple[str, str], Mutant] = {(m.base, m.name): m for m in MUTANTS}


class MutantError(ValueError):
    """A BASE+MUTATION that names no declared mutant."""


def split(spec: str) -> tuple[str, list[str]]:
    base, *mutations = spec.split("+")
    return base, mutations


def names() -> list[str]:
    """Every declared mutant's full name, then the declared compositions."""
    return [f"{m.base}+{m.name}" for m in MUTANTS] + list(DOUBLES)


def mutations_of(spec: str) -> list[Mutant]:
    """The declared mutants `BASE+M1+...` is made of; MutantError naming what is not declared."""
    base, mutations = split(spec)
    if not mutations or not all(mutations):
        raise MutantError(f"{spec!r}: a mutant is named BASE+MUTATION (e.g. resv-fence+wait-kernel-only)")
    out = []
    for name in mutations:
        m = BY_NAME.get((base, name))
        if m is None:
            known = [n for b, n in BY_NAME if b == base]
            raise MutantError(f"{spec!r}: no mutant {name!r} of {base!r} (known: "
                              f"{', '.join(known) if known else 'none'}; dmabuf-emu strategies --mutants)")
        if m in out:
            raise MutantError(f"{spec!r}: {name!r} twice")
        out.append(m)
    return out


def params_of(spec: str) -> dict[str, Any]:
    """The run parameters a mutant's workload needs (those of each of its mutations)."""
    return _merged(m.params for m in mutations_of(spec))


def small_of(spec: str) -> dict[str, Any]:
    """What the simulator's small configuration needs to reach the mutant's bug (each mutation's
    `small`): run parameters, and dma_jobs / moves for the simulated driver."""
    return _merged(m.small for m in mutations_of(spec))


def _merged(each: Any) -> dict[str, Any]:
    """Each mutation's parameters over the last's; their faults all together, in order."""
    out: dict[str, Any] = {}
    for params in each:
        out.update({k: v for k, v in params.items() if k != "faults"})
        if params.get("faults"):
            out["faults"] = (*out.get("faults", ()), *params["faults"])
    return out


def derive(spec: str, base_module: ModuleType) -> ModuleType:
    """The mutant `spec` of `base_module` (already resolved), as a strategy module. Raises
    MutantError if it is not declared; TableError from the halves if its tables cannot run."""
    from protocol.exporter import compile_spec as compile_exporter
    from protocol.importer import compile_spec as compile_importer
    ms = mutations_of(spec)
    ex_table, im_table = dict(base_module.EXPORTER.table), dict(base_module.IMPORTER.table)
    for m in ms:
        ex_table, im_table = m.exporter(ex_table), m.importer(im_table)
    rule = "; and ".join(m.rule for m in ms)
    module = ModuleType(f"dmabuf_emu_mutant_{spec}")
    module.NAME = spec
    module.SUMMARY = f"mutant of {base_module.NAME}: breaks the rule: " + "; ".join(m.rule for m in ms)
    module.EXPORTER = ExporterSpec(spec, ex_table, breaks=rule, timers=base_module.EXPORTER.timers)  # its timers kept
    module.IMPORTER = ImporterSpec(spec, im_table, base_module.IMPORTER.kinds, breaks=rule)
    compile_exporter(module.EXPORTER)
    compile_importer(module.IMPORTER)
    module.SOURCE = spec
    module.MUTANT = describe(spec)
    module.__doc__ = f"{spec}: {module.SUMMARY}."
    return module


def describe(spec: str) -> dict[str, Any]:
    """What a run of mutant `spec` says about itself (service_start, run_start: `mutant`)."""
    ms = mutations_of(spec)
    base, mutations = split(spec)
    return {"name": spec, "base": base, "mutations": mutations,
            "rule": "; and ".join(m.rule for m in ms), "source": "; ".join(m.source for m in ms),
            "kind": "; ".join(m.kind for m in ms),
            "expect": "; ".join(m.expect for m in ms)}
