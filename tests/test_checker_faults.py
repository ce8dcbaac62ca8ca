"""Fault injection, the checker's side: dead and restarted services, aborted and rogue jobs,
recovery counters, the bytes check of the final content, and damaged event files.

Each verdict is asserted beside the history that would flip it (the same history without the
event that makes it right), so a checker ignoring that event fails the test.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checker import check_run, judge_history
from checker.model import RACE_KINDS
from tests.checker_helpers import (BUF_SIZE, H, mapped, race_kinds, simulated, write_events_dir,
                                   write_history)

LINES = BUF_SIZE // 64


def judge(events: list[dict[str, Any]]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "history.jsonl"
        write_history(sorted(events, key=lambda e: e["t_ns"]), p)
        return judge_history(p)


def without(events: list[dict[str, Any]], pred: Any) -> list[dict[str, Any]]:
    return [e for e in events if not pred(e)]


def racing_jobs(report: dict[str, Any]) -> set[tuple[str, int]]:
    return {(w["job"]["svc"], w["job"]["job"]) for k in RACE_KINDS for w in report["witnesses"][k]}


# ---------------------------------------------------------------------------- simulated fault runs
# The real services on virtual time (tests/checker_helpers.py: `simulated`, resv-fence unless
# said), with the fault injected as `dmabuf-emu sim --fault` would.

RESTART = "restart:target=importer-1,at=0.2,for=0.5"


def test_killed_importer_mid_job_ends_at_its_death_and_is_reported() -> None:
    events = simulated(1, RESTART, duration=1.0)
    r = judge(events)
    assert r["races"]["total"] == 0
    ended = {(e["svc"], e["job"]) for e in events if e["event"] == "dma_end"}
    cut = {(e["svc"], e["job"]) for e in events if e["event"] == "dma_begin" and (e["svc"], e["job"]) not in ended}
    assert cut and {svc for svc, _ in cut} == {"importer-1"}, "the kill caught importer-1 with jobs in flight"
    assert r["jobs"]["ended_by_death"] == len(cut) and r["jobs_unfinished"] == 0
    died = r["services"]["died"]
    assert [(d["name"], d["how"]) for d in died] == [("importer-1", "killed by fault")]
    t_died = next(e["t_ns"] for e in events if e["event"] == "service_died")
    t_run = next(e["t_ns"] for e in events if e["event"] == "run_start")
    assert died[0]["t_s"] == pytest.approx((t_died - t_run) / 1e9)
    assert [x["name"] for x in r["services"]["restarted"]] == ["importer-1"]
    assert r["services"]["incarnations"]["importer-1"] == 2
    lost = [e["reason"] for e in events if e["event"] == "importer_lost"]
    assert lost and r["recovery"]["importer_lost"] == dict(Counter(lost))
    assert r["recovery"]["attachment_revoked"] == dict(Counter(e["reason"] for e in events
                                                               if e["event"] == "attachment_revoked"))
    assert r["faults"]["applied"] == {"restart": sum(e["event"] == "fault" for e in events)}
    assert r["faults"]["schedule"] == ["restart -> importer-1 at 0.2 s for 0.5 s"]
    # the exporter moved the dead jobs' buffers later: judged as running to the end of the history
    # (no death, no second start seen), those jobs race with the moves
    starts = [e for e in events if e["event"] == "service_start" and e["svc"] == "importer-1"]
    blind = without(events, lambda e: e["event"] in ("service_died", "service_restarted") or e is starts[1])
    assert racing_jobs(judge(blind)) == cut


def test_aborted_job_whose_last_access_came_before_the_copy_is_no_race() -> None:
    # paused for longer than its lease: the exporter revokes importer-2 and moves its buffers; on
    # waking, importer-2 aborts its jobs (their dma_end comes after the copy, their last access before)
    events = simulated(1, "pause:target=importer-2,at=0.1,for=0.3", lease_ms=100.0)
    r = judge(events)
    assert r["races"]["total"] == 0
    aborted = {(e["svc"], e["job"]) for e in events if e["event"] == "dma_end" and e["status"] == "aborted"}
    assert aborted and r["jobs"]["aborted"] == len(aborted)
    assert r["recovery"]["lease_expired"] == 1 and r["recovery"]["rejoin"] == 1
    assert r["services"]["importer_stops"][0]["name"] == "importer-2"
    assert r["services"]["importer_stops"][0]["event"] == "lease_expired"
    assert r["faults"]["applied"] == {"pause": sum(e["event"] == "fault" for e in events)}
    # without last_access_ns the aborted job would end at its dma_end, after the copy began
    blind = [{k: v for k, v in e.items() if not (k == "last_access_ns" and e.get("status") == "aborted")}
             for e in events]
    assert racing_jobs(judge(blind)) == aborted


def test_rogue_jobs_after_unmap_are_races_unless_the_iommu_blocked_every_access() -> None:
    events = simulated(2, "rogue:ms=150,p=0.02", strategy="revalidate", write_ratio=0.3, duration=0.3)
    rogue = {(e["svc"], e["job"]) for e in events if e["event"] == "dma_begin" and e.get("rogue")}
    assert rogue and not any(e["event"] == "iommu_fault" for e in events)
    r = judge(events)
    assert r["rogue_jobs"] == {"total": len(rogue), "raced": len(rogue), "iommu_faults": 0}
    assert racing_jobs(r) == rogue and r["races"]["total"] == len(rogue)
    assert r["races_by_importer"] == dict(Counter(svc for svc, _ in rogue))
    witnesses = [w for k in RACE_KINDS for w in r["witnesses"][k]]
    assert all(w["job"]["rogue"] is True and "rogue device" in w["sentence"] for w in witnesses)
    # the same rogue jobs, had all their accesses been blocked by the IOMMU, are no race
    blocked = [{**e, "status": "fault", "bytes": 0} if e["event"] == "dma_end" and e.get("rogue") else e
               for e in events]
    r2 = judge(blocked)
    assert r2["races"]["total"] == 0
    assert r2["rogue_jobs"] == {"total": len(rogue), "raced": 0, "iommu_faults": len(rogue)}
    assert r2["jobs"]["no_access"] == len(rogue)


def _tampered(events: list[dict[str, Any]], tamper: tuple[str, ...]) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """The final_content events with each buffer named by `tamper` damaged, in the order given:
    "lose" (half the last write's lines back to the initial stamp), "foreign" (three of its lines
    holding another buffer's initial stamp). Only buffers whose final bytes are one write's
    stamp are damaged; returns the events and the [buffer, writer, job, lines] damaged."""
    whole = [e for e in events if e["event"] == "final_content" and len(e["stamps"]) == 1 and e["stamps"][0][1]]
    assert len(whole) >= len(tamper), "buffers whose final bytes are one write's"
    victims = {id(e): how for e, how in zip(whole, tamper)}
    out, hit = [], []
    for e in events:
        how = victims.get(id(e))
        if how is not None:
            b, w, job, n = e["stamps"][0]
            hit.append([b, w, job, n])
            other = (b + 1) % len(whole)
            stamps = [[b, 0, 0, n // 2], [b, w, job, n - n // 2]] if how == "lose" else \
                [[b, w, job, n - 3], [other, 0, 0, 3]]
            e = {**e, "stamps": sorted(stamps)}
        out.append(e)
    return out, hit


@pytest.mark.parametrize("tamper, verdict", [
    ((), "ok"),
    (("lose",), "lost writes"),
    # foreign lines overwrite some of the buffer's last write: both are reported
    (("foreign",), "lost writes and foreign lines"),
])
def test_bytes_check_verdicts(tamper: tuple[str, ...], verdict: str) -> None:
    events, hit = _tampered(simulated(1), tamper)
    buffers = sum(e["event"] == "final_content" for e in events)
    r = judge(events)
    bc = r["bytes_check"]
    assert r["races"]["total"] == 0
    assert bc["verdict"] == verdict
    assert bc["buffers"] == buffers
    if "lost" in verdict:
        lost = bc["lost_writes"]
        b, w, job, n = hit[0]
        found = {"lose": n - n // 2, "foreign": n - 3}[tamper[0]]
        assert [x["buffer"] for x in lost] == [b]
        assert lost[0]["lines_found"] == found and lost[0]["lines_expected"] == n
        last = max((e for e in events if e["event"] == "dma_end" and e["buffer"] == b and e["access"] == "write"
                    and e["status"] == "ok"), key=lambda e: e["t_ns"])
        assert (lost[0]["svc"], lost[0]["job"]) == (last["svc"], last["job"]) == (f"importer-{w}", job)
    else:
        assert bc["last_writes_present"] >= 1
    if "foreign" in verdict:
        b = hit[0][0]
        assert bc["foreign"] == [{"buffer": b, "lines": 3, "from_buffers": [(b + 1) % buffers]}]
    assert judge(without(events, lambda e: e["event"] == "final_content"))["bytes_check"]["verdict"] == \
        "not checked (no final_content)"


def test_message_faults_are_counted_and_change_no_verdict() -> None:
    events = simulated(5, "drop:p=0.1", "dup:p=0.1", "delay:ms=1")
    r = judge(events)
    n = Counter(e["kind"] for e in events if e["event"] == "fault")
    assert r["faults"]["applied"] == dict(n) and set(n) == {"drop", "dup", "delay"}
    assert r["recovery"]["retries"] == sum(e["event"] == "retry" for e in events) > 0
    assert r["recovery"]["dedups"] == sum(e["event"] == "dedup" for e in events) > 0
    assert r["faults"]["applied_total"] == sum(n.values())
    assert r["races"]["total"] == 0 and r["bytes_check"]["verdict"] == "ok"
    assert r["faults"]["schedule"] == ["drop p=0.1 -> importers at 0 s", "dup p=0.1 -> importers at 0 s",
                                       "delay ms=1 jitter_ms=0 -> importers at 0 s"]


FAULTS = {"kill": "kill:target=importer-1,at={at}", "restart": "restart:target=importer-2,at={at},for=0.1",
          "pause": "pause:target=importer-1,at={at},for=0.2", "msg": "drop:p=0.2"}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), fault=st.sampled_from(sorted(FAULTS)),
       at=st.sampled_from([0.05, 0.1, 0.2]), via_merge=st.booleans())
def test_a_correct_run_under_faults_has_no_race_and_loses_no_write(seed: int, fault: str, at: float,
                                                                    via_merge: bool) -> None:
    events = simulated(seed, FAULTS[fault].format(at=at), importers=2, duration=0.4, lease_ms=100.0)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if via_merge:
            write_events_dir(events, d / "events")
            r = check_run(d)
        else:
            write_history(events, d / "history.jsonl")
            r = judge_history(d / "history.jsonl")
    assert r["races"]["total"] == 0, r["witnesses"]
    assert r["bytes_check"]["verdict"] == "ok", r["bytes_check"]
    assert r["anomalies"] == {} and r["history_errors"] == 0
    assert r["jobs_unfinished"] == 0


# ---------------------------------------------------------------------------- hand-written cases


def test_aborted_job_uses_last_access_ns_and_equal_times_are_no_race(tmp_path: Path) -> None:
    def h(last: int | None) -> H:
        x = mapped().move(0, 1, 1, begin=100, copy_begin=200, copy_end=300, free=400, end=500)
        f = dict(job=1, buffer=0, attachment=1, access="write", heap="vram", offset=0, size=BUF_SIZE, gen=1)
        x.ev(150, "importer-1", "dma_begin", **f)
        extra = {} if last is None else {"last_access_ns": last}
        return x.ev(450, "importer-1", "dma_end", **f, status="aborted", bytes=4096, **extra)

    assert race_kinds(h(199).judge(tmp_path)) == {}
    assert race_kinds(h(200).judge(tmp_path)) == {}          # equal times are never a race
    assert race_kinds(h(201).judge(tmp_path)) == {"lost_write": 1}
    assert race_kinds(h(None).judge(tmp_path)) == {"lost_write": 1}
    r = h(201).judge(tmp_path)
    assert r["jobs"]["aborted"] == 1
    assert "until its last access at" in r["witnesses"]["lost_write"][0]["sentence"]


def test_a_rogue_write_onto_a_range_another_buffer_moved_into_is_its_race_and_foreign_lines(tmp_path: Path) -> None:
    """importer-1 unmaps buffer 0 and its device keeps writing buffer 0's old range (vram 0); the
    exporter moves buffer 0 away and buffer 1 into that range; the rogue write ends after buffer
    1 arrived, so buffer 1's final bytes hold buffer 0's lines."""
    def h(status: str, nbytes: int) -> H:
        x = mapped().created(1, buffer=1, heap="sys", offset=0x10000).unmap(50)
        f = dict(job=5, buffer=0, attachment=1, access="write", heap="vram", offset=0, size=BUF_SIZE, gen=1)
        x.ev(60, "importer-1", "dma_begin", **f, rogue=True)
        x.move(0, 1, 1, begin=100, copy_begin=110, copy_end=120, free=130, end=140, dst=("sys", 0x20000))
        x.move(1, 1, 2, begin=150, copy_begin=160, copy_end=170, free=180, end=190, src=("sys", 0x10000),
               dst=("vram", 0))
        x.ev(200, "importer-1", "dma_end", **f, rogue=True, status=status, bytes=nbytes, last_access_ns=200)
        x.ev(900, "exporter", "final_content", buffer=0, heap="sys", offset=0x20000, size=BUF_SIZE, gen=2,
             stamps=[[0, 0, 0, LINES]])
        stamps = [[0, 1, 5, LINES]] if nbytes else [[1, 0, 0, LINES]]
        return x.ev(900, "exporter", "final_content", buffer=1, heap="vram", offset=0, size=BUF_SIZE, gen=2,
                    stamps=stamps)

    r = h("ok", BUF_SIZE).judge(tmp_path)
    assert sum(race_kinds(r).values()) == 1 and r["rogue_jobs"] == {"total": 1, "raced": 1, "iommu_faults": 0}
    assert r["races_by_importer"] == {"importer-1": 1}
    w = next(w for k in race_kinds(r) for w in r["witnesses"][k])
    assert w["job"]["rogue"] is True and "rogue device" in w["sentence"]
    bc = r["bytes_check"]
    assert bc["verdict"] == "foreign lines" and bc["lost_writes"] == []
    assert [(f["buffer"], f["lines"], f["from_buffers"]) for f in bc["foreign"]] == [(1, LINES, [0])]
    # every access blocked by the IOMMU: no race, and nothing foreign in buffer 1
    r2 = h("fault", 0).judge(tmp_path)
    assert r2["races"]["total"] == 0 and r2["rogue_jobs"] == {"total": 1, "raced": 0, "iommu_faults": 1}
    assert r2["jobs"]["no_access"] == 1 and r2["bytes_check"]["verdict"] == "ok"


def test_rogue_job_begun_while_unmapped_is_use_after_unmap(tmp_path: Path) -> None:
    h = mapped().unmap(50)
    f = dict(job=5, buffer=0, attachment=1, access="read", heap="vram", offset=0, size=BUF_SIZE, gen=1)
    h.ev(60, "importer-1", "dma_begin", **f, rogue=True)
    h.ev(70, "importer-1", "dma_end", **f, rogue=True, status="ok", bytes=BUF_SIZE, last_access_ns=70)
    r = h.judge(tmp_path)
    assert race_kinds(r) == {"use_after_unmap": 1}
    assert r["rogue_jobs"] == {"total": 1, "raced": 1, "iommu_faults": 0}


def test_partly_blocked_job_is_judged_and_iommu_faults_alone_are_not(tmp_path: Path) -> None:
    def h(nbytes: int) -> dict[str, Any]:
        x = mapped().unmap(50)
        f = dict(job=5, buffer=0, attachment=1, access="write", heap="vram", offset=0, size=BUF_SIZE, gen=1)
        x.ev(60, "importer-1", "dma_begin", **f, rogue=True)
        x.ev(61, "importer-1", "iommu_fault", job=5, buffer=0, attachment=1, access="write", heap="vram",
             offset=0, size=64)
        x.ev(70, "importer-1", "dma_end", **f, rogue=True, status="fault", bytes=nbytes, faults=3,
             last_access_ns=70 if nbytes else None)
        return x.judge(tmp_path)

    assert race_kinds(h(0)) == {} and h(0)["iommu_faults"] == 1
    assert race_kinds(h(128)) == {"use_after_unmap": 1}
    assert h(128)["rogue_jobs"] == {"total": 1, "raced": 1, "iommu_faults": 1}


def test_recovery_and_stops_are_counted(tmp_path: Path) -> None:
    h = H().ev(0, "deploy", "run_start", run_id="r", strategy="resv-fence",
               params={"faults": [{"kind": "delay", "target": "exporter", "at": 0.5, "for": 2.0, "p": 0.5,
                                   "op": "move_notify", "ms": 5.0, "jitter_ms": 0.0}]})
    h.ev(10, "deploy", "workload_start")
    for reason in ("lease expired", "restarted", "lease expired"):
        h.ev(20, "exporter", "importer_lost", importer="importer-1", slot=1, reason=reason)
    h.ev(21, "exporter", "attachment_revoked", importer="importer-1", buffer=0, attachment=1,
         reason="lease expired", was_mapped=True)
    h.ev(22, "exporter", "retry", op="move_notify", id=3, attempt=2).ev(23, "importer-2", "dedup", op="move_notify", id=3)
    h.ev(30, "importer-2", "exporter_lost", silent_ns=5).ev(31, "importer-2", "lease_expired", since_ns=4)
    h.ev(32, "importer-2", "rejoin", reason="lease expired")
    h.ev(40, "exporter", "fault", kind="delay", target="exporter", op="move_notify", id=3, ms=5.0)
    r = h.judge(tmp_path)
    assert r["recovery"] == {"importer_lost": {"lease expired": 2, "restarted": 1},
                             "attachment_revoked": {"lease expired": 1}, "retries": 1, "dedups": 1,
                             "lease_expired": 1, "rejoin": 1, "exporter_lost": 1}
    assert [(s["name"], s["event"], s["t_s"]) for s in r["services"]["importer_stops"]] == \
        [("importer-2", "exporter_lost", 30e-9), ("importer-2", "lease_expired", 31e-9)]
    assert r["faults"] == {"schedule": ["delay ms=5 jitter_ms=0 op=move_notify p=0.5 -> exporter at 0.5 s for 2 s"],
                           "applied": {"delay": 1}, "applied_total": 1}


def test_races_first_s_counts_from_workload_start(tmp_path: Path) -> None:
    h = mapped().ev(1, "deploy", "workload_start").unmap(50).job(1, "read", 1_000_001, 1_000_010)
    r = h.judge(tmp_path)
    assert r["races"]["first_s"] == pytest.approx(1e-3)
    assert mapped().job(1, "read", 20, 30).judge(tmp_path)["races"]["first_s"] is None


def test_bytes_check_skips_an_overlapped_or_superseded_last_write(tmp_path: Path) -> None:
    def final(h: H, stamps: list[list[int]]) -> dict[str, Any]:
        h.ev(900, "exporter", "final_content", buffer=0, heap="vram", offset=0, size=BUF_SIZE, gen=1, stamps=stamps)
        return h.judge(tmp_path)["bytes_check"]

    missing = [[0, 0, 0, LINES]]  # only the initial stamp: the last write is not there
    alone = mapped().job(1, "write", 20, 30).job(2, "write", 40, 50)
    assert final(alone, missing)["lost_writes"] == [
        {"buffer": 0, "svc": "importer-1", "job": 2, "lines_found": 0, "lines_expected": LINES, "rogue": False}]
    assert final(mapped().job(1, "write", 20, 30).job(2, "write", 40, 50), [[0, 1, 2, LINES]])["verdict"] == "ok"
    touching = mapped().job(1, "write", 20, 40).job(2, "write", 40, 50)           # equal times: no overlap
    assert final(touching, missing)["verdict"] == "lost writes"
    over = mapped().job(1, "write", 20, 41).job(2, "write", 40, 50)
    bc = final(over, missing)
    assert bc["verdict"] == "ok" and bc["not_checked"] == {"overlapped": 1}
    later = mapped().job(1, "write", 20, 30)
    f = dict(job=2, buffer=0, attachment=1, access="write", heap="vram", offset=0, size=BUF_SIZE, gen=1)
    later.ev(40, "importer-1", "dma_begin", **f).ev(50, "importer-1", "dma_end", **f, status="aborted",
                                                       bytes=64, last_access_ns=45)
    assert final(later, missing)["not_checked"] == {"superseded": 1}
    running = mapped().job(1, "write", 20, 30).job(2, "write", 800, None)
    assert final(running, missing)["not_checked"] == {"still_running": 1}


# ---------------------------------------------------------------------------- damaged event files


def test_a_killed_and_restarted_importers_glued_lines_are_recovered(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ev = lambda t, svc, event, **f: json.dumps({"t_ns": t, "svc": svc, "pid": 1, "event": event, **f})  # noqa: E731
    (run / "events").mkdir(parents=True)
    (run / "events" / "deploy.jsonl").write_text("\n".join([
        ev(0, "deploy", "run_start", run_id="r", strategy="pin", params={}),
        ev(50, "deploy", "service_died", name="importer-1", pid=7, how="killed by fault"),
        ev(60, "deploy", "service_restarted", name="importer-1", pid=8, incarnation=1)]) + "\n")
    (run / "events" / "importer-1.jsonl").write_text(
        ev(10, "importer-1", "service_start", index=1) + "\n"
        + ev(20, "importer-1", "attach", id=1, buffer=0, attachment=1)[:30]   # cut short by SIGKILL
        + ev(70, "importer-1", "service_start", index=1, incarnation=1) + "\n")
    r = check_run(run)
    assert r["history_errors"] == 1 and r["merge"]["truncated"] == 1
    assert r["services"]["incarnations"] == {"importer-1": 2}
    assert [d["name"] for d in r["services"]["died"]] == ["importer-1"]
    md = (run / "report.md").read_text()
    assert "Died: importer-1 at 0.000 s (killed by fault)" in md
    assert "Not checked: the history has no final_content event" in md


def test_report_md_and_trace_show_faults_deaths_and_the_bytes_verdict(tmp_path: Path) -> None:
    events, _ = _tampered(simulated(1, RESTART, duration=1.0), ("lose",))
    write_events_dir(events, tmp_path / "events")
    r = check_run(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "Final bytes: **lost writes**." in md and "## Faults" in md and "restart -> importer-1" in md
    assert "| importer-1 |" in md and "killed by fault" in md and "## Recovery" in md
    trace = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    names = [e["name"] for e in trace if e["ph"] == "i"]
    assert "fault: restart" in names and "service_died" in names and "service_restarted" in names
    assert "lost write in the final bytes" in names
    fault = next(e for e in trace if e["ph"] == "i" and e["name"] == "fault: restart")
    assert fault["pid"] == 11 and fault["args"]["target"] == "importer-1"   # on the target's row
    died_t = next(e["ts"] for e in trace if e["ph"] == "i" and e["name"] == "service_died")
    ends = [e for e in trace if e["ph"] == "e" and e.get("args", {}).get("died")]
    assert ends and all(e["ts"] == died_t and e["pid"] == 11 for e in ends)
    assert r["bytes_check"]["verdict"] == "lost writes"
