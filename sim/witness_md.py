"""witness.md for a race the search found: the checker's renderer when the checker has one
(checker/explain.py write_witness_md: the race's "because" chain and a Mermaid sequence diagram),
else the minimal one here, which says the same things from the history's own events.

The minimal renderer (ADAPTER: it stands in until the checker's explain module is part of this
tree, and goes when it is):
- the checker's sentence for the race and the events that prove it (report.json's witness);
- a chain of "because" sentences read off the history: why the exporter's copy or free came when
  it did (the acks, callback returns or fence wait it had, or nothing at all), and why the job
  ran on that placement (the map reply that started it, and whether it crossed move_notify);
- a Mermaid `sequenceDiagram`: exporter and importers as lifelines, the messages of the race's
  buffer as arrows drawn at their receipt (a reply that crossed a notification is drawn below
  it), DMA jobs, copies and frees as notes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

try:  # the checker's, when present
    from checker.explain import listed_witnesses, write_witness_md as _checker_write
except ImportError:  # pragma: no cover - depends on which branch this tree has
    _checker_write = None

    def listed_witnesses(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """Witnesses in report.md's order: kind by kind, each kind's in order."""
        from checker.model import RACE_KINDS
        w = report.get("witnesses") or {}
        kinds = [k for k in RACE_KINDS if k in w] + [k for k in w if k not in RACE_KINDS]
        return [(k, x) for k in kinds for x in w.get(k) or []]

SAFE = re.compile(r"[^A-Za-z0-9 .,+=/_'()-]")
# (sender's event, receiver's event, label): one message, matched by id (and buffer)
PAIRS = (("map_served", "map", "map reply"), ("move_notify_sent", "move_notify_received", "move_notify"),
         ("ack_sent", "ack", "ack"), ("unmap_served", "unmap", "unmap reply"))
NOTES = {"dma_begin": "DMA {access} job {job} begins on gen {gen}", "dma_end": "DMA job {job} ends ({status})",
         "copy_begin": "copy gen {from_gen} to gen {to_gen} begins", "copy_end": "copy ends",
         "free": "frees gen {from_gen}", "move_begin": "move {move} of buffer {buffer} begins"}


def write_witness(history: Path, index: int, out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write witness number `index` (report.md's order) of the run whose history is `history`."""
    if _checker_write is not None:
        return _checker_write(history, index, out, report=report)
    kind, w = listed_witnesses(report)[index - 1]
    events = [orjson.loads(line) for line in Path(history).read_bytes().splitlines() if line.strip()]
    t0 = report.get("t0_ns") or (events[0]["t_ns"] if events else 0)
    out.write_text(render(kind, w, events, t0))
    return {**w, "kind": kind, "index": index}


def _at(t: int | None, t0: int) -> str:
    return "t+?" if t is None else f"t+{(t - t0) / 1e6:.3f} ms"


def because(kind: str, w: dict[str, Any], events: list[dict[str, Any]], t0: int) -> list[str]:
    job = w["job"]
    svc, buffer, gen, begin = job["svc"], job["buffer"], job["gen"], job["begin_t_ns"]
    mine = [e for e in events if e.get("buffer") == buffer]
    out: list[str] = []
    copy = next((e for e in mine if e["event"] == "copy_begin" and e.get("from_gen") == gen), None)
    free = next((e for e in mine if e["event"] == "free" and e.get("from_gen") == gen), None)
    edge = copy if kind == "lost_write" and copy else free or copy
    if edge is not None:
        notified = [e for e in mine if e["event"] == "move_notify_sent" and e["t_ns"] <= edge["t_ns"]
                    and e.get("gen") == gen]
        answers = [e for e in mine if e["event"] in ("ack", "move_notify_returned", "fence_wait_end")
                   and e["t_ns"] <= edge["t_ns"] and (not notified or e["t_ns"] >= notified[0]["t_ns"])]
        what = f"the exporter's {edge['event']} of buffer {buffer} gen {gen} came at {_at(edge['t_ns'], t0)}"
        if answers:
            last = answers[-1]
            out.append(f"{what}, because it had the {last['event'].replace('_', ' ')} it waited for by "
                       f"{_at(last['t_ns'], t0)}")
        elif notified:
            out.append(f"{what}, because it waited for no answer: it sent move_notify at "
                       f"{_at(notified[0]['t_ns'], t0)} and went on")
        else:
            out.append(f"{what}, because nothing held it back: no move_notify went out for this move")
    maps = [e for e in events if e["event"] == "map" and e.get("svc") == svc and e.get("buffer") == buffer
            and e["t_ns"] <= begin]
    if maps:
        m = maps[-1]
        served = next((e for e in reversed(events) if e["event"] == "map_served" and e.get("id") == m.get("id")
                       and e.get("attachment") == m.get("attachment") and e["t_ns"] <= m["t_ns"]), None)
        notes = [e for e in events if e["event"] == "move_notify_received" and e.get("svc") == svc
                 and e.get("buffer") == buffer and e["t_ns"] <= m["t_ns"]
                 and (served is None or e.get("id") is not None)]
        sent = [e for e in events if e["event"] == "move_notify_sent" and e.get("buffer") == buffer
                and served is not None and e["t_ns"] <= served["t_ns"] and e.get("gen") == m.get("gen")]
        head = f"{svc}'s job ran on gen {gen} of buffer {buffer}"
        if served is not None and sent and notes and notes[-1]["t_ns"] <= m["t_ns"]:
            out.append(f"{head}, because the map reply that started it crossed move_notify: the exporter "
                       f"answered the map at {_at(served['t_ns'], t0)}, after it had sent move_notify at "
                       f"{_at(sent[0]['t_ns'], t0)}, and the reply reached {svc} at {_at(m['t_ns'], t0)}, "
                       f"after move_notify had at {_at(notes[-1]['t_ns'], t0)}")
        else:
            out.append(f"{head}, because the map reply that started it reached {svc} at {_at(m['t_ns'], t0)}"
                       + (f" (served at {_at(served['t_ns'], t0)})" if served else ""))
    return out


def mermaid(events: list[dict[str, Any]], buffer: Any, t_from: int, t_to: int, t0: int) -> str:
    names = sorted({e["svc"] for e in events if e.get("svc", "").startswith(("exporter", "importer-"))},
                   key=lambda s: (s != "exporter", int(s.split("-")[1]) if "-" in s else 0))
    ids = {n: ("E" if n == "exporter" else "I" + n.split("-")[1]) for n in names}
    lines = ["sequenceDiagram"] + [f"    participant {ids[n]} as {n}" for n in names]
    span = [e for e in events if t_from <= e["t_ns"] <= t_to and e.get("buffer") == buffer and e.get("svc") in ids]
    sends = {(s, e.get("id"), e.get("attachment")): e for s, _, _ in PAIRS for e in span if e["event"] == s}
    for e in span:
        for s, r, label in PAIRS:
            if e["event"] == r:
                src = sends.get((s, e.get("id"), e.get("attachment")))
                if src is not None:
                    arrow = "-->>" if "reply" in label else "->>"
                    text = SAFE.sub(" ", f"{label} gen {e.get('gen', src.get('gen', '?'))} sent {_at(src['t_ns'], t0)} "
                                         f"got {_at(e['t_ns'], t0)}")
                    lines.append(f"    {ids[src['svc']]}{arrow}{ids[e['svc']]}: {text}")
        note = NOTES.get(e["event"])
        if note is not None:
            text = SAFE.sub(" ", note.format_map({**{k: "?" for k in ("access", "job", "gen", "status", "from_gen",
                                                                         "to_gen", "move", "buffer")}, **e}))
            lines.append(f"    Note over {ids[e['svc']]}: {text} at {_at(e['t_ns'], t0)}")
    return "\n".join(lines)


def render(kind: str, w: dict[str, Any], events: list[dict[str, Any]], t0: int) -> str:
    job = w["job"]
    proof = w.get("events") or []
    t_from = min([e["t_ns"] for e in proof] + [job["begin_t_ns"]]) - 3_000_000
    t_to = max(e["t_ns"] for e in proof) if proof else job["begin_t_ns"]
    rows = [f"| {_at(e['t_ns'], t0)} | {e.get('svc', '')} | {e['event']} | "
            + ", ".join(f"{k} {v}" for k, v in e.items() if k not in ("t_ns", "svc", "event")) + " |" for e in proof]
    chain = because(kind, w, events, t0)
    return "\n".join([
        f"# Witness: {kind} on buffer {job['buffer']}", "", w["sentence"], "", "## Why", "",
        *[f"{i}. {s}." for i, s in enumerate(chain, 1)], "",
        f"## The events that prove it ({len(proof)})", "", "| t | service | event | fields |", "|---|---|---|---|",
        *rows, "", "## Sequence", "", "```mermaid", mermaid(events, job["buffer"], t_from, t_to, t0), "```", ""])
