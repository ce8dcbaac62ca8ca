"""Which strategies race, asked of the checker about simulated runs: the real services on
virtual time, every run reproducible from its seed.

The full seed sweeps (seeds 1..20) are `-m slow`:
    .venv/bin/python -m pytest -m slow -n 2 tests/test_sim_races.py
The default suite runs one representative seed of each."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deploy.options import RunParams
from protocol.importer import AttEvent, AttState, IGuard
from protocol.strategies import resv_fence
from runtime import faults as F
from sim.run import simulate_in_memory
from tests.checker_helpers import crossing_jobs

STANDARD = dict(importers=4, buffers=8, duration=3.0)          # default rates, bytes stamped and verified
SEEDS = range(1, 21)
SAFE = (("pin", "optimistic"), ("resv-fence", "optimistic"), ("unmap-hint", "conservative"))
# Each message fault both ways (the importers' sends and the exporter's); the process faults on
# one importer, half a second into the workload.
PLANS: dict[str, tuple[str, ...]] = {
    "none": (),
    "delay": ("delay:ms=5,jitter_ms=3", "delay:ms=5,jitter_ms=3,target=exporter"),
    "dup": ("dup:p=0.1", "dup:p=0.1,target=exporter"),
    "reorder": ("reorder:p=0.1", "reorder:p=0.1,target=exporter"),
    "drop": ("drop:p=0.05", "drop:p=0.05,target=exporter"),
    "kill": ("kill:target=importer-2,at=0.5",),
    "restart": ("restart:target=importer-3,at=0.5",),
}
NET = PLANS["delay"] + PLANS["dup"] + PLANS["reorder"] + PLANS["drop"]
ROGUE = dict(faults=("rogue:ms=150,p=0.5",), move_rate=100.0, write_ratio=0.3)   # the README's example


def sim(strategy: str, seed: int, faults: tuple[str, ...] = (), **kw: Any):
    p = RunParams(**{**STANDARD, "strategy": strategy, "seed": seed, **kw,
                     "faults": tuple(F.parse_cli(f) for f in faults)})
    r = simulate_in_memory(p)
    assert not r.outcome.crashes and r.outcome.error is None, (r.outcome.crashes, r.outcome.error, r.outcome.logs)
    return r


def assert_races_with_witnesses(report: dict[str, Any], kinds: tuple[str, ...] = ("lost_write", "stale_read")) -> None:
    assert report["races"]["total"] > 0, report["races"]
    witnesses = [w for k in kinds for w in report["witnesses"][k]]
    assert witnesses and all(w["sentence"] and w["events"] for w in witnesses)


def assert_no_race(r, label: str) -> None:
    rep = r.report
    assert rep["races"]["total"] == 0 and rep["corruption"]["jobs"] == 0, (label, rep["races"], rep["witnesses"])
    assert rep["moves"]["completed"] + rep["moves"]["refused"] > 0, (label, "the memory manager worked")


# ---------------------------------------------------------------------------------- move-notify

def _move_notify(seed: int, duration: float) -> None:
    r = sim("move-notify", seed, duration=duration)
    assert_races_with_witnesses(r.report)
    assert r.report["moves"]["completed"] > 0


def test_move_notify_races_in_the_simulator() -> None:
    _move_notify(1, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_move_notify_races_on_the_standard_workload_for_every_seed(seed: int) -> None:
    _move_notify(seed, STANDARD["duration"])


# ---------------------------------------------------------------------------------- the safe ones

@pytest.mark.parametrize("strategy, hint", SAFE)
@pytest.mark.parametrize("plan", ["net", "kill+restart"])
def test_the_safe_strategies_do_not_race_under_faults(strategy: str, hint: str, plan: str) -> None:
    faults = NET if plan == "net" else PLANS["kill"] + PLANS["restart"]
    assert_no_race(sim(strategy, 1, faults, hint_policy=hint, duration=1.0), f"{strategy} {plan}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("strategy, hint", SAFE)
def test_the_safe_strategies_never_race_for_any_seed_under_any_plan(strategy: str, hint: str, plan: str, seed: int) -> None:
    duration = STANDARD["duration"] if plan == "none" else 2.0
    assert_no_race(sim(strategy, seed, PLANS[plan], hint_policy=hint, duration=duration), f"{strategy} {plan} {seed}")


# ---------------------------------------------------------------------------------- revalidate

def _revalidate(seed: int, duration: float) -> None:
    assert_no_race(sim("revalidate", seed, duration=duration), f"revalidate {seed}")
    rogue = sim("revalidate", seed, duration=duration, **ROGUE)
    assert_races_with_witnesses(rogue.report, ("lost_write", "stale_read", "use_after_unmap"))
    assert rogue.report["rogue_jobs"]["total"] > 0


def test_revalidate_races_only_with_rogue_devices() -> None:
    _revalidate(1, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_revalidate_races_only_with_rogue_devices_for_every_seed(seed: int) -> None:
    _revalidate(seed, STANDARD["duration"])


# ---------------------------------------------------------------------------------- crossings

def test_move_notify_ack_races_are_maps_crossing_a_late_notification() -> None:
    """The 2012 thread's fear, on the real code: a map served after move_notify went out hands
    out the old placement; every race is such a job, and the fenced design has none."""
    faults = ("delay:ms=5,op=move_notify,target=exporter",)
    r = sim("move-notify-ack", 1, faults, duration=1.0)
    assert_races_with_witnesses(r.report)
    crossing = crossing_jobs([json.loads(line) for line in r.history])
    racing = {(w["job"]["svc"], w["job"]["job"]) for k in ("lost_write", "stale_read") for w in r.report["witnesses"][k]}
    assert racing and racing <= crossing, (racing, crossing)
    assert_no_race(sim("resv-fence", 1, faults, duration=1.0), "resv-fence with late notifications")


# ---------------------------------------------------------------------------------- STALE_REPLY

STALE = dict(importers=2, duration=1.0, faults=("drop:target=exporter,op=map,p=0.2",))


def _stale_replies(history: list[bytes]) -> int:
    """Jobs refused before their first access by importers whose retried map was answered from
    the exporter's reply cache (a dedup of the request: the reply resent)."""
    events = [json.loads(line) for line in history]
    resent = {(e["peer"], e["id"]) for e in events if e["event"] == "dedup" and e["svc"] == "exporter"
              and e.get("what") == "request"}
    retried = {e["svc"] for e in events if e["event"] == "retry" and e["op"] == "map" and (e["svc"], e["id"]) in resent}
    return sum(1 for e in events if e["event"] == "job_failed" and e["svc"] in retried)


def test_resv_fence_refuses_a_map_reply_resent_after_the_move_and_without_the_guard_it_races(monkeypatch) -> None:
    """A map reply dropped (runtime/msgfaults.py), the map retried (runtime/reliable.py), the
    cached reply resent after the buffer's move was announced: the importer's STALE_REPLY rule
    refuses it before the first access. The same seed with the rule taken out of the table: the
    job runs on the old placement and the checker finds the race."""
    guarded = sim("resv-fence", 1, **STALE)
    assert guarded.report["races"]["total"] == 0
    assert _stale_replies(guarded.history) > 0, "the stale reply was reached and refused"
    assert guarded.report["recovery"]["retries"] > 0 and guarded.report["recovery"]["dedups"] > 0

    key = (AttState.MAPPING, AttEvent.MAP_OK)
    rules = resv_fence.IMPORTER.table[key]
    assert any(rule.when is IGuard.STALE_REPLY for rule in rules)
    monkeypatch.setitem(resv_fence.IMPORTER.table, key, tuple(r for r in rules if r.when is not IGuard.STALE_REPLY))
    unguarded = sim("resv-fence", 1, **STALE)
    assert_races_with_witnesses(unguarded.report)
    events = [json.loads(line) for line in unguarded.history]
    resent = {(e["peer"], e["id"]) for e in events if e["event"] == "dedup" and e.get("what") == "request"}
    maps = {(e["svc"], e["attachment"], e["t_ns"]): e for e in events if e["event"] == "map"}
    racing_maps = [m for m in maps.values() if (m["svc"], m["id"]) in resent]
    assert racing_maps, "jobs ran on placements handed out by a resent reply"
