"""Linux 7.1: the invalidation window (write_after_invalidate, speculative reads, stale reads of data
used there) and the revoke summary, on hand-written histories, each rule beside its near miss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.checker_helpers import BUF_SIZE, H, mapped, race_kinds

U = 1000  # microseconds
IMP = "importer-1"
RET, RETIRED, UNMAP = 300 * U, 400 * U, 800 * U


def revoked(*, retired: int | None = RETIRED, unmap: int | None = UNMAP, op: str = "revoke", op_id: int = 1,
            retire_id: int | None = None, stopped: bool = False, returned: int = RET) -> H:
    """Buffer 0 mapped by importer-1 (attachment 1) at 10 ns; the exporter revokes it (revoke 1) at
    0.1 ms: importer-1 invalidates at 0.25 ms and its callback returns at 0.3 ms; the exporter's fence
    wait ends at 0.4 ms; importer-1 unmaps at 0.8 ms."""
    h = mapped()
    ids = {op: op_id}
    h.ev(100 * U, "exporter", "resv_lock", buffer=0, **ids)
    h.ev(110 * U, "exporter", "revoke" if op == "revoke" else "move_begin", buffer=0, **ids)
    h.ev(120 * U, "exporter", "invalidate_mappings_sent", id=5, buffer=0, importer=IMP, attachment=1, gen=1,
         pinned=False, **ids)
    h.ev(200 * U, IMP, "invalidate_mappings_received", id=5, buffer=0, attachment=1, gen=1, state="active", **ids)
    h.ev(250 * U, IMP, "invalidate", buffer=0, attachment=1, gen=1)
    h.ev(returned, IMP, "invalidate_mappings_returned", id=5, buffer=0, attachment=1, gen=1, stopped=stopped,
         **ids)
    h.ev(returned + 20 * U, "exporter", "invalidate_mappings_returned", buffer=0, importer=IMP, attachment=1, **ids)
    if retired is not None:
        rid = {op: retire_id if retire_id is not None else op_id}
        h.ev(retired - 50 * U, "exporter", "fence_wait_begin", buffer=0, usage="BOOKKEEP", fences=[], **rid)
        h.ev(retired, "exporter", "fence_wait_end", buffer=0, usage="BOOKKEEP", waited_ns=50 * U, forced=[], **rid)
        h.ev(retired + 10 * U, "exporter", "resv_unlock", buffer=0, **rid)
    if unmap is not None:
        h.unmap(unmap)
    h.ev(2000 * U, "deploy", "run_stop")
    return h


def job(h: H, n: int, access: str, begin: int, end: int, *, rogue: bool = False, status: str = "ok",
        nbytes: int = BUF_SIZE, discarded: bool | None = None) -> H:
    f = dict(job=n, buffer=0, attachment=1, access=access, heap="vram", offset=0, size=BUF_SIZE, gen=1)
    if rogue:
        f["rogue"] = True
    h.ev(begin, IMP, "dma_begin", **f)
    extra: dict[str, Any] = {} if discarded is None else {"discarded": discarded}
    h.ev(end, IMP, "dma_end", **f, status=status, bytes=nbytes, last_access_ns=end, **extra)
    return h


# ---------------------------------------------------------------------------- writes


def test_a_rogue_write_between_the_fences_retiring_and_the_unmap(tmp_path: Path) -> None:
    r = job(revoked(), 9, "write", 500 * U, 600 * U, rogue=True).judge(tmp_path)
    assert race_kinds(r) == {"write_after_invalidate": 1}
    w = r["witnesses"]["write_after_invalidate"][0]
    assert ("it wrote after its invalidate_mappings of attachment 1 returned at t+0.300 ms and its fences retired "
            "at t+0.400 ms (fence_wait_end of revoke 1), before it unmapped at t+0.800 ms; an importer may only "
            "read and discard there, never write.") in w["sentence"]
    assert [e["event"] for e in w["events"]] == ["invalidate_mappings_returned", "fences retired", "dma_begin",
                                                 "dma_end", "unmap"]
    assert w["because"][1] == ("its fences retired at t+0.400 ms (fence_wait_end of revoke 1): from then until its "
                               "unmap an importer may only read and discard")
    assert "as a rogue device" in w["because"][2]


@pytest.mark.parametrize("begin, end, kind", [
    (500, 600, "write_after_invalidate"),     # inside
    (350, 450, "write_after_invalidate"),     # reaching into it
    (260, 400, "use_after_unmap"),            # ending on the retirement: equal times are no race
    (260, 390, "use_after_unmap"),            # begun after invalidate, ended before the fences retired
    (850, 900, "use_after_unmap"),            # after the unmap
    (750, 800, "write_after_invalidate"),
])
def test_where_a_write_falls(tmp_path: Path, begin: int, end: int, kind: str) -> None:
    r = job(revoked(), 9, "write", begin * U, end * U, rogue=True).judge(tmp_path)
    assert race_kinds(r) == {kind: 1}


def test_a_write_running_at_the_return_whose_fence_retired_early(tmp_path: Path) -> None:
    # begun before invalidate (legal), still writing after the fence wait ended: its fence lied
    r = job(revoked(), 9, "write", 20 * U, 500 * U).judge(tmp_path)
    assert race_kinds(r) == {"write_after_invalidate": 1}
    # the near miss: it ended before the fences retired
    r = job(revoked(), 9, "write", 20 * U, 390 * U).judge(tmp_path)
    assert race_kinds(r) == {}


def test_no_window_without_the_fences_retiring(tmp_path: Path) -> None:
    # the fence wait that ended belongs to another revocation: the window never opens
    r = job(revoked(retire_id=2), 9, "write", 500 * U, 600 * U, rogue=True).judge(tmp_path)
    assert race_kinds(r) == {"use_after_unmap": 1}
    r = job(revoked(retired=None), 9, "write", 500 * U, 600 * U, rogue=True).judge(tmp_path)
    assert race_kinds(r) == {"use_after_unmap": 1}


def test_a_return_after_the_fence_wait_opens_the_window_at_the_return(tmp_path: Path) -> None:
    h = revoked(retired=250 * U, returned=450 * U)
    assert race_kinds(job(h, 9, "write", 460 * U, 470 * U, rogue=True).judge(tmp_path)) == \
        {"write_after_invalidate": 1}
    h = revoked(retired=250 * U, returned=450 * U)
    assert race_kinds(job(h, 9, "write", 420 * U, 450 * U, rogue=True).judge(tmp_path)) == {"use_after_unmap": 1}


def test_a_synchronous_revoke_opens_the_window_at_the_return(tmp_path: Path) -> None:
    h = revoked(retired=None, stopped=True)
    r = job(h, 9, "write", 310 * U, 320 * U, rogue=True).judge(tmp_path)
    assert race_kinds(r) == {"write_after_invalidate": 1}
    assert "a synchronous revoke" in r["witnesses"]["write_after_invalidate"][0]["sentence"]


def test_the_older_strategies_keep_use_after_unmap(tmp_path: Path) -> None:
    """The same shape with move_notify and no invalidate_mappings return: no window, no new kind."""
    h = mapped().move(0, 1, 1, begin=100 * U)
    h.ev(120 * U, "exporter", "move_notify_sent", id=5, buffer=0, move=1, importer=IMP, attachment=1, gen=1)
    h.ev(200 * U, IMP, "move_notify_received", id=5, buffer=0, attachment=1, move=1, gen=1, state="active")
    h.invalidate(250 * U)
    h.ev(320 * U, "exporter", "move_notify_returned", buffer=0, move=1, importer=IMP, attachment=1)
    h.ev(400 * U, "exporter", "fence_wait_end", buffer=0, move=1, usage="BOOKKEEP", waited_ns=1, forced=[])
    job(h, 9, "write", 500 * U, 600 * U, rogue=True)
    job(h, 10, "read", 510 * U, 610 * U, discarded=True)
    r = h.judge(tmp_path)
    assert race_kinds(r) == {"use_after_unmap": 2}
    assert r["speculative_reads"] == 0


def test_a_write_overlapping_a_71_move_copy_is_a_lost_write_first(tmp_path: Path) -> None:
    h = revoked(op="move", unmap=None)
    h.ev(450 * U, "exporter", "copy_begin", buffer=0, move=1, from_gen=1, to_gen=2)
    for e in h.events:
        if e["event"] == "move_begin":
            e.update(from_gen=1, to_gen=2, reason="evict", **{"from": {"heap": "vram", "offset": 0, "size": BUF_SIZE,
                                                                         "gen": 1},
                                                               "to": {"heap": "sys", "offset": 0, "size": BUF_SIZE,
                                                                      "gen": 2}})
    job(h, 9, "write", 410 * U, 460 * U, rogue=True)
    job(h, 10, "write", 410 * U, 440 * U, rogue=True)
    assert race_kinds(h.judge(tmp_path)) == {"lost_write": 1, "write_after_invalidate": 1}


# ---------------------------------------------------------------------------- reads


@pytest.mark.parametrize("begin, end, status, nbytes, discarded, kind, speculative", [
    (500, 600, "ok", BUF_SIZE, True, None, 1),            # read and discard inside the window
    (310, 350, "ok", BUF_SIZE, True, None, 1),            # ... after the return, before the fences retired
    (500, 600, "aborted", BUF_SIZE // 2, None, None, 1),  # not used: it did not end ok
    (500, 600, "ok", 0, None, None, 1),                   # not used: it read nothing
    (500, 600, "ok", BUF_SIZE, None, "stale_read", 0),    # used: a stale read
    (500, 600, "ok", BUF_SIZE, False, "stale_read", 0),
    (310, 350, "ok", BUF_SIZE, None, "use_after_unmap", 0),  # used, begun after invalidate, before the window
    (850, 900, "ok", BUF_SIZE, True, "use_after_unmap", 0),  # after the unmap: no mapping at all
])
def test_where_a_read_falls(tmp_path: Path, begin: int, end: int, status: str, nbytes: int,
                            discarded: bool | None, kind: str | None, speculative: int) -> None:
    h = job(revoked(), 9, "read", begin * U, end * U, status=status, nbytes=nbytes, discarded=discarded)
    r = h.judge(tmp_path)
    assert race_kinds(r) == ({kind: 1} if kind else {})
    assert r["speculative_reads"] == speculative


def test_a_stale_read_by_the_window_says_so(tmp_path: Path) -> None:
    w = job(revoked(), 9, "read", 500 * U, 600 * U).judge(tmp_path)["witnesses"]["stale_read"][0]
    assert "it read, and used the data, after its invalidate_mappings of attachment 1 returned" in w["sentence"]
    assert "the data may be stale" in w["sentence"]


def test_a_read_running_over_the_return_is_no_race(tmp_path: Path) -> None:
    r = job(revoked(), 9, "read", 20 * U, 350 * U).judge(tmp_path)
    assert race_kinds(r) == {} and r["speculative_reads"] == 0


# ---------------------------------------------------------------------------- the revoke summary


def test_revoke_summary(tmp_path: Path) -> None:
    h = revoked()
    h.ev(420 * U, "exporter", "unmap_wait_begin", buffer=0, revoke=1, importers=[IMP], attachments=[1], bound_ms=1000)
    for rid, code in ((30, "no_device"), (31, "no_device"), (32, "busy")):
        h.ev(500 * U + rid, "exporter", "op_answered", op="map", id=rid, peer=IMP, ok=False, code=code, message="x")
    h.ev(520 * U, "exporter", "op_answered", op="attach", id=40, peer=IMP, ok=False, code="no_device", message="x")
    h.ev(1420 * U, "exporter", "unmap_wait_warning", buffer=0, revoke=1, importer=IMP, attachment=1,
         waited_ns=1000 * U, message="importer has a broken invalidate_mapping()")
    h.ev(1500 * U, "exporter", "unmap_wait_end", buffer=0, revoke=1, waited_ns=1080 * U, late=[IMP])
    h.ev(1600 * U, "exporter", "unrevoke", buffer=0, revoke=1)
    h.ev(1700 * U, "exporter", "revoke", buffer=0, revoke=2)
    h.ev(1750 * U, "exporter", "unmap_wait_end", buffer=0, revoke=2, waited_ns=20 * U, late=[])
    r = h.judge(tmp_path)
    assert r["revoke"] == {"revocations": 2, "unrevocations": 1, "maps_refused": 2,
                           "unmap_wait_ms": {"n": 2, "p50": pytest.approx(r["revoke"]["unmap_wait_ms"]["p50"]),
                                             "max": 1.08},
                           "broken_importers": [IMP], "not_completed": 0}
    assert 0.02 <= r["revoke"]["unmap_wait_ms"]["p50"] <= 1.08
    t = r["findings"]["timeout"]
    assert t["by_kind"]["unmap"] == 1
    assert "importer-1 had not unmapped buffer 0 after revoke 1, past the bound (importer has a broken " \
           "invalidate_mapping())" in t["items"][0]["sentence"]


def test_no_revocation_no_summary_figures(tmp_path: Path) -> None:
    r = mapped().judge(tmp_path)
    assert r["revoke"] == {"revocations": 0, "unrevocations": 0, "maps_refused": 0,
                           "unmap_wait_ms": {"n": 0, "p50": None, "max": None}, "broken_importers": [],
                           "not_completed": 0}
    assert r["speculative_reads"] == 0
