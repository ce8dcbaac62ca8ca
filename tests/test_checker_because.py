"""The "because" chains of witnesses, and witness.md with its Mermaid sequence diagram.

Each explanation is checked on a history built to need it, beside the near miss that must be
explained otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from checker.explain import MERMAID_SAFE, listed_witnesses, mermaid_sequence, safe, write_witness_md

from tests.checker_helpers import BUF_SIZE, H

IMP = "importer-1"


U = 1000  # the histories below are written in microseconds


def notify_move(*, served: int, map_recv: int, map_sent: int, notify_recv: int, job: tuple[int, int] = (3100, 7000),
                access: str = "read", acked: bool = True, state: str = "mapping") -> H:
    """Buffer 0 moves gen 1 -> 2 from t=1 ms (move_notify to importer-1 at 1.2 ms, copy at 5 ms, free
    at 6 ms); importer-1 maps (request 7) and runs one job on gen 1. Times in microseconds."""
    h = H().created(0).attach(5 * U, svc=IMP)
    h.move(0, 1, 1, begin=1000 * U, copy_begin=5000 * U, copy_end=5500 * U, free=6000 * U, end=6100 * U)
    h.ev(1200 * U, "exporter", "move_notify_sent", id=50, buffer=0, move=1, importer=IMP, attachment=1, gen=1)
    h.ev(notify_recv * U, IMP, "move_notify_received", id=50, buffer=0, attachment=1, move=1, gen=1, state=state)
    h.ev((notify_recv + 10) * U, IMP, "invalidate", buffer=0, attachment=1, gen=1)
    h.ev((notify_recv + 20) * U, IMP, "ack_sent", id=8, buffer=0, attachment=1, move=1)
    if acked:
        h.ev(4000 * U, "exporter", "ack", id=8, buffer=0, move=1, importer=IMP, attachment=1, latency_ns=2800 * U)
    h.ev(served * U, "exporter", "map_served", id=7, importer=IMP, buffer=0, attachment=1, heap="vram", offset=0,
         size=BUF_SIZE, gen=1, moved=False, deferred_ns=0)
    h.ev(map_recv * U, IMP, "map", id=7, buffer=0, attachment=1, heap="vram", offset=0, size=BUF_SIZE, gen=1,
         latency_ns=(map_recv - map_sent) * U, reused=False, moved=False)
    h.job(1, access, job[0] * U, job[1] * U, svc=IMP)
    return h


def chain(r: dict[str, Any], kind: str) -> list[str]:
    return r["witnesses"][kind][0]["because"]


# ---------------------------------------------------------------------------- why the job was running

def test_answers_at_one_instant_are_named_together_in_either_order(tmp_path: Path) -> None:
    """Two acks at one instant: which line came first is only the order the exporter read them in.
    The explanation names both, and reads the same either way (so does the checker's state, which
    the search's state cache hashes: sim/search/cache.py)."""
    chains = []
    for order in ((IMP, "importer-2"), ("importer-2", IMP)):
        h = notify_move(map_sent=1100, notify_recv=1500, served=2000, map_recv=3000, acked=False)
        h.attach(6 * U, svc="importer-2", att=2)
        h.ev(1200 * U, "exporter", "move_notify_sent", id=51, buffer=0, move=1, importer="importer-2", attachment=2, gen=1)
        for imp in order:
            h.ev(4000 * U, "exporter", "ack", id=8, buffer=0, move=1, importer=imp, attachment=1 if imp == IMP else 2,
                 latency_ns=2800 * U)
        chains.append(chain(h.judge(tmp_path, f"history-{order[0]}.jsonl"), "stale_read"))
    assert chains[0] == chains[1]
    assert chains[0][0] == ("the copy of buffer 0 off gen 1 began at t+5.000 ms, because the exporter had every ack by "
                            "t+4.000 ms (the last from importer-1 and importer-2, at one instant)")



def test_a_map_reply_sent_after_move_notify_crossed_it(tmp_path: Path) -> None:
    r = notify_move(map_sent=1100, notify_recv=1500, served=2000, map_recv=3000).judge(tmp_path)
    c = chain(r, "stale_read")
    assert c[0] == ("the copy of buffer 0 off gen 1 began at t+5.000 ms, because the exporter had every ack by "
                    "t+4.000 ms (the last from importer-1)")
    assert "the read was still running when the old range was freed" in c[-1]
    assert "the map reply that started it crossed move_notify: the exporter answered importer-1's map " \
           "(request 7) at t+2.000 ms with gen 1, after sending move_notify at t+1.200 ms" in c[-1]
    assert "received move_notify at t+1.500 ms (its attachment was mapping) while the map was in flight, then " \
           "the reply at t+3.000 ms, and began the job on the old placement at t+3.100 ms" in c[-1]
    assert "had acked at t+1.520 ms, before the reply came" in c[-1]


def test_a_map_reply_sent_before_move_notify_but_received_after_crossed_it_on_the_way(tmp_path: Path) -> None:
    r = notify_move(map_sent=1000, served=1150, notify_recv=1500, map_recv=3000).judge(tmp_path)
    c = chain(r, "stale_read")[-1]
    assert "crossed move_notify on the way: the exporter sent the reply to importer-1's map (request 7) at " \
           "t+1.150 ms, before move_notify at t+1.200 ms, but importer-1 received move_notify first, at " \
           "t+1.500 ms (its attachment was mapping), and the reply after, at t+3.000 ms" in c


def test_a_job_begun_before_move_notify_arrived_is_not_a_crossing(tmp_path: Path) -> None:
    # near miss: the map was answered and received long before the move; the job simply ran on
    r = notify_move(map_sent=100, served=150, map_recv=200, notify_recv=1500, job=(300, 7000)).judge(tmp_path)
    c = chain(r, "stale_read")[-1]
    assert "crossed" not in c
    assert c.endswith("because its job began at t+0.300 ms, before move_notify reached importer-1 at t+1.500 ms; "
                      "importer-1 acked at t+1.520 ms while the job still ran")


def test_a_map_asked_for_after_the_notification_is_a_stale_placement_not_a_crossing(tmp_path: Path) -> None:
    r = notify_move(notify_recv=1500, map_sent=1700, served=2000, map_recv=3000, state="idle").judge(tmp_path)
    c = chain(r, "stale_read")[-1]
    assert "crossed" not in c
    assert "because after move_notify reached importer-1 at t+1.500 ms (its attachment was idle) and acked at " \
           "t+1.520 ms, it asked for a mapping again (request 7, sent at t+1.700 ms) and the exporter answered at " \
           "t+2.000 ms with gen 1, the placement it was moving the buffer off (the move had begun at t+1.000 ms)" in c


# ---------------------------------------------------------------------------- why the copy began


def _copy_reason(h: H, tmp_path: Path) -> str:
    return chain(h.judge(tmp_path), "lost_write")[0]


def test_why_the_copy_began(tmp_path: Path) -> None:
    kw = dict(map_sent=100, served=150, map_recv=200, notify_recv=1500, job=(300, 5200), access="write")
    # no ack came: the exporter did not wait
    assert "because the exporter waited for no answer: it sent move_notify at t+1.200 ms and went on" in \
        _copy_reason(notify_move(acked=False, **kw), tmp_path)
    # the ack wait timed out
    h = notify_move(acked=False, **kw).ev(4500 * U, "exporter", "ack_timeout", buffer=0, move=1,
                                          importers=[IMP], attachments=[1])
    assert "because the exporter's wait for answers to move_notify timed out at t+4.500 ms (none from importer-1)" \
        in _copy_reason(h, tmp_path)
    # a fence wait ended (and forced a fence)
    h = notify_move(**kw).ev(4100 * U, "exporter", "fence_wait_begin", buffer=0, move=1, usage="BOOKKEEP", fences=[])
    h.ev(4900 * U, "exporter", "fence_wait_end", buffer=0, move=1, usage="BOOKKEEP", waited_ns=800 * U, forced=[IMP])
    assert "because the exporter's wait for the buffer's fences ended at t+4.900 ms (it had waited for them since " \
           "t+4.100 ms), after forcing the fences of importer-1" in _copy_reason(h, tmp_path)


def test_a_move_nobody_was_told_of(tmp_path: Path) -> None:
    h = H().created(0).attach(5, svc=IMP).map(10, svc=IMP).job(1, "write", 20, 300, svc=IMP)
    h.move(0, 1, 1, begin=100, copy_begin=200, copy_end=250, free=260, end=270)
    c = chain(h.judge(tmp_path), "lost_write")
    assert "because nothing held it back: no move_notify went out for this move" in c[0]
    assert "because no move_notify went to importer-1's attachment 1 for this move: its job began at" in c[1]


def test_a_stale_cached_mapping(tmp_path: Path) -> None:
    """unmap-hint's hazard: the exporter says gen 2, the importer reuses the entries kept for gen 1."""
    h = H().created(0).attach(5, svc=IMP)
    h.ev(100, "exporter", "move_begin", buffer=0, move=1, reason="evict", broke_promise=True, from_gen=1, to_gen=2,
         **{"from": {"heap": "vram", "offset": 0, "size": BUF_SIZE, "gen": 1},
            "to": {"heap": "sys", "offset": 0x1000, "size": BUF_SIZE, "gen": 2}})
    h.ev(200, "exporter", "copy_begin", buffer=0, move=1, from_gen=1, to_gen=2)
    h.ev(300, "exporter", "map_served", id=7, importer=IMP, buffer=0, attachment=1, heap="sys", offset=0x1000,
         size=BUF_SIZE, gen=2, moved=True, deferred_ns=0)
    h.ev(400, IMP, "map", id=7, buffer=0, attachment=1, heap="vram", offset=0, size=BUF_SIZE, gen=1,
         latency_ns=150, reused=True, moved=True)
    h.job(1, "write", 500, 600, svc=IMP)
    c = chain(h.judge(tmp_path), "lost_write")[1]
    assert c.startswith("the write began at t+0.001 ms, after the copy began at t+0.000 ms, because importer-1 used "
                        "a stale cached mapping: the exporter answered its map (request 7) at t+0.000 ms with gen 2 "
                        "at sys+0x1000, but importer-1 reused the IOMMU entries it had kept for gen 1 at vram+0x0 "
                        "(an unmap reply had promised the buffer would not move)")


def test_use_after_unmap_and_unfenced_chains(tmp_path: Path) -> None:
    h = H().created(0).attach(5, svc=IMP).map(10, svc=IMP).unmap(20, svc=IMP)
    h.ev(30, IMP, "dma_begin", job=1, buffer=0, attachment=1, access="write", heap="vram", offset=0,
         size=BUF_SIZE, gen=1, rogue=True)
    h.ev(40, IMP, "dma_end", job=1, buffer=0, attachment=1, access="write", heap="vram", offset=0,
         size=BUF_SIZE, gen=1, rogue=True, status="ok", bytes=BUF_SIZE)
    c = chain(h.judge(tmp_path), "use_after_unmap")
    assert c == ["attachment 1 of importer-1 had no mapping since t+0.000 ms, because importer-1 unmapped it then "
                 "and mapped nothing since",
                 "the job began at t+0.000 ms all the same, because it was a rogue device's DMA: a real access with "
                 "no map of its own"]
    h = H().created(0).attach(5, svc=IMP)
    h.move(0, 1, 1, begin=100, copy_begin=200, copy_end=900, free=950, end=960)
    h.ev(300, "exporter", "map_served", id=7, importer=IMP, buffer=0, attachment=1, heap="sys", offset=0x1000,
         size=BUF_SIZE, gen=2, moved=True, deferred_ns=0)
    h.ev(400, IMP, "map", id=7, buffer=0, attachment=1, heap="sys", offset=0x1000, size=BUF_SIZE, gen=2,
         latency_ns=150, reused=False, moved=True)
    h.job(1, "read", 500, 600, svc=IMP, gen=2, heap="sys", offset=0x1000)
    c = chain(h.judge(tmp_path), "unfenced_access")
    assert c[0].startswith("the job began at t+0.001 ms on gen 2, because the exporter answered importer-1's map "
                           "(request 7) at t+0.000 ms with gen 2, after the move creating it began")
    assert c[1].startswith("the copy creating gen 2 ended only at t+0.001 ms")


# ---------------------------------------------------------------------------- witness.md and Mermaid


MERMAID_LINE = re.compile(
    r"^(sequenceDiagram"
    r"|    participant [A-Z][0-9]* as [A-Za-z0-9-]+"
    r"|    [A-Z][0-9]*(->>|-->>)[A-Z][0-9]*: [^;#:]+"
    r"|    Note over [A-Z][0-9]*: [^;#:]+)$")


def assert_mermaid(diagram: str) -> None:
    lines = diagram.splitlines()
    assert lines[0] == "sequenceDiagram"
    declared = {m.group(1) for ln in lines if (m := re.match(r"^    participant (\S+) as", ln))}
    for ln in lines:
        assert MERMAID_LINE.match(ln), ln
        for pid in re.findall(r"^    ([A-Z][0-9]*)(?:->>|-->>)([A-Z][0-9]*):", ln):
            assert set(pid) <= declared, ln
        m = re.match(r"^    (?:\S+: |Note over \S+: )(.*)$", ln)
        if m and "participant" not in ln:
            assert not MERMAID_SAFE.search(m.group(1)), ln


def test_witness_md_of_a_crossing(tmp_path: Path) -> None:
    h = notify_move(map_sent=1100, notify_recv=1500, served=2000, map_recv=3000)
    path = h.write(tmp_path / "history.jsonl")
    out = tmp_path / "witness.md"
    w = write_witness_md(path, 1, out)
    assert w["kind"] == "stale_read" and w["index"] == 1
    md = out.read_text()
    assert md.startswith("# Witness 1: stale_read on buffer 0 (importer-1 job 1)")
    assert "## Why" in md and "crossed move_notify" in md
    assert "## The events that prove it" in md and "## The messages and waits around it" in md
    diagram = md.split("```mermaid\n", 1)[1].split("```", 1)[0].rstrip("\n")
    assert_mermaid(diagram)
    lines = diagram.splitlines()
    notify = next(i for i, ln in enumerate(lines) if "E->>I1: move_notify" in ln)
    reply = next(i for i, ln in enumerate(lines) if "E-->>I1: map reply id 7" in ln)
    job = next(i for i, ln in enumerate(lines) if "read job 1 begins" in ln)
    assert notify < reply < job  # the crossing, as the importer saw it
    assert "(sent t+2.000 ms, received t+3.000 ms)" in lines[reply]


def test_witness_md_from_events_and_its_numbering(tmp_path: Path) -> None:
    h = notify_move(map_sent=100, served=150, map_recv=200, notify_recv=1500, job=(300, 5200), access="write",
                    acked=False)
    h.job(2, "read", 310 * U, 7000 * U, svc=IMP)
    events = h.sorted_events()
    w1 = write_witness_md(events, 1, tmp_path / "a.md")
    w2 = write_witness_md(events, 2, tmp_path / "b.md")
    assert (w1["kind"], w2["kind"]) == ("lost_write", "stale_read")
    with pytest.raises(IndexError, match="the history has 2 witness"):
        write_witness_md(events, 3, tmp_path / "c.md")
    with pytest.raises(IndexError, match="no race witness"):
        write_witness_md(H().created(0).sorted_events(), 1, tmp_path / "d.md")


def test_listed_witnesses_follow_report_md() -> None:
    report = {"witnesses": {"lost_write": [{"n": 1}, {"n": 2}], "stale_read": [], "use_after_unmap": [{"n": 3}]}}
    assert [(k, w["n"]) for k, w in listed_witnesses(report)] == [("lost_write", 1), ("lost_write", 2),
                                                                  ("use_after_unmap", 3)]


def test_safe_keeps_mermaid_text_plain() -> None:
    assert safe("a; b # c: d <e> \"f\" {g} [h]") == "a b c d e f g h"
    assert safe("t+1.5 ms, gen 2 (move 3) vram+0x40000 importer-2's") == \
        "t+1.5 ms, gen 2 (move 3) vram+0x40000 importer-2's"
    d = mermaid_sequence([{"t_ns": 5, "svc": "importer-12", "event": "dma_begin", "job": 1, "access": "write",
                           "buffer": 0, "gen": 1, "placement": "vram+0x0;#"},
                          {"t_ns": 6, "svc": "exporter", "event": "move_notify_sent", "id": 1, "buffer": 0,
                           "move": 1, "gen": 1, "importer": "importer-12", "attachment": 4}], 0)
    assert_mermaid(d)
    assert "participant I12 as importer-12" in d
    assert "E->>I12: move_notify buf 0 gen 1 move 1 (sent t+0.000 ms, receipt not in the witness)" in d


def test_check_witness_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deploy.cli import main
    run = tmp_path / "run"
    run.mkdir()
    notify_move(map_sent=1100, notify_recv=1500, served=2000, map_recv=3000).write(run / "history.jsonl")
    assert main(["check", str(run), "--witness", "1"]) == 0
    assert "crossed move_notify" in (run / "witness.md").read_text()
    assert main(["check", str(run), "--witness", "2"]) == 2
    assert "check --witness: witness 2: the history has 1 witness(es), numbered 1..1" in capsys.readouterr().err
