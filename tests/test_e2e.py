"""End to end: real exporter and importer processes, real shared memory, real sockets.

Each run checks what the issues promise (the walking skeleton's run directory, each strategy's
pattern of races) and that nothing is left behind: no segment of the run in /dev/shm, no process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import procs
from deploy.launcher import DeployError, Deployment, down, status, up
from deploy.options import RunParams
from deploy.run import run
from runtime import shm
from tests.checker_helpers import crossing_jobs
from tests.helpers import ROOT, cli


def assert_nothing_left(out: Path) -> None:
    dep = Deployment.read(out)
    assert shm.existing(dep.run_id) == [], "segments of the run left in /dev/shm"
    assert not [s.name for s in dep.services if procs.alive(s.pid, s.marker)], "service processes left"
    assert not (out / "sock").exists(), "socket files left"


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def do_run(out: Path, **params) -> dict:
    report = run(RunParams(**params), out, quiet=True)
    assert_nothing_left(out)
    return report


# ---------------------------------------------------------------------------------- the skeleton

def test_pin_run_walking_skeleton(short_dir: Path) -> None:
    report = do_run(short_dir, strategy="pin", importers=2, duration=3.0)
    for name in ("deploy.json", "history.jsonl", "report.json", "report.md", "trace.json"):
        assert (short_dir / name).exists(), name
    assert sorted(p.name for p in (short_dir / "events").iterdir()) == [
        "deploy.jsonl", "exporter.jsonl", "importer-1.jsonl", "importer-2.jsonl"]
    dep = json.loads((short_dir / "deploy.json").read_text())
    assert set(dep) >= {"run_id", "strategy", "exporter", "importers", "shm"}
    assert set(dep["exporter"]) >= {"pid", "endpoint"} and [i["name"] for i in dep["importers"]] == ["importer-1", "importer-2"]
    assert all(s.startswith(f"dmabuf-{dep['run_id']}-") for s in dep["shm"])

    events = history(short_dir)
    by_svc = {(e["svc"], e["access"]) for e in events if e["event"] == "dma_begin"}
    assert by_svc == {(f"importer-{n}", a) for n in (1, 2) for a in ("read", "write")}
    assert report["races"]["total"] == 0 and report["corruption"]["jobs"] == 0
    assert report["moves"]["refused"] > 0 and report["moves"]["completed"] == 0
    assert report["moves"]["refused_by_reason"] == {"pinned": report["moves"]["refused"]}
    assert report["ops"]["dma_read"] > 0 and report["ops"]["dma_write"] > 0
    assert report["ops"]["map"] == report["ops"]["unmap"] == sum(1 for e in events if e["event"] == "map")
    assert report["latency_us"]["map"]["p50"] > 0
    assert json.loads((short_dir / "report.json").read_text())["races"] == report["races"]
    ts = [e["t_ns"] for e in events]
    assert ts == sorted(ts), "history.jsonl is ordered by t_ns"


# ---------------------------------------------------------------------------------- the strategies

MUST_SHOW = dict(importers=4, buffers=8, duration=3.0)


def test_move_notify_races_in_real_bytes(short_dir: Path) -> None:
    r = do_run(short_dir, strategy="move-notify", **MUST_SHOW)
    assert r["races"]["lost_write"] > 0 and r["races"]["stale_read"] > 0
    assert r["corruption"]["jobs"] > 0 and r["corruption"]["lines"] > 0
    assert r["witnesses"]["lost_write"] and r["witnesses"]["lost_write"][0]["sentence"]


def test_resv_fence_moves_without_races(short_dir: Path) -> None:
    r = do_run(short_dir, strategy="resv-fence", **MUST_SHOW)
    assert r["races"]["total"] == 0 and r["corruption"]["jobs"] == 0
    assert r["moves"]["completed"] > 0
    assert r["latency_us"]["map"]["p50"] is not None and r["latency_us"]["move"]["p50"] is not None
    events = history(short_dir)
    assert any(e["event"] == "fence_wait_begin" for e in events)
    assert any(e["event"] == "map_served" and e["deferred_ns"] > 0 for e in events), "maps waited for the lock"


def test_revalidate_moves_without_races_with_well_behaved_devices(short_dir: Path) -> None:
    r = do_run(short_dir, strategy="revalidate", **MUST_SHOW)
    assert r["races"]["total"] == 0 and r["corruption"]["jobs"] == 0
    assert r["moves"]["completed"] > 0
    assert r["maps"]["reused"] > 0, "kept IOMMU entries were reused"


def test_unmap_hint_optimistic_races_when_a_promise_is_broken(short_dir: Path) -> None:
    r = do_run(short_dir, strategy="unmap-hint", hint_policy="optimistic", **MUST_SHOW)
    assert r["races"]["total"] > 0
    assert any(e["event"] == "move_begin" and e["broke_promise"] for e in history(short_dir))


def test_unmap_hint_conservative_remaps_every_map_and_never_races(short_dir: Path) -> None:
    r = do_run(short_dir, strategy="unmap-hint", hint_policy="conservative", **MUST_SHOW)
    assert r["races"]["total"] == 0
    assert r["maps"]["reused"] == 0 and r["maps"]["remapped"] == r["ops"]["map"] > 0
    assert r["moves"]["completed"] > 0


def test_move_notify_ack_races_are_maps_crossing_a_notification(short_dir: Path) -> None:
    r = do_run(short_dir, strategy="move-notify-ack", **MUST_SHOW)
    events = history(short_dir)
    # Every race is a job that was handed its placement after the move had begun.
    assert r["races"]["total"] <= len(crossing_jobs(events))
    assert r["moves"]["completed"] > 0
    assert r["notify"]["acked"] > 0


# ---------------------------------------------------------------------------------- operations

def test_check_reproduces_the_runs_verdict_offline(short_dir: Path) -> None:
    r = do_run(short_dir, strategy="move-notify", importers=2, duration=1.5)
    out = cli("check", str(short_dir), "--fail-on-race", timeout=120)
    again = json.loads((short_dir / "report.json").read_text())
    assert again["races"] == r["races"] and again["corruption"] == r["corruption"]
    assert out.returncode == (1 if r["races"]["total"] else 0), out.stderr


def test_down_cleans_up_after_every_service_was_sigkilled(short_dir: Path) -> None:
    dep = up(RunParams(strategy="resv-fence", importers=2), short_dir)
    assert len(shm.existing(dep.run_id)) == 3
    for svc in dep.services:
        os.kill(svc.pid, signal.SIGKILL)
    assert procs.wait_gone({s.pid: s.marker for s in dep.services}, 10) == {}
    _, states = status(short_dir)
    assert not any(s.alive for s in states)
    report = down(short_dir)
    assert sorted(report.already_gone) == ["exporter", "importer-1", "importer-2"]
    assert_nothing_left(short_dir)
    down(short_dir)                                     # twice is fine
    assert_nothing_left(short_dir)


def test_up_then_down_gracefully(short_dir: Path) -> None:
    dep = up(RunParams(strategy="move-notify", importers=3, transport="tcp"), short_dir)
    assert dep.exporter.endpoint.startswith("tcp://127.0.0.1:")
    _, states = status(short_dir)
    assert [s.alive for s in states] == [True] * 4
    with pytest.raises(DeployError, match="already has a running deployment"):
        up(RunParams(), short_dir)
    report = down(short_dir)
    assert sorted(report.graceful) == ["exporter", "importer-1", "importer-2", "importer-3"]
    assert_nothing_left(short_dir)


def test_a_socket_path_too_long_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)
    with pytest.raises(DeployError, match="limit for ipc sockets: use a shorter --out"):
        up(RunParams(), deep)
    assert not list(deep.glob("run/*.json")), "nothing was started"


def test_cli_errors_are_one_line_naming_what_was_wrong(tmp_path: Path) -> None:
    r = cli("run", "--importers", "two", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--importers" in r.stderr
    r = cli("down", str(tmp_path / "nothing-here"))
    assert r.returncode == 3 and "no deploy.json" in r.stderr
    r = cli("strategies")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 7
    r = cli("run", "--help")
    assert r.returncode == 0 and "example" in r.stdout and "--strategy" in r.stdout


def test_services_run_by_hand_teach_their_flags() -> None:
    for module in ("exporter_svc", "importer_svc"):
        r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "Example" in r.stdout and "--strategy" in r.stdout
