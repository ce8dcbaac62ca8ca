"""Corruption linking: a corrupt read is tied to the race that explains it, if there is one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.checker_helpers import H, mapped


def corruption(h: H, t: int, *, svc: str, job: int, buffer: int, found: dict[str, Any], lines: int = 4) -> H:
    return h.ev(t, svc, "corruption", job=job, buffer=buffer, gen=1, heap="vram", lines=lines,
                line=found["line"], expected={"buffer": buffer, "line": found["line"]}, found=found, samples=[])


def reused_range() -> H:
    """Buffer 0 (vram+0x0) moves away at 100..500; buffer 1 is then placed at vram+0x0 (gen 2)."""
    h = mapped(buffer=0, att=1, svc="importer-2")
    h.created(0, buffer=1, heap="sys", offset=0x8000)
    h.move(0, 1, 1, begin=100, copy_begin=200, copy_end=300, free=400, end=500, src=("vram", 0), dst=("sys", 0x1000))
    h.move(1, 1, 2, begin=600, copy_begin=610, copy_end=620, free=630, end=640, src=("sys", 0x8000), dst=("vram", 0))
    h.attach(650, svc="importer-1", buffer=1, att=5).map(660, svc="importer-1", buffer=1, att=5, gen=2)
    return h


@pytest.mark.parametrize("writer_ended_first", [True, False])
def test_corruption_links_to_the_stale_writer(tmp_path: Path, writer_ended_first: bool) -> None:
    h = reused_range()
    h.job(5, "write", 150, 900 if writer_ended_first else 2000, svc="importer-2", buffer=0, att=1)
    h.job(9, "read", 700, 1000, svc="importer-1", buffer=1, att=5, gen=2)
    corruption(h, 1000, svc="importer-1", job=9, buffer=1, found={"buffer": 0, "line": 3, "writer": 2, "seq": 5})
    r = h.judge(tmp_path)
    assert r["races"]["lost_write"] == 1 and r["races"]["total"] == 1
    c = r["corruption"]
    assert (c["jobs"], c["lines"], c["linked"]) == (1, 4, 1)
    link = c["examples"][0]["race"]
    assert link["kind"] == "lost_write" and link["svc"] == "importer-2" and link["job"] == 5
    assert link["via"] == "writer"
    assert "importer-2 job 5" in c["examples"][0]["sentence"]


def test_corruption_links_to_the_reading_jobs_own_race(tmp_path: Path) -> None:
    h = reused_range()
    h.job(7, "read", 450, 700, svc="importer-2", buffer=0, att=1)   # read after free: stale_read
    corruption(h, 690, svc="importer-2", job=7, buffer=0, found={"buffer": 1, "line": 0, "writer": 0, "seq": 0})
    r = h.judge(tmp_path)
    assert r["races"]["stale_read"] == 1
    assert r["corruption"]["linked"] == 1
    assert r["corruption"]["examples"][0]["race"]["via"] == "reader"


def test_writer_that_did_not_race_falls_back_to_the_reader(tmp_path: Path) -> None:
    h = reused_range()
    h.job(3, "write", 670, 680, svc="importer-1", buffer=1, att=5, gen=2)  # a legit write to buffer 1
    h.job(7, "read", 450, 700, svc="importer-2", buffer=0, att=1)          # stale read sees it
    corruption(h, 700, svc="importer-2", job=7, buffer=0, found={"buffer": 1, "line": 0, "writer": 1, "seq": 3})
    r = h.judge(tmp_path)
    assert r["corruption"]["linked"] == 1
    assert r["corruption"]["examples"][0]["race"]["job"] == 7


def test_corruption_without_a_race_is_reported_unlinked(tmp_path: Path) -> None:
    h = mapped().job(1, "read", 50, 60)
    corruption(h, 60, svc="importer-1", job=1, buffer=0, found={"buffer": 0, "line": 9, "writer": 3, "seq": 77})
    r = h.judge(tmp_path)
    assert r["races"]["total"] == 0
    c = r["corruption"]
    assert (c["jobs"], c["linked"]) == (1, 0)
    assert c["examples"][0]["race"] is None


def test_corruption_examples_are_capped_but_all_are_counted(tmp_path: Path) -> None:
    h = mapped()
    for j in range(8):
        h.job(j, "read", 50 + 10 * j, 55 + 10 * j)
        corruption(h, 55 + 10 * j, svc="importer-1", job=j, buffer=0, lines=2,
                   found={"buffer": 0, "line": 1, "writer": 0, "seq": 0})
    c = h.judge(tmp_path)["corruption"]
    assert (c["jobs"], c["lines"], len(c["examples"])) == (8, 16, 5)
