"""Witnesses that name the trigger: transition events record what fired their row (trigger,
timer), and the because-chain is read off those records, for a strategy of one's own as for a
shipped one; two events at one instant are not ordered in words; the faults a shrunk schedule
kept are named in witness.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from checker.explain import render_witness_md, write_witness_md
from runtime.runparams import RunParams
from runtime import faults as F
from sim.run import simulate_in_memory
from tests.checker_helpers import H
from tests.test_checker_because import IMP, U, chain, notify_move

GRACE = str(Path(__file__).parent / "strategies" / "grace_timer.py")


def _history(strategy: str, **extra: Any) -> list[dict[str, Any]]:
    params = RunParams(strategy=strategy, importers=2, duration=0.5, seed=1, **extra)
    r = simulate_in_memory(params, judge=False)
    assert r.outcome.error is None, r.outcome.error
    return [json.loads(line) for line in r.history]


def test_transition_events_record_their_trigger() -> None:
    events = _history("move-notify-ack")
    begins = [e for e in events if e["event"] == "move_begin"]
    copies = [e for e in events if e["event"] == "copy_begin"]
    assert begins and all(e["trigger"] in ("move_wanted", "last_unmap") for e in begins)
    assert copies and {e["trigger"] for e in copies} <= {"notify_done", "notify_timeout"}
    assert all(e.get("timer") == "notify" for e in copies if e["trigger"] == "notify_timeout")
    frees = [e for e in events if e["event"] == "free"]
    assert frees and {e["trigger"] for e in frees} == {"copy_done"}
    # an event that no row emits carries none
    assert not any("trigger" in e for e in events if e["event"] in ("dma_begin", "hello", "op_received"))


def test_the_grace_strategy_copies_on_its_timer_and_its_witness_says_so(tmp_path: Path) -> None:
    events = _history(GRACE, faults=(F.parse_cli("slow-dma:factor=4"),))
    copies = [e for e in events if e["event"] == "copy_begin"]
    assert copies and all((e["trigger"], e["timer"]) == ("timer_fired", "grace") for e in copies)
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    w = write_witness_md(path, 1, tmp_path / "witness.md")
    assert w["kind"] in ("lost_write", "stale_read")
    first = w["because"][0]
    assert "because the strategy's own timer grace fired at" in first, first
    assert "callbacks had returned" in first and "the row waits for none of them" in first
    assert "every move_notify callback had returned by" not in (tmp_path / "witness.md").read_text()


def _with_cause(h: H, **cause: str) -> H:
    for e in h.events:
        if e["event"] == "copy_begin":
            e.update(cause)
    return h


def test_a_copy_on_the_last_answer_names_it(tmp_path: Path) -> None:
    h = _with_cause(notify_move(map_sent=1100, notify_recv=1500, served=2000, map_recv=3000), trigger="notify_done")
    c = chain(h.judge(tmp_path), "stale_read")
    assert c[0] == ("the copy of buffer 0 off gen 1 began at t+5.000 ms, because every attachment the move waited "
                    "for had answered move_notify: the last answer, importer-1's ack, came at t+4.000 ms")


def test_a_copy_on_the_notify_timer_says_the_timer_fired(tmp_path: Path) -> None:
    h = _with_cause(notify_move(map_sent=1100, notify_recv=1500, served=2000, map_recv=3000, acked=False),
                    trigger="notify_timeout", timer="notify")
    c = chain(h.judge(tmp_path), "stale_read")
    assert c[0].startswith("the copy of buffer 0 off gen 1 began at t+5.000 ms, because the notify timer fired at "
                           "t+5.000 ms: the wait for answers to move_notify timed out")


def test_a_copy_as_the_move_begins_says_it_waited_for_nothing(tmp_path: Path) -> None:
    h = _with_cause(notify_move(map_sent=1100, notify_recv=1500, served=2000, map_recv=3000), trigger="move_wanted")
    c = chain(h.judge(tmp_path), "stale_read")
    assert "because its row copies as the move began (on move_wanted), waiting for no answer: it sent move_notify " \
           "at t+1.200 ms and went on" in c[0]


def test_two_events_at_one_instant_are_not_ordered_in_words(tmp_path: Path) -> None:
    # move_notify and the map reply reach importer-1 at the same time
    c = chain(notify_move(map_sent=1100, notify_recv=3000, served=2000, map_recv=3000).judge(tmp_path),
              "stale_read")[-1]
    assert "and the reply at the same instant" in c, c
    assert "then the reply" not in c and " first" not in c
    c2 = chain(notify_move(map_sent=1000, served=1150, notify_recv=3000, map_recv=3000).judge(tmp_path, "b.jsonl"),
               "stale_read")[-1]
    assert "received move_notify and the reply at the same instant, t+3.000 ms" in c2, c2
    assert "first" not in c2


def test_witness_md_names_the_faults_the_schedule_kept() -> None:
    w = {"job": {"buffer": 0, "svc": IMP, "job": 1}, "sentence": "s", "because": ["b"], "events": [], "context": []}
    md = render_witness_md(w, "lost_write", 0, kept=[{"decision": 54, "stream": "device:0:importer-2", "value": "fired",
                                                      "fault": {"kind": "slow-dma", "factor": 4}}])
    assert "## The faults the schedule kept" in md
    assert "decision 54: the fault `slow-dma factor=4" in md and "device:0:importer-2" in md
    none = render_witness_md(w, "lost_write", 0, kept=[])
    assert "none: the race needs no fault" in none
    assert "faults the schedule kept" not in render_witness_md(w, "lost_write", 0)
