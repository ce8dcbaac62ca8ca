"""Mutants, kernel rules broken (issue 15): each a correct strategy with one rule broken in its
tables, each caught by the checker (which knows no strategy) with a witness quoting the rule.

The sans-IO tests show each mutant's table change doing what its bug does (tests/world.py judges
nothing); whether that races is the checker's verdict, asked of the real services twice: in the
simulator, where explore's random search (in memory, a few schedules of the small configuration)
catches every mutant and none of the same schedules of resv-fence, and in real runs (one per
mutant, short, under a high move rate so that the race is certain). The full sweeps, 10 seeds of
the standard workload per mutant in real runs and 10 workload seeds per mutant in explore, are
`-m slow` (and the commands of README "Mutants").
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deploy.options import RunParams
from deploy.run import run
from protocol.exporter import ExporterSpec, MoveEvent, MoveState, Step, compile_spec as compile_exporter
from protocol.importer import AttEvent, AttState, ImporterSpec, IStep, compile_spec as compile_importer
from protocol.machine import TableError
from protocol.strategies import STRATEGIES, StrategyError, mutants, resolve
from tests.helpers import ROOT
from tests.test_e2e import assert_nothing_left, history
from tests.test_strategies import joined, vram_buffer

BASE = STRATEGIES["resv-fence"]


# ---------------------------------------------------------------------------------- declarations

@pytest.mark.parametrize("name", mutants.names())
def test_every_mutant_is_its_base_with_rows_changed_and_checked(name: str) -> None:
    m = resolve(name)
    assert m.NAME == m.SOURCE == name and resolve(name) is m
    assert set(m.MUTANT) >= {"name", "rule", "source", "expect"} and all(m.MUTANT[k] for k in ("rule", "source"))
    base = resolve(mutants.split(name)[0])
    changed = [k for half in ("EXPORTER", "IMPORTER")
               for k in set(getattr(m, half).table) | set(getattr(base, half).table)
               if getattr(m, half).table.get(k) != getattr(base, half).table.get(k)]
    assert changed, "a mutant changes at least one row"
    assert m.EXPORTER.breaks == m.IMPORTER.breaks == m.MUTANT["rule"]


def test_a_mutant_that_is_not_declared_is_one_clear_line() -> None:
    for spec, says in (("resv-fence+nope", "known: wait-kernel-only"), ("pin+wait-kernel-only", "known: none"),
                       ("resv-fence+", "BASE+MUTATION"), ("resv-fence+map-unlocked+map-unlocked", "twice"),
                       ("nosuch+wait-kernel-only", "must be one of")):
        with pytest.raises(StrategyError) as err:
            resolve(spec)
        assert says in str(err.value) and "\n" not in str(err.value), spec


def test_mutations_compose_and_break_both_rules() -> None:
    m = resolve("resv-fence+map-unlocked+wait-kernel-only")
    assert " and " in m.MUTANT["rule"] and m.MUTANT["mutations"] == ["map-unlocked", "wait-kernel-only"]
    rows = compile_exporter(m.EXPORTER).table
    assert rows[(MoveState.NOTIFYING, MoveEvent.MAP)][0].do == (Step.SERVE_MAP_UNLOCKED,)
    assert Step.WAIT_KERNEL_FENCES in rows[(MoveState.NOTIFYING, MoveEvent.NOTIFY_DONE)][0].do


def test_a_known_bug_step_is_refused_outside_a_mutant() -> None:
    table = mutants.replace_step(Step.WAIT_FENCES, Step.WAIT_KERNEL_FENCES)(BASE.EXPORTER.table)
    with pytest.raises(TableError, match="wait_kernel_fences is a known bug, for mutants only"):
        compile_exporter(ExporterSpec("mine", table))
    compile_exporter(ExporterSpec("mine", table, breaks="on purpose"))
    itable = mutants.replace_step(IStep.START_FENCED_DMA, IStep.START_EARLY_SIGNALED_DMA)(BASE.IMPORTER.table)
    with pytest.raises(TableError, match="start_early_signaled_dma is a known bug"):
        compile_importer(ImporterSpec("mine", itable))


def test_strategies_mutants_lists_each_with_its_rule_and_source(capsys) -> None:
    from deploy.cli import main
    assert main(["strategies", "--mutants"]) == 0
    out = capsys.readouterr().out
    for name in mutants.names():
        m = resolve(name).MUTANT
        assert f"\n{name}\n    breaks    {m['rule']}\n    source    {m['source']}" in out
    assert "workload  --pin-ratio 0.25" in out
    assert "workload  --move-rate 0 --fault revoke:at=0.3,for=0.3 --fault revoke:at=0.9,for=0.3" in out


def test_campaign_mutants_runs_every_mutant_with_its_workload_and_the_controls() -> None:
    from deploy.campaign import strategy_variants
    variants = dict(strategy_variants("mutants"))
    assert variants["resv-fence"] == {"strategy": "resv-fence"}
    assert variants["resv-fence-pin-ratio-0.25"] == {"strategy": "resv-fence", "pin_ratio": 0.25}
    assert variants["resv-fence+move-pinned"] == {"strategy": "resv-fence+move-pinned", "pin_ratio": 0.25}
    assert set(variants) == set(mutants.names()) | {"resv-fence", "resv-fence-pin-ratio-0.25", "revoke-move-rate-0.0",
                                                     "revoke-move-rate-0.0-unmap-wait-ms-300.0", "revoke"}
    # each revoke mutant's control runs under its own faults (no two of them share a label)
    assert variants["revoke"]["faults"] == variants["revoke+cleanup-redrain"]["faults"]
    assert (variants["revoke-move-rate-0.0-unmap-wait-ms-300.0"]["faults"]
            == variants["revoke+v6-unmap-timeout"]["faults"])
    # revoke's control runs under kref-reinit's workload, its revocations included
    assert variants["revoke-move-rate-0.0"]["faults"] == variants["revoke+kref-reinit"]["faults"]
    assert [f["kind"] for f in variants["revoke+kref-reinit"]["faults"]].count("revoke") == REVOCATIONS


# kref-reinit's revocations, as its workload declares them (protocol/strategies/mutants.py)
REVOCATIONS = sum(1 for t in mutants.KREF_REINIT_FAULTS if t.startswith("revoke:"))


def test_a_revoke_mutants_faults_come_on_top_of_each_plans_and_survive_the_command_line() -> None:
    from deploy.campaign import plan_runs
    specs, _ = plan_runs(RunParams(), "revoke+kref-reinit", "none,net", 1)
    by_plan = {s.plan: s.params for s in specs}
    own = [f for f in by_plan["none"].faults]
    assert [f["kind"] for f in own].count("revoke") == REVOCATIONS and by_plan["none"].move_rate == 0.0
    assert by_plan["net"].faults[-len(own):] == tuple(own) and len(by_plan["net"].faults) > len(own)


def test_the_mutation_score_counts_a_revoke_incomplete_finding_as_caught(tmp_path: Path) -> None:
    from deploy.campaign_report import digest, mutation_score
    m = resolve("revoke+kref-reinit").MUTANT
    item = {"sentence": "a revocation ended its unmap wait", "events": [{}, {}], "broken_rule": m}
    found = {"races": {"total": 0}, "mutant": m,
             "findings": {"revoke_incomplete": {"count": 2, "items": [item]}, "deadlock": {"count": 0, "items": []}}}
    clean = {"races": {"total": 0}, "findings": {"revoke_incomplete": {"count": 0, "items": []}}}
    runs = [digest(tmp_path, found, "revoke+kref-reinit", "none", 1),
            digest(tmp_path, clean, "revoke-move-rate-0.0", "none", 1)]
    rows = {r["strategy"]: r for r in mutation_score({"runs": runs, "strategy_order": None})}
    r = rows["revoke+kref-reinit"]
    assert (r["caught"], r["kinds"], r["rule_quoted"], r["witness_events_min"]) == (1, {"revoke_incomplete": 2}, 1, 2)
    assert rows["revoke-move-rate-0.0"]["caught"] == 0

# ---------------------------------------------------------------------------------- the bugs, sans-IO

@pytest.mark.parametrize("mutant, access, waits", [
    ("resv-fence", "read", True), ("resv-fence", "write", True),
    ("resv-fence+wait-kernel-only", "read", False), ("resv-fence+wait-kernel-only", "write", False),
    ("resv-fence+wait-write-only", "read", False), ("resv-fence+wait-write-only", "write", True),
    ("resv-fence+early-signal", "write", False),
])
def test_which_running_jobs_the_move_waits_for(mutant: str, access: str, waits: bool) -> None:
    w = joined(mutant)
    buffer = vram_buffer(w)
    w.job("importer-1", 1, buffer, access)
    w.settle()
    w.pressure()
    w.settle()
    w.check_fences()
    assert bool(w.copies) is not waits, f"{mutant}: a {access} job running; the copy {'waits' if waits else 'does not wait'}"
    begin = next(f for s, e, f in w.events if e == "fence_wait_begin")
    assert begin["usage"] == {"resv-fence+wait-kernel-only": "KERNEL", "resv-fence+wait-write-only": "WRITE"}.get(
        mutant, "BOOKKEEP")
    assert [f["seq"] for f in begin["fences"]] == ([1] if waits else [])


def test_the_wait_for_events_name_the_lock_holder_and_the_fences() -> None:
    w = joined("resv-fence", importers=2)
    buffer = vram_buffer(w)
    w.job("importer-1", 1, buffer, "write")
    w.settle()
    w.pressure()
    w.settle()
    w.job("importer-2", 1, buffer, "read")
    w.settle()
    ev = {e: f for s, e, f in w.events if s == "exporter"}
    assert ev["resv_lock"] == {"buffer": buffer, "move": 1, "trigger": "move_wanted"}
    assert ev["fence_wait_begin"]["fences"] == [{"importer": "importer-1", "slot": 1, "seq": 1, "usage": "WRITE"}]
    assert ev["map_deferred"] == {"id": ev["map_deferred"]["id"], "importer": "importer-2", "buffer": buffer,
                                  "attachment": ev["map_deferred"]["attachment"], "move": 1, "trigger": "map"}
    w.dma_done("importer-1", 1)
    w.check_fences()
    unlock = [f for s, e, f in w.events if e == "resv_unlock"]
    assert unlock == [{"buffer": buffer, "move": 1, "trigger": "fences_signaled"}], "the holder is named at unlock too"


def test_a_pinned_jobs_mapping_is_kept_after_unpin_until_move_notify() -> None:
    w = joined("resv-fence")
    buffer = vram_buffer(w)
    imp = w.peers["importer-1"]
    w._apply("importer-1", imp.job(1, buffer, "write", w.now, pin=True))
    w.settle()
    assert [e for s, e, f in w.events if s == "exporter"][-2:] == ["pin", "map_served"]
    w.pressure()
    assert [f["reason"] for s, e, f in w.events if e == "move_refused"] == ["pinned"]
    w.dma_done("importer-1", 1)
    w.settle()
    assert imp._atts[buffer].state is AttState.KEPT and buffer in imp.idle_buffers()
    w.job("importer-1", 2, buffer, "read")        # on the kept mapping: no map, a fence
    assert w.jobs[("importer-1", 2)].start.fenced and w.event_names("exporter").count("map_served") == 1
    w.dma_done("importer-1", 2)
    w.settle()
    w._apply("importer-1", imp.job(3, buffer, "write", w.now, pin=True))
    w.settle()
    w.dma_done("importer-1", 3)
    w.settle()
    w.pressure()                                  # unpinned: the move notifies the kept mapping
    w.settle()
    assert imp._atts[buffer].state is AttState.IDLE, "move_notify unmapped the kept mapping"
    w.check_fences()
    copy = w.finish_copy()
    assert copy.src.gen == w.jobs[("importer-1", 3)].start.placement.gen and w.jobs[("importer-1", 3)].ended


@pytest.mark.parametrize("mutant", ["resv-fence+move-pinned", "resv-fence+unpin-stays-deaf"])
def test_the_pin_mutants_leave_a_kept_mapping_stale(mutant: str) -> None:
    w = joined(mutant)
    buffer = vram_buffer(w)
    imp = w.peers["importer-1"]
    w._apply("importer-1", imp.job(1, buffer, "write", w.now, pin=True))
    w.settle()
    if mutant.endswith("move-pinned"):
        w.pressure()                              # moved while pinned, and the pin heard nothing
    w.dma_done("importer-1", 1)
    w.settle()
    if mutant.endswith("unpin-stays-deaf"):
        w.pressure()                              # moved after unpin, and the unpinned heard nothing
    w.settle()
    w.check_fences()
    w.finish_copy()
    w.settle()
    att = imp._atts[buffer]
    assert not [f for s, e, f in w.events if e == "move_notify_sent" and f["attachment"] == att.id]
    assert att.state is AttState.KEPT and [f["buffer"] for s, e, f in w.events if e == "move_begin"][0] == buffer
    w.job("importer-1", 2, buffer, "write")      # on the stale kept mapping, after the free
    freed = [f["from_gen"] for s, e, f in w.events if e == "free" and f["buffer"] == buffer]
    assert w.jobs[("importer-1", 2)].start.placement.gen in freed, "a write into the freed range"


def test_map_unlocked_serves_the_old_placement_while_the_move_waits_for_fences() -> None:
    w = joined("resv-fence+map-unlocked", importers=2)
    buffer = vram_buffer(w)
    old = w.exporter.placement_of(buffer)
    w.job("importer-1", 1, buffer, "write")
    w.settle()
    w.pressure()
    w.settle()                                    # every callback returned: the fence wait
    w.job("importer-2", 1, buffer, "write")
    w.settle()
    assert w.jobs[("importer-2", 1)].start.placement == old, "served during the move, without the lock"
    assert "map_deferred" not in w.event_names()
    w.dma_done("importer-1", 1)
    w.check_fences()
    assert w.copies, "the snapshot was taken before importer-2's fence: the copy does not wait for it"
    copy = w.finish_copy()
    assert copy.src == old and w.jobs[("importer-2", 1)].ended is None, "copied away from under the write"


def test_no_kernel_fence_wait_touches_the_new_placement_while_the_copy_runs() -> None:
    w = joined("resv-fence+no-kernel-fence-wait", importers=2)
    buffer = vram_buffer(w)
    w.pressure()
    w.settle()
    w.check_fences()
    assert w.copies and "resv_unlock" in w.event_names("exporter"), "the copy runs, the lock released"
    w.job("importer-2", 1, buffer, "read")
    w.settle()
    job = w.jobs[("importer-2", 1)]
    assert job.start.placement == w.exporter.placement_of(buffer) and not w.kernel_waits
    assert w.copies and w.copies[0].dst == job.start.placement, "on the copy's destination before it ended"


def test_signal_after_next_map_holds_the_fence_and_says_what_it_waits_for() -> None:
    w = joined("resv-fence+signal-after-next-map")
    buffer = vram_buffer(w)
    w.job("importer-1", 1, buffer, "write")
    w.settle()
    w.dma_done("importer-1", 1)
    w.settle()
    assert not w.fences.is_signaled(w.slots["importer-1"], buffer, 1), "held past the end of its DMA"
    w.pressure()
    w.settle()                                    # the move holds the lock and waits for fence 1
    w.job("importer-1", 2, buffer, "read")        # ... whose signal waits for this map
    w.settle()
    blocked = [f for s, e, f in w.events if e == "fence_blocked"]
    deferred = [f for s, e, f in w.events if e == "map_deferred"]
    assert blocked == [{"buffer": buffer, "seq": 1, "usage": "WRITE", "job": 1,
                        "waiting_for": {"kind": "map", "buffer": buffer, "id": deferred[0]["id"]}, "trigger": "job"}]
    assert deferred[0]["move"] == 1
    w.check_fences()
    assert not w.copies, "nothing moves: only the fence timeout breaks it"
    w.time_out_fences(1)
    assert [f["importer"] for s, e, f in w.events if e == "fence_signal" and f.get("forced")] == ["importer-1"]


# ---------------------------------------------------------------------------------- the simulator

# Each mutant on the small configuration with what it needs to reach its bug (its `small`), and a
# workload seed whose workload does (wait-write-only's seed 1 has no read running at a move,
# unpin-stays-deaf's no job on a kept mapping after one): explore's random search, schedule by
# schedule as its workers run them, judged by the checker in memory.
SIM_CATCH = {
    "resv-fence+wait-kernel-only": (1, {"lost_write", "stale_read"}),
    "resv-fence+wait-write-only": (3, {"stale_read"}),
    "resv-fence+early-signal": (1, {"lost_write", "stale_read"}),
    "resv-fence+move-pinned": (5, {"lost_write", "stale_read"}),
    "resv-fence+unpin-stays-deaf": (2, {"lost_write", "stale_read"}),
    "resv-fence+no-kernel-fence-wait": (1, {"unfenced_access"}),
    "resv-fence+map-unlocked": (1, {"lost_write", "stale_read"}),
    "resv-fence+signal-after-next-map": (1, {"deadlock", "potential_deadlock"}),
    "revoke+kref-reinit": (1, {"revoke_incomplete", "refcount_warning"}),
    "revoke+v6-unmap-timeout": (1, {"revoke_incomplete"}),
    "revoke+cleanup-redrain": (1, {"refcount_warning", "stuck"}),
}
SIM_CAP = 8
# kref-reinit needs a map delayed into the un-revocation's locked window: schedule 22 of seed 1
SIM_CAPS = {"revoke+kref-reinit": 30}


def explore_random(strategy: str, seed: int, overrides: dict, cap: int = SIM_CAP) -> list[dict]:
    """explore --search random's first `cap` schedules (sim/explore.py run_schedules), stopping
    at the first catch: what each schedule's checker verdict was."""
    from deploy.explore_table import small_config
    from sim.explore import Spec, run_schedules
    spec = Spec(small_config(strategy, seed, overrides), "random", seed, 2, 2)
    return run_schedules(spec.as_dict(), 1, cap, 0, True)


def test_every_mutant_has_a_simulator_case() -> None:
    assert set(SIM_CATCH) == set(mutants.names())


@pytest.mark.parametrize("name", sorted(SIM_CATCH))
def test_explore_catches_each_mutant_and_not_resv_fence_in_the_same_schedules(name: str) -> None:
    seed, kinds = SIM_CATCH[name]
    small = mutants.small_of(name)
    cap = SIM_CAPS.get(name, SIM_CAP)
    schedules = explore_random(name, seed, small, cap=cap)
    caught = schedules[-1]
    assert caught["races"], f"{name}: no catch in {cap} schedules of seed {seed}"
    assert {r[0] for r in caught["races"]} <= kinds and caught["error"] is None, caught
    control = explore_random(mutants.split(name)[0], seed, small, cap=len(schedules))
    assert len(control) == len(schedules) and not any(s["races"] for s in control), control


def test_explores_deadlock_catch_is_the_checkers_cycle_and_shrinks_to_it(tmp_path: Path) -> None:
    from deploy.explore_table import small_config
    from sim.explore import Explorer, Limits, Spec
    name = "resv-fence+signal-after-next-map"
    r = Explorer(Spec(small_config(name, 1, {}), "random", 1, 2, 2), Limits(schedules=4), tmp_path / "x",
                 quiet=True).run()
    # the cycle formed (deadlock), and lockdep's rule flags the pair that closes it as well
    # (potential_deadlock, a catch since issue 25: formed or not)
    assert r["races"] == {"deadlock": 1, "potential_deadlock": 1} and r["first_race_schedule"] == 1
    assert r["shrunk"]["kind"] == "deadlock" and r["shrunk"]["events"] == 4 and r["shrunk"]["one_minimal"]
    text = (tmp_path / "x" / "witness.md").read_text()
    assert "held its lock and waited for importer-" in text and "that map waited for the lock" in text
    assert resolve(name).MUTANT["rule"] in text


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SIM_CATCH))
def test_explore_catches_each_mutant_for_most_workload_seeds(name: str) -> None:
    """What README "Mutants" reports for the simulator (explore-table --strategies mutants): random
    search catches the mutant within 300 schedules for at least 8 of workload seeds 1..10, except
    unpin-stays-deaf (below)."""
    small = mutants.small_of(name)
    firsts = [explore_random(name, seed, small, cap=300)[-1] for seed in range(1, 11)]
    caught = [seed for seed, s in enumerate(firsts, 1) if s["races"]]
    if name != "resv-fence+unpin-stays-deaf":
        assert len(caught) >= 8, [s["n"] if s["races"] else None for s in firsts]
        return
    # unpin-stays-deaf needs an importer's job on the mapping it kept after a pinning job of the same
    # buffer: a workload seed without such a pair of jobs cannot reach the bug under any schedule.
    # Measured: seeds 6, 8 and 9 have none; seed 1 has one, 27 us between the unpin and the next
    # job, where a move needs a pressure tick (every 2 ms: a fixed decision, not one the search
    # varies): none in 2,000 schedules. The other six are caught (schedule 1 to 81).
    reachable = [seed for seed in range(1, 11) if _kept_mapping_reused(name, seed, small)]
    assert set(caught) <= set(reachable), (caught, reachable)
    assert set(range(1, 11)) - set(reachable) == {6, 8, 9} and set(reachable) - set(caught) <= {1}, (caught, reachable)


def _kept_mapping_reused(name: str, seed: int, small: dict) -> bool:
    """Does the seed's workload (its first random schedule) have a job pinning buffer B followed by
    another job of the same importer on B (the job that uses the mapping kept after the unpin)?"""
    import json
    from deploy.explore_table import small_config
    from sim.search.random import RandomChooser
    from sim.search.trial import run_trial
    t = run_trial(small_config(name, seed, small), RandomChooser(seed, 1), keep_history=True)
    evs = [json.loads(ln) for ln in t.history]
    for p in (e for e in evs if e["event"] == "pin"):
        after = [e for e in evs if e["event"] == "dma_begin" and e["svc"] == p["importer"]
                 and e["buffer"] == p["buffer"] and e["t_ns"] > p["t_ns"]]
        if len(after) >= 2:       # the pinning job itself, then one on its kept mapping
            return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, mutants.SMALL_PINS, mutants.SMALL_LONG_COPY], ids=["small", "pins", "long-copy"])
def test_resv_fence_is_exhausted_with_no_catch_at_bound_2(tmp_path: Path, overrides: dict) -> None:
    from deploy.explore_table import small_config
    from sim.explore import Explorer, Limits, Spec
    r = Explorer(Spec(small_config("resv-fence", 1, overrides), "exhaustive", 1, 2, 2), Limits(), tmp_path / "x",
                 quiet=True).run()
    assert r["exhausted"] and r["races"] == {} and r["schedules"] > 100, r


# ---------------------------------------------------------------------------------- the forced-fence window

NO_RESET_WAIT = ROOT / "docs" / "examples" / "resv_fence_no_reset_wait.py"
# The forced-fence window's configuration: 6 ms jobs (chunks 1 ms apart), fences forced after 1 ms.
FORCING = {"dma_ms": 6.0, "fence_timeout_ms": 1.0}


def _forced_window(strategy: str, schedules: int) -> dict:
    """Random schedules 1..`schedules` of `strategy` on the forcing configuration: fences forced,
    schedules in which the window opened (a job aborted for a forced fence made an access after
    the force: its chunk had checked the fence just before), and the racing schedules."""
    import json
    from deploy.explore_table import small_config
    from sim.search.random import RandomChooser
    from sim.search.trial import run_trial
    config = small_config(strategy, 1, FORCING)
    out: dict = {"forced": 0, "opened": [], "raced": [], "first": None}
    for i in range(1, schedules + 1):
        t = run_trial(config, RandomChooser(1, i), keep_history=True)
        assert t.error is None, (strategy, i, t.error)
        evs = [json.loads(ln) for ln in t.history]
        forces = [e for e in evs if e["event"] == "fence_signal" and e.get("forced")]
        out["forced"] += len(forces)
        for e in evs:
            if e["event"] == "dma_end" and "fence forced" in e.get("reason", ""):
                at = [f["t_ns"] for f in forces if f["buffer"] == e["buffer"] and f["t_ns"] <= e["t_ns"]]
                if at and e["last_access_ns"] is not None and e["last_access_ns"] > max(at):
                    out["opened"].append(i)
                    break
        copies = {e["move"]: e["t_ns"] for e in evs if e["event"] == "copy_begin"}
        if strategy == "resv-fence":
            for m in {f["move"] for f in forces}:
                confirmed = [e["t_ns"] for e in evs if e["event"] == "reset_confirmed" and e["move"] == m]
                assert confirmed and (m not in copies or confirmed[0] <= copies[m]), "the fix: confirmed, then copied"
        if t.races:
            out["raced"].append(i)
            if out["first"] is None:
                out["first"] = (t.races[0].as_dict(), evs)
    return out


def test_the_forced_fence_window_opens_in_the_simulator_before_the_fix_and_is_closed_after() -> None:
    """Issue 15's forced-fence window, shown in the simulator. A DMA chunk is its fence check, then
    its access 10 us later (importer_svc/dma.py, sim/world.py LANE_COST_NS["dma"]). Before the fix
    (docs/examples/resv_fence_no_reset_wait.py: force the fences, copy at once) a force that falls
    between a chunk's check and its access copies while the access runs: every schedule in which
    that happens races (the racing job is the forced one, its last access after the copy began).
    With the fix (resv-fence: wait for the device's reset_confirmed) the same schedules open the
    same windows and none races. (In 300 schedules when this was written: 294 forced fences, 16
    windows, 16 races before the fix, 0 after; the first at schedule 19.)"""
    before = _forced_window(str(NO_RESET_WAIT), 80)
    assert before["opened"], "the window opens within 80 random schedules"
    assert before["raced"] == before["opened"], "before the fix each opened window is a race, and only those"
    race, evs = before["first"]
    assert race["kind"] in ("lost_write", "stale_read")
    end = next(e for e in evs if e["event"] == "dma_end" and e["svc"] == race["importer"] and e["job"] == race["job"])
    assert end["status"] == "aborted" and "fence forced" in end["reason"]
    move = max((e for e in evs if e["event"] == "move_begin" and e["buffer"] == race["buffer"]
                and e["t_ns"] < end["last_access_ns"]), key=lambda e: e["t_ns"])["move"]
    force = next(e["t_ns"] for e in evs if e["event"] == "fence_signal" and e.get("forced") and e["move"] == move)
    copy = next(e["t_ns"] for e in evs if e["event"] == "copy_begin" and e["move"] == move)
    assert force == copy < end["last_access_ns"], "forced, copied at once, and the chunk's access came after"
    after = _forced_window("resv-fence", 80)
    assert after["opened"] == before["opened"] and after["forced"] == before["forced"]
    assert after["raced"] == [], "with the reset confirmation no window races"


# ---------------------------------------------------------------------------------- real runs

# Short runs under a high move rate, each under the conditions that make its bug meet the workload
# many times a second even on a loaded machine (where the round trip of move_notify can outlast a
# 6 ms job: the callbacks' wait then hides a missing fence wait, see docs/results.md): long jobs
# where the bug is a fence the move does not wait for, most jobs pinning for the pin mutants.
FAST = dict(importers=4, buffers=8, duration=1.5, move_rate=60.0)
LONG_JOBS = dict(dma_ms=30.0)
PINNING = dict(pin_ratio=0.8)
CAUGHT_BY = {
    "resv-fence+wait-kernel-only": ({"lost_write", "stale_read"}, LONG_JOBS),
    "resv-fence+wait-write-only": ({"stale_read"}, LONG_JOBS),
    "resv-fence+early-signal": ({"lost_write", "stale_read"}, LONG_JOBS),
    "resv-fence+move-pinned": ({"lost_write", "stale_read"}, PINNING),
    "resv-fence+unpin-stays-deaf": ({"lost_write", "stale_read"}, PINNING),
    "resv-fence+no-kernel-fence-wait": ({"unfenced_access"}, {}),
    "resv-fence+map-unlocked": ({"lost_write", "stale_read"}, {}),
}


@pytest.mark.parametrize("name", sorted(CAUGHT_BY))
def test_the_checker_catches_each_racing_mutant_and_quotes_its_rule(short_dir: Path, name: str) -> None:
    kinds, pace = CAUGHT_BY[name]
    r = run(RunParams(strategy=name, seed=3, **{**FAST, **mutants.params_of(name), **pace}), short_dir, quiet=True)
    assert_nothing_left(short_dir)
    found = {k for k in kinds if r["races"][k]}
    assert found, f"{name}: no {' or '.join(sorted(kinds))} in {r['races']}"
    assert r["races"]["total"] == sum(r["races"][k] for k in kinds), f"only the expected kinds: {r['races']}"
    rule = resolve(name).MUTANT["rule"]
    assert r["mutant"]["rule"] == rule
    witnesses = [w for ws in r["witnesses"].values() for w in ws]
    assert witnesses and all(w["broken_rule"]["rule"] == rule for w in witnesses)
    assert rule in (short_dir / "report.md").read_text()


def test_signal_after_next_map_deadlocks_until_the_fence_timeout(short_dir: Path) -> None:
    name = "resv-fence+signal-after-next-map"
    r = run(RunParams(strategy=name, seed=3, fence_timeout_ms=150.0, reset_grace_ms=50.0, **FAST),
            short_dir, quiet=True)
    assert_nothing_left(short_dir)
    dl = r["findings"]["deadlock"]
    assert dl["count"] > 0, r["findings"]
    d = dl["items"][0]
    assert "held its lock and waited for importer-" in d["sentence"] and "that map waited for the lock" in d["sentence"]
    assert "by a fence timeout" in d["sentence"]
    assert d["broken_rule"]["rule"] == resolve(name).MUTANT["rule"]
    assert r["races"]["total"] == 0, "the fence timeout forces the fences of a device that stopped"


def test_resv_fence_with_pins_and_the_same_pace_has_no_race_and_no_deadlock(short_dir: Path) -> None:
    r = run(RunParams(strategy="resv-fence", seed=3, **{**FAST, **PINNING, **LONG_JOBS}), short_dir, quiet=True)
    assert_nothing_left(short_dir)
    assert r["races"]["total"] == 0 and r["findings"]["deadlock"]["count"] == 0
    assert r["mutant"] is None
    events = history(short_dir)
    assert any(e["event"] == "unpin" for e in events) and r["moves"]["completed"] > 0


# ---------------------------------------------------------------------------------- the full sweep

@pytest.mark.slow
def test_every_mutant_is_caught_in_10_of_10_seeds_of_the_standard_workload(tmp_path: Path) -> None:
    """The must-show of issue 15 (about 15 minutes on 2 cores): what README "Mutants" reports. One
    run at a time: two runs' ten processes on two cores slow move_notify's round trip past most
    6 ms reads, and wait-write-only then misses seeds (9/10 with jobs=2 on a quiet machine).
    revoke+kref-reinit is caught in 48 of 50 runs measured (docs/results.md, "Mutants"): this test
    fails when a sweep draws one of its runs with no finding; that is open work on its workload,
    not a reason to ask less of the checker."""
    from deploy.campaign import campaign, strategy_variants
    summary = campaign(RunParams(importers=4, buffers=8, duration=3.0), "mutants", "none", 10,
                       tmp_path / "mutants", jobs=1, quiet=True, plots=False)
    rows = {r["strategy"]: r for r in summary["mutation_score"]}
    # every mutant and every control, as the campaign declares them (the labels: the test above)
    assert set(rows) == {label for label, _ in strategy_variants("mutants")}
    for name, r in rows.items():
        if r["mutant"]:
            assert (r["caught"], r["rule_quoted"]) == (10, 10), (name, r)
        else:
            assert r["caught"] == 0, (name, r)
    # 160 runs' directories are 2.3 GB, and pytest keeps its last three base directories: kept
    # only when an assertion above failed, for the evidence
    shutil.rmtree(tmp_path / "mutants" / "runs", ignore_errors=True)


@pytest.mark.slow
def test_no_correct_strategy_deadlocks_under_any_shipped_fault_plan(tmp_path: Path) -> None:
    from deploy.campaign import campaign, strategy_variants
    from deploy.faultplans import shipped
    summary = campaign(RunParams(importers=4, buffers=8, duration=3.0), "all", "all", 1,
                       tmp_path / "plans", jobs=2, quiet=True, plots=False)
    runs = summary["runs"]
    assert len(runs) == len(strategy_variants("all")) * len(shipped()) and not summary["failed_runs"]
    assert [(d["strategy"], d["plan"]) for d in runs if d["findings_caught"]["deadlock"]] == []
