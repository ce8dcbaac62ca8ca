"""Campaigns (issue 6): the Wilson interval, the summary derived from run directories, fault plans
that survive the command line, resume, and real campaigns (local, interrupted, on Dask)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import campaign_report, faultplans
from deploy.campaign import (CampaignError, RunSpec, campaign, fault_text, plan_runs, read_report,
                             resolve_flags, run_flags, strategy_variants)
from deploy.options import OptionError, RunParams
from runtime import faults, shm
from tests.helpers import ROOT, cli


# ---------------------------------------------------------------------------------- Wilson

def test_wilson_interval_known_values() -> None:
    lo, hi = campaign_report.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = campaign_report.wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = campaign_report.wilson(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == 1.0
    assert campaign_report.wilson(1, 3) == (pytest.approx(0.0615, abs=1e-4), pytest.approx(0.7923, abs=1e-4))
    assert campaign_report.wilson(0, 0) == (0.0, 1.0)
    for k in range(0, 21):  # symmetric, inside [0, 1], containing k/n
        lo, hi = campaign_report.wilson(k, 20)
        assert 0.0 <= lo <= k / 20 <= hi <= 1.0
        lo2, hi2 = campaign_report.wilson(20 - k, 20)
        assert math.isclose(lo, 1 - hi2, abs_tol=1e-12) and math.isclose(hi, 1 - lo2, abs_tol=1e-12)
    with pytest.raises(ValueError):
        campaign_report.wilson(4, 3)


# ---------------------------------------------------------------------------------- summary

def fake_run(out: Path, strategy: str, plan: str, seed: int, *, races: int = 0, first_s: float | None = None,
             maps: int = 100, remapped: int = 100, completed: int = 40, refused: int = 0,
             map_us: list[float] | None = None, p50: float = 500.0, p99: float = 2000.0,
             duration: float = 2.0, params: dict | None = None) -> Path:
    """A finished run directory as the checker leaves it (only what the summary reads)."""
    d = out / "runs" / strategy / plan / f"seed-{seed}"
    (d / "events").mkdir(parents=True)
    start = 1_000_000_000
    (d / "events" / "deploy.jsonl").write_text(
        json.dumps({"svc": "deploy", "event": "run_start", "t_ns": start - 5}) + "\n"
        + json.dumps({"svc": "deploy", "event": "workload_start", "t_ns": start}) + "\n")
    if map_us is not None:
        (d / "events" / "importer-1.jsonl").write_text("".join(
            json.dumps({"svc": "importer-1", "event": "map", "latency_ns": int(us * 1000), "t_ns": start + i}) + "\n"
            for i, us in enumerate(map_us)) + '{"svc":"importer-1","event":"unmap","latency_ns":1,"t_ns":1}\n')
    witnesses = {"lost_write": [], "stale_read": [], "use_after_unmap": [], "unfenced_access": []}
    if races:
        t = start + int(first_s * 1e9)
        # the first stale_read ends first; lost_write's witness carries only its events
        witnesses["stale_read"] = [{"job": {"end_t_ns": t}, "events": []}]
        witnesses["lost_write"] = [{"job": {"end_t_ns": None},
                                    "events": [{"event": "dma_begin", "t_ns": t - 10},
                                               {"event": "dma_end", "t_ns": t + 10}]}]
    report = {
        "strategy": strategy, "duration_s": duration, "t0_ns": start - 5,
        "races": {"total": races, "lost_write": races - races // 2, "stale_read": races // 2,
                  "use_after_unmap": 0, "unfenced_access": 0},
        "moves": {"completed": completed, "refused": refused}, "ops": {"map": maps},
        "maps": {"remapped": remapped, "reused": maps - remapped},
        "latency_us": {"map": {"p50": p50, "p99": p99}}, "witnesses": witnesses,
        "corruption": {"jobs": races // 3}, "params": params or {"duration": duration, "faults": [], "move_rate": 20.0},
    }
    (d / "report.json").write_text(json.dumps(report))
    return d


def test_summary_derived_from_run_directories(tmp_path: Path) -> None:
    out = tmp_path / "c"
    for seed in (1, 2, 3):
        fake_run(out, "pin", "none", seed, completed=0, refused=30, maps=100, remapped=100,
                 map_us=[100.0 * (i + 1) for i in range(100)])
        fake_run(out, "move-notify", "none", seed, races=10 * seed, first_s=0.1 * seed, maps=50, remapped=25)
        fake_run(out, "move-notify", "net", seed, races=0 if seed == 1 else 5, first_s=0.5, p50=400.0 + seed,
                 p99=1000.0 * seed)
    fake_run(out, "resv-fence", "net", 1)
    (out / "runs" / "pin" / "none" / "seed-9").mkdir()          # unfinished: no report.json
    (out / "runs" / "pin" / "none" / "seed-8").mkdir()
    (out / "runs" / "pin" / "none" / "seed-8" / "report.json").write_text('{"races": {"tot')  # cut short

    summary = campaign_report.write_summary(out, plan_order=["none", "net"], plots=False)
    rows = {(r["strategy"], r["plan"]): r for r in summary["rows"]}
    assert summary["runs_total"] == 10
    # survivors first: pin and resv-fence raced in no run; move-notify last
    assert summary["strategies"][-1] == "move-notify" and set(summary["strategies"][:2]) == {"pin", "resv-fence"}
    assert summary["plans"] == ["none", "net"]
    assert [(r["strategy"], r["plan"]) for r in summary["rows"]][-2:] == [("move-notify", "none"), ("move-notify", "net")]

    pin = rows[("pin", "none")]
    assert (pin["runs"], pin["runs_with_race"], pin["race_rate"], pin["races"]) == (3, 0, 0.0, 0)
    assert pin["race_rate_ci95"] == [0.0, pytest.approx(0.5615, abs=1e-4)]
    assert pin["first_race_median_s"] is None and pin["races_per_s"] == 0.0
    assert (pin["moves_completed"], pin["moves_refused"]) == (0, 90)
    # pooled from the importers' map events: 100..10000 us three times over
    assert pin["map_p50_us"] == pytest.approx(5050.0) and pin["map_p99_us"] == pytest.approx(9901.0)
    assert pin["remaps_per_map"] == 1.0

    mn = rows[("move-notify", "none")]
    assert (mn["runs"], mn["runs_with_race"], mn["races"]) == (3, 3, 60)
    assert mn["races_per_s"] == pytest.approx(60 / 6.0)
    assert mn["first_race_s"] == pytest.approx([0.1, 0.2, 0.3]) and mn["first_race_median_s"] == pytest.approx(0.2)
    assert mn["remaps_per_map"] == 0.5 and mn["moves_completed"] == 120
    assert mn["races_by_kind"]["lost_write"] + mn["races_by_kind"]["stale_read"] == 60

    net = rows[("move-notify", "net")]
    assert (net["runs_with_race"], net["race_rate"]) == (2, pytest.approx(2 / 3))
    lo, hi = net["race_rate_ci95"]
    assert lo == pytest.approx(0.2077, abs=1e-4) and hi == pytest.approx(0.9385, abs=1e-4)
    assert net["first_race_median_s"] == pytest.approx(0.5)
    # no events: the median of the runs' p50 and the largest p99 stand in
    assert net["map_p50_us"] == pytest.approx(402.0) and net["map_p99_us"] == pytest.approx(3000.0)

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(summary["rows"]))
    md = (out / "summary.md").read_text()
    assert "| move-notify | **3/3 raced** | **2/3 raced** |" in md
    assert "| pin | 0/3 |  |" in md
    assert "| move-notify | none | 3 | 3 | 1.00 (0.44-1.00) | 10.0 | 0.200 | 120 | 0 |" in md


def test_plots_are_written(tmp_path: Path) -> None:
    out = tmp_path / "c"
    for seed in (1, 2):
        fake_run(out, "pin", "none", seed, map_us=[100.0, 200.0, 300.0])
        fake_run(out, "move-notify", "none", seed, races=3, first_s=0.2 * seed, map_us=[150.0, 250.0])
        fake_run(out, "move-notify", "rogue", seed, races=3, first_s=0.1)
    summary = campaign_report.write_summary(out, plots=True)
    assert summary["plots"] == ["plots/race_rate.png", "plots/first_race_cdf.png", "plots/map_latency.png"]
    for p in summary["plots"]:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![race_rate](plots/race_rate.png)" in (out / "summary.md").read_text()


# ---------------------------------------------------------------------------------- plans

def test_shipped_plans_and_their_faults_survive_the_command_line() -> None:
    assert list(faultplans.shipped())[:5] == ["none", "net", "crash", "rogue", "pressure"]
    kinds = {name: {f["kind"] for f in faultplans.load(name).faults} for name in faultplans.shipped()}
    assert kinds["none"] == set() and kinds["net"] == {"delay", "dup", "reorder"}
    assert kinds["crash"] == {"restart"} and kinds["rogue"] == {"rogue"}
    assert faultplans.load("pressure").overrides == {"move_rate": 200.0}
    for name in faultplans.shipped():
        for f in faultplans.load(name).faults:
            assert faults.parse_cli(fault_text(f)) == f
    specs, plans = plan_runs(RunParams(duration=2.0, importers=3), "all", "all", 2)
    assert len(specs) == 8 * len(plans) * 2   # unmap-hint twice, and the six others
    for spec in specs:
        assert resolve_flags(run_flags(spec.params)) == spec.params
    by = {(s.strategy, s.plan, s.seed): s.params for s in specs}
    assert by[("unmap-hint-conservative", "net", 2)].hint_policy == "conservative"
    assert by[("move-notify", "pressure", 1)].move_rate == 200.0 and by[("move-notify", "pressure", 1)].importers == 3
    assert by[("pin", "none", 2)].seed == 2 and by[("pin", "none", 2)].faults == ()


def test_user_plan_file_and_bad_plans(tmp_path: Path) -> None:
    plan = tmp_path / "slow.toml"
    plan.write_text('name = "slow"\ndma_ms = 12\n[[faults]]\nkind = "slow-dma"\nfactor = 3\n')
    loaded = faultplans.load_all(f"none,{plan}")
    assert [p.name for p in loaded] == ["none", "slow"]
    assert loaded[1].overrides == {"dma_ms": 12.0} and loaded[1].faults[0]["factor"] == 3.0
    with pytest.raises(CampaignError, match="unknown strategy"):
        strategy_variants("pin,bogus")
    with pytest.raises(OptionError, match="no plan named 'nope'"):
        faultplans.load_all("none,nope")
    # crash kills at 0.5 s: a 0.5 s run cannot hold it, and nothing starts
    with pytest.raises(CampaignError, match="crash.*not within the run"):
        plan_runs(RunParams(duration=0.5), "pin", "crash", 1)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[faults]]\nkind = "delay"\nms = "soon"\n')
    with pytest.raises(OptionError, match="'ms' must be a number"):
        faultplans.load(str(bad))


# ---------------------------------------------------------------------------------- resume

def test_resume_runs_only_what_is_missing(tmp_path: Path) -> None:
    out = tmp_path / "c"
    base = RunParams(duration=1.0)
    specs, _ = plan_runs(base, "pin,move-notify", "none", 2)
    done = next(s for s in specs if (s.strategy, s.seed) == ("pin", 2))
    fake_run(out, "pin", "none", 2, params=done.params.as_dict())
    cut = out / "runs" / "move-notify" / "none" / "seed-1"   # interrupted while writing its report
    cut.mkdir(parents=True)
    (cut / "report.json").write_text('{"races": ')
    ran: list[RunSpec] = []

    def backend(todo: list[RunSpec], out_: Path, progress) -> None:
        ran.extend(todo)
        for spec in todo:
            shutil.rmtree(out_ / spec.rel, ignore_errors=True)   # as a real landing replaces it
            fake_run(out_, spec.strategy, spec.plan, spec.seed, params=spec.params.as_dict())
            progress.finished(spec, read_report(out_ / spec.rel), 0.0)

    summary = campaign(base, "pin,move-notify", "none", 2, out, quiet=True, plots=False, backend=backend)
    assert sorted((s.strategy, s.seed) for s in ran) == [("move-notify", 1), ("move-notify", 2), ("pin", 1)]
    assert summary["runs_total"] == 4
    ran.clear()
    campaign(base, "pin,move-notify", "none", 2, out, quiet=True, plots=False, backend=backend)
    assert ran == [], "a rerun of the same campaign skips every finished run"
    # the same directory with other parameters is refused, naming the difference
    with pytest.raises(CampaignError, match="duration=1.0 where this campaign asks duration=2.0"):
        campaign(RunParams(duration=2.0), "pin", "none", 1, out, quiet=True, plots=False, backend=backend)


# ---------------------------------------------------------------------------------- real campaigns

def _env(scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["DMABUF_EMU_SCRATCH"] = str(scratch)
    return env


def _run_ids(run_dirs: list[Path]) -> list[str]:
    return [json.loads((d / "deploy.json").read_text())["run_id"] for d in run_dirs if (d / "deploy.json").exists()]


def test_tiny_real_campaign_and_its_rerun(tmp_path: Path) -> None:
    out, scratch = tmp_path / "c", tmp_path / "s"
    args = ["--strategies", "move-notify", "--faults", "none", "--seeds", "1", "--duration", "0.5",
            "--jobs", "1", "--importers", "2", "--out", str(out), "--no-plots"]
    r = cli("campaign", *args, env=_env(scratch))
    assert r.returncode == 0, r.stderr
    run_dir = out / "runs" / "move-notify" / "none" / "seed-1"
    report = read_report(run_dir)
    assert report is not None and report["run_dir"] == str(run_dir) and report["params"]["duration"] == 0.5
    assert (run_dir / "events" / "exporter.jsonl").exists() and (run_dir / "history.jsonl").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert [(x["strategy"], x["plan"], x["runs"]) for x in summary["rows"]] == [("move-notify", "none", 1)]
    assert summary["rows"][0]["map_p50_us"] > 0 and summary["rows"][0]["races"] == report["races"]["total"]
    assert "| move-notify |" in (out / "summary.md").read_text() and "| move-notify |" in r.stdout
    assert shm.existing(_run_ids([run_dir])[0]) == []
    assert list(scratch.iterdir()) == [], "scratch directories are moved into OUT"
    mtime = (run_dir / "report.json").stat().st_mtime_ns
    r = cli("campaign", *args, env=_env(scratch))
    assert r.returncode == 0 and "1 finished runs skipped" in r.stderr
    assert (run_dir / "report.json").stat().st_mtime_ns == mtime


def test_interrupted_campaign_leaves_nothing_behind(tmp_path: Path) -> None:
    out, scratch = tmp_path / "c", tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "campaign", "--strategies", "move-notify",
                             "--faults", "none", "--seeds", "1", "--duration", "5", "--out", str(out)],
                            env=_env(scratch), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not list(scratch.glob("*/events/deploy.jsonl")):   # the services are up, the workload runs
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.05)
        run_dirs = list(scratch.iterdir())
        ids = _run_ids(run_dirs)
        pids = [s["pid"] for d in run_dirs for s in [json.loads((d / "deploy.json").read_text())["exporter"],
                                                     *json.loads((d / "deploy.json").read_text())["importers"]]]
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, output
    assert ids and all(shm.existing(i) == [] for i in ids), "segments left in /dev/shm"
    from deploy import procs
    assert not [p for p in pids if procs.alive(p, "_svc")], "service processes left"
    assert list(scratch.iterdir()) == [] and not (out / "runs").exists(), "an interrupted run is not kept"


def test_dask_local_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    distributed = pytest.importorskip("distributed")
    out, scratch = tmp_path / "c", tmp_path / "s"
    monkeypatch.setenv("DMABUF_EMU_SCRATCH", str(scratch))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        summary = campaign(RunParams(duration=0.5), "pin,move-notify", "none", 1, out,
                           scheduler=cluster.scheduler_address, quiet=True, plots=False)
    assert summary["runs_total"] == 2 and summary["failed_runs"] == 0
    for strategy in ("pin", "move-notify"):
        run_dir = out / "runs" / strategy / "none" / "seed-1"
        report = read_report(run_dir)
        assert report is not None and report["strategy"] == strategy and report["run_dir"] == str(run_dir)
        assert (run_dir / "events" / "deploy.jsonl").exists() and (run_dir / "history.jsonl").exists()
        assert shm.existing(_run_ids([run_dir])[0]) == []
    assert list(scratch.iterdir()) == [], "the worker removes its scratch directories"
    assert not list(out.glob("runs/*/*/.seed-*")), "no partial unpack left"


@pytest.mark.parametrize("address", ["foo", "http://host:8786", "tcp://host", "tcp://host:99999"])
def test_a_bad_scheduler_address_is_one_line_before_anything_runs(tmp_path: Path, capsys, address: str) -> None:
    from deploy.cli import main
    assert main(["campaign", "--strategies", "pin", "--scheduler", address, "--dry-run",
                 "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--scheduler must be a Dask scheduler address" in err and "\n" not in err
    assert not (tmp_path / "c").exists()
