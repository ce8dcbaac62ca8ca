"""The deadlock finding: a cycle in the wait-for graph built from lock and wait events alone.

Each case that must give a deadlock stands beside its near miss that must not (docs/events.md,
"Locks and waits").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from checker.oracle import Oracle
from checker.waitfor import WaitFor

from tests.checker_helpers import H, mapped

IMP = "importer-2"


def fence_entry(seq: int, imp: str = IMP, usage: str = "WRITE") -> dict[str, Any]:
    return {"importer": imp, "slot": int(imp.rsplit("-", 1)[1]), "seq": seq, "usage": usage}


def mutant8(*, blocked_seq: int | None = 17, awaited_seq: int = 17, map_buffer: int = 3,
            forced_at: int | None = 1050, map_answered_at: int | None = None) -> H:
    """The signal-after-next-map shape: importer-2's write job 17 on buffer 3 ends at 30, but its
    fence is signaled only after its next map (request 41) is answered; the move of buffer 3 takes
    the lock at 40 and waits for that fence from 50; the map arrives at 45 and waits for the lock."""
    h = mapped(svc=IMP, buffer=3, att=5)
    if map_buffer != 3:
        mapped(h, t=12, svc=IMP, buffer=map_buffer, att=6)
    h.job(17, "write", 20, 30, svc=IMP, buffer=3, att=5)
    if blocked_seq is not None:
        h.ev(30, IMP, "fence_blocked", buffer=3, seq=blocked_seq, usage="WRITE", job=blocked_seq,
             waiting_for={"kind": "map", "buffer": map_buffer, "id": 41})
    else:
        h.ev(30, IMP, "fence_signal", buffer=3, usage="WRITE", seq=17, job=17)
    h.ev(40, "exporter", "resv_lock", buffer=3, move=7)
    h.move(3, 1, 7, begin=41)
    h.ev(45, "exporter", "map_deferred", id=41, importer=IMP, buffer=map_buffer,
         attachment=5 if map_buffer == 3 else 6, move=7 if map_buffer == 3 else None)
    if map_answered_at is not None:
        h.ev(map_answered_at - 1, "exporter", "map_served", id=41, importer=IMP, buffer=map_buffer,
             attachment=6, heap="vram", offset=0, size=0x10000, gen=1, moved=False, deferred_ns=1)
        h.map(map_answered_at, svc=IMP, buffer=map_buffer, att=6)
        h.events[-1]["id"] = 41
    h.ev(50, "exporter", "fence_wait_begin", buffer=3, move=7, usage="BOOKKEEP",
         fences=[fence_entry(awaited_seq)])
    if forced_at is not None:
        h.ev(forced_at, "exporter", "fence_signal", buffer=3, usage="BOOKKEEP", seq=None, move=7,
             importer=IMP, error="timeout", forced=True)
        h.ev(forced_at + 1, "exporter", "fence_wait_end", buffer=3, move=7, usage="BOOKKEEP",
             waited_ns=forced_at + 1 - 50, forced=[IMP])
        h.ev(forced_at + 5, "exporter", "resv_unlock", buffer=3, move=7)
        h.ev(forced_at + 6, "exporter", "map_served", id=41, importer=IMP, buffer=map_buffer,
             attachment=5, heap="sys", offset=0x1000, size=0x10000, gen=2, moved=True, deferred_ns=forced_at - 39)
    h.ev(5000, "deploy", "run_stop")
    return h


def deadlocks(r: dict[str, Any]) -> list[dict[str, Any]]:
    return r["findings"]["deadlock"]["items"]


# ---------------------------------------------------------------------------- the cycle and its near misses


def test_signal_after_next_map_is_a_deadlock_broken_by_the_fence_timeout(tmp_path: Path) -> None:
    r = mutant8().judge(tmp_path)
    assert r["races"]["total"] == 0
    assert r["findings"]["deadlock"]["count"] == 1
    d = deadlocks(r)[0]
    assert d["sentence"].startswith(
        "The move of buffer 3 (move 7) held its lock and waited for importer-2's fence 17; that fence "
        "waited for importer-2's map of buffer 3 (request 41); that map waited for the lock.")
    assert d["t_ns"] == 50 and d["formed_by"] == "fence_wait_begin" and d["length"] == 4
    assert [n["node"] for n in d["cycle"]] == ["move", "fence", "map", "lock"]
    assert d["broken"]["t_ns"] == 1050 and d["broken"]["error"] == "timeout"
    assert ("It formed at t+0.000 ms (fence_wait_begin) and was broken at t+0.001 ms by a fence timeout: "
            "the exporter forced importer-2's fences on buffer 3.") in d["sentence"]
    assert d["present_at_end"] is False
    assert [e["event"] for e in d["events"]] == ["fence_blocked", "resv_lock", "map_deferred", "fence_wait_begin"]
    # the forced fence and the fence timeout are findings of their own
    assert r["findings"]["fence_forced"]["count"] == 1
    assert r["findings"]["timeout"]["by_kind"]["fence"] == 1
    # and lockdep's potential_deadlock (checker/lockdep.py): the signalling path's map under the lock
    assert r["findings"]["potential_deadlock"]["count"] == 1
    assert r["findings"]["total"] == 4


def test_the_same_run_with_the_fence_signaled_at_the_job_end_has_no_deadlock(tmp_path: Path) -> None:
    r = mutant8(blocked_seq=None, forced_at=None).judge(tmp_path)
    assert r["findings"]["deadlock"]["count"] == 0
    assert r["findings"]["total"] == 0


def test_still_present_at_the_end_of_the_history(tmp_path: Path) -> None:
    d = deadlocks(mutant8(forced_at=None).judge(tmp_path))[0]
    assert d["present_at_end"] is True and d["broken"] is None
    assert "still present at the end of the history" in d["sentence"]


def test_a_fence_waiting_for_a_map_of_a_buffer_nobody_locks_is_no_deadlock(tmp_path: Path) -> None:
    # the awaited map waits for no lock (map_deferred without a holder, buffer 4 unlocked)
    r = mutant8(map_buffer=4).judge(tmp_path)
    assert r["findings"]["deadlock"]["count"] == 0


def test_a_blocked_fence_after_the_awaited_one_does_not_hold_the_wait(tmp_path: Path) -> None:
    # the move waits for fence 17; fence 18 is blocked, but 17 can signal before it
    r = mutant8(blocked_seq=18, awaited_seq=17).judge(tmp_path)
    assert r["findings"]["deadlock"]["count"] == 0


def test_a_blocked_fence_before_the_awaited_one_holds_it_back(tmp_path: Path) -> None:
    # fences of one importer and buffer signal in order: 16 blocked holds back a wait for 17
    d = deadlocks(mutant8(blocked_seq=16, awaited_seq=17).judge(tmp_path))
    assert len(d) == 1
    assert "that fence is behind importer-2's fence 16" in d[0]["sentence"]
    assert d[0]["length"] == 5


def test_a_fence_whose_map_was_answered_before_the_wait_is_no_deadlock(tmp_path: Path) -> None:
    h = mapped(svc=IMP, buffer=3, att=5).job(17, "write", 20, 30, svc=IMP, buffer=3, att=5)
    h.ev(30, IMP, "fence_blocked", buffer=3, seq=17, usage="WRITE", job=17,
         waiting_for={"kind": "map", "buffer": 3, "id": 41})
    h.ev(31, "exporter", "map_served", id=41, importer=IMP, buffer=3, attachment=5, heap="vram", offset=0,
         size=0x10000, gen=1, moved=False, deferred_ns=0)
    h.map(32, svc=IMP, buffer=3, att=5)
    h.events[-1]["id"] = 41
    h.ev(40, "exporter", "resv_lock", buffer=3, move=7)
    h.ev(45, "exporter", "map_deferred", id=42, importer=IMP, buffer=3, attachment=5, move=7)
    h.ev(50, "exporter", "fence_wait_begin", buffer=3, move=7, usage="BOOKKEEP", fences=[fence_entry(17)])
    r = h.judge(tmp_path)
    assert r["findings"]["deadlock"]["count"] == 0


def test_a_deferred_map_and_a_fence_wait_without_a_blocked_fence_are_no_deadlock(tmp_path: Path) -> None:
    # resv-fence as it is: the move holds the lock and waits for a running job's fence, a map waits
    # for the lock; the job ends and signals: waits, no cycle
    h = mapped(svc=IMP, buffer=3, att=5).job(17, "write", 20, 60, svc=IMP, buffer=3, att=5)
    h.ev(40, "exporter", "resv_lock", buffer=3, move=7)
    h.ev(45, "exporter", "map_deferred", id=41, importer="importer-1", buffer=3, attachment=9, move=7)
    h.ev(50, "exporter", "fence_wait_begin", buffer=3, move=7, usage="BOOKKEEP", fences=[fence_entry(17)])
    h.ev(60, IMP, "fence_signal", buffer=3, usage="WRITE", seq=17, job=17)
    r = h.judge(tmp_path)
    assert r["findings"]["deadlock"]["count"] == 0 and r["findings"]["total"] == 0


@pytest.mark.parametrize("last", ["fence_blocked", "map_deferred", "fence_wait_begin"])
def test_whichever_wait_comes_last_closes_the_cycle(tmp_path: Path, last: str) -> None:
    times = {"fence_blocked": 30, "map_deferred": 45, "fence_wait_begin": 50}
    times[last] = 60
    h = mapped(svc=IMP, buffer=3, att=5).job(17, "write", 20, 25, svc=IMP, buffer=3, att=5)
    h.ev(40, "exporter", "resv_lock", buffer=3, move=7)
    h.ev(times["fence_blocked"], IMP, "fence_blocked", buffer=3, seq=17, usage="WRITE", job=17,
         waiting_for={"kind": "map", "buffer": 3, "id": 41})
    h.ev(times["map_deferred"], "exporter", "map_deferred", id=41, importer=IMP, buffer=3, attachment=5, move=7)
    h.ev(times["fence_wait_begin"], "exporter", "fence_wait_begin", buffer=3, move=7, usage="BOOKKEEP",
         fences=[fence_entry(17)])
    d = deadlocks(h.judge(tmp_path))
    assert len(d) == 1 and d[0]["formed_by"] == last and d[0]["t_ns"] == 60
    # rotated to start at the lock's holder whatever closed it
    assert d[0]["cycle"][0] == {"node": "move", "buffer": 3, "move": 7}


def test_a_cycle_over_two_buffers(tmp_path: Path) -> None:
    """Move A holds A's lock, waits for importer-1's fence on A, which waits for its map of B; move B
    holds B's lock, waits for importer-2's fence on B, which waits for its map of A."""
    h = mapped(svc="importer-1", buffer=0, att=1)
    mapped(h, svc="importer-2", buffer=1, att=2)
    for buf, imp, att_other, rid in ((0, "importer-1", 11, 41), (1, "importer-2", 12, 42)):
        other = 1 - buf
        h.ev(30, imp, "fence_blocked", buffer=buf, seq=5, usage="READ", job=5,
             waiting_for={"kind": "map", "buffer": other, "id": rid})
        h.ev(40, "exporter", "resv_lock", buffer=buf, move=buf + 1)
        h.ev(50, "exporter", "fence_wait_begin", buffer=buf, move=buf + 1, usage="BOOKKEEP",
             fences=[fence_entry(5, imp=imp, usage="READ")])
        h.ev(60 + buf, "exporter", "map_deferred", id=rid, importer=imp, buffer=other, attachment=att_other,
             move=other + 1)
    d = deadlocks(h.judge(tmp_path))
    assert len(d) == 1 and d[0]["length"] == 8
    s = d[0]["sentence"]
    assert "that map waited for buffer 0's lock; that lock was held by the move of buffer 0 (move 1)" in s \
        or "that map waited for buffer 1's lock; that lock was held by the move of buffer 1 (move 2)" in s


def test_two_cycles_through_one_move_are_two_findings(tmp_path: Path) -> None:
    h = mutant8(forced_at=None)
    mapped(h, t=12, svc="importer-3", buffer=3, att=8)
    h.ev(31, "importer-3", "fence_blocked", buffer=3, seq=9, usage="READ", job=9,
         waiting_for={"kind": "map", "buffer": 3, "id": 77})
    h.ev(46, "exporter", "map_deferred", id=77, importer="importer-3", buffer=3, attachment=8, move=7)
    for e in h.events:
        if e["event"] == "fence_wait_begin":
            e["fences"].append(fence_entry(9, imp="importer-3", usage="READ"))
    r = h.judge(tmp_path)
    assert r["findings"]["deadlock"]["count"] == 2
    assert {d["cycle"][1]["importer"] for d in deadlocks(r)} == {IMP, "importer-3"}


@pytest.mark.parametrize("breaker", ["importer signals", "map refused", "attachment revoked", "importer died"])
def test_how_a_cycle_was_broken_is_said(tmp_path: Path, breaker: str) -> None:
    h = mutant8(forced_at=None)
    if breaker == "importer signals":
        h.ev(70, IMP, "fence_signal", buffer=3, usage="WRITE", seq=17, job=17)
        expect = "importer-2 signaling fence 17 on buffer 3"
    elif breaker == "map refused":
        h.ev(70, "exporter", "op_answered", op="map", id=41, peer=IMP, ok=False, code="no_device", message="x")
        expect = "the exporter refusing importer-2's map (request 41, no_device)"
    elif breaker == "attachment revoked":
        h.ev(70, "exporter", "attachment_revoked", importer=IMP, buffer=3, attachment=5, reason="fence_timeout",
             was_mapped=True)
        expect = "the exporter revoking importer-2's attachment 5 (fence_timeout)"
    else:
        h.ev(70, "deploy", "service_died", name=IMP, pid=5, how="killed by fault")
        expect = "importer-2 dying"
    d = deadlocks(h.judge(tmp_path))[0]
    assert d["broken"]["t_ns"] == 70 and d["present_at_end"] is False
    assert f" and was broken at t+0.000 ms by {expect}." in d["sentence"]


def test_lease_expiry_forcing_the_fence_is_said(tmp_path: Path) -> None:
    h = mutant8(forced_at=None)
    h.ev(900, "exporter", "importer_lost", importer=IMP, slot=2, reason="lease expired")
    h.ev(901, "exporter", "fence_signal", buffer=3, usage="BOOKKEEP", seq=None, move=7, importer=IMP,
         error="lease expired", forced=True)
    r = h.judge(tmp_path)
    assert "by importer-2's lease expiring: the exporter forced its fences on buffer 3" in deadlocks(r)[0]["sentence"]
    assert r["findings"]["timeout"]["by_kind"] == {"notify": 0, "fence": 0, "lease": 1, "unmap": 0}


# ---------------------------------------------------------------------------- timeouts, fences forced


def test_ack_timeout_is_a_notify_timeout_finding(tmp_path: Path) -> None:
    h = mapped().move(0, 1, 1, begin=100)
    h.ev(350, "exporter", "ack_timeout", buffer=0, move=1, importers=["importer-1"], attachments=[1])
    t = h.judge(tmp_path)["findings"]["timeout"]
    assert t["count"] == 1 and t["items"][0]["kind"] == "notify"
    assert "stopped waiting for move_notify acks or returns from importer-1" in t["items"][0]["sentence"]


def test_one_fence_timeout_forcing_two_importers_is_one_timeout(tmp_path: Path) -> None:
    h = mapped().move(0, 1, 1, begin=100)
    h.ev(150, "exporter", "fence_wait_begin", buffer=0, move=1, usage="BOOKKEEP", fences=[])
    for imp in ("importer-1", "importer-2"):
        h.ev(1150, "exporter", "fence_signal", buffer=0, usage="BOOKKEEP", seq=None, move=1, importer=imp,
             error="timeout", forced=True)
    h.ev(1151, "exporter", "fence_wait_begin", buffer=0, move=1, usage="BOOKKEEP", fences=[])
    h.ev(2151, "exporter", "fence_signal", buffer=0, usage="BOOKKEEP", seq=None, move=1, importer="importer-1",
         error="timeout", forced=True)
    f = h.judge(tmp_path)["findings"]
    assert f["fence_forced"]["count"] == 3
    assert f["timeout"]["by_kind"]["fence"] == 2
    assert f["timeout"]["items"][0]["importers"] == ["importer-1", "importer-2"]


def test_a_clean_history_has_no_findings(tmp_path: Path) -> None:
    r = mapped().job(1, "write", 20, 30).move(0, 1, 1, begin=100, copy_begin=200, copy_end=300, free=400,
                                              end=500).judge(tmp_path)
    assert r["findings"]["total"] == 0
    assert r["findings"]["deadlock"] == {"count": 0, "present_at_end": 0, "items": []}


# ---------------------------------------------------------------------------- reports, trace, memory


def test_report_md_and_trace_show_the_deadlock(tmp_path: Path) -> None:
    from checker import check_run
    run = tmp_path / "run"
    run.mkdir()
    mutant8().write(run / "history.jsonl")
    r = check_run(run, merge=False)
    md = (run / "report.md").read_text()
    assert "## Findings" in md and "### Deadlocks (1 in all; 1 shown)" in md
    assert "held its lock and waited for importer-2's fence 17" in md
    assert r["findings"]["deadlock"]["count"] == 1
    import json
    trace = json.loads((run / "trace.json").read_text())["traceEvents"]
    names = [e["name"] for e in trace if e.get("cat") == "finding"]
    assert "deadlock" in names and "deadlock broken" in names and "fence forced" in names


def test_only_live_waits_are_kept(tmp_path: Path) -> None:
    """Thousands of moves that each lock, wait and serve a deferred map: the graph ends empty."""
    o = Oracle()
    t = 1000
    o.feed({"t_ns": t, "svc": "exporter", "event": "buffer_created", "buffer": 0, "heap": "vram", "offset": 0,
            "size": 64, "gen": 1})
    peak = 0
    for m in range(1, 3001):
        def ev(name: str, svc: str = "exporter", **f: Any) -> None:
            nonlocal t
            t += 10
            o.feed({"t_ns": t, "svc": svc, "event": name, **f})
        ev("resv_lock", buffer=0, move=m)
        ev("map_deferred", id=m, importer=IMP, buffer=0, attachment=1, move=m)
        ev("fence_wait_begin", buffer=0, move=m, usage="BOOKKEEP", fences=[fence_entry(m)])
        peak = max(peak, o.waitfor.live)
        ev("fence_signal", svc=IMP, buffer=0, usage="WRITE", seq=m, job=m)
        ev("fence_wait_end", buffer=0, move=m, usage="BOOKKEEP", waited_ns=10, forced=[])
        ev("resv_unlock", buffer=0, move=m)
        ev("map_served", id=m, importer=IMP, buffer=0, attachment=1, heap="vram", offset=0, size=64, gen=1,
           moved=False, deferred_ns=50)
    assert peak == 3
    wf = o.waitfor
    assert wf.live == 0 and not wf.fence_waiters and not wf.blocked_on_map
    assert o.report()["findings"]["total"] == 0


def test_the_graph_alone_on_a_three_node_cycle() -> None:
    """WaitFor by itself, on a fence waiting for a lock directly."""
    wf = WaitFor()
    wf.resv_lock({"buffer": 1, "move": 2}, 10, "exporter")
    wf.fence_wait_begin({"buffer": 1, "move": 2, "fences": [fence_entry(3)]}, 20, "exporter")
    assert wf.count == 0
    wf.fence_blocked({"buffer": 1, "seq": 3, "waiting_for": {"kind": "lock", "buffer": 1}}, 30, IMP)
    assert wf.count == 1 and [n[0] for n in wf.cycles[0].nodes] == ["move", "fence", "lock"]
    wf.resv_unlock({"buffer": 1, "move": 2}, 40, "exporter")
    assert wf.active == [] and wf.cycles[0].broken_t == 40


@pytest.mark.parametrize("deadlocked", [True, False])
def test_check_fail_on_finding(tmp_path: Path, deadlocked: bool, capsys: pytest.CaptureFixture[str]) -> None:
    from deploy.cli import main
    run = tmp_path / "run"
    run.mkdir()
    (mutant8() if deadlocked else mutant8(blocked_seq=None, forced_at=None)).write(run / "history.jsonl")
    assert main(["check", str(run)]) == 0
    assert main(["check", str(run), "--fail-on-race"]) == 0
    assert main(["check", str(run), "--fail-on-finding"]) == (1 if deadlocked else 0)
    out = capsys.readouterr().out
    assert ("deadlock   The move of buffer 3 (move 7) held its lock" in out) is deadlocked
