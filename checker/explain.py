"""witness.md: one race explained for people, with a sequence diagram a code forge renders.

Public API (the exploration tool, issue 14, calls the first):
    write_witness_md(history, index, out_path) -> dict
        Judge `history` (a history.jsonl path, or an iterable of event dicts in t_ns order), take
        its `index`-th witness (1-based, counted across race kinds in the order report.md lists
        them: lost_write, stale_read, use_after_unmap, unfenced_access, write_after_invalidate,
        each kind's witnesses in order) and write it to `out_path`. Returns the witness dict
        (with its `kind` and `index`). IndexError names how many witnesses there are.
    listed_witnesses(report) -> [(kind, witness), ...]   the numbering `index` counts in
    render_witness_md(witness, kind, t0, index=None, source=None) -> str
    mermaid_sequence(events, t0) -> str                  the diagram alone

Rules:
- witness.md holds the race's sentence, its "because" chain (checker/because.py), the faults a
  shrunk schedule kept (given as data by the caller: sim/explore.py), the events
  that prove it (report.json's witness `events`), the messages and waits the chain cites
  (`context`), and a Mermaid `sequenceDiagram`: one lifeline per service (exporter first, then
  importers by number), messages as arrows drawn where they were received (a request `->>`, a
  reply `-->>`), labelled with their send and receipt times, so a reply that crossed a
  notification shows as the notification's arrow above the reply's; DMA jobs, copies, frees and
  waits as `Note over` their service.
- Diagram text keeps to characters Mermaid's sequence grammar accepts in a message or note
  (MERMAID_SAFE): no `;` or `#` (statement and entity delimiters), no `:` after the arrow's own,
  no brackets, quotes or angle brackets; anything else becomes a space. Participants get short
  ids (E, I1, I2, ...) with the service name as alias, since `-` in an id would read as an arrow.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

from checker.history import open_history
from checker.jsonio import dumps
from checker.model import RACE_KINDS
from checker.oracle import Oracle, describe_fault
from checker.witness import rel_ms

MERMAID_SAFE = re.compile(r"[^A-Za-z0-9 .,+=/_'()-]")
_IMPORTER = re.compile(r"^importer-(\d+)$")
# (sender's event, receiver's event, label, a reply?): one message each
_PAIRS = (
    ("map_request", "map_served", "map request", False),
    ("map_served", "map", "map reply", True),
    ("move_notify_sent", "move_notify_received", "move_notify", False),
    ("invalidate_mappings_sent", "invalidate_mappings_received", "invalidate_mappings", False),
    ("ack_sent", "ack", "ack", False),
)
_MSG_EVENTS = {n for pair in _PAIRS for n in pair[:2]}


def listed_witnesses(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Witnesses in report.md's order: kind by kind (RACE_KINDS), each kind's in order."""
    w = report.get("witnesses") or {}
    kinds = [k for k in RACE_KINDS if k in w] + [k for k in w if k not in RACE_KINDS]
    return [(k, x) for k in kinds for x in w.get(k) or []]


def _judge(history: Path | str | Iterable[dict[str, Any]]) -> dict[str, Any]:
    oracle = Oracle()
    if isinstance(history, (str, Path)):
        with open_history(Path(history)) as fh:
            oracle.run(fh)
    else:
        oracle.run(dumps(ev) for ev in history)
    return oracle.report()


def write_witness_md(history: Path | str | Iterable[dict[str, Any]], index: int, out_path: Path | str,
                     *, report: dict[str, Any] | None = None,
                     kept: Iterable[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write the `index`-th witness (1-based, report.md's order) of `history` to `out_path`.
    `report`: the history's report when the caller already has it (it is then not judged again).
    `kept`: the faults a shrunk schedule kept, as data (`{"decision", "stream", "value"}` each: the
    checker imports nothing of the simulator), named in their own section."""
    if report is None:
        report = _judge(history)
    listed = listed_witnesses(report)
    if not listed:
        raise IndexError("the history has no race witness")
    if not 1 <= index <= len(listed):
        raise IndexError(f"witness {index}: the history has {len(listed)} witness(es), numbered 1..{len(listed)}")
    kind, w = listed[index - 1]
    source = str(history) if isinstance(history, (str, Path)) else None
    Path(out_path).write_text(render_witness_md(w, kind, report.get("t0_ns") or 0, index=index, source=source,
                                                kept=kept))
    return {**w, "kind": kind, "index": index}


# ---------------------------------------------------------------------------- markdown


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)):
        v = ", ".join(str(x) for x in v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def _gen(e: dict[str, Any]) -> Any:
    if e.get("gen") is None and e.get("from_gen") is not None:
        return f"{e['from_gen']}->{e.get('to_gen')}"
    return e.get("gen")


def _table(events: list[dict[str, Any]], t0: int, cols: tuple[str, ...]) -> list[str]:
    head = ["time", "service", "event", *cols]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for e in events:
        row = [rel_ms(e.get("t_ns"), t0), e.get("svc"), e.get("event")]
        row += [_gen(e) if c == "gen" else e.get(c) for c in cols]
        out.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return out


def render_witness_md(w: dict[str, Any], kind: str, t0: int, *, index: int | None = None,
                      source: str | None = None, kept: Iterable[dict[str, Any]] | None = None) -> str:
    job = w.get("job") or {}
    title = f"# Witness{f' {index}' if index is not None else ''}: {kind} on buffer {job.get('buffer')}"
    title += f" ({job.get('svc')} job {job.get('job')})"
    lines = [title, "", w.get("sentence", ""), ""]
    because = w.get("because") or []
    if because:
        lines += ["## Why", ""]
        lines += [f"- {b[0].upper() + b[1:]}." for b in because]
        lines.append("")
    if kept is not None:
        faults = list(kept)
        lines += ["## The faults the schedule kept", ""]
        lines += ([f"- decision {f.get('decision')}: "
                   + (f"the fault `{describe_fault(f['fault'])}` " if f.get("fault") else "")
                   + f"(draws `{f.get('stream')}`) drew `{f.get('value')}`" for f in faults]
                  or ["- none: the race needs no fault, only the order of steps"])
        lines.append("")
    lines += ["## The events that prove it", ""]
    lines += _table(w.get("events") or [], t0, ("buffer", "gen", "job", "access", "placement", "move"))
    lines.append("")
    ctx = w.get("context") or []
    if ctx:
        lines += ["## The messages and waits around it", ""]
        lines += _table(ctx, t0, ("buffer", "id", "move", "gen", "importer", "note"))
        lines.append("")
    lines += ["## Sequence", "", "```mermaid", mermaid_sequence([*(w.get("events") or []), *ctx], t0), "```", ""]
    if source:
        lines += [f"Judged from `{source}`; times are since the history's first event.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- mermaid


def safe(text: str) -> str:
    """Text Mermaid takes as a message or a note as it is."""
    return re.sub(r" {2,}", " ", MERMAID_SAFE.sub(" ", text)).strip() or "-"


def _participants(events: list[dict[str, Any]]) -> dict[str, str]:
    names = {"exporter"} | {str(e.get("svc")) for e in events if e.get("svc")}

    def order(n: str) -> tuple[int, int, str]:
        m = _IMPORTER.match(n)
        return (0, 0, n) if n == "exporter" else (1, int(m.group(1)), n) if m else (2, 0, n)

    ids: dict[str, str] = {}
    others = 0
    for n in sorted(names, key=order):
        m = _IMPORTER.match(n)
        if n == "exporter":
            ids[n] = "E"
        elif m:
            ids[n] = f"I{m.group(1)}"
        else:
            others += 1
            ids[n] = f"S{others}"
    return ids


def _msg_key(e: dict[str, Any], name: str) -> tuple[Any, ...]:
    imp = e.get("importer") if e.get("svc") == "exporter" else e.get("svc")
    if name in ("map_request", "map_served", "map"):
        return ("map", imp, e.get("id"))
    if name in ("ack_sent", "ack"):
        return ("ack", imp, e.get("buffer"), e.get("move"))
    return ("notify", imp, e.get("buffer"), e.get("move"), e.get("attachment"))


def _what(e: dict[str, Any], name: str) -> str:
    b, g = e.get("buffer"), e.get("gen")
    if name.startswith("map"):
        place = f" {e['placement']}" if e.get("placement") and name != "map_request" else ""
        gen = f" gen {g}" if g is not None and name != "map_request" else ""
        return f"id {e.get('id')} buf {b}{gen}{place}"
    if name.startswith("ack"):
        return f"buf {b} move {e.get('move')}"
    return f"buf {b} gen {g} move {e.get('move')}"


def _kept(sent: dict[str, Any], got: dict[str, Any]) -> str:
    """A map reply the importer did not take as sent: it kept its IOMMU entries of another gen."""
    if got.get("event") != "map" or got.get("gen") == sent.get("gen"):
        return ""
    return f", used as gen {got.get('gen')} at {got.get('placement')}" + (" (reused entries)" if got.get("reused") else "")


def _note(e: dict[str, Any], t0: int) -> str | None:
    name, at = e.get("event"), rel_ms(e.get("t_ns"), t0)
    b = e.get("buffer")
    if name == "dma_begin":
        rogue = " (rogue)" if e.get("rogue") else ""
        return f"{at} {e.get('access')} job {e.get('job')}{rogue} begins on buf {b} gen {e.get('gen')} at {e.get('placement')}"
    if name == "dma_end":
        return f"{at} job {e.get('job')} ends ({e.get('status')})"
    if name == "last_access":
        return f"{at} job {e.get('job')} last access"
    if name == "end_of_history":
        return f"{at} end of history, job {e.get('job')} still running"
    if name == "free":
        where = f" at {e['placement']}" if e.get("placement") else ""
        return f"{at} frees buf {b} gen {e.get('from_gen')} range{where} (move {e.get('move')})"
    if name in ("move_begin", "copy_begin", "copy_end"):
        what = {"move_begin": "move", "copy_begin": "copy begins", "copy_end": "copy ends"}[name]
        tail = f" to {e['placement']}" if name == "move_begin" and e.get("placement") else ""
        return f"{at} {what} buf {b} gen {e.get('from_gen')} to {e.get('to_gen')} (move {e.get('move')}){tail}"
    if name in ("unmap", "invalidate"):
        return f"{at} {name} buf {b} attachment {e.get('attachment')} gen {e.get('gen')}"
    if name == "fence_wait_begin":
        return f"{at} fence wait begins, buf {b} move {e.get('move')}"
    if name == "fence_wait_end":
        forced = f", forced {', '.join(e['forced'])}" if e.get("forced") else ""
        return f"{at} fence wait ends, buf {b}{forced}" + (f" ({e['note']})" if e.get("note") else "")
    if name == "ack_timeout":
        return f"{at} ack wait times out, buf {b} move {e.get('move')}"
    if isinstance(name, str) and name.endswith("_returned") and e.get("svc") != "exporter":
        return f"{at} {name.replace('_', ' ')} buf {b}"
    if isinstance(name, str) and (name.startswith("fault") or name.startswith("service")):
        return f"{at} {name}"
    return f"{at} {name} buf {b}" if name else None


def _arrival(recv: dict[str, Any], recv_name: str) -> int:
    t = recv.get("t_ns") or 0
    if recv_name == "map_served" and isinstance(recv.get("deferred_ns"), int):
        return t - recv["deferred_ns"]   # the request arrived, then waited before it was served
    return t


def mermaid_sequence(events: list[dict[str, Any]], t0: int) -> str:
    """A Mermaid sequenceDiagram of the events (witness events and context, any order)."""
    ids = _participants(events)
    lines = ["sequenceDiagram"]
    lines += [f"    participant {pid} as {safe(name)}" for name, pid in ids.items()]
    evs = sorted(events, key=lambda e: e.get("t_ns") or 0)
    by: dict[tuple[str, tuple[Any, ...]], dict[str, Any]] = {}
    for e in evs:
        name = str(e.get("event"))
        if name in _MSG_EVENTS:
            by.setdefault((name, _msg_key(e, name)), e)
    drawn: list[tuple[int, int, str]] = []   # (t, order, line): messages at their arrival, notes at their time

    def other_end(e: dict[str, Any]) -> str | None:
        peer = str(e.get("importer")) if e.get("svc") == "exporter" else "exporter"
        return ids.get(peer)

    for send_name, recv_name, label, reply in _PAIRS:
        arrow = "-->>" if reply else "->>"
        for (name, key), e in by.items():
            if name == send_name:
                r = by.get((recv_name, key))
                src = ids[str(e.get("svc"))]
                if r is not None:
                    arrive = _arrival(r, recv_name)
                    text = f"{label} {_what(e, send_name)}{_kept(e, r)} (sent {rel_ms(e.get('t_ns'), t0)}, received {rel_ms(arrive, t0)})"
                    drawn.append((arrive, len(drawn), f"    {src}{arrow}{ids[str(r.get('svc'))]}: {safe(text)}"))
                elif other_end(e) is not None:
                    text = f"{label} {_what(e, send_name)} (sent {rel_ms(e.get('t_ns'), t0)}, receipt not in the witness)"
                    drawn.append((e.get("t_ns") or 0, len(drawn), f"    {src}{arrow}{other_end(e)}: {safe(text)}"))
            elif name == recv_name and (send_name, key) not in by and other_end(e) is not None:
                arrive = _arrival(e, recv_name)
                text = f"{label} {_what(e, recv_name)} (received {rel_ms(arrive, t0)})"
                drawn.append((arrive, len(drawn), f"    {other_end(e)}{arrow}{ids[str(e.get('svc'))]}: {safe(text)}"))
    for e in evs:
        name, svc = str(e.get("event")), str(e.get("svc"))
        if name in _MSG_EVENTS:
            continue
        t = e.get("t_ns") or 0
        if name.endswith("_returned") and svc == "exporter" and e.get("importer") in ids:
            text = f"{name.replace('_returned', '')} returned buf {e.get('buffer')} ({rel_ms(t, t0)})"
            drawn.append((t, len(drawn), f"    {ids[str(e['importer'])]}-->>E: {safe(text)}"))
            continue
        note = _note(e, t0)
        if note is not None and svc in ids:
            drawn.append((t, len(drawn), f"    Note over {ids[svc]}: {safe(note)}"))
    drawn.sort(key=lambda x: (x[0], x[1]))
    lines += [line for _t, _s, line in drawn]
    return "\n".join(lines)
