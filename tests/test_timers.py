"""Timers a strategy owns (protocol/timers.py): declared beside its tables, started and cancelled
by steps, firing as table events; checked at load; shown by --table and the diagram."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from protocol import strategies, timers
from protocol.actions import StartTimer
from protocol.exporter import ExporterSpec, compile_spec
from protocol.strategies import StrategyError
from tests.helpers import ROOT, cli

GRACE = ROOT / "tests" / "strategies" / "grace_timer.py"

_HEAD = '''
from protocol.exporter import ExporterSpec, Guard, MoveEvent, MoveState, Step, start_timer, timer_fired, cancel_timer
from protocol.importer import ImporterSpec
from protocol.machine import SAME, Rule
from protocol.strategies import move_notify
NAME = "timer-bad"
SUMMARY = "a broken timer"
IMPORTER = ImporterSpec(strategy=NAME, table=move_notify.IMPORTER.table)
'''


def _write(tmp_path: Path, timers_decl: str, start: str = 'start_timer("grace")',
           fired: str = 'timer_fired("grace")') -> Path:
    body = f'''
EXPORTER = ExporterSpec(
    strategy=NAME,
    timers={timers_decl},
    table={{
        **move_notify.EXPORTER.table,
        (MoveState.IDLE, MoveEvent.MOVE_WANTED): (
            Rule(Guard.PINNED, MoveState.IDLE, (Step.REFUSE,)),
            Rule(Guard.ALWAYS, MoveState.NOTIFYING, (Step.BEGIN, Step.NOTIFY, {start})),
        ),
        (MoveState.NOTIFYING, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.DEFER_MAP,)),),
        (MoveState.NOTIFYING, {fired}): (Rule(Guard.ALWAYS, MoveState.COPYING, (Step.COPY,)),),
    }},
)
'''
    path = tmp_path / "timer_bad.py"
    path.write_text(textwrap.dedent(_HEAD) + body)
    return path


def test_the_grace_strategy_loads_and_its_timer_is_declared() -> None:
    module = strategies.resolve(str(GRACE))
    compiled = compile_spec(module.EXPORTER)
    assert compiled.timers == {"notify": "ack_timeout_ms", "grace": "2 * dma_ms"}


@pytest.mark.parametrize("decl, words", [
    ('{"grace": "2 * dma_mz"}', ["timer grace", "unknown run parameter 'dma_mz'", "did you mean dma_ms"]),
    ('{"grace": "dma_ms - 10"}', ["timer grace", "must be positive", "-4 ms"]),
    ('{"grace": "0"}', ["timer grace", "must be positive"]),
    ('{"grace": "__import__(1)"}', ["timer grace", "not arithmetic"]),
    ('{"grace": 12}', ["timer grace", "must be a string"]),
])
def test_a_bad_timer_declaration_is_refused_naming_the_file_and_the_timer(tmp_path: Path, decl: str,
                                                                          words: list[str]) -> None:
    path = _write(tmp_path, decl)
    with pytest.raises(StrategyError) as err:
        strategies.resolve(str(path))
    text = str(err.value)
    assert "\n" not in text and str(path) in text
    for w in words:
        assert w in text, text


def test_a_step_that_starts_an_undeclared_timer_names_the_row(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"grace": "2 * dma_ms"}', start='start_timer("grase")')
    with pytest.raises(StrategyError) as err:
        strategies.resolve(str(path))
    text = str(err.value)
    assert str(path) in text and "(idle, move_wanted)" in text and "start_timer(grase)" in text
    assert "did you mean grace" in text


def test_a_row_for_an_undeclared_timer_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"grace": "2 * dma_ms"}', fired='timer_fired("other")')
    with pytest.raises(StrategyError, match=r"\(notifying, timer_fired\(other\)\).*no declared timer"):
        strategies.resolve(str(path))


def test_a_bare_start_timer_step_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"grace": "2 * dma_ms"}', start="Step.START_TIMER")
    with pytest.raises(StrategyError, match=r"takes the name of a timer"):
        strategies.resolve(str(path))


def test_the_cli_refuses_a_bad_timer_with_exit_2(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"grace": "2 * dma_mz"}')
    r = cli("strategies", "--check", str(path))
    assert r.returncode == 2
    assert "unknown run parameter 'dma_mz'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_table_and_diagram_show_the_timer() -> None:
    r = cli("strategies", str(GRACE), "--table")
    assert r.returncode == 0, r.stderr
    assert "grace      = 2 * dma_ms" in r.stdout
    assert "strategy  notifying  timer_fired(grace)  always    copying    copy" in r.stdout
    d = cli("strategies", "--diagram", str(GRACE), "--steps")
    assert "notifying --> copying : timer_fired(grace) / copy" in d.stdout
    assert "grace = 2 * dma_ms" in d.stdout


def _exporter(spec: ExporterSpec, **params: float):
    from protocol.exporter import Exporter, ExporterConfig, HeapConfig
    return Exporter(spec, ExporterConfig(buffers=2, buffer_size=4096, heaps=(HeapConfig("vram", "v", 4096),
                                                                             HeapConfig("sys", "s", 16384)),
                                         fences_shm="f", fence_slots=3, secret=b"x" * 16,
                                         ack_timeout_s=0.25, params=params))


def test_a_timer_is_as_long_as_its_run_parameters_say() -> None:
    spec = strategies.resolve(str(GRACE)).EXPORTER
    assert _exporter(spec).moves.timer_s == {"notify": 0.25, "grace": 0.012}
    assert _exporter(spec, dma_ms=3.0, ack_timeout_ms=12.0).moves.timer_s == {"notify": 0.012, "grace": 0.006}


def test_a_strategy_may_declare_its_notify_timer_length() -> None:
    import dataclasses
    base = strategies.resolve("move-notify-ack").EXPORTER
    spec = dataclasses.replace(base, timers={"notify": "4 * dma_ms"})
    m = _exporter(spec, dma_ms=5.0, ack_timeout_ms=12.0)
    assert m.moves.timer_s["notify"] == 0.02     # --ack-timeout-ms does not change it


def test_the_grace_timer_fires_and_the_move_copies() -> None:
    """Through the half: a move notifies, starts ("timer", "grace", move) for 2 * dma_ms; its
    firing copies."""
    from protocol.exporter import MoveEvent, MoveState
    from protocol.exporter.state import Ctx
    spec = strategies.resolve(str(GRACE)).EXPORTER
    e = _exporter(spec, dma_ms=4.0)
    e.boot(0)
    buf = e.state.buffers[0]
    e.moves.dispatch(buf, MoveEvent.MOVE_WANTED, 1, Ctx(to="sys", reason="evict"))
    out = e._take()
    started = [a for a in out if isinstance(a, StartTimer)]
    assert [(a.key[:2], a.seconds) for a in started if a.key[0] == "timer"] == [(("timer", "grace"), 0.008)]
    assert buf.state is MoveState.NOTIFYING
    e.timer_fired(started[-1].key, 2)
    assert buf.state is MoveState.COPYING


def test_a_length_names_only_numeric_run_parameters() -> None:
    assert "dma_ms" in timers.LENGTH_PARAMS and "strategy" not in timers.LENGTH_PARAMS
    with pytest.raises(timers.TimerError, match="unknown run parameter 'strategy'"):
        timers.check({"grace": "strategy * 2"})


def test_the_notify_timer_keeps_its_own_steps(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"grace": "2 * dma_ms"}', start='start_timer("notify")')
    with pytest.raises(StrategyError, match=r"start_timer\(notify\): the notify timer's steps are start_notify_timer"):
        strategies.resolve(str(path))


def test_a_mutant_of_a_strategy_keeps_its_timers() -> None:
    import dataclasses
    import types
    from protocol.strategies import mutants
    resv = strategies.resolve("resv-fence")
    base = types.ModuleType("resv_fence_own_notify")
    base.__dict__.update({k: getattr(resv, k) for k in ("NAME", "SUMMARY", "IMPORTER")})
    base.EXPORTER = dataclasses.replace(resv.EXPORTER, timers={"notify": "3 * dma_ms"})
    module = mutants.derive("resv-fence+map-unlocked", base)
    assert compile_spec(module.EXPORTER).timers == {"notify": "3 * dma_ms"}
