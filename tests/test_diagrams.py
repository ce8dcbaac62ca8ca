"""State diagrams drawn from the tables: docs/strategies.md is what `dmabuf-emu strategies --doc`
prints now, and a diagram shows what the table says (states, events, guards, steps, the lock)."""

from __future__ import annotations

from deploy import diagram
from deploy.cli import main
from protocol.exporter import ExporterSpec, Guard, MoveEvent, MoveState, Step
from protocol.machine import SAME, Rule
from protocol.strategies import STRATEGIES, move_notify_ack
from tests.helpers import ROOT


def test_docs_strategies_md_is_not_stale() -> None:
    doc = (ROOT / "docs" / "strategies.md").read_text()
    assert doc == diagram.document(STRATEGIES), \
        "docs/strategies.md is stale: run `dmabuf-emu strategies --doc > docs/strategies.md`"
    assert doc.count("```mermaid") == 2 * len(STRATEGIES)
    assert doc.count("```text") == len(STRATEGIES), "each strategy's tables as they run (strategies NAME --table)"


def test_a_diagram_shows_states_events_guards_and_on_request_steps() -> None:
    g = diagram.graph(STRATEGIES["move-notify-ack"], "exporter", steps=True)
    assert g.states == ["idle", "notifying", "copying"] and g.initial == "idle"
    labels = {(e.source, e.target): e.label for e in g.edges}
    assert labels[("idle", "idle")] == "move_wanted [pinned] / refuse"
    assert labels[("notifying", "copying")].startswith("notify_")
    assert "map / serve_map" in g.internal["notifying"], "the hazard is drawn: maps served during the ack wait"
    plain = diagram.render(diagram.graph(STRATEGIES["move-notify-ack"], "exporter"), "mermaid")
    assert "idle --> notifying : move_wanted [else]\n" in plain and "/ " not in plain


def test_a_change_to_a_table_changes_its_diagram() -> None:
    table = {**move_notify_ack.EXPORTER.table,
             (MoveState.NOTIFYING, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.DEFER_MAP,)),)}
    mine = type("M", (), {"NAME": "x", "EXPORTER": ExporterSpec("x", table), "IMPORTER": move_notify_ack.IMPORTER})
    g = diagram.graph(mine, "exporter", steps=True)
    assert "map / defer_map" in g.internal["notifying"]


def test_the_lock_is_drawn_and_dot_is_a_digraph(capsys) -> None:
    assert main(["strategies", "--diagram", "resv-fence", "--format", "dot", "--steps"]) == 0
    out = capsys.readouterr().out
    assert out.count("digraph ") == 2
    assert '"notifying" [label="notifying (reservation lock held)\\nmap / defer_map' in out
    assert ('"fence_wait" -> "copying" [label="fences_signaled / end_fence_wait, publish_kernel_fence, copy, '
            'switch, unlock, serve_deferred_maps"];') in out
    assert '"copying" [label="copying\\nmap / serve_map"];' in out, "the copy is pipelined: no lock while it runs"


def test_strategies_command_errors_are_one_line(capsys) -> None:
    assert main(["strategies", "--diagram", "resv-fenc"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "did you mean resv-fence?" in err
