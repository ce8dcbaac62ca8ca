"""The four race kinds on hand-written histories: each racy case beside its near miss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.checker_helpers import H, mapped, race_kinds


def moved_buffer(**move: int) -> H:
    """Buffer 0 mapped by importer-1 at t=10, moved gen 1 -> 2 with the given times."""
    times: dict[str, Any] = {"begin": 100, "copy_begin": 200, "copy_end": 300, "free": 400, "end": 500}
    times.update(move)
    return mapped().move(0, 1, 1, **times)


# ---------------------------------------------------------------------------- lost_write


@pytest.mark.parametrize("end, racy", [(201, True), (199, False), (200, False), (10_000, True)])
def test_write_running_when_copy_begins(tmp_path: Path, end: int, racy: bool) -> None:
    r = moved_buffer().job(1, "write", 150, end).judge(tmp_path)
    assert race_kinds(r) == ({"lost_write": 1} if racy else {})


def test_write_begun_after_copy_began_is_lost(tmp_path: Path) -> None:
    r = moved_buffer().job(1, "write", 250, 260).judge(tmp_path)
    assert race_kinds(r) == {"lost_write": 1}


@pytest.mark.parametrize("end_first", [True, False])
def test_write_ending_on_the_copy_begin_ns_is_no_race_in_either_tie_order(tmp_path: Path, end_first: bool) -> None:
    h = mapped().job(1, "write", 150, None)
    end = {"t_ns": 200, "svc": "importer-1", "pid": 1, "event": "dma_end", "job": 1, "buffer": 0,
           "attachment": 1, "access": "write", "heap": "vram", "offset": 0, "size": 1, "gen": 1, "status": "ok"}
    if end_first:
        h.events.append(end)
    h.move(0, 1, 1, begin=100, copy_begin=200, copy_end=300, free=400, end=500)
    if not end_first:
        h.events.append(end)
    r = h.judge(tmp_path)
    order = [e["event"] for e in h.sorted_events() if e["t_ns"] == 200]
    assert order == (["dma_end", "copy_begin"] if end_first else ["copy_begin", "dma_end"])
    assert r["races"]["total"] == 0


def test_read_during_the_copy_is_not_a_race(tmp_path: Path) -> None:
    # the old range stays good for reads until it is freed
    r = moved_buffer().job(1, "read", 150, 399).judge(tmp_path)
    assert r["races"]["total"] == 0


def test_dma_in_flight_after_move_begin_is_not_by_itself_a_race(tmp_path: Path) -> None:
    r = moved_buffer(copy_begin=300, copy_end=350).job(1, "write", 90, 250).judge(tmp_path)
    assert r["races"]["total"] == 0


def test_write_into_a_freed_range_without_a_recorded_copy_is_lost(tmp_path: Path) -> None:
    r = mapped().move(0, 1, 1, begin=100, free=400, end=500).job(1, "write", 390, 410).judge(tmp_path)
    assert race_kinds(r) == {"lost_write": 1}


# ---------------------------------------------------------------------------- stale_read


@pytest.mark.parametrize("end, racy", [(401, True), (399, False), (400, False)])
def test_read_running_when_range_is_freed(tmp_path: Path, end: int, racy: bool) -> None:
    r = moved_buffer().job(1, "read", 350, end).judge(tmp_path)
    assert race_kinds(r) == ({"stale_read": 1} if racy else {})


def test_read_begun_after_free_is_stale(tmp_path: Path) -> None:
    r = moved_buffer().job(1, "read", 450, 460).judge(tmp_path)
    assert race_kinds(r) == {"stale_read": 1}


# ---------------------------------------------------------------------------- use_after_unmap


def test_job_after_unmap(tmp_path: Path) -> None:
    r = mapped().unmap(50).job(1, "read", 60, 70).judge(tmp_path)
    assert race_kinds(r) == {"use_after_unmap": 1}


def test_job_one_ns_after_the_remap_is_fine(tmp_path: Path) -> None:
    r = mapped().unmap(50).map(80).job(1, "read", 81, 90).judge(tmp_path)
    assert r["races"]["total"] == 0


def test_job_on_the_remap_ns_after_the_map_event_is_fine(tmp_path: Path) -> None:
    # same importer, same ns: the importer's own order (map, then dma_begin) is the real one
    r = mapped().unmap(50).map(80).job(1, "write", 80, 90).judge(tmp_path)
    assert r["races"]["total"] == 0


def test_job_after_invalidate_then_remap(tmp_path: Path) -> None:
    assert race_kinds(mapped().invalidate(50).job(1, "read", 60, 70).judge(tmp_path)) == {"use_after_unmap": 1}
    assert mapped().invalidate(50).map(79).job(1, "read", 80, 90).judge(tmp_path)["races"]["total"] == 0


def test_job_on_a_never_mapped_attachment(tmp_path: Path) -> None:
    h = H().created(0).attach(5).job(1, "read", 60, 70)
    assert race_kinds(h.judge(tmp_path)) == {"use_after_unmap": 1}


def test_job_on_another_importers_mapping_is_use_after_unmap(tmp_path: Path) -> None:
    # importer-2 never mapped attachment 1: importer-1's mapping does not count for it
    h = mapped().job(1, "read", 60, 70, svc="importer-2")
    assert race_kinds(h.judge(tmp_path)) == {"use_after_unmap": 1}


# ---------------------------------------------------------------------------- unfenced_access


def early_gen2_map() -> H:
    """Gen 2's copy runs 200..300; importer-2 is handed gen 2 at 250 (before the copy ended)."""
    h = moved_buffer()
    return h.attach(240, svc="importer-2", att=2).map(250, svc="importer-2", att=2, gen=2, heap="sys", offset=0x1000)


@pytest.mark.parametrize("begin, racy", [(299, True), (301, False), (300, False)])
def test_job_on_new_gen_before_copy_end(tmp_path: Path, begin: int, racy: bool) -> None:
    h = early_gen2_map().job(1, "read", begin, 310, svc="importer-2", att=2, gen=2, heap="sys", offset=0x1000)
    assert race_kinds(h.judge(tmp_path)) == ({"unfenced_access": 1} if racy else {})


def test_job_beginning_on_the_copy_end_ns_before_it_in_the_merge_is_no_race(tmp_path: Path) -> None:
    h = mapped().attach(240, svc="importer-2", att=2).map(250, svc="importer-2", att=2, gen=2)
    h.job(1, "read", 300, 310, svc="importer-2", att=2, gen=2)   # dma_begin first at t=300
    h.move(0, 1, 1, begin=100, copy_begin=200, copy_end=300, free=400, end=500)
    assert [e["event"] for e in h.sorted_events() if e["t_ns"] == 300] == ["dma_begin", "copy_end"]
    assert h.judge(tmp_path)["races"]["total"] == 0


def test_zero_length_job_on_the_copy_end_ns_is_judged_after_the_whole_tie(tmp_path: Path) -> None:
    # dma_begin and dma_end both come before copy_end at t=300: the verdict must wait for the tie
    h = mapped().attach(240, svc="importer-2", att=2).map(250, svc="importer-2", att=2, gen=2)
    h.job(1, "write", 300, 300, svc="importer-2", att=2, gen=2)
    h.move(0, 1, 1, begin=100, copy_begin=200, copy_end=300, free=400, end=500)
    assert [e["event"] for e in h.sorted_events() if e["t_ns"] == 300] == ["dma_begin", "dma_end", "copy_end"]
    assert h.judge(tmp_path)["races"]["total"] == 0


def test_job_on_a_gen_whose_copy_never_ended(tmp_path: Path) -> None:
    h = mapped().move(0, 1, 1, begin=100, copy_begin=200)
    h.attach(240, svc="importer-2", att=2).map(250, svc="importer-2", att=2, gen=2)
    h.job(1, "write", 260, 270, svc="importer-2", att=2, gen=2)
    assert race_kinds(h.judge(tmp_path)) == {"unfenced_access": 1}


def test_gen_one_is_never_unfenced(tmp_path: Path) -> None:
    # the job begins before buffer_created is even seen: gen 1 is created by no copy
    h = H().attach(1).map(2).job(1, "read", 3, 4).created(5)
    assert h.judge(tmp_path)["races"]["total"] == 0


# ---------------------------------------------------------------------------- precedence, once per job


def test_lost_write_takes_precedence_over_use_after_unmap(tmp_path: Path) -> None:
    r = moved_buffer().unmap(50).job(1, "write", 60, 250).judge(tmp_path)
    assert race_kinds(r) == {"lost_write": 1}
    assert r["races"]["total"] == 1


def test_stale_read_takes_precedence_over_use_after_unmap(tmp_path: Path) -> None:
    r = moved_buffer().unmap(50).job(1, "read", 60, 450).judge(tmp_path)
    assert race_kinds(r) == {"stale_read": 1}


def test_use_after_unmap_takes_precedence_over_unfenced(tmp_path: Path) -> None:
    h = moved_buffer().job(1, "read", 250, 260, svc="importer-2", att=2, gen=2)  # never mapped, gen 2 copying
    assert race_kinds(h.judge(tmp_path)) == {"use_after_unmap": 1}


def test_one_race_per_job_and_per_racy_job(tmp_path: Path) -> None:
    h = moved_buffer()
    for j in range(7):
        h.job(10 + j, "write", 150 + j, 250 + j)
    h.job(99, "write", 120, 130)  # ended before the copy: fine
    r = h.judge(tmp_path)
    assert r["races"] == {"lost_write": 7, "stale_read": 0, "use_after_unmap": 0, "unfenced_access": 0,
                          "write_after_invalidate": 0, "total": 7, "first_s": 200e-9}  # the first write overlapped the copy from its copy_begin
    assert r["races_by_importer"] == {"importer-1": 7}
    assert len(r["witnesses"]["lost_write"]) == 5


# ---------------------------------------------------------------------------- unfinished jobs


def test_unfinished_write_runs_until_the_last_event(tmp_path: Path) -> None:
    r = moved_buffer().job(1, "write", 150, None).judge(tmp_path)
    assert race_kinds(r) == {"lost_write": 1}
    assert r["jobs_unfinished"] == 1
    w = r["witnesses"]["lost_write"][0]
    assert "never ended" in w["sentence"]
    assert w["events"][-1]["event"] in ("end_of_history", "free")


def test_unfinished_read_with_nothing_freed_is_no_race(tmp_path: Path) -> None:
    r = mapped().job(1, "read", 150, None).ev(900, "deploy", "run_stop").judge(tmp_path)
    assert r["races"]["total"] == 0
    assert r["jobs_unfinished"] == 1


def test_unfinished_write_when_the_copy_begins_at_the_last_event_is_no_race(tmp_path: Path) -> None:
    h = mapped().job(1, "write", 150, None).move(0, 1, 1, begin=100, copy_begin=200)
    assert h.judge(tmp_path)["races"]["total"] == 0


def test_restarted_importer_reusing_a_job_id_does_not_hide_the_unfinished_job(tmp_path: Path) -> None:
    # The restart is not announced by a service_start, so the old job is still running when its
    # id comes back: it stays unfinished until the end of the history.
    h = moved_buffer().job(1, "write", 150, None)                    # killed mid-write, silently
    h.map(610, gen=2, heap="sys", offset=0x1000)
    h.job(1, "write", 620, 630, gen=2, heap="sys", offset=0x1000)    # same job id, new process
    r = h.judge(tmp_path)
    assert race_kinds(r) == {"lost_write": 1}
    assert r["jobs_unfinished"] == 1
    assert r["witnesses"]["lost_write"][0]["job"]["begin_t_ns"] == 150


@pytest.mark.parametrize("died, racy", [(160, False), (200, False), (201, True)])
def test_a_killed_importers_job_ends_at_its_death(tmp_path: Path, died: int, racy: bool) -> None:
    h = moved_buffer().job(1, "write", 150, None)                    # killed mid-write; copy_begin at 200
    h.ev(died, "deploy", "service_died", name="importer-1", pid=7, how="killed by fault")
    h.ev(600, "importer-1", "service_start", index=1).map(610, gen=2, heap="sys", offset=0x1000)
    h.job(1 << 24, "write", 620, 630, gen=2, heap="sys", offset=0x1000)
    r = h.judge(tmp_path)
    assert race_kinds(r) == ({"lost_write": 1} if racy else {})
    assert r["jobs_unfinished"] == 0 and r["jobs"]["ended_by_death"] == 1
    assert r["services"]["by_name"]["importer-1"]["died"] is True
    if racy:
        w = r["witnesses"]["lost_write"][0]
        assert "until its service died" in w["sentence"] and w["job"]["ended_by"] == "died"
        assert any(e["event"] == "service died" and e["t_ns"] == died for e in w["events"])


def test_a_restart_without_service_died_ends_the_old_incarnations_jobs(tmp_path: Path) -> None:
    h = moved_buffer().ev(1, "importer-1", "service_start", index=1).job(1, "write", 150, None)
    h.ev(250, "importer-1", "service_start", index=1)                # the next incarnation, after copy_begin
    r = h.judge(tmp_path)
    assert race_kinds(r) == {"lost_write": 1}
    assert r["jobs_unfinished"] == 0
    assert "until its service restarted at t+0.000 ms" in r["witnesses"]["lost_write"][0]["sentence"]
    assert r["services"]["incarnations"] == {"importer-1": 2}


# ---------------------------------------------------------------------------- long histories


def test_job_on_a_generation_dropped_from_memory_long_ago(tmp_path: Path) -> None:
    h = mapped()
    t = 100
    for g in range(1, 13):  # 12 moves: gen 1 is long gone from the oracle's bounded record
        src, dst = (("vram", 0), ("sys", 0x1000)) if g % 2 else (("sys", 0x1000), ("vram", 0))
        h.move(0, g, g, begin=t, copy_begin=t + 10, copy_end=t + 20, free=t + 30, end=t + 40, src=src, dst=dst)
        t += 100
    h.attach(t, svc="importer-2", att=2).map(t + 1, svc="importer-2", att=2)   # a rogue: maps gen 1 anew
    h.job(1, "write", t + 10, t + 20, svc="importer-2", att=2, gen=1)
    h.job(2, "read", t + 30, t + 40, svc="importer-2", att=2, gen=1)
    r = h.judge(tmp_path)
    assert race_kinds(r) == {"lost_write": 1, "stale_read": 1}
    assert "several moves earlier" in r["witnesses"]["lost_write"][0]["sentence"]


def test_job_spanning_many_moves_keeps_its_generation_record(tmp_path: Path) -> None:
    h = mapped().job(1, "write", 50, 5000)
    t = 100
    for g in range(1, 13):
        h.move(0, g, g, begin=t, copy_begin=t + 10, copy_end=t + 20, free=t + 30, end=t + 40)
        t += 100
    r = h.judge(tmp_path)
    assert race_kinds(r) == {"lost_write": 1}
    copy = [e for e in r["witnesses"]["lost_write"][0]["events"] if e["event"] == "copy_begin"]
    assert copy and copy[0]["t_ns"] == 110


# ---------------------------------------------------------------------------- witnesses


def spec_example() -> H:
    ms = 1_000_000
    h = H().created(0, buffer=7, heap="vram", offset=0x40000)
    h.attach(1000, svc="importer-2", buffer=7, att=3).map(2000, svc="importer-2", buffer=7, att=3,
                                                            heap="vram", offset=0x40000)
    h.move(7, 1, 12, begin=int(1.0 * ms), copy_begin=int(1.180 * ms), copy_end=int(1.3 * ms),
           free=int(1.410 * ms), end=int(1.5 * ms), src=("vram", 0x40000), dst=("sys", 0x1000))
    return h


def test_lost_write_witness_sentence_and_events(tmp_path: Path) -> None:
    h = spec_example().job(15, "write", 1_100_000, 1_204_000, svc="importer-2", buffer=7, att=3,
                           heap="vram", offset=0x40000)
    r = h.judge(tmp_path)
    w = r["witnesses"]["lost_write"][0]
    s = w["sentence"]
    assert "importer-2 wrote buffer 7 at vram+0x40000 (gen 1)" in s
    assert "until t+1.204 ms" in s and "from t+1.100 ms" in s
    assert "began copying buffer 7 to sys+0x1000 (gen 2) at t+1.180 ms" in s
    assert "freed the old range at t+1.410 ms" in s
    names = [(e["event"], e["t_ns"]) for e in w["events"]]
    assert names == [("move_begin", 1_000_000), ("dma_begin", 1_100_000), ("copy_begin", 1_180_000),
                     ("dma_end", 1_204_000), ("free", 1_410_000)]
    assert all({"t_ns", "svc", "event", "buffer"} <= set(e) for e in w["events"])
    assert w["events"][1]["placement"] == "vram+0x40000" and w["events"][1]["job"] == 15
    assert w["job"]["svc"] == "importer-2" and w["job"]["job"] == 15 and w["job"]["access"] == "write"


def test_stale_read_witness_sentence(tmp_path: Path) -> None:
    h = spec_example().job(4, "read", 1_300_000, 1_500_000, svc="importer-2", buffer=7, att=3, offset=0x40000)
    s = h.judge(tmp_path)["witnesses"]["stale_read"][0]["sentence"]
    assert "importer-2 read buffer 7 at vram+0x40000 (gen 1) from t+1.300 ms until t+1.500 ms" in s
    assert "freed the old range at t+1.410 ms" in s and "sys+0x1000 (gen 2)" in s


def test_use_after_unmap_witness_sentence(tmp_path: Path) -> None:
    h = mapped().unmap(2_000_000).job(3, "write", 2_500_000, 2_600_000)
    w = h.judge(tmp_path)["witnesses"]["use_after_unmap"][0]
    assert w["sentence"] == ("importer-1 began writing buffer 0 at vram+0x0 (gen 1) at t+2.500 ms on "
                             "attachment 1, which it had unmapped at t+2.000 ms with no map since.")
    assert [e["event"] for e in w["events"]] == ["unmap", "dma_begin", "dma_end"]


def test_unfenced_witness_sentence(tmp_path: Path) -> None:
    h = spec_example().attach(1_150_000, svc="importer-1", buffer=7, att=9)
    h.map(1_200_000, svc="importer-1", buffer=7, att=9, gen=2, heap="sys", offset=0x1000)
    h.job(8, "read", 1_250_000, 1_260_000, svc="importer-1", buffer=7, att=9, gen=2, heap="sys", offset=0x1000)
    w = h.judge(tmp_path)["witnesses"]["unfenced_access"][0]
    s = w["sentence"]
    assert "importer-1 began reading buffer 7 at sys+0x1000 (gen 2) at t+1.250 ms" in s
    assert "began at t+1.180 ms and ended at t+1.300 ms" in s
    assert [e["event"] for e in w["events"]] == ["move_begin", "copy_begin", "dma_begin", "dma_end", "copy_end"]


@pytest.mark.parametrize("lied", [True, False])
def test_a_witness_names_the_device_fault_injected_while_its_job_ran(tmp_path: Path, lied: bool) -> None:
    h = moved_buffer().job(1, "write", 150, 260)
    if lied:
        h.ev(180, "importer-1", "fault", kind="early-ack", target="importer-1", buffer=0, move=1)
    r = h.judge(tmp_path)
    assert race_kinds(r) == {"lost_write": 1}, "the verdict never depends on the fault"
    w = r["witnesses"]["lost_write"][0]
    assert ("early-ack" in w["sentence"]) is lied
    assert any(e["event"] == "fault: early-ack" for e in w["events"]) is lied
