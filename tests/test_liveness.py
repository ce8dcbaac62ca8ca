"""Liveness: the checker's `stuck` finding (checker/liveness.py) and the load-time warning about a
state a move may never leave (protocol/liveness_check.py), on hand-written histories, simulated
runs, explore and a real run of docs/examples/stuck_notify.py."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from checker.findings import CATCHES, FINDING_KINDS, STUCK
from tests.checker_helpers import H, simulated_lines, write_events_dir
from tests.helpers import ROOT, cli

STUCK_EXAMPLE = ROOT / "docs" / "examples" / "stuck_notify.py"
S = 1_000_000_000  # one second in ns


def stuck_of(h: H, tmp_path: Path) -> dict[str, Any]:
    return h.judge(tmp_path)["findings"][STUCK]


def run_of(h: H, t_start: int = 1 * S, t_stop: int | None = 20 * S) -> H:
    """Deploy's events around `h`: run_start, workload_start and (if t_stop) workload_stop."""
    h.ev(0, "deploy", "run_start", run_id="r", strategy="x", params={})
    h.ev(t_start, "deploy", "workload_start")
    if t_stop is not None:
        h.ev(t_stop, "deploy", "workload_stop", errors=[], died=[])
    return h


def begun(h: H, t: int = 2 * S, buffer: int = 0, move: int = 1) -> H:
    return h.created(1, buffer=buffer).move(buffer, 1, move, begin=t)


# ---------------------------------------------------------------------------------- the finding

def test_stuck_is_a_finding_kind_and_a_catch() -> None:
    assert STUCK in FINDING_KINDS and STUCK in CATCHES


def test_a_move_still_open_when_the_drain_ended_is_stuck(tmp_path: Path) -> None:
    st = stuck_of(run_of(begun(H())), tmp_path)
    assert st["judged"] and st["count"] == 1 and st["by_what"]["move"] == 1
    assert st["summary"] == "1 move never completed"
    item = st["items"][0]
    assert (item["what"], item["buffer"], item["move"], item["ended"]) == ("move", 0, 1, None)
    assert [e["event"] for e in item["events"]] == ["move_begin", "workload_stop"]
    assert "had not completed when the drain ended" in item["sentence"] and "it never ended" in item["sentence"]


def test_a_move_that_completed_in_the_drain_is_not_stuck(tmp_path: Path) -> None:
    h = run_of(H().created(1).move(0, 1, 1, begin=2 * S, copy_begin=3 * S, copy_end=4 * S, free=4 * S, end=19 * S))
    st = stuck_of(h, tmp_path)
    assert st["judged"] and st["count"] == 0


def test_a_move_that_ended_only_in_the_shutdown_is_stuck_and_says_so(tmp_path: Path) -> None:
    h = run_of(H().created(1).move(0, 1, 1, begin=2 * S, end=25 * S))
    item = stuck_of(h, tmp_path)["items"][0]
    assert item["ended"]["event"] == "move_end"
    assert "it ended only at" in item["sentence"]


@pytest.mark.parametrize("cut", ["no workload_stop", "interrupted", "exporter died"])
def test_histories_cut_short_are_not_judged(tmp_path: Path, cut: str) -> None:
    h = begun(H())
    if cut == "no workload_stop":
        run_of(h, t_stop=None)
    else:
        run_of(h)
        if cut == "interrupted":
            h.ev(3 * S, "deploy", "run_interrupted", signal="SIGINT", at="x", during="workload")
        else:
            h.ev(3 * S, "deploy", "service_died", name="exporter", how="killed by fault")
    st = stuck_of(h, tmp_path)
    assert st["count"] == 0 and not st["judged"] and st["why_not"]


def test_an_importer_death_excuses_what_it_left_open(tmp_path: Path) -> None:
    """A SIGKILLed importer: its deferred map and the move open at its death are explained by it."""
    h = begun(H())
    h.ev(3 * S, "exporter", "map_deferred", id=7, importer="importer-2", buffer=0, attachment=2, move=1)
    h.ev(4 * S, "deploy", "service_died", name="importer-2", how="killed by fault")
    st = stuck_of(run_of(h), tmp_path)
    assert st["judged"] and st["count"] == 0
    assert st["excused"] == {"deferred map: importer-2 died": 1, "move: importer-2 died": 1}


def test_a_restart_excuses_too_but_not_what_began_after_it(tmp_path: Path) -> None:
    h = H().created(1)
    h.ev(1, "importer-1", "service_start", index=1, strategy="x", endpoint="e", granted=[0])
    h.ev(3 * S, "exporter", "map_deferred", id=7, importer="importer-1", buffer=0, attachment=1, move=None)
    h.ev(4 * S, "importer-1", "service_start", index=1, strategy="x", endpoint="e", granted=[0])
    h.ev(5 * S, "exporter", "map_deferred", id=8, importer="importer-2", buffer=0, attachment=2, move=None)
    st = stuck_of(run_of(h), tmp_path)
    assert st["excused"] == {"deferred map: importer-1 restarted": 1}
    assert [(i["what"], i["importer"], i["id"]) for i in st["items"]] == [("deferred_map", "importer-2", 8)]
    assert "deferred map never served" in st["summary"]


@pytest.mark.parametrize("closer", ["map_served", "refused", "attachment_revoked", "none"])
def test_a_deferred_map(tmp_path: Path, closer: str) -> None:
    h = H().created(1)
    h.ev(3 * S, "exporter", "map_deferred", id=7, importer="importer-1", buffer=0, attachment=1, move=None)
    if closer == "map_served":
        h.ev(4 * S, "exporter", "map_served", id=7, importer="importer-1", buffer=0, attachment=1, heap="vram",
             offset=0, size=1, gen=1, moved=False, deferred_ns=S)
    elif closer == "refused":
        h.ev(4 * S, "exporter", "op_answered", op="map", id=7, peer="importer-1", ok=False, code="no_device")
    elif closer == "attachment_revoked":
        h.ev(4 * S, "exporter", "attachment_revoked", importer="importer-1", buffer=0, attachment=1,
             reason="lease expired", was_mapped=False)
    st = stuck_of(run_of(h), tmp_path)
    assert st["count"] == (1 if closer == "none" else 0)


def fence_wait(h: H, seq: int = 5) -> H:
    return h.ev(3 * S, "exporter", "fence_wait_begin", buffer=0, move=1, usage="BOOKKEEP",
                fences=[{"importer": "importer-1", "slot": 1, "seq": seq, "usage": "WRITE"}])


@pytest.mark.parametrize("closer", ["signal", "later signal", "forced", "wait ended", "earlier signal", "none"])
def test_an_awaited_fence(tmp_path: Path, closer: str) -> None:
    h = fence_wait(begun(H()))
    if closer in ("signal", "later signal", "earlier signal"):
        seq = {"signal": 5, "later signal": 6, "earlier signal": 4}[closer]
        h.ev(4 * S, "importer-1", "fence_signal", buffer=0, usage="WRITE", seq=seq, job=1)
    elif closer == "forced":
        h.ev(4 * S, "exporter", "fence_signal", buffer=0, usage="WRITE", seq=5, move=1, importer="importer-1",
             error="timeout", forced=True)
    elif closer == "wait ended":
        h.ev(4 * S, "exporter", "fence_wait_end", buffer=0, move=1, usage="BOOKKEEP", waited_ns=S, forced=[])
    st = stuck_of(run_of(h), tmp_path)
    fences = [i for i in st["items"] if i["what"] == "fence"]
    assert len(fences) == (1 if closer in ("none", "earlier signal") else 0)
    assert st["by_what"]["move"] == 1   # the move itself never ended in any of them
    if fences:
        assert fences[0]["awaited_by"] == "move 1" and "neither signalled nor forced" in fences[0]["sentence"]


def test_an_unmap_wait_that_never_ended(tmp_path: Path) -> None:
    h = H().created(1)
    h.ev(3 * S, "exporter", "unmap_wait_begin", buffer=0, revoke=4, importers=["importer-2"], attachments=[2],
         bound_ms=100)
    st = stuck_of(run_of(h), tmp_path)
    assert st["summary"] == "1 unmap wait never ended"
    h.ev(5 * S, "exporter", "unmap_wait_end", buffer=0, revoke=4, waited_ns=2 * S, late=[])
    assert stuck_of(h, tmp_path)["count"] == 0


def test_a_queued_move_never_begun_nor_cancelled(tmp_path: Path) -> None:
    h = H().created(1)
    h.ev(3 * S, "exporter", "move_queued", buffer=0, from_gen=1, reason="mapped", to_heap="sys")
    assert stuck_of(run_of(h), tmp_path)["by_what"]["queued_move"] == 1
    h.ev(4 * S, "exporter", "move_cancelled", buffer=0, from_gen=1)
    assert stuck_of(h, tmp_path)["count"] == 0


def test_python_m_checker_fails_on_it_and_says_it(tmp_path: Path) -> None:
    from checker.__main__ import main
    write_events_dir(run_of(begun(H())).sorted_events(), tmp_path / "events")
    assert main([str(tmp_path)]) == 0
    assert main([str(tmp_path), "--fail-on-finding"]) == 1
    md = (tmp_path / "report.md").read_text()
    assert "**Stuck: 1 move never completed**" in md and "### Stuck" in md


def test_a_simulated_run_of_a_shipped_strategy_is_judged_and_not_stuck() -> None:
    from checker.oracle import Oracle
    oracle = Oracle()
    oracle.run(simulated_lines(1))
    st = oracle.report()["findings"][STUCK]
    assert st["judged"] and st["count"] == 0, st


# ---------------------------------------------------------------------------------- the warning at load

def test_stuck_notify_warns_and_no_shipped_strategy_or_mutant_does() -> None:
    from protocol import strategies
    from protocol.liveness_check import strategy_warnings
    from protocol.strategies import mutants
    (line,) = strategy_warnings(str(STUCK_EXAMPLE))
    assert "exporter state notifying" in line and "(idle, move_wanted)" in line
    assert "add a (notifying, notify_timeout) row" in line
    for name in [*strategies.STRATEGIES, *mutants.names()] + [str(p) for p in (ROOT / "docs/examples").glob("*.py")
                                                               if p != STUCK_EXAMPLE]:
        assert strategy_warnings(name) == [], name


def variant(tmp_path: Path, rows: str, name: str) -> str:
    path = tmp_path / f"{name.replace('-', '_')}.py"
    added = textwrap.indent(textwrap.dedent(rows), " " * 8)
    path.write_text(STUCK_EXAMPLE.read_text().replace('NAME = "stuck-notify"', f'NAME = "{name}"')
                    .replace("        # Missing:", added + "        # Missing:"))
    return str(path)


def test_the_rule_is_conservative(tmp_path: Path) -> None:
    """Either missing row put back, the state has a way out the move can count on: no warning."""
    from protocol.liveness_check import strategy_warnings
    timeout = variant(tmp_path, """\
        (MoveState.NOTIFYING, MoveEvent.NOTIFY_TIMEOUT): (
            Rule(Guard.ALWAYS, MoveState.COPYING, (Step.NOTIFY_TIMED_OUT, Step.GIVE_UP_NOTIFY, Step.COPY)),),
        """, "with-timeout")
    answers = variant(tmp_path, """\
        (MoveState.NOTIFYING, MoveEvent.NOTIFY_RETURNED): (
            Rule(Guard.AWAITED, SAME, (Step.ANSWERED,)), Rule(Guard.ALWAYS, SAME, ())),
        """, "with-answers")
    assert strategy_warnings(timeout) == [] and strategy_warnings(answers) == []


def test_strategies_check_prints_the_warning_and_still_succeeds() -> None:
    r = cli("strategies", "--check", str(STUCK_EXAMPLE))
    assert r.returncode == 0, r.stderr
    first, warning = r.stdout.splitlines()
    assert first.endswith("tables checked, ok (1 warning)")
    assert warning.startswith("warning: stuck-notify: exporter state notifying")


# ---------------------------------------------------------------------------------- sim, explore, run

def test_sim_reports_the_stuck_moves_and_fails_with_fail_on_finding(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    r = cli("sim", "--strategy", str(STUCK_EXAMPLE), "--importers", "2", "--duration", "1", "--out", str(out),
            "--fail-on-finding")
    assert r.returncode == 1, r.stderr
    assert "warning: stuck-notify: exporter state notifying" in r.stderr
    assert "no races; STUCK: 2 moves never completed" in r.stdout.splitlines()[0]
    st = json.loads((out / "report.json").read_text())["findings"][STUCK]
    assert st["by_what"]["move"] == 2
    assert {(i["buffer"], i["move"]) for i in st["items"] if i["what"] == "move"} == {(0, 1), (1, 2)}
    again = cli("sim", "--strategy", str(STUCK_EXAMPLE), "--importers", "2", "--duration", "1", "--out",
                str(tmp_path / "sim2"))
    assert again.returncode == 0   # without the flag, a finding is reported, not a failure


def test_explore_catches_it_within_ten_schedules(tmp_path: Path) -> None:
    out = tmp_path / "explore"
    r = cli("explore", "--strategy", str(STUCK_EXAMPLE), "--schedules", "10", "--out", str(out), timeout=120)
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "explore.json").read_text())
    assert data["races"].get(STUCK) and data["first_race_schedule"] <= 10, data
    witness = (out / "witness.md").read_text()
    assert witness.startswith("# Stuck") and "workload_stop" in witness


def test_a_search_counts_a_stuck_finding_as_a_catch() -> None:
    from sim.search.trial import judge
    lines = [json.dumps(e).encode() for e in run_of(begun(H())).sorted_events()]
    races, _ = judge(lines)
    assert [(r.kind, r.buffer, r.svc, r.job) for r in races] == [(STUCK, 0, "exporter", "move")]


@pytest.mark.slow
def test_a_real_run_reports_it_and_fails_with_fail_on_finding(short_dir: Path) -> None:
    """The real services: the exporter never answers stop (a move in flight), the drain runs out."""
    from tests.test_e2e import assert_nothing_left
    r = cli("run", "--strategy", str(STUCK_EXAMPLE), "--importers", "2", "--duration", "1", "--out",
            str(short_dir), "--fail-on-finding", timeout=120)
    assert r.returncode == 1, r.stderr
    assert "STUCK:" in r.stdout and "moves never completed" in r.stdout
    st = json.loads((short_dir / "report.json").read_text())["findings"][STUCK]
    assert st["judged"] and st["by_what"]["move"] >= 1
    assert_nothing_left(short_dir)


# ---------------------------------------------------------------------------------- no cry wolf, and a hang

@pytest.mark.slow
def test_no_shipped_strategy_is_stuck_under_any_shipped_plan_in_the_simulator() -> None:
    """The campaign `--strategies all --faults all --seeds 2 --duration 1` (real runs) in the
    simulator, seed 1: every history judged, nothing stuck (a crash's leftovers excused at most)."""
    from deploy import faultplans
    from protocol import strategies
    from runtime.runparams import RunParams
    from sim.run import simulate_in_memory
    for plan in faultplans.shipped():
        p = faultplans.load(plan)
        for name in strategies.STRATEGIES:
            policies = ("optimistic", "conservative") if name == "unmap-hint" else ("optimistic",)
            for policy in policies:
                params = p.apply(RunParams(strategy=name, duration=1.0, seed=1, hint_policy=policy))
                st = simulate_in_memory(params).report["findings"][STUCK]
                assert st["judged"] and st["count"] == 0, (plan, name, policy, st["summary"], st["items"][:1])


@pytest.mark.slow
def test_signal_after_next_map_is_stuck_only_when_no_fence_timeout_breaks_its_deadlock() -> None:
    from runtime.runparams import RunParams
    from sim.run import simulate_in_memory
    base = dict(strategy="resv-fence+signal-after-next-map", importers=2, duration=1.0, seed=1)
    broken = simulate_in_memory(RunParams(**base)).report["findings"]
    assert broken["deadlock"]["count"] and broken["deadlock"]["present_at_end"] == 0
    assert broken[STUCK]["count"] == 0
    held = simulate_in_memory(RunParams(**base, fence_timeout_ms=60_000)).report["findings"]
    assert held["deadlock"]["present_at_end"]
    assert held[STUCK]["by_what"]["move"] and held[STUCK]["by_what"]["fence"] and held[STUCK]["by_what"]["deferred_map"]
