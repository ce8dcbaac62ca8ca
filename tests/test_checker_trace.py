"""trace.json: valid Chrome Trace Event JSON whose spans and flows pair up."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import checker.trace as trace_mod
from checker.run import judge_and_trace
from tests.checker_helpers import SIM_RUN, mapped, simulated, write_history


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def check_well_formed(trace: dict[str, Any]) -> None:
    evs = trace["traceEvents"]
    assert trace["displayTimeUnit"] == "ms"
    named = {e["pid"] for e in evs if e["ph"] == "M" and e["name"] == "process_name"}
    sorted_ = {e["pid"] for e in evs if e["ph"] == "M" and e["name"] == "process_sort_index"}
    assert {e["pid"] for e in evs} <= named == sorted_
    spans: Counter[tuple[str, str, str, int]] = Counter()
    for e in evs:
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        if e["ph"] == "b":
            spans[(e["cat"], e["id"], e["name"], e["pid"])] += 1
        elif e["ph"] == "e":
            spans[(e["cat"], e["id"], e["name"], e["pid"])] -= 1
    assert all(v == 0 for v in spans.values()), [k for k, v in spans.items() if v]
    starts = Counter(e["id"] for e in evs if e["ph"] == "s")
    finishes = Counter(e["id"] for e in evs if e["ph"] == "f")
    assert starts == finishes and all(v == 1 for v in starts.values())
    assert all(e.get("bp") == "e" for e in evs if e["ph"] == "f")
    # every flow endpoint sits inside an X slice on its thread
    slices = {(e["pid"], e["tid"], e["ts"]) for e in evs if e["ph"] == "X"}
    assert all((e["pid"], e["tid"], e["ts"]) in slices for e in evs if e["ph"] in "sf")


def test_simulated_run_trace_is_well_formed(tmp_path: Path) -> None:
    events = simulated(4, strategy="move-notify-ack")    # the strategy whose importers ack
    write_history(events, tmp_path / "history.jsonl")
    judge_and_trace(tmp_path / "history.jsonl", tmp_path / "trace.json")
    trace = load(tmp_path / "trace.json")
    check_well_formed(trace)
    evs = trace["traceEvents"]
    cats = Counter(e.get("cat") for e in evs if e["ph"] == "b")
    assert cats["dma"] > 0 and cats["map"] > 0 and cats["move"] > 0
    flows = Counter(e["name"] for e in evs if e["ph"] == "s")
    for name in ("map request", "map reply", "unmap request", "move_notify", "ack"):
        assert flows[name] > 0, name
    sort = {e["args"]["sort_index"]: e["pid"] for e in evs if e["name"] == "process_sort_index"}
    names = {e["pid"]: e["args"]["name"] for e in evs if e["name"] == "process_name"}
    order = [names[sort[k]] for k in sorted(sort)]
    assert order == ["exporter", "importer-1", "importer-2", "importer-3", "deploy"]
    assert SIM_RUN["importers"] == 3
    vram_size = next(e["heaps"]["vram"]["size"] for e in events if e["event"] == "service_start"
                     and e["svc"] == "exporter")
    vram = [e["args"]["bytes"] for e in evs if e["ph"] == "C" and e["name"] == "vram"]
    assert vram and min(vram) >= 0 and max(vram) <= vram_size


def test_races_are_instants_at_the_jobs_end_and_open_spans_close(tmp_path: Path) -> None:
    h = mapped().unmap(50).job(1, "write", 60, 70).job(2, "read", 80, None)
    h.move(0, 1, 1, begin=100, copy_begin=120)   # a move that never ends
    h.write(tmp_path / "history.jsonl")
    judge_and_trace(tmp_path / "history.jsonl", tmp_path / "trace.json")
    trace = load(tmp_path / "trace.json")
    check_well_formed(trace)
    races = [e for e in trace["traceEvents"] if e.get("cat") == "race"]
    assert len(races) == 2 and all(e["ph"] == "i" and e["s"] == "p" for e in races)
    first = next(e for e in races if e["args"]["job"] == 1)
    assert first["ts"] == pytest.approx(0.070) and first["args"]["kind"] == "use_after_unmap"
    assert "unmapped at t+0.000 ms" in first["args"]["sentence"]
    unfinished = [e for e in trace["traceEvents"] if e["ph"] == "e" and e.get("args", {}).get("unfinished")]
    assert {e["cat"] for e in unfinished} == {"dma", "move"}


def test_span_cap_keeps_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace_mod, "SPAN_CAP", 5)
    monkeypatch.setattr(trace_mod, "FLOW_CAP", 7)
    write_history(simulated(9), tmp_path / "history.jsonl")
    judge_and_trace(tmp_path / "history.jsonl", tmp_path / "trace.json")
    trace = load(tmp_path / "trace.json")
    check_well_formed(trace)
    assert sum(1 for e in trace["traceEvents"] if e["ph"] == "b" and e["cat"] == "dma") == 5
    assert trace["otherData"]["spans_not_drawn"]["dma"] > 0
    assert trace["otherData"]["flows"] == 7 and trace["otherData"]["flows_not_drawn"] > 0
