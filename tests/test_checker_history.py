"""Merging event files, reading damaged histories, and the run-level entry points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from checker import HistoryError, check_run, judge_history, merge_history
from checker.__main__ import main as cli_main
from tests.checker_helpers import H, mapped, simulated, write_history
from tests.helpers import ROOT


def write_lines(path: Path, lines: list[str], *, final_newline: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + ("\n" if final_newline else "")
    path.write_text(text)


def ev(t: int, svc: str, event: str = "tick", **f: Any) -> str:
    return json.dumps({"t_ns": t, "svc": svc, "pid": 1, "event": event, **f})


def read_history(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_merge_orders_by_time_and_breaks_ties_by_file_then_line(tmp_path: Path) -> None:
    d = tmp_path / "events"
    write_lines(d / "importer-1.jsonl", [ev(5, "importer-1", n="a"), ev(10, "importer-1", n="b"),
                                          ev(10, "importer-1", n="c"), ev(30, "importer-1", n="d")])
    write_lines(d / "exporter.jsonl", [ev(1, "exporter", n="e"), ev(10, "exporter", n="f"), ev(40, "exporter", n="g")])
    write_lines(d / "deploy.jsonl", [ev(10, "deploy", n="h")])
    stats: dict[str, int] = {}
    n = merge_history(d, tmp_path / "history.jsonl", stats=stats)
    assert n == 8 and stats["files"] == 3 and stats["events"] == 8
    got = [e["n"] for e in read_history(tmp_path / "history.jsonl")]
    # t=10 ties: deploy.jsonl < exporter.jsonl < importer-1.jsonl, and b before c within the file
    assert got == ["e", "a", "h", "f", "b", "c", "d", "g"]


def test_merge_is_deterministic_and_copies_lines_verbatim(tmp_path: Path) -> None:
    d = tmp_path / "events"
    raw = '{"svc": "exporter",   "t_ns": 3, "event": "x", "pid": 1}'
    write_lines(d / "exporter.jsonl", [raw])
    write_lines(d / "importer-1.jsonl", [ev(3, "importer-1")])
    merge_history(d, tmp_path / "a.jsonl")
    merge_history(d, tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_text().splitlines()[0] == raw


def test_merge_skips_and_counts_a_truncated_last_line(tmp_path: Path) -> None:
    d = tmp_path / "events"
    write_lines(d / "importer-2.jsonl", [ev(1, "importer-2"), ev(2, "importer-2"), '{"t_ns": 3, "svc": "imp'],
                final_newline=False)
    write_lines(d / "exporter.jsonl", [ev(4, "exporter")], final_newline=False)  # complete, no newline
    stats: dict[str, int] = {}
    assert merge_history(d, tmp_path / "h.jsonl", stats=stats) == 3
    assert stats["truncated"] == 1 and stats["garbled"] == 0
    assert [e["t_ns"] for e in read_history(tmp_path / "h.jsonl")] == [1, 2, 4]


def test_merge_skips_garbled_lines_and_counts_unordered_ones(tmp_path: Path) -> None:
    d = tmp_path / "events"
    write_lines(d / "exporter.jsonl", [ev(1, "exporter"), "not json", '{"no_t": 1}', '{"t_ns": "7"}', "",
                                       ev(5, "exporter"), ev(4, "exporter")])
    stats: dict[str, int] = {}
    assert merge_history(d, tmp_path / "h.jsonl", stats=stats) == 3
    assert stats["garbled"] == 3 and stats["unordered"] == 1 and stats["truncated"] == 0


def test_merge_of_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="no events directory"):
        merge_history(tmp_path / "nope", tmp_path / "h.jsonl")


def test_judge_counts_garbled_lines_and_goes_on(tmp_path: Path) -> None:
    p = tmp_path / "history.jsonl"
    good = H().created(0).attach(5).map(10).unmap(50).job(1, "read", 60, 70).sorted_events()
    lines = [json.dumps(e) for e in good]
    lines.insert(2, "{garbage")
    lines.insert(4, "[1, 2, 3]")
    lines.insert(5, '{"t_ns": 12, "svc": "x"}')        # no event name
    lines.insert(6, "")                                  # blank: ignored, not an error
    write_lines(p, lines)
    r = judge_history(p)
    assert r["history_errors"] == 3
    assert r["events"] == len(good)
    assert r["races"]["use_after_unmap"] == 1


def test_judge_counts_malformed_events_as_anomalies(tmp_path: Path) -> None:
    h = mapped().ev(20, "importer-1", "dma_begin", job=1)           # no buffer, gen, access
    h.ev(30, "importer-1", "dma_end", job=1, status="ok")
    r = h.judge(tmp_path)
    assert r["anomalies"] == {"dma_end without dma_begin": 1, "malformed dma_begin": 1}


def test_judge_of_a_missing_history_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="no history at"):
        judge_history(tmp_path / "history.jsonl")
    with pytest.raises(FileNotFoundError):
        judge_history(tmp_path / "history.jsonl")


def test_empty_history(tmp_path: Path) -> None:
    (tmp_path / "history.jsonl").write_text("")
    r = judge_history(tmp_path / "history.jsonl")
    assert r["events"] == 0 and r["t0_ns"] is None and r["races"]["total"] == 0


def make_run(tmp_path: Path, h: H) -> Path:
    run = tmp_path / "run"
    by_svc: dict[str, list[str]] = {}
    for e in h.sorted_events():
        by_svc.setdefault(e["svc"], []).append(json.dumps(e))
    for svc, lines in by_svc.items():
        write_lines(run / "events" / f"{svc}.jsonl", lines)
    return run


def test_check_run_writes_all_outputs(tmp_path: Path) -> None:
    run = make_run(tmp_path, mapped().unmap(50).job(1, "write", 60, 70))
    r = check_run(run)
    assert r["races"]["use_after_unmap"] == 1
    assert r["merge"]["events"] == r["events"]
    on_disk = json.loads((run / "report.json").read_text())
    assert on_disk["races"] == r["races"]
    md = (run / "report.md").read_text()
    assert "use_after_unmap" in md and "which it had unmapped" in md
    trace = json.loads((run / "trace.json").read_text())
    assert trace["displayTimeUnit"] == "ms" and trace["traceEvents"]
    assert (run / "history.jsonl").exists()


def test_check_run_without_merge_needs_a_history(tmp_path: Path) -> None:
    run = make_run(tmp_path, mapped())
    with pytest.raises(HistoryError):
        check_run(run, merge=False)
    check_run(run)
    assert check_run(run, merge=False)["events"] == len(mapped().events)


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    racy = make_run(tmp_path / "a", mapped().unmap(50).job(1, "write", 60, 70))
    clean = make_run(tmp_path / "b", mapped().job(1, "write", 60, 70))
    assert cli_main([str(racy)]) == 0
    assert cli_main([str(racy), "--fail-on-race"]) == 1
    assert cli_main([str(clean), "--fail-on-race"]) == 0
    assert cli_main([str(tmp_path / "missing")]) == 2
    out = capsys.readouterr().out
    assert "races: 1" in out and "use_after_unmap" in out


def test_python_dash_m_checker(tmp_path: Path) -> None:
    run = make_run(tmp_path, mapped().unmap(50).job(1, "write", 60, 70))
    p = subprocess.run([sys.executable, "-m", "checker", str(run), "--fail-on-race"], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 1, p.stderr
    assert "races: 1" in p.stdout


def test_stdlib_json_fallback_gives_the_same_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import checker.oracle as oracle_mod

    path = tmp_path / "history.jsonl"
    events = simulated(21)
    b0 = next(e for e in events if e["event"] == "buffer_created" and e["buffer"] == 0)
    # a job on an attachment nobody mapped: the one race, whichever JSON parser read it
    job = {"t_ns": events[40]["t_ns"], "svc": "importer-1", "pid": 1, "job": 10**6, "buffer": 0,
           "attachment": 424242, "access": "read", "heap": b0["heap"], "offset": b0["offset"], "gen": 1}
    events[40:40] = [{**job, "event": "dma_begin"}, {**job, "event": "dma_end", "status": "ok", "bytes": 64}]
    write_history(events, path)
    with open(path, "a") as fh:
        fh.write("not json\n")
    fast = judge_history(path)
    monkeypatch.setattr(oracle_mod, "loads", json.loads)
    slow = judge_history(path)
    assert fast == slow
    assert fast["races"]["use_after_unmap"] == fast["races"]["total"] == 1 and fast["history_errors"] == 1
