"""State diagrams drawn from a strategy's tables: `dmabuf-emu strategies --diagram NAME`.

What is drawn is what the interpreter runs: the exporter table as compile_spec completed it
(maps deferred in the states that hold the reservation lock), the importer table as checked.
- A node per state reachable from the initial one, and `any other state` for the table's ANY
  rows (they apply wherever a state has no row of its own for the event).
- An edge per rule that changes the state: `event [guard]`, `[else]` for the unconditional rule
  after guarded ones; with steps, `/ step, step` after it. A rule that stays in its state and does
  something is drawn inside the state, as UML draws internal transitions. Rules that do nothing
  and VIOLATION rows are not drawn (the table says they cannot happen or change nothing).
- States in which a move holds the reservation lock say so.
Formats: mermaid (stateDiagram-v2, rendered by GitHub) and dot (Graphviz).

`dmabuf-emu strategies NAME --table` prints the tables that run, as text (`tables`): the
exporter's as the move machine holds it (MoveMachine.table) and the dynamic importer's, every
reachable state with every event, one line per rule, each marked by the origin of its row (base,
strategy, load, kind; `/any` when the row is the table's ANY row); then, for each other importer
kind, the rows that differ. A step that addresses attachments one by one says whom in brackets
(table.py AUDIENCE: `notify[live+unpinned]`).
docs/strategies.md is `dmabuf-emu strategies --doc` (tests/test_diagrams.py fails when it is stale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from types import ModuleType

from protocol import machine
from protocol.exporter import compile_spec as compile_exporter
from protocol.exporter.moves import VOCABULARY as EXPORTER_VOCABULARY, running as exporter_running
from protocol.exporter.table import AUDIENCE
from protocol.importer import VOCABULARY as IMPORTER_VOCABULARY, running as importer_running
from protocol.machine import ANY, SAME, VIOLATION
from protocol.params import IMPORTER_KINDS
from protocol.timers import NOTIFY

FORMATS = ("mermaid", "dot")
ANY_NODE = "any"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str


@dataclass(frozen=True)
class Graph:
    title: str
    initial: str
    states: list[str]
    locked: set[str]
    edges: list[Edge]
    internal: dict[str, list[str]]    # state -> labels of the rules that stay in it
    has_any: bool


def graph(strategy: ModuleType, half: str, steps: bool = False) -> Graph:
    if half == "exporter":
        compiled = compile_exporter(strategy.EXPORTER)
        vocab, rows, locked = EXPORTER_VOCABULARY, compiled.rows, {s.value for s in compiled.locked_states}
    else:
        vocab, rows, locked = IMPORTER_VOCABULARY, machine.check(strategy.NAME, IMPORTER_VOCABULARY,
                                                                 strategy.IMPORTER.table), set()
    reach = machine.reachable(vocab, rows)
    order = [s for s in vocab.states if s in reach]
    edges: list[Edge] = []
    internal: dict[str, list[str]] = {}
    has_any = False
    for state in [*order, ANY]:
        for event in machine.events_of(vocab, rows):
            rules = rows.get((state, event))
            if rules is None or rules is VIOLATION:
                continue
            guarded = False   # an earlier rule drawn had a guard
            for rule in rules:
                if rule.then is VIOLATION:
                    continue
                if rule.when is vocab.always:
                    guard = "else" if guarded else ""
                else:
                    guard, guarded = rule.when.value, True
                label = event.value + (f" [{guard}]" if guard else "")
                if steps and rule.do:
                    label += " / " + ", ".join(s.value for s in rule.do)
                src = ANY_NODE if state is ANY else state.value
                if rule.then is SAME:
                    if rule.do:
                        internal.setdefault(src, []).append(label)
                        has_any = has_any or state is ANY
                    continue
                edges.append(Edge(src, rule.then.value, label))
                has_any = has_any or state is ANY
    title = f"{strategy.NAME}: {half}"
    if half == "exporter":
        title += f" (timers: {timer_summary(compiled)})"
    return Graph(title, vocab.initial.value, [s.value for s in order], locked,
                 edges, internal, has_any)


def render(g: Graph, fmt: str) -> str:
    if fmt == "mermaid":
        return _mermaid(g)
    if fmt == "dot":
        return _dot(g)
    raise ValueError(f"unknown diagram format {fmt!r} (formats: {', '.join(FORMATS)})")


def diagrams(strategy: ModuleType, fmt: str = "mermaid", steps: bool = False) -> str:
    """Both halves' diagrams, exporter first."""
    return "\n".join(render(graph(strategy, half, steps), fmt) for half in ("exporter", "importer"))


def document(strategies: dict[str, ModuleType]) -> str:
    """docs/strategies.md: every strategy's two diagrams, with steps, in mermaid."""
    out = ["# The strategies as state diagrams", "",
           "Generated from the tables by `dmabuf-emu strategies --doc > docs/strategies.md`; do not edit",
           "(tests/test_diagrams.py fails when this file is stale). Each strategy's rules, the sentence",
           "of the 2012 thread it models and its hazard are in `protocol/strategies/<name>.py`; how to",
           "read the diagrams is in `deploy/diagram.py`: an edge per rule that changes the state",
           "(`event [guard] / steps`), a rule that stays in its state inside the state's box, the table's",
           "ANY rows on `any other state`, and rules that do nothing or cannot happen left out. Below each",
           "strategy's diagrams, the tables as they run (`dmabuf-emu strategies NAME --table`): every row,",
           "marked by its origin: base, strategy, load (added when the table is loaded), kind.", ""]
    for name, module in strategies.items():
        out += [f"## {name}", "", module.SUMMARY + ".", ""]
        for half in ("exporter", "importer"):
            out += [f"### {half}", "", "```mermaid", render(graph(module, half, steps=True), "mermaid").rstrip(),
                    "```", ""]
        out += ["### the tables that run", "", f"<details><summary>`dmabuf-emu strategies {name} --table`</summary>",
                "", "```text", tables(module).rstrip(), "```", "", "</details>", ""]
    return "\n".join(out)


TABLE_COLUMNS = ("ORIGIN", "STATE", "EVENT", "GUARD", "THEN", "DO")


def timer_summary(compiled: Any) -> str:
    """The declared timers in one line: `notify = ack_timeout_ms, grace = 2 * dma_ms` (ms)."""
    return ", ".join(f"{name} = {length}" for name, length in compiled.timers.items())


def timer_lines(compiled: Any) -> list[str]:
    """One line per declared timer: its length (ms, of run parameters), its steps and its event."""
    out = []
    for name, length in compiled.timers.items():
        if name == NOTIFY:
            how = "start_notify_timer, cancel_notify_timer; fires notify_timeout"
        else:
            how = f"start_timer({name}), cancel_timer({name}); fires timer_fired({name})"
        out.append(f"{name:<10} = {length:<24} ms  ({how})")
    return out


def tables(strategy: ModuleType) -> str:
    """Both halves' tables as they run (see the rules at the top)."""
    compiled = compile_exporter(strategy.EXPORTER)
    locked = sorted(compiled.locked_states, key=lambda s: list(type(s)).index(s))
    out = [f"# {strategy.NAME}: the tables that run, one line per rule (the first whose guard holds wins).",
           "# ORIGIN: base (the half's BASE_TABLE), strategy (the strategy's own), load (added at load: maps",
           "# deferred under the reservation lock), kind (an importer kind's); /any: the table's (any, event) row.",
           "# exporter timers (protocol/timers.py: each one's length in ms, of run parameters):",
           *("#   " + line for line in timer_lines(compiled)),
           "", f"## exporter (the move machine of every buffer; reservation lock held in: "
           f"{', '.join(s.value for s in locked) or 'no state'})",
           *_table_lines(exporter_running(compiled))]
    dynamic = importer_running(strategy.IMPORTER)
    out += ["", "## importer (dynamic)", *_table_lines(dynamic)]
    for kind in IMPORTER_KINDS:
        if kind == "dynamic":
            continue
        rows = importer_running(strategy.IMPORTER, kind)
        mine = {(r.state, r.event): r.rules for r in dynamic}
        differ = [r for r in rows if mine.get((r.state, r.event)) != r.rules]
        out += ["", f"## importer ({kind}): " + ("the rows that differ from dynamic's" if differ else
                                                "the same table as dynamic's")]
        if differ:
            out += _table_lines(differ)
    return "\n".join(out) + "\n"


def table_line_fields(line: str) -> tuple[str, str, str, str, str, tuple[str, ...]]:
    """A rule line of `tables` as (origin, state, event, guard, then, steps), the audience left
    out of the steps: the inverse of the printing, for tests and tools."""
    origin, state, event, guard, then, *rest = line.split(None, 5)
    steps = tuple(s.split("[")[0] for s in rest[0].split(", ")) if rest else ()
    return origin, state, event, guard, then, steps


def _table_lines(rows: list[machine.RunningRow]) -> list[str]:
    cells = [TABLE_COLUMNS]
    for row in rows:
        origin = row.origin + ("/any" if row.via_any else "")
        if row.rules is VIOLATION:
            cells.append((origin, row.state.value, row.event.value, "-", "violation", ""))
            continue
        for rule in row.rules:
            then = rule.then.value
            do = ", ".join(step.value + (f"[{'+'.join(w.value for w in AUDIENCE[step])}]" if step in AUDIENCE else "")
                           for step in rule.do)
            cells.append((origin, row.state.value, row.event.value, rule.when.value, then, do))
    widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE_COLUMNS) - 1)]
    return [("  ".join(c[i].ljust(widths[i]) for i in range(len(widths))) + "  " + c[-1]).rstrip() for c in cells]


def _node_label(g: Graph, state: str) -> str:
    return f"{state} (reservation lock held)" if state in g.locked else state


def _mermaid(g: Graph) -> str:
    lines = ["---", f"title: \"{g.title}\"", "---", "stateDiagram-v2"]
    for state in g.states:
        lines.append(f'    state "{_node_label(g, state)}" as {state}')
    if g.has_any:
        lines.append(f'    state "any other state" as {ANY_NODE}')
    lines.append(f"    [*] --> {g.initial}")
    for e in g.edges:
        lines.append(f"    {e.source} --> {e.target} : {_mermaid_text(e.label)}")
    for state, labels in g.internal.items():
        for label in labels:
            lines.append(f"    {state} : {_mermaid_text(label)}")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    # ":" ends a mermaid label's text; ";" ends a statement
    return text.replace(":", " ").replace(";", ",")


def _dot(g: Graph) -> str:
    lines = [f'digraph "{g.title}" {{', '    rankdir=LR;', '    node [shape=box, style=rounded, fontname="sans"];',
             '    edge [fontname="sans", fontsize=10];', '    __start [shape=point, label=""];']
    for state in g.states + ([ANY_NODE] if g.has_any else []):
        title = "any other state" if state == ANY_NODE else _node_label(g, state)
        inner = g.internal.get(state, [])
        label = "\\n".join([title, *inner]) if inner else title
        style = ', style="rounded,dashed"' if state == ANY_NODE else ""
        lines.append(f'    "{state}" [label="{_dot_text(label)}"{style}];')
    lines.append(f'    __start -> "{g.initial}";')
    for e in g.edges:
        lines.append(f'    "{e.source}" -> "{e.target}" [label="{_dot_text(e.label)}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    return text.replace('"', '\\"')



# ------------------------------------------------------------------------------ the vocabulary


def vocabulary() -> str:
    """`dmabuf-emu strategies --vocabulary`: every state, event, guard and step a table may name,
    both halves, each with the one-line rule its declaration's comment gives (table.py,
    importer.py: the comments are the declarations' documentation, read from the source)."""
    from protocol.exporter import table as ext
    from protocol import importer as imp
    halves = (
        ("exporter", "protocol/exporter/table.py", (("states", ext.MoveState), ("events", ext.MoveEvent),
                                                     ("guards", ext.Guard), ("whom steps address (AUDIENCE)", ext.Who),
                                                     ("steps", ext.Step))),
        ("importer", "protocol/importer.py", (("states", imp.AttState), ("events", imp.AttEvent),
                                              ("guards", imp.IGuard), ("steps", imp.IStep))),
    )
    out = ["# The table vocabulary: what a strategy's rows may name (Rule(guard, then, steps) keyed (state, event)).",
           "# Wildcards (protocol/machine.py): ANY as a state (every state without its own row), SAME as a target,",
           "# VIOLATION as a row or a target. Timers: start_timer(NAME), cancel_timer(NAME) and the event",
           "# timer_fired(NAME) name a timer the strategy declares (ExporterSpec.timers; protocol/timers.py)."]
    for half, where, groups in halves:
        out += ["", f"## {half} ({where})"]
        for title, members in groups:
            notes = member_notes(members)
            out += ["", f"### {title}"]
            width = max(len(m.value) for m in members)
            for m in members:
                note = notes.get(m.name, "")
                if half == "exporter" and title == "steps" and m in ext.AUDIENCE:
                    note += f" [to: {'+'.join(w.value for w in ext.AUDIENCE[m])}]"
                if m in ext.NAMED or m in getattr(imp, "NAMED", {}):
                    note = f"takes a timer's name: {m.value}(NAME). " + note
                out.append(f"{m.value.ljust(width)}  {note}".rstrip())
    return "\n".join(out) + "\n"


def member_notes(members: type) -> dict[str, str]:
    """Each member's comment in the enum's source (its trailing comment and the comment lines
    indented under it), joined into one line."""
    import inspect
    import re
    notes: dict[str, str] = {}
    current: str | None = None
    col = 0
    for line in inspect.getsource(members).splitlines()[1:]:
        m = re.match(r"(\s*)([A-Z_][A-Z0-9_]*)\s*=\s*[^#]*?(?:#\s*(.*))?$", line)
        if m and m.group(2) in members.__members__:
            current, col = m.group(2), line.index("#") if "#" in line else len(line)
            notes[current] = (m.group(3) or "").strip()
            continue
        c = re.match(r"(\s*)#\s?(.*)$", line)
        if c and current is not None and len(c.group(1)) >= col - 1 and col and notes.get(current):
            notes[current] += " " + c.group(2).strip()   # a continuation of the member's comment
        else:
            current = None
    return notes
