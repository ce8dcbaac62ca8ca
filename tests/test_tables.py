"""The strategy is its tables: every table is checked at load (one clear line per gap), the
reservation lock is a fact of the table and of the code, and the halves' timers are theirs."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from protocol import machine, wire
from protocol.actions import ConfirmStopped, ExporterLost, ForceCompleteFences, LeaseExpired, Send, StartTimer, WaitFences
from protocol.exporter import (Exporter, ExporterSpec, Guard, MoveEvent, MoveState, ReservationLockError, Step,
                               compile_spec)
from protocol.exporter.moves import GUARDS, STEPS, VOCABULARY
from protocol.importer import AttEvent, AttState, IGuard, Importer, ImporterSpec, IStep
from protocol.importer import compile_spec as compile_importer
from protocol.machine import ANY, SAME, Rule, TableError
from protocol.strategies import STRATEGIES, StrategyError, move_notify_ack, resolve, resv_fence
from tests.helpers import ROOT
from tests.world import World

EXAMPLE = ROOT / "docs" / "examples" / "move_notify_ack_defer.py"


def exporter_spec(base: ExporterSpec, **rows) -> ExporterSpec:
    table = dict(base.table)
    for key, value in rows.get("drop", {}).items():
        del table[key]
    table.update(rows.get("add", {}))
    return dataclasses.replace(base, strategy="t", table=table)


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


# ---------------------------------------------------------------------------------- the checks

def test_every_built_in_table_is_complete_and_every_guard_and_step_implemented() -> None:
    for module in STRATEGIES.values():
        compiled = compile_spec(module.EXPORTER)
        for state in machine.reachable(VOCABULARY, compiled.rows):
            for event in MoveEvent:
                assert (state, event) in compiled.table, (module.NAME, state, event)
        compile_importer(module.IMPORTER)
    assert set(GUARDS) == set(Guard) and set(STEPS) == set(Step)


def test_a_guard_or_step_without_an_implementation_fails_at_import() -> None:
    with pytest.raises(TypeError, match="steps without an implementation: COPY"):
        machine.Vocabulary("exporter", MoveState, MoveEvent, Guard, Step, MoveState.IDLE, Guard.ALWAYS,
                           GUARDS, {k: v for k, v in STEPS.items() if k is not Step.COPY})


def test_a_missing_row_names_the_strategy_the_state_and_the_event() -> None:
    spec = exporter_spec(move_notify_ack.EXPORTER, drop={(MoveState.NOTIFYING, MoveEvent.MAP): None})
    with pytest.raises(TableError) as err:
        compile_spec(spec)
    text = one_line(err.value)
    assert text.startswith("t: exporter row (notifying, map): missing: state notifying is reachable")
    assert "idle --move_wanted--> notifying" in text


def test_a_misspelt_step_is_refused_with_a_suggestion() -> None:
    spec = exporter_spec(move_notify_ack.EXPORTER, add={
        (MoveState.NOTIFYING, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, ("defer_mapp",)),)})
    with pytest.raises(TableError) as err:
        compile_spec(spec)
    assert "exporter row (notifying, map): rule 1: step 'defer_mapp'" in one_line(err.value)
    assert "did you mean defer_map?" in str(err.value)


def test_an_unknown_guard_and_a_guard_of_the_other_half_are_refused() -> None:
    for guard, words in (("pinnned", "guard 'pinnned'"), (IGuard.STALE_REPLY, "(a IGuard, not a Guard)")):
        spec = exporter_spec(move_notify_ack.EXPORTER, add={
            (MoveState.IDLE, MoveEvent.MOVE_WANTED): (Rule(guard, MoveState.IDLE, (Step.REFUSE,)),
                                                      Rule(Guard.ALWAYS, MoveState.COPYING, (Step.BEGIN, Step.COPY)))})
        with pytest.raises(TableError) as err:
            compile_spec(spec)
        assert "row (idle, move_wanted): rule 1: " in one_line(err.value) and words in str(err.value)


def test_a_table_naming_a_state_that_does_not_exist_is_refused() -> None:
    for key, rules, words in (
            (("draining", MoveEvent.MAP), (Rule(Guard.ALWAYS, SAME, ()),), "state 'draining' is not one of"),
            ((AttState.IDLE, MoveEvent.MAP), (Rule(Guard.ALWAYS, SAME, ()),), "(a AttState, not a MoveState)"),
            ((MoveState.IDLE, MoveEvent.MAP), (Rule(Guard.ALWAYS, "draining", ()),), "target state 'draining'")):
        with pytest.raises(TableError) as err:
            compile_spec(exporter_spec(move_notify_ack.EXPORTER, add={key: rules}))
        assert words in one_line(err.value)


def test_a_row_that_may_match_no_rule_is_refused() -> None:
    spec = exporter_spec(move_notify_ack.EXPORTER, add={
        (MoveState.IDLE, MoveEvent.MOVE_WANTED): (Rule(Guard.PINNED, MoveState.IDLE, (Step.REFUSE,)),)})
    with pytest.raises(TableError, match=r"the last rule is guarded by pinned"):
        compile_spec(spec)


def test_importer_tables_are_checked_the_same_way() -> None:
    gone = ((AttState.DETACHING, AttEvent.DETACH_DONE), (ANY, AttEvent.DETACH_DONE))
    table = {k: v for k, v in resv_fence.IMPORTER.table.items() if k not in gone}
    with pytest.raises(TableError, match=r"importer row \(attaching, detach_done\): missing: state attaching is reachable \(the initial state\)"):
        compile_importer(ImporterSpec("t", table))
    table = {**resv_fence.IMPORTER.table,
             (AttState.MAPPING, AttEvent.MAP_OK): (Rule(IGuard.ALWAYS, AttState.ACTIVE, (IStep.PROGRAM_IOMMU, IStep.START_DMA)),)}
    with pytest.raises(TableError, match=r"does not record the reply: add IStep.LOG_MAP"):
        compile_importer(ImporterSpec("t", table))


def test_a_violation_row_is_a_transition_error_that_changes_nothing() -> None:
    w = World("pin")
    w.join_all()
    att = w.peers["importer-1"]._atts[0]
    with pytest.raises(machine.TransitionError, match="pin: importer-1 attachment .* in state idle cannot handle event dma_done"):
        w.peers["importer-1"]._dispatch(att, AttEvent.DMA_DONE, 0)
    assert att.state is AttState.IDLE


# ---------------------------------------------------------------------------------- the lock

def test_the_lock_defers_maps_in_every_state_it_is_held_in_without_a_row_saying_so() -> None:
    compiled = compile_spec(resv_fence.EXPORTER)
    # The copy is pipelined: the lock is released once it has started (COPYING serves maps).
    assert compiled.locked_states == {MoveState.NOTIFYING, MoveState.FENCE_WAIT}
    assert not any(k[0] in compiled.locked_states and k[1] is MoveEvent.MAP
                   for k in resv_fence.EXPORTER.table), "the table names no map row of its own for them"
    for state in compiled.locked_states:
        assert compiled.table[(state, MoveEvent.MAP)][0].do == (Step.DEFER_MAP,)
    assert compiled.table[(MoveState.COPYING, MoveEvent.MAP)][0].do == (Step.SERVE_MAP,)
    # A new state entered under the lock inherits the deferral, not "serve the map" (ANY rows too).
    spec = exporter_spec(resv_fence.EXPORTER, add={
        (ANY, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.SERVE_MAP,)),),
        (MoveState.FENCE_WAIT, MoveEvent.FENCES_SIGNALED): (
            Rule(Guard.ALWAYS, MoveState.QUEUED, (Step.END_FENCE_WAIT,)),),
        (MoveState.QUEUED, MoveEvent.LAST_UNMAP): (
            Rule(Guard.ALWAYS, MoveState.COPYING, (Step.PUBLISH_KERNEL_FENCE, Step.COPY, Step.SWITCH,
                                                   Step.UNLOCK, Step.SERVE_DEFERRED_MAPS)),)})
    compiled = compile_spec(spec)
    assert MoveState.QUEUED in compiled.locked_states
    assert compiled.table[(MoveState.QUEUED, MoveEvent.MAP)][0].do == (Step.DEFER_MAP,)


def test_a_row_that_serves_a_map_under_the_lock_is_refused() -> None:
    spec = exporter_spec(resv_fence.EXPORTER, add={
        (MoveState.NOTIFYING, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.SERVE_MAP,)),)})
    with pytest.raises(TableError, match=r"row \(notifying, map\): rule 1: serve_map while a move holds the reservation lock"):
        compile_spec(spec)
    spec = exporter_spec(resv_fence.EXPORTER, add={
        (MoveState.FENCE_WAIT, MoveEvent.FENCES_SIGNALED): (Rule(Guard.ALWAYS, MoveState.COPYING, (
            Step.END_FENCE_WAIT, Step.PUBLISH_KERNEL_FENCE, Step.COPY, Step.SWITCH, Step.SERVE_DEFERRED_MAPS,
            Step.UNLOCK)),)})
    with pytest.raises(TableError, match="serve_deferred_maps while a move holds"):
        compile_spec(spec)


def test_the_map_path_asserts_that_no_move_holds_the_lock() -> None:
    w = World("resv-fence")
    w.join_all()
    buf = w.exporter.state.buffers[0]
    buf.locked = True                  # what only a table bug could do: the assertion is the backstop
    w.job("importer-1", 1, 0, "read")
    with pytest.raises(ReservationLockError, match="a map would be served while move"):
        w.deliver_to_exporter()


def test_begin_outside_move_wanted_needs_a_no_room_rule_first() -> None:
    from protocol.strategies import unmap_hint
    spec = exporter_spec(unmap_hint.EXPORTER, add={
        (MoveState.QUEUED, MoveEvent.LAST_UNMAP): (Rule(Guard.ALWAYS, MoveState.COPYING, (Step.BEGIN, Step.COPY)),)})
    with pytest.raises(TableError, match=r"row \(queued, last_unmap\): rule 1 begins a move the memory manager did not admit"):
        compile_spec(spec)


# ---------------------------------------------------------------------------------- timers of the halves

def test_the_exporter_checks_leases_on_its_own_timer() -> None:
    w = World("resv-fence")
    boot = Exporter(STRATEGIES["pin"].EXPORTER, w.exporter.config).boot(0)
    assert StartTimer(("leases",), w.exporter.config.lease_s / 4) in boot
    w.join_all()
    w.tick(int(w.exporter.config.lease_s * 1e9) + 1)
    out = w.exporter.timer_fired(("leases",), w.now)
    lapsed = [a.fields["importer"] for a in out if getattr(a, "event", "") == "lease_lapsed"]
    assert lapsed == list(w.peers), "every silent importer's lease lapsed"
    assert [a.slot for a in out if isinstance(a, ConfirmStopped)] == [w.slots[n] for n in lapsed]
    assert not [a for a in out if getattr(a, "event", "") == "importer_lost"], "not lost before its device stopped"
    assert isinstance(out[-1], StartTimer) and out[-1].key == ("leases",), "and checks again a lease/4 later"
    w._apply("exporter", out)   # the shell: no device in access, each stop confirmed at once
    assert [f["reason"] for s, e, f in w.events if e == "importer_lost"] == ["lease expired"] * len(lapsed)


def test_the_fence_timeout_is_a_timer_of_the_exporter_and_the_shell_reports_only_signals() -> None:
    from tests.test_strategies import moving_under_a_write
    w, buffer = moving_under_a_write("resv-fence")
    move = next(iter(w.exporter.state.moves))
    assert ("fence", move) in w.timers, "the fence wait started the half's timer"
    wait, _ = w.fence_waits[move]
    assert wait == WaitFences(move, buffer, wait.usage)
    w._apply("exporter", w.exporter.fences_pending(move, (1,), w.now))
    assert not w.copies
    out = w.exporter.timer_fired(("fence", move), w.now)
    w._apply("exporter", out)
    assert ForceCompleteFences(1, buffer, "fence_timeout") in out
    assert w.fence_waits[move][0].confirm == (1,), "the wait goes on for the device's own signal"
    w.reset_devices()
    w.check_fences()
    assert w.copies and ("fence", move) not in w.timers, "signaled: the timer was cancelled"


def test_the_importer_keeps_its_lease_on_its_own_heartbeat_timer() -> None:
    spec = STRATEGIES["pin"].IMPORTER
    lease_s, ns = 0.5, 10**9
    imp = Importer(spec, "importer-1", 1, lease_s=lease_s, heartbeat_first_id=1 << 32)
    start = imp.start(0)
    assert StartTimer(("heartbeat",), lease_s / 4) in start
    hello = next(a.message for a in start if isinstance(a, Send))
    imp.sent(hello.id, 0)                 # the shell transmitted it at 0; the answer grants the lease
    imp.handle_reply(wire.HelloReply(id=hello.id, slot=1, strategy="pin", heaps=[], fences_shm="f",
                                     fence_slots=2, buffers=[]), 1)
    out = imp.timer_fired(("heartbeat",), int(0.1 * ns))
    beat = [a for a in out if isinstance(a, Send)]
    assert len(beat) == 1 and isinstance(beat[0].message, wire.Heartbeat) and not beat[0].reliable
    assert imp.may_access(int(0.3 * ns)) and not imp.may_access(int(0.41 * ns))
    out = imp.timer_fired(("heartbeat",), int(0.42 * ns))
    assert [a.event for a in out if hasattr(a, "event")][:2] == ["woke", "rejoin"]   # the tick was late, too
    assert any(isinstance(a, LeaseExpired) for a in out)
    again = [a.message for a in out if isinstance(a, Send) and isinstance(a.message, wire.Hello)]
    assert again, "hello again"
    imp.sent(again[0].id, int(0.42 * ns))
    lost, t = [], 0.42
    while not lost and t < 2.0:           # the exporter never answers; ticks on time
        t += lease_s / 4
        lost = [a for a in imp.timer_fired(("heartbeat",), int(t * ns)) if isinstance(a, ExporterLost)]
    assert lost and 0.42 + 2 * lease_s < t <= 0.42 + 2 * lease_s + lease_s / 4, "lost after two leases of silence"


# ---------------------------------------------------------------------------------- strategies of one's own

def write(tmp_path: Path, body: str, name: str = "mine.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


HEADER = """\
    from protocol.exporter import ExporterSpec, Guard, MoveEvent, MoveState, Step
    from protocol.importer import ImporterSpec
    from protocol.machine import SAME, Rule
    from protocol.strategies import move_notify_ack as base
    NAME = "mine"
    SUMMARY = "a test"
"""


@pytest.mark.parametrize("body, words", [
    ("EXPORTER = ExporterSpec(NAME, {**base.EXPORTER.table, (MoveState.NOTIFYING, MoveEvent.MAP): "
     "(Rule(Guard.ALWAYS, SAME, (Step.DEFER_MAPP,)),)})\nIMPORTER = ImporterSpec(NAME, base.IMPORTER.table)\n",
     ":7: row (MoveState.NOTIFYING, MoveEvent.MAP): Step has no member 'DEFER_MAPP' (did you mean DEFER_MAP?)"),
    ("EXPORTER = ExporterSpec(NAME, {k: v for k, v in base.EXPORTER.table.items() if k != (MoveState.NOTIFYING, MoveEvent.MAP)})\n"
     "IMPORTER = ImporterSpec(NAME, base.IMPORTER.table)\n",
     ": mine: exporter row (notifying, map): missing: state notifying is reachable"),
    ("EXPORTER = ExporterSpec(NAME, {**base.EXPORTER.table, (MoveState.NOTIFYING, MoveEvent.MAP): "
     "(Rule(Guard.LOCKED, SAME, ()), Rule(Guard.ALWAYS, SAME, ()))})\nIMPORTER = ImporterSpec(NAME, base.IMPORTER.table)\n",
     ":7: row (MoveState.NOTIFYING, MoveEvent.MAP): Guard has no member 'LOCKED'"),
    ("EXPORTER = ExporterSpec(NAME, {**base.EXPORTER.table, (MoveState.DRAINING, MoveEvent.MAP): ()})\n"
     "IMPORTER = ImporterSpec(NAME, base.IMPORTER.table)\n",
     ":7: row (MoveState.DRAINING, MoveEvent.MAP): MoveState has no member 'DRAINING'"),
    ("EXPORTER = ExporterSpec('other', base.EXPORTER.table)\nIMPORTER = ImporterSpec(NAME, base.IMPORTER.table)\n",
     "EXPORTER.strategy is 'other' but NAME is 'mine'"),
    ("IMPORTER = ImporterSpec(NAME, base.IMPORTER.table)\n", "this one has no EXPORTER"),
    ("EXPORTER = ExporterSpec(NAME, base.EXPORTER.table\n", "syntax error"),
])
def test_a_broken_strategy_file_gets_one_line_naming_the_file_and_what_is_wrong(tmp_path: Path, body: str,
                                                                               words: str) -> None:
    path = write(tmp_path, HEADER + textwrap.indent(body, "    "))
    with pytest.raises(StrategyError) as err:
        resolve(str(path))
    text = one_line(err.value)
    assert text.startswith(str(path)) and words in text, text


def test_a_name_of_a_built_in_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER.replace('"mine"', '"pin"') + "    EXPORTER = ExporterSpec(NAME, base.EXPORTER.table)\n"
                 "    IMPORTER = ImporterSpec(NAME, base.IMPORTER.table)\n", "pin2.py")
    with pytest.raises(StrategyError, match="NAME 'pin' is a built-in strategy's name"):
        resolve(str(path))


def _simulated(strategy: str, seed: int, **kw):
    """A short simulated run (sim/: the real services on virtual time), judged by the checker."""
    from deploy.options import RunParams
    from sim.run import simulate_in_memory
    params = RunParams(**{"strategy": strategy, "importers": 3, "buffers": 4, "duration": 1.0,
                          "move_rate": 100.0, "seed": seed, **kw})
    return simulate_in_memory(params)


def test_the_example_defers_the_crossing_map_and_never_races_where_its_base_does() -> None:
    from tests.test_strategies import fatal_crossing
    mine = resolve(str(EXAMPLE))
    assert mine.NAME == "move-notify-ack-defer" and mine.SOURCE == str(EXAMPLE)
    w = fatal_crossing(str(EXAMPLE))
    assert w.jobs[("importer-1", 1)].start.placement.gen == 2, "the crossing map waited for the ack"
    base_races = 0
    for seed in range(1, 5):
        r = _simulated(str(EXAMPLE), seed).report
        assert r["races"]["total"] == 0 and r["jobs"]["judged"] > 20, (seed, r["races"])
        base_races += _simulated("move-notify-ack", seed).report["races"]["total"]
    assert base_races > 0, "move-notify-ack raced in none of the same simulated schedules"


def test_a_copy_of_a_built_in_runs_the_same_schedule_to_the_same_history(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        from protocol.exporter import ExporterSpec
        from protocol.importer import ImporterSpec
        from protocol.strategies import move_notify as base
        NAME = "move-notify-copy"
        SUMMARY = "move-notify, copied"
        EXPORTER = ExporterSpec(NAME, base.EXPORTER.table)
        IMPORTER = ImporterSpec(NAME, base.IMPORTER.table)
    """)
    histories = []
    for strategy in ("move-notify", str(path)):
        lines = _simulated(strategy, 3, duration=0.5).history
        # the lines that name the strategy (service_start, run_start) differ by design
        histories.append([ln for ln in lines if b'"service_start"' not in ln and b'"run_start"' not in ln])
    assert histories[0] == histories[1] and len(histories[0]) > 100


# ---------------------------------------------------------------------------------- defects found on reading

def test_the_fence_table_records_the_reason_a_fence_was_forced_and_refuses_an_unknown_one() -> None:
    from protocol.fence import FORCE_REASONS, Usage
    from runtime.fences import FenceTable, table_bytes
    fences = FenceTable(memoryview(bytearray(table_bytes(3, 2))), 3, 2)
    seq = fences.emit(1, 0, Usage.WRITE)
    assert fences.error(1, 0) == ""
    for reason in FORCE_REASONS:
        fences.force(1, 0, reason)
        assert fences.error(1, 0) == reason and fences.forced_before_signaled(1, 0, seq)
    with pytest.raises(ValueError, match="cannot record 'importer_lost' as a fence error"):
        fences.force(1, None, "importer_lost")


def test_one_peer_label_for_every_event_about_a_connection() -> None:
    w = World("pin")
    w.join_all()
    assert w.exporter.peer_label(b"importer-1") == "importer-1"
    assert w.exporter.peer_label(b"\x00\x01nobody") == "?" + b"\x00\x01nobody".hex()
    out = w.exporter.handle_request(b"\x00\x01nobody", wire.Hello(id=1, name="importer-9", pid=1, strategy="pin",
                                                                 token="0" * 32), 0)
    denied = [a.fields for a in out if getattr(a, "event", "") == "access_denied"]
    assert denied and denied[0]["peer"] == "?" + b"\x00\x01nobody".hex()


# ---------------------------------------------------------------------------------- the table that runs

def _printed(name: str, capsys) -> dict[str, dict[tuple[str, str], list[tuple[str, str, str, tuple[str, ...]]]]]:
    """`dmabuf-emu strategies NAME --table`, parsed: section -> (state, event) -> its rule lines."""
    from deploy.cli import main
    from deploy.diagram import TABLE_COLUMNS, table_line_fields
    assert main(["strategies", name, "--table"]) == 0
    sections: dict = {}
    section = None
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("## "):
            section = sections.setdefault(line[3:].split(" (")[0] + (" " + line.split("(")[1].split(")")[0]
                                                                    if line.startswith("## importer") else ""), {})
        elif line and not line.startswith("#") and line.split()[:1] != [TABLE_COLUMNS[0]] and section is not None:
            origin, state, event, guard, then, steps = table_line_fields(line)
            section.setdefault((state, event), []).append((origin, guard, then, steps))
    return sections


def _as_printed(table: dict) -> dict[tuple[str, str], list[tuple[str, str, tuple[str, ...]]]]:
    out = {}
    for (state, event), rules in table.items():
        out[(state.value, event.value)] = ([("-", "violation", ())] if rules is machine.VIOLATION else
                                           [(r.when.value, r.then.value, tuple(s.value for s in r.do)) for r in rules])
    return out


def test_the_printed_table_is_the_table_the_move_machine_dispatches(capsys) -> None:
    printed = _printed("resv-fence", capsys)
    w = World("resv-fence")
    held = _as_printed(w.exporter.moves.table)
    shown = {key: [rule[1:] for rule in rules] for key, rules in printed["exporter"].items()}
    assert shown == held, "every printed row is a row the move machine dispatches, with the same rules, and back"
    imp = _as_printed(w.peers["importer-1"].table)
    assert {key: [rule[1:] for rule in rules] for key, rules in printed["importer dynamic"].items()} == imp
    origins = {key: rules[0][0] for key, rules in printed["exporter"].items()}
    assert origins[("notifying", "map")] == origins[("fence_wait", "map")] == "load", "added at load: the lock"
    assert origins[("idle", "move_wanted")] == "strategy" and origins[("idle", "map")] == "base"
    assert origins[("idle", "pin")] == "base/any" and origins[("copying", "map")] == "strategy"
    assert {state for state, _ in printed["exporter"]} == {"idle", "notifying", "fence_wait", "copying"}


def test_the_printed_importer_kinds_are_what_an_importer_of_that_kind_runs(capsys) -> None:
    printed = _printed("revoke", capsys)
    w = World("revoke", kinds={"importer-1": "pinned-revocable"})
    dynamic = _as_printed(World("revoke").peers["importer-1"].table)
    pinned = _as_printed(w.peers["importer-1"].table)
    differ = printed["importer pinned-revocable"]
    assert {key for key in pinned if pinned[key] != dynamic.get(key)} == set(differ)
    for key, rules in differ.items():
        assert [rule[1:] for rule in rules] == pinned[key] and {rule[0] for rule in rules} == {"kind"}


def test_table_of_an_unknown_strategy_is_the_diagram_s_one_line_error(capsys) -> None:
    from deploy.cli import main
    assert main(["strategies", "resv-fenc", "--table"]) == 2
    table_err = capsys.readouterr().err
    assert main(["strategies", "--diagram", "resv-fenc"]) == 2
    assert table_err == capsys.readouterr().err and table_err.count("\n") == 1
    assert main(["strategies", "resv-fence"]) == 2
    assert "NAME goes with --table" in capsys.readouterr().err


def test_a_refusal_says_why_in_its_own_word_not_the_guard_s_name() -> None:
    from protocol.exporter.table import REFUSAL_REASONS
    assert Guard.NO_ROOM.value != REFUSAL_REASONS[Guard.NO_ROOM] == "no_space", "a guard's name is not history format"
    spec = exporter_spec(move_notify_ack.EXPORTER, add={
        (MoveState.IDLE, MoveEvent.MOVE_WANTED): (Rule(Guard.CONSERVATIVE_HINTS, MoveState.IDLE, (Step.REFUSE,)),
                                                  Rule(Guard.ALWAYS, MoveState.COPYING, (Step.BEGIN, Step.COPY)))})
    with pytest.raises(TableError, match=r"exporter row \(idle, move_wanted\): rule 1: refuse under guard conservative, "
                                         r"which gives move_refused no reason"):
        compile_spec(spec)


def test_pin_and_unpin_are_table_events() -> None:
    from protocol.actions import Emit
    w = World("resv-fence")
    w.join_all()
    att = w.peers["importer-1"]._atts[0]
    buf = w.exporter.state.buffers[0]

    def request(msg: wire.Message) -> list:
        return w.exporter.handle_request(b"importer-1", msg, w.now)
    out = request(wire.Unpin(id=900, attachment=att.id, token=att.token))
    replies = [a.message for a in out if isinstance(a, Send)]
    assert len(replies) == 1 and replies[0].code == wire.ErrorCode.BAD_STATE and "holds no pin" in replies[0].message
    assert not [a for a in out if isinstance(a, Emit)] and buf.pins == 0, "a refused unpin changes nothing"
    out = request(wire.Pin(id=901, attachment=att.id, token=att.token))
    assert [a.event for a in out if isinstance(a, Emit)] == ["pin"] and buf.pins == 1
    out = request(wire.Unpin(id=902, attachment=att.id, token=att.token))
    assert [a.event for a in out if isinstance(a, Emit)] == ["unpin"] and buf.pins == 0
    rows = compile_spec(resv_fence.EXPORTER).table
    assert rows[(MoveState.NOTIFYING, MoveEvent.PIN)][0].do == (Step.PIN,)
    assert [r.when for r in rows[(MoveState.IDLE, MoveEvent.UNPIN)]] == [Guard.PIN_HELD, Guard.ALWAYS]


def test_every_reply_an_importer_waits_for_is_routed() -> None:
    from protocol.importer import REPLIES, REPLY_LOGGED
    sent = {m.OP for m in (wire.Hello, wire.Bye, wire.Attach, wire.Detach, wire.Map, wire.Unmap, wire.Pin, wire.Unpin,
                           wire.Ack)}
    assert sent == {"hello", "bye"} | set(REPLIES) | set(REPLY_LOGGED)
    assert not set(REPLIES) & set(REPLY_LOGGED)


def test_no_import_cycle_in_protocol() -> None:
    """Every import between protocol's modules, TYPE_CHECKING ones included (`from P import M`, M a
    module, imports M): no module reaches itself. main had moves <-> session."""
    import ast
    root = Path(__file__).resolve().parent.parent
    files = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (root / "protocol").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in files:
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(files)
                deps.update(subs or {node.module})
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in files)
        deps.discard(name)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = {start}, [start]
        while todo:
            for dep in graph[todo.pop()]:
                if dep == goal:
                    return True
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return False
    assert graph["protocol.exporter.session"] >= {"protocol.exporter.moves"}, "the walk sees imports"
    cycles = sorted((a, b) for a in graph for b in graph[a] if reaches(b, a))
    assert not cycles, cycles
