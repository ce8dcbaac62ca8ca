"""The simulator's own promises: one source of nondeterminism, byte-identical replays, clear
refusals of bad schedules, and the real services' behaviour under process faults on virtual time.

Races are the checker's business: tests/test_sim_races.py asks it about simulated runs."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import cli
from deploy.options import RunParams
from runtime import faults as F
from runtime.rng import Rng
from sim.run import simulate, simulate_in_memory
from sim.schedule import read_schedule
from sim.scheduler import (CHANCE, CHOICE, RANDOM, STEP, Chooser, DecisionLog, ListGuide,
                           ScheduleDiverged, Scheduler)
from sim.world import World
from tests.helpers import ROOT

SMALL = dict(strategy="move-notify", importers=2, buffers=4, duration=0.3, seed=3)


def small(**kw) -> RunParams:
    return RunParams(**{**SMALL, **kw})


def sha(lines: list[bytes]) -> str:
    return hashlib.sha256(b"".join(lines)).hexdigest()


# ---------------------------------------------------------------------------------- one clock

CLOCK_READS = ("monotonic", "monotonic_ns", "time", "time_ns", "perf_counter", "perf_counter_ns", "sleep")


def _calls(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "time" and node.attr in CLOCK_READS:
                found.append((node.lineno, f"time.{node.attr}"))
            if node.value.id in ("random", "secrets", "uuid") and node.attr not in ("Random",):
                found.append((node.lineno, f"{node.value.id}.{node.attr}"))
            if node.value.id == "os" and node.attr in ("getpid", "urandom"):
                found.append((node.lineno, f"os.{node.attr}"))
    return found


# Where a clock, a pid or entropy may still be read directly, and why.
ALLOWED = {
    "runtime/loop.py": "the real loop's clock",
    "runtime/eventlog.py": "the default clock and pid of writers without a loop (deploy's own events)",
    "runtime/env.py": "the real ServiceEnv's pid",
    "runtime/security.py": "CURVE keys and the credentials files of real runs",
    "exporter_svc/service.py": "load_credentials: the secret of a real exporter started by hand",
    "runtime/watchdog.py": "the launcher's identity (pid, start time): real processes only, never armed in sim",
}


# sim/ reads no clock but perf_counter (its own work's seconds), except for these, none of which a
# simulated run sees:
SIM_ALLOWED = {
    ("sim/executor.py", "os.getpid"): "the search's pid, for its local workers' parent-death signal",
    ("sim/explore.py", "os.getpid"): "a worker's pid, to sum the states each worker's --state-cache holds",
}


def test_the_services_read_no_clock_and_no_entropy_of_their_own() -> None:
    """Every clock read and random draw of the shells and the halves goes through the loop and
    runtime/rng.py, so that the simulator's virtual clock and scheduler see all of them."""
    bad = []
    for pkg in ("protocol", "runtime", "exporter_svc", "importer_svc", "sim"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ALLOWED or rel.startswith("sim/"):
                continue
            bad += [f"{rel}:{line}: {what}" for line, what in _calls(path)]
    assert not bad, "clock or entropy outside the loop and runtime/rng.py:\n" + "\n".join(bad)
    sim_calls = [f"sim/{p.name}:{line}: {what}" for p in sorted((ROOT / "sim").glob("*.py"))
                 for line, what in _calls(p) if what != "time.perf_counter"
                 and (f"sim/{p.name}", what) not in SIM_ALLOWED]
    assert not sim_calls, sim_calls


# ---------------------------------------------------------------------------------- the scheduler

def test_a_simulated_generator_draws_what_a_real_one_draws_and_logs_each_draw() -> None:
    """Seeding semantics: without a guide the simulated draws are the real generator's."""
    s = Scheduler(7)
    sim, real = s.rng("workload:1:0", "7:1"), Rng("7:1")
    got = [(sim.choice([3, 5, 9]), sim.chance(0.3), sim.uniform(0.5, 1.5), sim.random()) for _ in range(50)]
    want = [(real.choice([3, 5, 9]), real.chance(0.3), real.uniform(0.5, 1.5), real.random()) for _ in range(50)]
    assert got == want
    kinds = [e[0] for e in s.log.entries]
    assert kinds == [CHOICE, CHANCE, RANDOM, RANDOM] * 50 and s.counts.made == 200
    assert s.streams == ["workload:1:0"]


def test_a_stream_asked_for_again_is_a_fresh_generator_under_a_name_of_its_own() -> None:
    s = Scheduler(1)
    a, b = s.rng("msgfault:0:importer-1", "1:0:importer-1"), s.rng("msgfault:0:importer-1", "1:0:importer-1")
    assert a.random() == b.random()                 # a restarted importer draws its sequence again
    assert s.streams == ["msgfault:0:importer-1", "msgfault:0:importer-1#2"]


class _PickLast(Chooser):
    def step(self, index: int, options) -> int:
        return len(options) - 1


def test_a_guide_is_asked_first_and_the_chooser_makes_the_rest() -> None:
    recorded = Scheduler(5)
    r = recorded.rng("x", "5:x")
    first = [recorded.step(["a", "b", "c"]), r.chance(0.5), r.random(), r.choice("abcd")]
    guide = ListGuide(recorded.log.entries[:2], recorded.streams, strict=False)
    replay = Scheduler(99, chooser=_PickLast(99), guide=guide)
    rr = replay.rng("x", "5:x")
    again = [replay.step(["a", "b", "c"]), rr.chance(0.5), rr.random(), rr.choice("abcd")]
    assert again[:2] == first[:2], "the guide's two decisions"
    assert again[2:] == first[2:], "then the defaults: the streams stayed aligned"
    assert (replay.counts.from_guide, replay.counts.made) == (2, 2)
    assert replay.step(["a", "b"]) == 1, "past the log: the chooser (last)"


def test_a_strict_replay_that_meets_another_decision_says_where() -> None:
    s = Scheduler(1)
    s.rng("net:exporter", "1:net:exporter").random()
    other = Scheduler(1, guide=ListGuide(s.log.entries, s.streams))
    with pytest.raises(ScheduleDiverged, match=r"decision 0: the run asked for a step among 2, but the schedule has a random draw"):
        other.step(["exporter", "importer-1"])
    with pytest.raises(ScheduleDiverged, match="the schedule has only 0 decisions"):
        Scheduler(1, guide=ListGuide([], [])).step(["a", "b"])


def test_the_log_can_stream_to_a_file_and_keep_nothing(tmp_path: Path) -> None:
    with open(tmp_path / "log", "wb") as f:
        log = DecisionLog(keep=False, stream_to=f)
        streamed = Scheduler(3, log=log)
        for _ in range(3):
            streamed.step(["a", "b"])
    kept = Scheduler(3)
    for _ in range(3):
        kept.step(["a", "b"])
    assert log.entries is None and len(log) == 3
    assert json.loads("[" + (tmp_path / "log").read_text() + "]") == [list(e) for e in kept.log.entries]


# ---------------------------------------------------------------------------------- the world

def test_the_world_jumps_to_the_next_timer_and_asks_only_between_two_enabled_actors() -> None:
    s = Scheduler(2)
    w = World(s)
    a, b = w.loop(w.process("a", 1)), w.loop(w.process("b", 2))
    seen: list[tuple[str, int]] = []
    a.call_at(w.t0 + 5_000, lambda: seen.append(("a", w.now)))
    b.call_at(w.t0 + 5_000, lambda: seen.append(("b", w.now)))
    b.call_at(w.t0 + 9_000, lambda: seen.append(("b", w.now)))
    w.run()
    assert sorted(seen[:2]) == [("a", w.t0 + 5_000), ("b", w.t0 + 5_000)] and seen[2] == ("b", w.t0 + 9_000)
    assert s.log.entries == [(STEP, 2, s.log.entries[0][2])], "one choice: the tie at t0 + 5 us"


def test_a_paused_process_runs_its_overdue_timers_when_resumed_and_a_killed_one_nothing() -> None:
    w = World(Scheduler(1))
    pa, pb = w.process("a", 1), w.process("b", 2)
    a, b = w.loop(pa), w.loop(pb)
    seen: list[tuple[str, int]] = []
    a.call_at(w.t0 + 1_000, lambda: seen.append(("a", w.now)))
    b.call_at(w.t0 + 1_000, lambda: seen.append(("b", w.now)))
    w.pause(pa)
    w.kill(pb)
    resume = w.loop(w.process("driver", 3))
    resume.call_at(w.t0 + 7_000, lambda: w.resume(pa))
    w.run()
    assert seen == [("a", w.t0 + 7_000)], "late, never early; the killed one never"


# ---------------------------------------------------------------------------------- determinism

def test_the_same_options_give_the_same_history_in_memory_and_on_disk(tmp_path: Path) -> None:
    p = small(faults=(F.parse_cli("dup:p=0.2"), F.parse_cli("reorder:p=0.2,target=exporter")))
    mem = simulate_in_memory(p)
    disk = simulate(p, tmp_path / "run")
    assert mem.history_sha256 == disk.history_sha256
    assert (tmp_path / "run" / "history.jsonl").read_bytes() == b"".join(mem.history)
    assert mem.outcome.scheduler.log.entries == [tuple(e) for e in read_schedule(tmp_path / "run").decisions]
    assert not mem.outcome.crashes and mem.outcome.error is None


HOOK = ["sim", "--strategy", "move-notify", "--importers", "2", "--duration", "0.5", "--seed", "7"]


def test_the_hook_command_twice_in_processes_with_other_hash_seeds_writes_the_same_bytes(tmp_path: Path) -> None:
    """Two processes, two PYTHONHASHSEEDs (set iteration order over str and bytes changes),
    other directories: the same history.jsonl, byte for byte."""
    exe = Path(sys.executable).with_name("dmabuf-emu")
    for n, hashseed in ((1, "1"), (2, "4242")):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        r = subprocess.run([str(exe), *HOOK, "--out", str(tmp_path / f"run{n}" / "deeper")], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    a, b = (tmp_path / "run1" / "deeper" / "history.jsonl"), (tmp_path / "run2" / "deeper" / "history.jsonl")
    assert a.read_bytes() == b.read_bytes()
    report = json.loads((tmp_path / "run1" / "deeper" / "report.json").read_text())
    assert report["mode"] == "sim" and report["sim_speedup"] > 0 and report["races"]["total"] > 0
    assert report["sim"]["history_sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()


def test_the_determinism_check_catches_a_hidden_source_of_randomness(tmp_path: Path, monkeypatch, capsys) -> None:
    """--check-determinism can fail: a think time drawn from the global generator (what a
    careless change to the workload would do) makes the two runs differ."""
    import random

    from importer_svc.workload import Workload
    args = ["sim", "--strategy", "pin", "--importers", "1", "--buffers", "2", "--duration", "0.2", "--seed", "1",
            "--check-determinism", "--quiet", "--out"]
    assert cli.main([*args, str(tmp_path / "ok")]) == 0
    assert "the same history twice" in capsys.readouterr().out
    monkeypatch.setattr(Workload, "think_s", lambda self: random.uniform(0, 2 * self.config.think_ms) / 1000)
    assert cli.main([*args, str(tmp_path / "bad")]) == 4
    err = capsys.readouterr().err
    assert "determinism check FAILED" in err and "first difference at line" in err


# ---------------------------------------------------------------------------------- replay

def test_replay_of_a_run_directory_is_byte_identical_and_says_both_hashes(tmp_path: Path, capsys) -> None:
    assert cli.main(["sim", "--strategy", "resv-fence", "--importers", "2", "--duration", "0.3", "--seed", "5",
                     "--fault", "drop:p=0.05", "--quiet", "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert cli.main(["replay", str(tmp_path / "a"), "--quiet", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    recorded = hashlib.sha256((tmp_path / "a" / "history.jsonl").read_bytes()).hexdigest()
    assert f"recorded history sha256 {recorded}" in out and f"replayed history sha256 {recorded}" in out
    assert "identical" in out and " 0 made by the scheduler" in out
    assert (tmp_path / "b" / "history.jsonl").read_bytes() == (tmp_path / "a" / "history.jsonl").read_bytes()


def test_a_schedule_with_one_decision_changed_gives_another_history(tmp_path: Path, capsys) -> None:
    simulate(small(), tmp_path / "a")
    data = json.loads((tmp_path / "a" / "schedule.json").read_text())
    i = next(i for i, e in enumerate(data["decisions"]) if e[0] == RANDOM and data["streams"][e[1]].startswith("workload"))
    data["decisions"][i][2] = 0.999 if data["decisions"][i][2] < 0.5 else 0.001
    (tmp_path / "changed.json").write_text(json.dumps(data))
    assert cli.main(["replay", str(tmp_path / "changed.json"), "--force", "--quiet", "--out", str(tmp_path / "b")]) == 1
    out = capsys.readouterr().out
    assert "DIFFERENT" in out
    assert (tmp_path / "b" / "history.jsonl").read_bytes() != (tmp_path / "a" / "history.jsonl").read_bytes()


def _schedule_dir(tmp_path: Path) -> Path:
    d = tmp_path / "sched"
    if not (d / "schedule.json").exists():
        simulate(small(duration=0.1, importers=1), d)
    return d


def _bad(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("case, expected", [
    ("truncated", "not valid JSON, corrupt or truncated"),
    ("garbage", "not valid JSON"),
    ("not-a-schedule", "not a dmabuf-emu schedule"),
    ("bad-entry", "decision 3"),
    ("another-strategy", "made for strategy pin but its options say move-notify"),
    ("bad-option", "options: key 'importers' must be an integer from 1 to 64, got 0"),
    ("count", "decisions where decision_count says"),
    ("other-sources", "was made by other sources"),
])
def test_a_bad_schedule_is_one_line_exit_2_and_nothing_written(tmp_path: Path, capsys, case: str, expected: str) -> None:
    good = (_schedule_dir(tmp_path) / "schedule.json").read_text()
    data = json.loads(good)
    if case == "truncated":
        text = good[: len(good) // 2]
    elif case == "garbage":
        text = "\x00\x01 not json"
    elif case == "not-a-schedule":
        text = json.dumps({"format": "something-else"})
    else:
        if case == "bad-entry":
            data["decisions"][3] = ["s", 1, 5]
        elif case == "another-strategy":
            data["strategy"] = "pin"
        elif case == "bad-option":
            data["options"]["importers"] = 0
        elif case == "count":
            data["decisions"].pop()
        elif case == "other-sources":
            data["sources_sha256"] = "0" * 64
        text = json.dumps(data)
    out = tmp_path / "never"
    code = cli.main(["replay", str(_bad(tmp_path, f"{case}.json", text)), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_a_run_directory_whose_history_was_changed_is_refused(tmp_path: Path, capsys) -> None:
    d = _schedule_dir(tmp_path)
    with open(d / "history.jsonl", "ab") as f:
        f.write(b'{"t_ns": 1, "svc": "x", "pid": 1, "event": "extra"}\n')
    assert cli.main(["replay", str(d), "--out", str(tmp_path / "never")]) == 2
    assert "not the history" in capsys.readouterr().err and not (tmp_path / "never").exists()


def test_an_out_of_range_option_for_sim_is_one_line_exit_2_and_nothing_written(tmp_path: Path, capsys) -> None:
    assert cli.main(["sim", "--importers", "0", "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert "--importers must be an integer from 1 to 64, got 0" in err and not (tmp_path / "never").exists()


# ---------------------------------------------------------------------------------- processes

def _events(result) -> list[dict]:
    return [json.loads(line) for line in result.history]


def test_kill_and_restart_of_an_importer_follow_the_process_fault_semantics() -> None:
    p = RunParams(strategy="resv-fence", importers=2, buffers=4, duration=1.0, seed=2,
                  faults=(F.parse_cli("restart:target=importer-2,at=0.3,for=0.2"),))
    r = simulate_in_memory(p)
    ev = _events(r)
    died = [e for e in ev if e["event"] == "service_died"]
    assert [(e["name"], e["pid"], e["how"]) for e in died] == [("importer-2", 1002, "killed by fault")]
    assert died[0]["t_ns"] - r.outcome.world.t0 > 0.3e9
    restarted = [e for e in ev if e["event"] == "service_restarted"]
    assert [(e["name"], e["pid"], e["incarnation"]) for e in restarted] == [("importer-2", 1102, 1)]
    starts = [e for e in ev if e["event"] == "service_start" and e["svc"] == "importer-2"]
    assert [e["pid"] for e in starts] == [1002, 1102]
    lost = [e for e in ev if e["event"] == "importer_lost"]
    assert lost and lost[0]["reason"] == "restarted", "the new incarnation's hello replaced the dead one"
    assert r.report["races"]["total"] == 0
    second = [e for e in ev if e["svc"] == "importer-2" and e["pid"] == 1102 and e["event"] == "dma_begin"]
    assert second, "the restarted importer was started and runs jobs"


def test_a_paused_importer_wakes_late_and_its_lease_says_so() -> None:
    p = RunParams(strategy="resv-fence", importers=2, buffers=4, duration=1.5, seed=2,
                  faults=(F.parse_cli("pause:target=importer-1,at=0.2,for=0.8"),))
    r = simulate_in_memory(p)
    ev = _events(r)
    assert any(e["event"] == "woke" and e["svc"] == "importer-1" for e in ev)
    assert any(e["event"] == "importer_lost" and e["importer"] == "importer-1" for e in ev), \
        "silent for longer than its lease: the exporter revoked it"
    assert r.report["races"]["total"] == 0


def test_a_killed_exporter_makes_the_importers_give_up_after_two_leases() -> None:
    p = RunParams(strategy="pin", importers=2, buffers=4, duration=1.5, seed=1, lease_ms=200.0,
                  faults=(F.parse_cli("kill:target=exporter,at=0.2"),))
    r = simulate_in_memory(p)
    ev = _events(r)
    lost = [e for e in ev if e["event"] == "exporter_lost"]
    assert {e["svc"] for e in lost} == {"importer-1", "importer-2"}
    died = {e["name"]: e["how"] for e in ev if e["event"] == "service_died"}
    assert died == {"exporter": "killed by fault", "importer-1": "exited during the run", "importer-2": "exited during the run"}
    assert r.outcome.logs["importer-1"][0].startswith("importer-1: the exporter has not answered for")
