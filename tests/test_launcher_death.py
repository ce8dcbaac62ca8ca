"""Nothing left behind when the launcher dies (issue 17): a `dmabuf-emu run` stopped by SIGTERM,
SIGHUP or SIGKILL takes its services and segments with it, during the workload or during startup;
`up` services outlive `up` until `down`; `down --all` removes what nobody owns any more and leaves
live runs alone.

Each test starts its own run (own run id, own directory). Every wait is for an event, bounded:
a process gone, a file written, a line in the history.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from deploy import procs
from deploy.launcher import Deployment, down, up
from deploy.options import RunParams
from runtime import shm, watchdog
from tests.helpers import ROOT, cli

LEASE_S = 1.0
LEASES = 5                        # "a few leases": how long services may outlive their launcher
RUN_FLAGS = ["--strategy", "move-notify", "--importers", "2", "--duration", "60", "--lease-ms", str(LEASE_S * 1000)]


def _launch(out: Path, *flags: str) -> subprocess.Popen:
    log = open(out.parent / f"{out.name}.launcher.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "deploy.cli", *flags, "--out", str(out)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _output(out: Path) -> str:
    return (out.parent / f"{out.name}.launcher.log").read_text(errors="replace")


def _wait(what: str, ready, proc: subprocess.Popen | None = None, timeout_s: float = 40.0, every_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while True:
        value = ready()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the launcher exited ({proc.returncode}) before {what}: {_output(Path(proc.args[-1]))}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(every_s)


def _deploy_json(out: Path) -> dict | None:
    try:
        return json.loads((out / "deploy.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _workload_running(out: Path) -> bool:
    try:
        return '"event":"workload_start"' in (out / "events" / "deploy.jsonl").read_text()
    except FileNotFoundError:
        return False


def _services(dep: dict) -> dict[int, str]:
    return {dep["exporter"]["pid"]: "exporter_svc", **{i["pid"]: "importer_svc" for i in dep["importers"]}}


def _gone(pids: dict[int, str], run_id: str, timeout_s: float) -> tuple[dict[int, str], list[str]]:
    """Wait until no service of the run is alive and none of its segments exists."""
    deadline = time.monotonic() + timeout_s
    while True:
        left, segs = {p: m for p, m in pids.items() if procs.alive(p, m)}, shm.existing(run_id)
        if (not left and not segs) or time.monotonic() > deadline:
            return left, segs
        time.sleep(0.02)


def _reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)


@pytest.fixture
def run_dir(short_dir: Path):
    yield short_dir / "r"
    if (short_dir / "r" / "deploy.json").exists():  # whatever a failed test left
        down(short_dir / "r", timeout_s=2.0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_of_run_stops_everything_and_writes_an_interrupted_report(run_dir: Path, sig) -> None:
    proc = _launch(run_dir, "run", *RUN_FLAGS)
    try:
        _wait("workload", lambda: _workload_running(run_dir), proc)
        dep = _deploy_json(run_dir)
        pids = _services(dep)
        proc.send_signal(sig)
        proc.wait(60)
    finally:
        _reap(proc)
    assert proc.returncode == 128 + sig, _output(run_dir)
    last = _output(run_dir).strip().splitlines()[-1]
    assert last.startswith(f"dmabuf-emu: run interrupted by {sig.name}") and "services stopped, segments removed" in last
    assert _gone(pids, dep["run_id"], 0) == ({}, []), "the launcher took everything down before it exited"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["interrupted"]["signal"] == sig.name and report["interrupted"]["during"] == "workload"
    assert report["interrupted"]["t_s"] > 0 and report["ops"]["map"] > 0, "what ran before it is judged"
    assert report["bytes_check"]["buffers"] == 8, "the workload was stopped and drained: the final bytes are on record"
    assert f"**Interrupted** by {sig.name}" in (run_dir / "report.md").read_text()
    assert not (run_dir / "sock").exists() and not (run_dir / "secrets").exists()


def test_sigkill_of_run_the_services_stop_within_a_few_leases(run_dir: Path) -> None:
    proc = _launch(run_dir, "run", *RUN_FLAGS)
    try:
        _wait("workload", lambda: _workload_running(run_dir), proc)
        dep = _deploy_json(run_dir)
        assert dep["launcher"] == watchdog.identity(proc.pid)
        pids = _services(dep)
        proc.kill()
        killed = time.monotonic()
    finally:
        _reap(proc)
    assert _gone(pids, dep["run_id"], LEASES * LEASE_S) == ({}, []), \
        f"services or segments still there {LEASES} leases after the launcher's SIGKILL"
    seen = time.monotonic() - killed
    for name in ["exporter", *(i["name"] for i in dep["importers"])]:
        events = [json.loads(line) for line in (run_dir / "events" / f"{name}.jsonl").read_text().splitlines()]
        gone = [e for e in events if e["event"] == "launcher_gone"]
        assert gone and gone[0]["launcher"] == dep["launcher"], name
        assert events[-1]["event"] == "service_stop" and events[-1]["reason"] == "launcher gone"
    print(f"services and segments gone {seen:.2f} s after the launcher's SIGKILL")


def test_a_service_whose_launcher_died_during_startup_goes_too(run_dir: Path) -> None:
    proc = _launch(run_dir, "run", *RUN_FLAGS, "--importers", "4")

    def spawned_not_answered() -> dict | None:
        dep = _deploy_json(run_dir)
        if dep and len(dep["importers"]) == 4 and not any(i.get("control") for i in dep["importers"]):
            return dep
        return None

    try:
        _wait("every importer spawned", spawned_not_answered, proc, every_s=0.002)
        proc.send_signal(signal.SIGSTOP)  # freeze the launcher where it is, then look
        dep = _deploy_json(run_dir)
        answered = sorted(p.stem for p in (run_dir / "run").glob("importer-*.json"))
        assert not any(i.get("control") for i in dep["importers"]), "startup was over: nothing shown"
        proc.kill()
    finally:
        _reap(proc)
    print(f"launcher SIGKILLed during startup; importers listening by then: {answered or 'none'}")
    # a service still importing its modules dies with the parent-death signal's default action;
    # one further on checks its launcher on the first turn of its loop
    assert _gone(_services(dep), dep["run_id"], LEASES * LEASE_S) == ({}, [])
    assert not (run_dir / "events" / "deploy.jsonl").exists(), "the launcher never got past up"


def test_up_services_outlive_up_and_stop_at_down(run_dir: Path) -> None:
    proc = _launch(run_dir, "up", "--strategy", "pin", "--importers", "2", "--lease-ms", "500")
    try:
        assert proc.wait(60) == 0, _output(run_dir)
    finally:
        _reap(proc)
    dep = Deployment.read(run_dir)
    pids = {s.pid: s.marker for s in dep.services}
    assert dep.launcher == "" and not any("--launcher" in procs.cmdline(p) for p in pids)
    # up is gone (reaped): its services must stay past several of their watch periods
    assert procs.wait_gone(pids, 4 * 0.5) == pids, "a service of up stopped when up ended"
    st = cli("status", str(run_dir))
    assert st.returncode == 0, st.stdout + st.stderr
    assert f"started by up: they run until dmabuf-emu down {run_dir}" in st.stdout
    uptimes = [float(line.split(" up ")[1].split()[0]) for line in st.stdout.splitlines()[1:]]
    assert len(uptimes) == 3 and all(u >= 2 for u in uptimes), st.stdout
    report = down(run_dir)
    assert sorted(report.graceful) == ["exporter", "importer-1", "importer-2"]
    assert _gone(pids, dep.run_id, 0) == ({}, [])


def _down_all(*flags: str) -> subprocess.CompletedProcess:
    return cli("down", "--all", *flags, timeout=120)


def _line(output: str, run_id: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith(f"  run {run_id}:")]
    assert len(lines) == 1, f"run {run_id} not listed once:\n{output}"
    return lines[0]


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        fields = watchdog.stat_fields(int(entry)) if entry.isdigit() else None
        if fields and int(fields[1]) == pid:
            out.append(int(entry))
    return out


def test_down_all_cleans_what_dead_launchers_left_and_leaves_live_runs_alone(short_dir: Path) -> None:
    """One test for every `down --all`: it acts on the whole machine, so two at once would see
    each other's leftovers."""
    # 1. segments whose services are gone, as a SIGKILLed run of an older version left them
    fake = "gc" + uuid.uuid4().hex[:8]
    for what, size in (("vram", 4096), ("sys", 8192), ("fences", 64)):
        fd = os.open(os.path.join(shm.SHM_DIR, shm.segment_name(fake, what)), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.ftruncate(fd, size)
        os.close(fd)
    # 2. a real run started with no watch, then every process SIGKILLed, the exporter's resource
    #    tracker too (which would otherwise unlink the segments itself)
    killed_dir = short_dir / "killed"
    killed = up(RunParams(strategy="pin", importers=1), killed_dir)
    tracker = [p for p in _children(killed.exporter.pid) if "resource_tracker" in " ".join(procs.cmdline(p) or [])]
    assert tracker, "the exporter's resource tracker"
    for pid in tracker + [s.pid for s in killed.services]:
        os.kill(pid, signal.SIGKILL)
    assert procs.wait_gone({s.pid: s.marker for s in killed.services}, 10) == {}
    assert len(shm.existing(killed.run_id)) == 3, "the segments outlived every process"
    # 3. a run whose launcher was SIGKILLed while one importer was paused (SIGSTOP): it cannot stop by itself
    paused_dir = short_dir / "paused"
    launcher = _launch(paused_dir, "run", *RUN_FLAGS)
    try:
        _wait("workload", lambda: _workload_running(paused_dir), launcher)
        paused = _deploy_json(paused_dir)
        stuck = paused["importers"][0]["pid"]
        os.kill(stuck, signal.SIGSTOP)
        _wait("importer stopped", lambda: watchdog.stat_fields(stuck)[0] == "T")
        launcher.kill()
    finally:
        _reap(launcher)
    others = {p: m for p, m in _services(paused).items() if p != stuck}
    assert _gone(others, paused["run_id"], LEASES * LEASE_S) == ({}, []), "the others went by themselves"
    assert procs.alive(stuck, "importer_svc")
    # 4. live runs: one watched (its launcher running), one started by up (no launcher)
    live_dir, up_dir = short_dir / "live", short_dir / "up"
    live = _launch(live_dir, "run", *RUN_FLAGS)
    held = up(RunParams(strategy="pin", importers=1), up_dir)
    foreign = None
    try:
        _wait("workload", lambda: _workload_running(live_dir), live)
        live_dep = _deploy_json(live_dir)
        # 5. another user's segment (we can make one only as root)
        if os.getuid() == 0:
            foreign = os.path.join(shm.SHM_DIR, shm.segment_name("gc" + uuid.uuid4().hex[:8], "vram"))
            fd = os.open(foreign, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            os.close(fd)
            os.chown(foreign, 65534, 65534)

        dry = _down_all("--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "leftover: no service, nothing maps its segments; 3 segment(s) would be removed" in _line(dry.stdout, fake)
        assert "3 segment(s) would be removed" in _line(dry.stdout, killed.run_id)
        assert "orphan (launcher pid" in _line(dry.stdout, paused["run_id"])
        assert "live (launcher pid" in _line(dry.stdout, live_dep["run_id"])
        assert "not watched (started by up" in _line(dry.stdout, held.run_id)
        assert len(shm.existing(fake)) == 3 and len(shm.existing(killed.run_id)) == 3 and procs.alive(stuck, "importer_svc")

        real = _down_all()
        assert real.returncode == 0, real.stdout + real.stderr
        assert shm.existing(fake) == [] and shm.existing(killed.run_id) == []
        assert procs.wait_gone({stuck: "importer_svc"}, 0) == {}, "the paused orphan was stopped"
        assert "services stopped" in _line(real.stdout, paused["run_id"])
        assert not (paused_dir / "secrets").exists(), "the orphaned run's credentials went with it"
        # left alone: the live runs and the other user's segment
        for d in (live_dir, up_dir):
            dep = Deployment.read(d)
            assert all(procs.alive(s.pid, s.marker) for s in dep.services) and len(shm.existing(dep.run_id)) == 3
        if foreign is not None:
            assert os.path.exists(foreign) and "of other users not touched" in real.stdout
    finally:
        if foreign is not None and os.path.exists(foreign):
            os.unlink(foreign)
        live.send_signal(signal.SIGTERM)
        try:
            live.wait(60)
        finally:
            _reap(live)
        down(up_dir)
        down(killed_dir)
    assert live.returncode == 143
    for d in (live_dir, up_dir):
        dep = Deployment.read(d)
        assert _gone({s.pid: s.marker for s in dep.services}, dep.run_id, 0) == ({}, [])


def test_sigterm_of_compare_stops_at_the_run_it_was_in_and_says_so(run_dir: Path) -> None:
    proc = _launch(run_dir, "compare", "--importers", "1", "--duration", "60")
    first = run_dir / "pin"
    try:
        _wait("the first run's workload", lambda: _workload_running(first), proc)
        dep = _deploy_json(first)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        _reap(proc)
    assert proc.returncode == 143, _output(run_dir)
    last = _output(run_dir).strip().splitlines()[-1]
    assert last.startswith("dmabuf-emu: compare stopped at pin: run interrupted by SIGTERM") and "no run had finished" in last
    assert json.loads((first / "report.json").read_text())["interrupted"]["signal"] == "SIGTERM"
    assert _gone(_services(dep), dep["run_id"], 0) == ({}, [])
    assert [p.name for p in run_dir.iterdir() if p.is_dir()] == ["pin"], "no run after the interrupted one"
