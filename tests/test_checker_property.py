"""Property tests: a correct run has no race; one injected stale access is found once.

Histories come from the simulator (the real services on virtual time: tests/checker_helpers.py's
`simulated`) running a strategy that never races without device faults: jobs only through usable
mappings, maps wait for moves, the exporter copies only after every job on the old generation
ended, frees after the copy. Hypothesis chooses the run's shape and seed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from checker import judge_history, merge_history
from tests.checker_helpers import simulated, write_events_dir, write_history

ROGUE = "importer-9"   # a device that is not part of the run (the runs here have at most 4)
ROGUE_ATT = 999_999
# The strategies (and unmap-hint's promise) that race only with misbehaving devices
# (tests/test_sim_races.py's SAFE, and revalidate), the pinning one that refuses to move what is mapped included.
SAFE = (("pin", "optimistic"), ("resv-fence", "optimistic"), ("unmap-hint", "conservative"),
        ("revalidate", "optimistic"))


@st.composite
def runs(draw: st.DrawFn, *, min_move_rate: float = 10.0) -> list[dict[str, Any]]:
    """The history of one short simulated run of a safe strategy."""
    strategy, hint = draw(st.sampled_from(SAFE))
    return simulated(draw(st.integers(0, 2**31 - 1)), strategy=strategy, hint_policy=hint,
                     importers=draw(st.integers(1, 4)), buffers=draw(st.integers(1, 6)), duration=0.3,
                     move_rate=draw(st.sampled_from([r for r in (10.0, 100.0, 400.0) if r >= min_move_rate])))


def judge_events(events: list[dict[str, Any]], *, via_merge: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if via_merge:  # the merge reorders cross-service ties by file name: still no race
            write_events_dir(events, d / "events")
            merge_history(d / "events", d / "history.jsonl")
        else:
            write_history(sorted(events, key=lambda e: e["t_ns"]), d / "history.jsonl")
        return judge_history(d / "history.jsonl")


SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(events=runs(), via_merge=st.booleans())
def test_a_correct_run_has_no_race(events: list[dict[str, Any]], via_merge: bool) -> None:
    r = judge_events(events, via_merge=via_merge)
    assert r["races"]["total"] == 0, r["witnesses"]
    assert r["events"] == len(events)
    assert r["anomalies"] == {} and r["history_errors"] == 0
    assert r["jobs_unfinished"] == 0 and r["mappings_held_at_shutdown"] == 0
    assert r["ops"]["dma_read"] + r["ops"]["dma_write"] == sum(e["event"] == "dma_begin" for e in events)
    assert r["moves"]["completed"] == sum(e["event"] == "move_end" for e in events)


# ---------------------------------------------------------------------------- injection


@dataclass
class Gen:
    """One generation of one buffer, as the exporter lived it."""

    buffer: int
    gen: int
    heap: str
    offset: int
    size: int
    ready: int                 # buffer_created, or copy_end of the move creating it
    created: int               # buffer_created, or move_begin of the move creating it
    copy_begin: int | None = None
    free: int | None = None


def timeline(events: list[dict[str, Any]]) -> dict[tuple[int, int], Gen]:
    gens: dict[tuple[int, int], Gen] = {}
    for e in events:
        if e["svc"] != "exporter":
            continue
        name = e["event"]
        if name == "buffer_created":
            gens[(e["buffer"], 1)] = Gen(e["buffer"], 1, e["heap"], e["offset"], e["size"], e["t_ns"], e["t_ns"])
        elif name == "move_begin":
            to = e["to"]
            gens[(e["buffer"], e["to_gen"])] = Gen(e["buffer"], e["to_gen"], to["heap"], to["offset"],
                                                   to["size"], ready=-1, created=e["t_ns"])
        elif name == "copy_end":
            gens[(e["buffer"], e["to_gen"])].ready = e["t_ns"]
        elif name == "copy_begin":
            gens[(e["buffer"], e["from_gen"])].copy_begin = e["t_ns"]
        elif name == "free":
            gens[(e["buffer"], e["from_gen"])].free = e["t_ns"]
    return gens


def rogue_job(t_map: int, begin: int, end: int, g: Gen, access: str, *, unmap_at: int | None = None
              ) -> list[dict[str, Any]]:
    base = {"svc": ROGUE, "pid": 4242}
    place = {"heap": g.heap, "offset": g.offset, "size": g.size, "gen": g.gen}
    evs = [{"t_ns": t_map - 1, **base, "event": "attach", "id": 1, "buffer": g.buffer, "attachment": ROGUE_ATT},
           {"t_ns": t_map, **base, "event": "map", "id": 2, "buffer": g.buffer, "attachment": ROGUE_ATT,
            **place, "latency_ns": 1, "reused": False, "moved": False}]
    if unmap_at is not None:
        evs.append({"t_ns": unmap_at, **base, "event": "unmap", "id": 3, "buffer": g.buffer,
                    "attachment": ROGUE_ATT, **place, "latency_ns": 1, "kept_iommu": True, "will_move": False})
    job = {"job": 1, "buffer": g.buffer, "attachment": ROGUE_ATT, "access": access, **place}
    evs.append({"t_ns": begin, **base, "event": "dma_begin", **job})
    evs.append({"t_ns": end, **base, "event": "dma_end", **job, "status": "ok", "bytes": g.size})
    return evs


def inject(kind: str, gens: dict[tuple[int, int], Gen], data: st.DataObject) -> list[dict[str, Any]] | None:
    """One rogue job that fits `kind` (and, by construction, no earlier kind)."""
    if kind == "lost_write":
        cands = [g for g in gens.values() if g.copy_begin is not None and g.ready >= 0]
        if not cands:
            return None
        g = data.draw(st.sampled_from(cands))
        cb = g.copy_begin
        assert cb is not None
        begin = data.draw(st.integers(g.ready + 1, cb + 5_000))
        end = data.draw(st.integers(max(begin, cb + 1), cb + 50_000))
        return rogue_job(g.ready + 1, begin, end, g, "write")
    if kind == "stale_read":
        cands = [g for g in gens.values() if g.free is not None and g.ready >= 0]
        if not cands:
            return None
        g = data.draw(st.sampled_from(cands))
        free = g.free
        assert free is not None
        begin = data.draw(st.integers(g.ready + 1, free + 5_000))
        end = data.draw(st.integers(max(begin, free + 1), free + 50_000))
        return rogue_job(g.ready + 1, begin, end, g, "read")
    if kind == "use_after_unmap":
        # on a ready generation, ended before its copy began: only the unmap is wrong
        cands = [g for g in gens.values() if g.ready >= 0 and (g.copy_begin or 1 << 62) - g.ready > 10]
        if not cands:
            return None
        g = data.draw(st.sampled_from(cands))
        limit = min(g.copy_begin or g.ready + 10**6, g.ready + 10**6)
        t_map = g.ready + 1
        unmap_at = data.draw(st.integers(t_map, limit - 3))
        begin = data.draw(st.integers(unmap_at + 1, limit - 1))
        end = data.draw(st.integers(begin, limit))
        return rogue_job(t_map, begin, end, g, data.draw(st.sampled_from(["read", "write"])), unmap_at=unmap_at)
    if kind == "unfenced_access":
        # handed the new generation early (a map crossing the move), begun before its copy ended
        cands = [g for g in gens.values() if g.gen > 1 and g.ready > g.created + 2]
        if not cands:
            return None
        g = data.draw(st.sampled_from(cands))
        t_map = data.draw(st.integers(g.created + 1, g.ready - 1))
        begin = data.draw(st.integers(t_map, g.ready - 1))
        return rogue_job(t_map, begin, begin + 1, g, data.draw(st.sampled_from(["read", "write"])))
    raise AssertionError(kind)


@SETTINGS
@given(events=runs(min_move_rate=100.0),
       kind=st.sampled_from(["lost_write", "stale_read", "use_after_unmap", "unfenced_access"]),
       data=st.data())
def test_one_injected_stale_access_is_found_once_with_its_kind(events: list[dict[str, Any]], kind: str,
                                                             data: st.DataObject) -> None:
    rogue = inject(kind, timeline(events), data)
    assume(rogue is not None)
    assert rogue is not None
    r = judge_events(events + rogue)
    assert r["races"][kind] == 1 and r["races"]["total"] == 1, (kind, r["races"], r["witnesses"])
    w = r["witnesses"][kind][0]
    assert w["job"]["svc"] == ROGUE and w["job"]["job"] == 1
    assert ROGUE in w["sentence"]
