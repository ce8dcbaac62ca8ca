"""A lease lapses; the importer is lost only once its device is known to have stopped.

The device stops at its next check, before the exporter's lease on it runs out; but a chunk checked
before that and paused before its access touches memory when the process resumes. CI saw one such
race once (tests/test_faults_e2e.py's paused importer; none in 68 runs on the development machine);
the simulator shows it at will: pause the device between a chunk's check and its access. Before the
exporter waited for the device's access count (ConfirmStopped), the run below raced (stale_read:
the read found another buffer's lines in the range the exporter had freed and reused).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol import wire
from protocol.actions import ConfirmStopped
from runtime import faults as faultspec
from runtime.runparams import RunParams
from sim.options import DEVICES, PAUSE_LEASES, PAUSES, SimOptionError, SimOptions
from sim.run import simulate_in_memory
from sim.world import LANE_COST_NS

from tests.helpers import cli
from tests.test_strategies import LEASE_NS, moving_under_a_write


def test_a_lapsed_lease_waits_for_the_device_to_stop_before_anything_is_revoked() -> None:
    w, buffer = moving_under_a_write("resv-fence")
    slot = w.slots["importer-1"]
    w.in_access.add(slot)                       # paused between a chunk's check and its access
    w.tick(LEASE_NS + 1)
    w.check_leases()
    names = w.event_names("exporter")
    assert "lease_lapsed" in names and "importer_lost" not in names
    assert [a.slot for a in w.stop_waits] == [slot]
    w.check_fences()
    assert not w.copies, "no copy while the device may still touch the old range"
    w.check_leases()
    assert len(w.stop_waits) == 1 and w.event_names("exporter").count("lease_lapsed") == 1, "asked once"
    # It speaks meanwhile (resumed, an overdue heartbeat): no ok, which would renew its own lease.
    seen = w.exporter.state.members[slot].last_seen
    (reply,) = [a.message for a in w.exporter.handle_request(b"importer-1", wire.Heartbeat(id=7777), w.now)]
    assert isinstance(reply, wire.ErrorReply) and reply.code == wire.ErrorCode.NO_SUCH_IMPORTER
    assert w.exporter.state.members[slot].last_seen == seen, "and renews nothing on our side"
    w.in_access.discard(slot)
    w.confirm_stops()
    stopped = [f for s, e, f in w.events if e == "stop_confirmed"]
    assert stopped and stopped[0]["how"] == "no access under way" and stopped[0]["importer"] == "importer-1"
    assert [f["reason"] for s, e, f in w.events if e == "importer_lost"] == ["lease expired"]
    w.check_fences()
    assert w.copies, "lost now: its fences completed, the move goes on"


def test_a_reset_left_unconfirmed_waits_for_the_device_to_stop_before_the_copy() -> None:
    """The fence timeout forces a responsive importer's fences and waits --reset-grace-ms for its
    device to confirm; past that it is lost, but only once its device has stopped: paused between
    a chunk's check and its access, it would write into the range being copied when it resumes
    (explore --pauses --fence-timeout-ms 20 found it: a lost_write in schedule 56)."""
    w, buffer = moving_under_a_write("resv-fence")
    move = next(iter(w.exporter.state.moves))
    slot = w.slots["importer-1"]
    w._apply("exporter", w.exporter.fences_pending(move, (slot,), w.now))
    w._apply("exporter", w.exporter.timer_fired(("fence", move), w.now))
    assert w.fence_waits[move][0].confirm == (slot,), "forced: waiting for the device to confirm"
    w.in_access.add(slot)
    w.tick(int(w.exporter.config.reset_grace_s * 1e9) + 1)
    w._apply("exporter", w.exporter.timer_fired(("reset", move), w.now))
    names = w.event_names("exporter")
    assert "reset_unconfirmed" in names and "importer_lost" not in names
    w.check_fences()
    assert not w.copies, "no copy under a device that may still be writing"
    w.in_access.discard(slot)
    w.confirm_stops()
    assert [f["reason"] for s, e, f in w.events if e == "importer_lost"] == ["reset unconfirmed"]
    w.check_fences()
    assert w.copies, "lost, its fences completed: the move goes on"


def test_a_stale_confirmation_of_a_replaced_incarnation_changes_nothing() -> None:
    w, _ = moving_under_a_write("resv-fence")
    slot = w.slots["importer-1"]
    w.in_access.add(slot)
    w.tick(LEASE_NS + 1)
    w.check_leases()
    (wait,) = w.stop_waits
    assert isinstance(wait, ConfirmStopped)
    out = w.exporter.device_stopped(slot, wait.pid + 1, "process gone", w.now)   # another process
    assert not [a for a in out if getattr(a, "event", "") in ("importer_lost", "stop_confirmed")]


def _run(at: float, seed: int = 1, fault: str = "pause:target=importer-1,for=0.7") -> tuple[list[dict], dict]:
    spec = (faultspec.parse_cli(f"{fault},at={at:.9f}"),)
    params = RunParams(strategy="resv-fence", importers=3, duration=1.5, lease_ms=500.0, seed=seed, faults=spec)
    result = simulate_in_memory(params)
    return [json.loads(line) for line in result.history], result.report


def _between_check_and_access() -> tuple[float, dict]:
    """A time (s into the workload) between the check and the access of importer-1's last chunk of
    a job near 0.3 s, and that job's dma_end, from a run paused late (nothing before a pause
    depends on it)."""
    late = 1.4
    events, _ = _run(late)
    base = next(e["t_ns"] for e in events if e["event"] == "fault") - int(late * 1e9)
    ends = [e for e in events if e["event"] == "dma_end" and e["svc"] == "importer-1" and e["status"] == "ok"
            and base + 250_000_000 <= e["last_access_ns"] <= base + 350_000_000]
    assert ends, "importer-1 finished a job near 0.3 s"
    # Its last chunk was checked LANE_COST_NS["dma"] before that access.
    return (ends[0]["last_access_ns"] - LANE_COST_NS["dma"] // 2 - base) / 1e9, ends[0]


def test_a_device_paused_between_a_chunks_check_and_its_access_holds_its_loss_until_it_resumes() -> None:
    at, end = _between_check_and_access()
    events, report = _run(at)
    paused = next(e["t_ns"] for e in events if e["event"] == "fault" and e["step"] == "stop")
    resumed = next(e["t_ns"] for e in events if e["event"] == "fault" and e["step"] == "cont")
    job = next(e for e in events if e["event"] == "dma_end" and e.get("job") == end["job"] and e["svc"] == "importer-1")
    assert job["t_ns"] == resumed, "the job was under way all through the pause"
    # On resume either the checked access runs first (last_access_ns at `resumed`) or the lease
    # check aborts every job first (the access finds its job gone): a choice of the scheduler.
    lapsed = [e for e in events if e["event"] == "lease_lapsed" and e["importer"] == "importer-1"]
    assert lapsed and paused < lapsed[0]["t_ns"] < resumed, "its lease lapsed while it was paused"
    lost = [e for e in events if e["event"] == "importer_lost" and e["importer"] == "importer-1"]
    assert lost and lost[0]["t_ns"] >= resumed, "lost only after the device resumed and stopped: its access count held it"
    stopped = [e for e in events if e["event"] == "stop_confirmed" and e["importer"] == "importer-1"]
    assert not stopped or stopped[0]["t_ns"] >= resumed
    assert report["races"]["total"] == 0, report["races"]
    assert report["corruption"]["jobs"] == 0


def test_a_device_killed_between_a_chunks_check_and_its_access_is_lost_when_its_process_is_gone() -> None:
    at, _ = _between_check_and_access()
    events, report = _run(at, fault="kill:target=importer-1")
    killed = next(e["t_ns"] for e in events if e["event"] == "fault" and e["step"] == "kill")
    (stopped,) = [e for e in events if e["event"] == "stop_confirmed" and e["importer"] == "importer-1"]
    assert stopped["how"] == "process gone", "its access count stays 1: a dead device cannot lower it"
    assert stopped["t_ns"] > killed
    lost = [e for e in events if e["event"] == "importer_lost" and e["importer"] == "importer-1"]
    assert [e["reason"] for e in lost] == ["lease expired"] and lost[0]["t_ns"] == stopped["t_ns"]
    assert report["races"]["total"] == 0


def test_process_gone_tells_a_live_a_stopped_and_a_dead_child_apart() -> None:
    import os
    import signal
    import subprocess
    import sys

    from runtime.watchdog import process_gone

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not process_gone(child.pid)
        child.send_signal(signal.SIGSTOP)
        assert not process_gone(child.pid), "a paused process may still touch memory when it resumes"
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)   # dead, and left unreaped
        assert process_gone(child.pid), "a zombie is gone"
    finally:
        child.kill()
        child.wait(timeout=10)
    assert process_gone(child.pid)


# ---------------------------------------------------------------- the search pauses importers too

def _explore_json(out: Path) -> dict:
    return json.loads((out / "explore.json").read_text())


def test_sim_options_pauses_is_written_only_when_on_and_checked() -> None:
    assert "pauses" not in SimOptions().as_dict()
    assert SimOptions(pauses=True).as_dict()["pauses"] is True
    assert SimOptions.from_mapping({"pauses": True}, "x").pause_ns(500.0) == PAUSE_LEASES * 500_000_000
    assert SimOptions().pause_ns(500.0) is None
    with pytest.raises(SimOptionError, match="pauses must be true or false"):
        SimOptions(pauses="yes")  # type: ignore[arg-type]


# Stalls and pauses both: a stall past the fence timeout (20 ms, under the heartbeat period) and
# a pause in the reset grace meet the reset path, a pause alone the lease path.
SEARCH = ("explore", "--strategy", "resv-fence", "--search", "exhaustive", "--bound", "1", "--fence-timeout-ms", "20",
          "--no-shrink", "--quiet")


def test_an_importer_paused_mid_access_by_the_search_races_nowhere(tmp_path: Path) -> None:
    r = cli(*SEARCH, "--pauses", "--out", str(tmp_path / "x"), timeout=300)
    assert r.returncode == 0, r.stderr
    done = _explore_json(tmp_path / "x")
    assert done["exhausted"] and done["races"] == {}, done
    assert done["config"]["sim"]["pauses"] is True and done["devices"].endswith(PAUSES)
    assert f"timing: {DEVICES[True]}; {PAUSES}" in r.stdout


def test_the_search_with_pauses_catches_an_exporter_that_loses_an_importer_at_the_lapse(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """main 593a56a's exporter (it lost an importer when its lease lapsed or its reset grace ran
    out, without waiting for its device's accesses under way), made here by reading every access
    count as 0: the pause the search chose is the witness's one fault; without pauses the same
    search finds nothing."""
    from deploy import cli as deploy_cli
    from runtime.fences import FenceTable

    monkeypatch.setattr(FenceTable, "in_access", lambda self, slot: 0)
    monkeypatch.setenv("DMABUF_EMU_SNAPSHOTS", "off")    # in this process, where the patch is
    assert deploy_cli.main([*SEARCH[:-2], "--quiet", "--pauses", "--out", str(tmp_path / "p")]) == 0
    caught = _explore_json(tmp_path / "p")
    assert set(caught["races"]) == {"lost_write"} and caught["first_race_schedule"] <= 100, caught
    witness = (tmp_path / "p" / "witness.md").read_text()
    assert "`process:pause:importer-1`" in witness
    assert deploy_cli.main([*SEARCH, "--out", str(tmp_path / "q")]) == 0
    punctual = _explore_json(tmp_path / "q")
    assert punctual["exhausted"] and punctual["races"] == {}
    capsys.readouterr()
