"""Known kernel bugs as mutants: a correct strategy with one rule broken, a row or a step changed.

A mutant is named `BASE+MUTATION` wherever a strategy is named (`--strategy
resv-fence+wait-kernel-only`); `dmabuf-emu strategies --mutants` lists them with the rule each
breaks and where the rule (or the bug) is written down, and `dmabuf-emu campaign --strategies
mutants` runs them all. The tools must catch every one (the mutation score is their power to
expose races) and never cry wolf on the correct strategies.

Rules of this file:
- One `Mutant(...)` entry per mutant in MUTANTS: the strategy it breaks (`base`, a NAME), its
  `name`, the `rule` it breaks (a sentence, quoted from the kernel where it can be), its `source`,
  what the tools must find (`expect`), and how it changes the base's tables: `exporter` and
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

@dataclass(frozen=True)
class Mutant:
    base: str
    name: str
    rule: str
    source: str
    expect: str
    exporter: Transform = keep
    importer: Transform = keep
    params: Mapping[str, Any] = field(default_factory=dict)
    small: Mapping[str, Any] = field(default_factory=dict)


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "resv-fence", "wait-kernel-only",
        rule="before a move copies and frees the old range it waits for every fence of the buffer, usage "
             "BOOKKEEP (\"so that we wait for everything\"), not only the KERNEL ones",
        source="the 2026 VFIO dma-buf revoke series: its first version waited with DMA_RESV_USAGE_KERNEL; "
               "review corrected it to DMA_RESV_USAGE_BOOKKEEP",
        expect="lost_write, stale_read",
        exporter=replace_step(Step.WAIT_FENCES, Step.WAIT_KERNEL_FENCES)),
    Mutant(
        "resv-fence", "wait-write-only",
        rule="a move waits for readers as well as writers: usage BOOKKEEP, not WRITE, which leaves out the "
             "READ fences",
        source="include/linux/dma-resv.h, dma_resv_usage_rw(): the usage a new access waits for (READ for a "
               "write, WRITE for a read), easily taken for the usage to wait with before freeing memory",
        expect="stale_read",
        exporter=replace_step(Step.WAIT_FENCES, Step.WAIT_WRITE_FENCES)),
    Mutant(
        "resv-fence", "early-signal",
        rule="a job's fence signals when its DMA has ended, never before: dma_fence_signal() \"signal[s] "
             "completion\" of the work the fence stands for",
        source="drivers/dma-buf/dma-fence.c, dma_fence_signal(); the same lie as this project's early-ack "
               "device fault, made by the driver",
        expect="lost_write, stale_read",
        importer=replace_step(IStep.START_FENCED_DMA, IStep.START_EARLY_SIGNALED_DMA)),
    Mutant(
        "resv-fence", "move-pinned",
        rule="a pinned buffer stays in place: the exporter does not move it while any attachment holds a pin, "
             "and its pinning attachments get no move_notify",
        source="drivers/dma-buf/dma-buf.c, dma_buf_pin() (\"Lock down the DMA-buf\"); TTM does not evict a "
               "pinned BO (ttm_bo_pin)",
        expect="races on buffers moved while pinned (through the mapping the pinning job keeps)",
        exporter=drop_rule((MoveState.IDLE, MoveEvent.MOVE_WANTED), Guard.PINNED),
        params={"pin_ratio": PIN_RATIO}, small=SMALL_PINS),
    Mutant(
        "resv-fence", "unpin-stays-deaf",
        rule="after unpin the attachment is told of moves again: dma_buf_unpin() \"allows the exporter to move "
             "any mapping of @attach again and inform the importer through &dma_buf_attach_ops.move_notify\"",
        source="drivers/dma-buf/dma-buf.c, dma_buf_unpin()",
        expect="races after unpin (a kept mapping never invalidated)",
        exporter=replace_step(Step.NOTIFY, Step.NOTIFY_NEVER_PINNED),
        params={"pin_ratio": PIN_RATIO}, small=SMALL_PINS),
    Mutant(
        "resv-fence", "no-kernel-fence-wait",
        rule="an importer waits for the move's KERNEL fence before it touches the new placement: \"Drivers "
             "*always* must wait for those fences before accessing the resource\"",
        source="include/linux/dma-resv.h, DMA_RESV_USAGE_KERNEL (TTM publishes the move's fence and unlocks "
               "before the copy ends)",
        expect="unfenced_access",
        importer=drop_rule((AttState.MAPPING, AttEvent.MAP_OK), IGuard.FENCED), small=SMALL_LONG_COPY),
    Mutant(
        "resv-fence", "map-unlocked",
        rule="a map takes the reservation lock, so no mapping is handed out while a move holds it "
             "(dma_buf_map_attachment: dma_resv_assert_held for a dynamic importer)",
        source="drivers/dma-buf/dma-buf.c, dma_buf_map_attachment(); include/linux/dma-buf.h, move_notify "
               "(\"called with the reservation lock held\")",
        expect="lost_write, stale_read (maps served the old placement during the fence wait)",
        exporter=set_rows({
            (MoveState.NOTIFYING, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.SERVE_MAP_UNLOCKED,)),),
            (MoveState.FENCE_WAIT, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.SERVE_MAP_UNLOCKED,)),),
        })),
    Mutant(
        "resv-fence", "signal-after-next-map",
        rule="any code required for fence completion cannot acquire a dma_resv lock: a fence whose signalling "
             "waits for a map, which waits for the lock its waiter holds, never signals",
        source="drivers/dma-buf/dma-fence.c, \"fence cross-driver contract\" (dma_fence_wait() may be called "
               "under dma_resv_lock())",
        expect="deadlock, broken only by the fence timeout",
        importer=chain(
            replace_step(IStep.START_FENCED_DMA, IStep.START_HELD_FENCE_DMA),
            add_step((AttState.ACTIVE, AttEvent.DMA_DONE), IStep.HOLD_FENCE),
            add_step((AttState.IDLE, AttEvent.JOB), IStep.BLOCK_HELD_FENCE, after=IStep.SEND_MAP),
            add_step((AttState.MAPPING, AttEvent.MAP_OK), IStep.SIGNAL_HELD_FENCE),
            add_step((AttState.MAPPING, AttEvent.MAP_FAILED), IStep.SIGNAL_HELD_FENCE),
            add_step((AttState.IDLE, AttEvent.LEAVE), IStep.SIGNAL_HELD_FENCE),
            add_step((ANY, AttEvent.RESET), IStep.DROP_HELD_FENCE))),
    # vfio: before the fix, un-revoke marked the buffer mappable under the lock and re-armed the
    # unmap wait (kref_init, reinit_completion) only after unlocking: a map served in between took
    # its reference on the count the revocation had drained to zero, and the re-arm wiped it. That
    # mapping's unmap then completes the wait while nothing waits, and the next revocation ends its
    # unmap wait at once, with mappings still live (refcount_t: underflow). The data stays right
    # (the importers keep the rules): what catches it is the checker's revoke_incomplete finding.
    Mutant(
        "revoke", "kref-reinit",
        rule="the unmap wait is re-armed before the buffer is mappable again: every mapping served after "
             "un-revoke is counted by the next revocation's wait",
        source="vfio: Fix race between dma-buf attach and kref reinitialization (dmabuf-revoke v6, January 2026)",
        expect="revoke_incomplete (a finding: a revocation ends its unmap wait with a mapping live), "
               "refcount_warning events; no race",
        exporter=set_rows({
            (MoveState.UNMAP_WAIT, MoveEvent.UNMAPS_DONE): (
                Rule(Guard.ALWAYS, MoveState.REVOKED, (Step.END_UNMAP_WAIT, Step.RUN_QUEUED_UNREVOKE)),),
            (MoveState.REVOKED, MoveEvent.UNREVOKE): (
                Rule(Guard.ALWAYS, MoveState.UNREVOKING,
                     (Step.BEGIN_UNREVOKE, Step.LOCK, Step.MARK_UNREVOKED, *NOTIFY_STEPS)),),
            (MoveState.UNREVOKE_FENCE_WAIT, MoveEvent.FENCES_SIGNALED): (
                Rule(Guard.ALWAYS, MoveState.IDLE,
                     (Step.END_FENCE_WAIT, Step.UNLOCK, Step.END_REVOCATION, Step.SERVE_DEFERRED_MAPS,
                      Step.REARM_UNMAP_WAIT, Step.RUN_QUEUED_REVOKE)),),
        }),
        params={"faults": KREF_REINIT_FAULTS, "move_rate": 0.0}, small=SMALL_KREF_REINIT),
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
            "expect": "; ".join(m.expect for m in ms)}
