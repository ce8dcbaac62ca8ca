"""check --predict (checker/predict.py): every race the oracle reports is a candidate, the correct
strategies give none, a mutant's race is predicted from a run where it did not happen, and bad
input is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from checker.oracle import Oracle
from checker.predict import PredictRefused, Predictor, predict_lines
from tests.checker_helpers import H, mapped, simulated_lines, write_events_dir, write_history
from tests.helpers import cli


def _races_and_candidates(lines: list[bytes]) -> tuple[list, dict]:
    races: list = []
    oracle = Oracle(on_race=races.append)
    oracle.run(lines)
    oracle.report()
    p = Predictor().run(lines)
    return races, p.result() | {"all": p}


@pytest.mark.parametrize("strategy,seed", [
    ("move-notify", 1), ("move-notify", 2), ("move-notify-ack", 1), ("unmap-hint", 1),
    ("resv-fence+wait-write-only", 1), ("resv-fence+early-signal", 2), ("resv-fence+map-unlocked", 1),
])
def test_every_race_is_a_candidate(strategy: str, seed: int) -> None:
    lines = simulated_lines(seed, strategy=strategy, importers=3, buffers=4)
    races, pred = _races_and_candidates(lines)
    assert races, "the run must race for the test to mean anything"
    assert pred["candidates"] >= len(races)
    # items are capped at 256; these runs stay below
    assert pred["candidates"] <= 256
    keys = {(c["kind"], c["job"]["svc"], c["job"]["job"]) for c in pred["items"]}
    missing = [(r.kind, r.job.svc, r.job.job) for r in races if (r.kind, r.job.svc, r.job.job) not in keys]
    assert missing == []
    assert pred["overlapped"] >= len(races)


def test_every_race_of_a_rogue_revoke_run_is_a_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    # Linux 7.1: rogue devices write after their invalidate_mappings returned, so the
    # invalidation windows (write_after_invalidate) are what pairs them
    import checker.predict
    monkeypatch.setattr(checker.predict, "MAX_ITEMS", 1 << 20)
    lines = simulated_lines(1, ("rogue:target=importers,ms=20,access=write,p=0.3",), strategy="revoke",
                            importers=4, buffers=8, duration=0.5)
    races, pred = _races_and_candidates(lines)
    assert any(r.kind == "write_after_invalidate" for r in races), {r.kind for r in races}
    keys = {(c["kind"], c["job"]["svc"], c["job"]["job"]) for c in pred["items"]}
    assert [(r.kind, r.job.svc, r.job.job) for r in races if (r.kind, r.job.svc, r.job.job) not in keys] == []


@pytest.mark.parametrize("strategy", ["pin", "resv-fence", "revoke", "revalidate"])
@pytest.mark.parametrize("seed", [1, 2])
def test_correct_strategies_give_no_candidate(strategy: str, seed: int) -> None:
    pred = predict_lines(simulated_lines(seed, strategy=strategy, importers=3, buffers=4))
    assert pred["candidates"] == 0, [(c["kind"], c["why"]) for c in pred["items"][:5]]


def test_predicts_a_mutants_race_the_run_did_not_have() -> None:
    # the importer does not wait for the move's KERNEL fence: in this run no job began before the
    # copy ended, but nothing orders the copy's end before the job's begin
    lines = simulated_lines(1, strategy="resv-fence+no-kernel-fence-wait", importers=3, buffers=4)
    races, pred = _races_and_candidates(lines)
    assert races == []
    assert pred["by_kind"].get("unfenced_access", 0) > 0
    assert pred["overlapped"] == 0


def _current(events: list[dict]) -> list[dict]:
    """The hand-written history as a current run writes it: every dma_begin says its fence."""
    for e in events:
        if e["event"] == "dma_begin":
            e.setdefault("fence", None)
    return events


def _write_then_move(between_unmap: bool) -> list[dict]:
    h = mapped()
    h.job(7, "write", 20, 40)
    if between_unmap:
        h.ev(45, "exporter", "unmap_served", id=99, importer="importer-1", buffer=0, attachment=1,
             will_move=False)
    h.move(0, 1, move=1, begin=50, copy_begin=60, copy_end=70, free=80, end=90)
    return _current(h.sorted_events())


def test_a_write_nothing_orders_is_a_candidate_though_it_did_not_overlap() -> None:
    pred = predict_lines(_write_then_move(between_unmap=False))
    assert pred["by_kind"] == {"lost_write": 1}
    item = pred["items"][0]
    assert item["overlapped"] is False and item["other"]["event"] == "copy_begin"
    assert "move waited for no fence" in item["why"]


def test_an_unmap_after_the_job_orders_it_before_the_copy() -> None:
    # R3: the unmap the importer sends after its job ended carries the job's end to the exporter
    assert predict_lines(_write_then_move(between_unmap=True))["candidates"] == 0


def test_fence_wait_orders_a_fenced_job_and_a_narrower_usage_does_not() -> None:
    def history(usage: str) -> list[dict]:
        h = mapped()
        h.ev(20, "importer-1", "dma_begin", job=7, buffer=0, attachment=1, access="read", heap="vram",
             offset=0, size=0x10000, gen=1, fence=1)
        h.ev(30, "exporter", "move_begin", buffer=0, move=1, reason="evict", from_gen=1, to_gen=2,
             broke_promise=False, **{"from": {}, "to": {}})
        h.ev(31, "exporter", "fence_wait_begin", buffer=0, move=1, usage=usage,
             fences=[{"importer": "importer-1", "slot": 1, "seq": 1, "usage": "READ"}] if usage != "WRITE" else [])
        h.ev(40, "importer-1", "dma_end", job=7, buffer=0, attachment=1, access="read", heap="vram", offset=0,
             size=0x10000, gen=1, status="ok", bytes=0x10000, faults=0, last_access_ns=40)
        h.ev(40, "importer-1", "fence_signal", buffer=0, usage="READ", seq=1, job=7)
        h.ev(50, "exporter", "fence_wait_end", buffer=0, move=1, usage=usage, waited_ns=19, forced=[])
        h.ev(60, "exporter", "copy_begin", buffer=0, move=1, from_gen=1, to_gen=2)
        h.ev(70, "exporter", "free", buffer=0, move=1, from_gen=1, to_gen=2, heap="vram", offset=0, size=1)
        return h.sorted_events()

    assert predict_lines(history("BOOKKEEP"))["candidates"] == 0
    pred = predict_lines(history("WRITE"))
    assert pred["by_kind"] == {"stale_read": 1}
    assert "does not take the job's READ fence" in pred["items"][0]["why"]


def _lost_then_moved(last_access_ns: int) -> list[dict]:
    """importer-1's write job aborted at its lease expiry, its last access at `last_access_ns`; the
    exporter declared it lost at 40 and moved the buffer at 50."""
    h = mapped()
    h.job(7, "write", 20, None)
    h.ev(60, "importer-1", "dma_end", job=7, buffer=0, attachment=1, access="write", heap="vram", offset=0,
         size=0x10000, gen=1, status="aborted", bytes=64, faults=0, last_access_ns=last_access_ns,
         reason="lease expired")
    h.ev(40, "exporter", "importer_lost", importer="importer-1", slot=1, reason="lease expired")
    h.move(0, 1, move=1, begin=50, copy_begin=55, copy_end=70, free=80, end=90)
    return _current(h.sorted_events())


def test_lease_expiry_orders_a_lost_importers_last_access() -> None:
    assert predict_lines(_lost_then_moved(25))["candidates"] == 0      # R8
    # an access past the exporter's verdict is not covered by the lease rule
    assert predict_lines(_lost_then_moved(45))["by_kind"] == {"lost_write": 1}


def test_refuses_a_history_whose_jobs_carry_no_fence_field() -> None:
    events = _write_then_move(between_unmap=False)
    for e in events:
        e.pop("fence", None)
    with pytest.raises(PredictRefused, match="no `fence` field"):
        predict_lines(events)


def _sim_run(tmp_path: Path, strategy: str) -> Path:
    lines = simulated_lines(1, strategy=strategy, importers=2, buffers=3, duration=0.3)
    run = tmp_path / "run"
    write_events_dir((json.loads(x) for x in lines), run / "events")
    return run


def test_cli_check_predict_writes_the_section(tmp_path: Path) -> None:
    run = _sim_run(tmp_path, "move-notify")
    r = cli("check", str(run), "--predict")
    assert r.returncode == 0, r.stderr
    assert "could have raced:" in r.stdout
    # the command that confirms the candidates by executed schedules (issue 25: run/check --predict)
    assert f"confirm them: dmabuf-emu explore --around {run} --out {run}-around" in r.stdout
    report = json.loads((run / "report.json").read_text())
    pred = report["predicted"]
    assert set(pred) >= {"candidates", "by_kind", "items"}
    assert pred["candidates"] >= report["races"]["total"] > 0
    assert "## Could have raced" in (run / "report.md").read_text()


def test_cli_check_predict_refuses_an_old_history_in_one_line(tmp_path: Path) -> None:
    run = _sim_run(tmp_path, "resv-fence")
    for f in (run / "events").glob("importer-*.jsonl"):
        out = []
        for line in f.read_text().splitlines():
            e = json.loads(line)
            e.pop("fence", None)
            out.append(json.dumps(e))
        f.write_text("\n".join(out) + "\n")
    r = cli("check", str(run), "--predict")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "cannot predict" in err[0] and "fence" in err[0]


def test_cli_check_predict_refuses_a_history_without_fence_events_in_one_line(tmp_path: Path) -> None:
    # jobs that say their fence, but no fence_signal or fence wait of any kind: R5 and R6 have
    # nothing to order with, so every fenced job would be a candidate
    run = _sim_run(tmp_path, "resv-fence")
    for f in (run / "events").glob("*.jsonl"):
        kept = [line for line in f.read_text().splitlines()
                if json.loads(line)["event"] not in ("fence_signal", "fence_wait_begin", "fence_wait_end",
                                                     "kernel_fence_wait")]
        f.write_text("\n".join(kept) + "\n")
    r = cli("check", str(run), "--predict")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "cannot predict" in err[0] and "no fence_signal or fence_wait event" in err[0], err


def test_unreadable_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    lines = [json.dumps(e).encode() + b"\n" for e in _write_then_move(between_unmap=False)]
    lines.insert(3, b'{"t_ns": 12, "svc": "imp\n')
    lines.append(b"not json at all\n")
    pred = predict_lines(lines)
    assert pred["unreadable_lines"] == 2
    assert pred["by_kind"] == {"lost_write": 1}


def test_explore_around_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    r = cli("explore", "--around", str(tmp_path / "nothing"), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"dmabuf-emu: explore --around: {tmp_path / 'nothing'} is not a run: no readable report.json"]


def test_explore_around_writes_around_json(tmp_path: Path) -> None:
    run = _sim_run(tmp_path, "resv-fence+wait-write-only")
    assert cli("check", str(run), "--predict").returncode == 0
    r = cli("explore", "--around", str(run), "--out", str(tmp_path / "around"), "--quiet", timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "around" / "around.json").read_text())
    assert set(doc) >= {"candidates", "confirmed", "not_confirmed", "schedules", "seconds"}
    assert len(doc["confirmed"]) + len(doc["not_confirmed"]) == min(doc["candidates"], 256)
    assert all(x["reason"] for x in doc["not_confirmed"])


def _remap_after_move(kernel_signal_t: int | None, kernel_wait: bool = True) -> list[dict]:
    """importer-1 maps buffer 0's new placement, served while the move's copy still ran (the
    KERNEL fence guards it), waits for the KERNEL fence and begins a job; the exporter's
    fence_signal of that fence is stamped at `kernel_signal_t` (a real run: after the wait
    it satisfied, when the exporter was descheduled between its signal and its event)."""
    h = mapped()
    h.move(0, 1, move=1, begin=20, copy_begin=22, copy_end=30, free=32, end=34)
    h.ev(28, "exporter", "map_served", id=50, importer="importer-1", buffer=0, attachment=1, gen=2, moved=True,
         deferred_ns=0)
    h.ev(50, "importer-1", "map", id=50, buffer=0, attachment=1, heap="sys", offset=0x1000, size=0x10000, gen=2,
         latency_ns=1000, reused=False, moved=True)
    if kernel_wait:
        h.ev(52, "importer-1", "kernel_fence_wait", buffer=0, seq=1, waited_ns=10)
    h.ev(54, "importer-1", "dma_begin", job=7, buffer=0, attachment=1, access="read", heap="sys",
         offset=0x1000, size=0x10000, gen=2, fence=1)
    if kernel_signal_t is not None:
        h.ev(kernel_signal_t, "exporter", "fence_signal", buffer=0, usage="KERNEL", seq=1, move=1)
    h.ev(60, "importer-1", "dma_end", job=7, buffer=0, attachment=1, access="read", heap="sys", offset=0x1000,
         size=0x10000, gen=2, status="ok", bytes=0x10000, faults=0, last_access_ns=60)
    h.ev(61, "importer-1", "fence_signal", buffer=0, usage="READ", seq=1, job=7)
    return _current(h.sorted_events())


def test_a_kernel_fence_wait_orders_the_job_after_the_copy_even_when_the_signal_is_stamped_late() -> None:
    # R6: stamped in order (the signal at 31) or after the wait it satisfied (at 56), the wait
    # returned on the signalled fence, which the exporter signals after its copy ended
    assert predict_lines(_remap_after_move(31))["candidates"] == 0
    assert predict_lines(_remap_after_move(56))["candidates"] == 0
    # no wait for the KERNEL fence: nothing orders the copy's end before the job's begin
    assert predict_lines(_remap_after_move(31, kernel_wait=False))["by_kind"] == {"unfenced_access": 1}


def test_every_race_of_a_real_move_notify_run_is_a_candidate(tmp_path: Path) -> None:
    # a real run: processes, sockets and the machine's own timing (the exporter's events may be
    # stamped after what they caused), not the simulator's ordered clock
    run = tmp_path / "real"
    r = cli("run", "--strategy", "move-notify", "--importers", "4", "--duration", "1", "--seed", "1",
            "--out", str(run), "--quiet", timeout=180)
    assert r.returncode == 0, r.stderr
    lines = (run / "history.jsonl").read_bytes().splitlines(keepends=True)
    races, pred = _races_and_candidates(lines)
    assert races, "move-notify races in a 1 s run of 4 importers (docs/results.md: 25-35 of them)"
    assert pred["candidates"] <= 256, "every candidate listed"
    keys = {(c["kind"], c["job"]["svc"], c["job"]["job"]) for c in pred["items"]}
    assert [(x.kind, x.job.svc, x.job.job) for x in races if (x.kind, x.job.svc, x.job.job) not in keys] == []


def test_cli_run_predict_prints_the_candidates_and_the_command_that_confirms_them(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = cli("run", "--strategy", "move-notify", "--importers", "2", "--duration", "0.3", "--quiet",
            "--predict", "--out", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert "could have raced:" in r.stdout and report["predicted"]["candidates"] >= report["races"]["total"]
    assert f"dmabuf-emu explore --around {out} --out {out}-around" in r.stdout
