"""dmabuf-emu compare: the same workload under every strategy, one after the other, and one table.

Each strategy gets its own run directory OUT/<label>; the table is derived from their
report.json files only, so `dmabuf-emu compare --table-only OUT` rebuilds it from finished runs.
unmap-hint appears twice, once per hint policy: they are the two halves of option 1's argument.
A strategy of the user's own (`--strategy ./mine.py`, or an installed one) runs after the
built-in ones, in OUT/<its NAME>, and has its row at the bottom of the table. `--strategies
a,b,FILE` runs those only, in that order: built-in names, variant labels, files, installed
strategies and mutants.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

from checker.model import LOST_WRITE, RACE_KINDS, STALE_READ
from deploy.interrupt import Interrupted
from deploy.options import RunParams
from protocol.strategies import STRATEGIES, StrategyError, resolve


def variants(only: Sequence[str] | None = None, extra: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(label, overrides) of every built-in strategy, or of those `only` names (in this order),
    then `extra` (a strategy of the user's own) if it is not a built-in one nor named in `only`.
    An item of `only` is a variant's label, a built-in strategy's name (unmap-hint: both of its
    variants), or any strategy resolve() knows: a .py file, an installed one, a mutant BASE+MUTATION
    (labelled by its NAME). ValueError for a name that is none of these, or one given twice."""
    out: list[tuple[str, dict[str, Any]]] = []
    for name in STRATEGIES:
        if name == "unmap-hint":
            out += [("unmap-hint (optimistic)", {"strategy": name, "hint_policy": "optimistic"}),
                    ("unmap-hint (conservative)", {"strategy": name, "hint_policy": "conservative"})]
        else:
            out.append((name, {"strategy": name}))
    if only is None:
        chosen = out
    else:
        known = dict(out)
        chosen = []
        for item in only:
            if item in known:
                chosen.append((item, known[item]))
            elif item in STRATEGIES:
                chosen += [(label, o) for label, o in out if o["strategy"] == item]
            else:
                try:
                    module = resolve(item)
                except StrategyError as exc:
                    raise ValueError(str(exc)) from None
                chosen.append((module.NAME, {"strategy": item}))
        labels = [label for label, _ in chosen]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise ValueError(f"named twice: {', '.join(twice)}")
    named = {o["strategy"] for _, o in chosen}
    own = ([(resolve(extra).NAME, {"strategy": extra})]
           if extra is not None and extra not in STRATEGIES and extra not in named else [])
    return chosen + own


def parse_strategies(text: str) -> list[str]:
    """`--strategies a,b,FILE`: the names, in order (empty items dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _dirname(label: str) -> str:
    return label.replace(" (", "-").replace(")", "")


def run_dirs(out: Path, only: Sequence[str] | None = None, extra: str | None = None) -> list[Path]:
    """The run directories compare writes (those of `only`, then `extra`'s)."""
    return [out / _dirname(label) for label, _ in variants(only, extra)]


def compare(base: RunParams, out: Path, run: Callable[[RunParams, Path], dict[str, Any]],
            on_done: Callable[[str, dict[str, Any]], None] = lambda label, report: None,
            only: Sequence[str] | None = None) -> str:
    """Every variant (those in `only`, then a strategy of the user's own named by `base`) in turn.
    Interrupted (deploy/interrupt.py) during one, the runs after it are not started, and the one
    line says which runs finished."""
    done: list[str] = []
    for label, overrides in variants(only, base.strategy):
        params = dataclasses.replace(base, **overrides)
        try:
            report = run(params, out / _dirname(label))
        except Interrupted as stop:
            stop.detail = (f"compare stopped at {label}: {stop}; " + (
                f"finished: {', '.join(done)} (the table: dmabuf-emu compare --table-only --out {out})"
                if done else "no run had finished"))
            raise
        done.append(label)
        on_done(label, report)
    return table(out, only)


def table(out: Path, only: Sequence[str] | None = None) -> str:
    """A markdown table, one line per strategy (those in `only`), from OUT/*/report.json."""
    head = (f"| strategy | races | {' / '.join(RACE_KINDS)} | corrupted jobs "
            "| moves completed | moves refused | map p50 / p99 (us) | move p50 (us) |")
    lines = [head, "|" + "---|" * 8]
    builtin = [label for label, _ in variants(only)]
    own = sorted(d.name for d in out.iterdir() if d.is_dir() and d.name not in map(_dirname, builtin)
                 and (d / "report.json").exists()) if out.is_dir() and only is None else []
    for label in builtin + own:
        path = out / _dirname(label) / "report.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        races = r.get("races", {})
        lat = r.get("latency_us", {})
        fmt = lambda d, k: "-" if not d or d.get(k) is None else f"{d[k]:.0f}"  # noqa: E731
        cut = " (interrupted)" if r.get("interrupted") else ""
        lines.append(
            f"| {label}{cut} | {races.get('total', 0)} | "
            + " / ".join(str(races.get(k, 0)) for k in RACE_KINDS)
            + f" | {r.get('corruption', {}).get('jobs', 0)} | {r.get('moves', {}).get('completed', 0)} "
            f"| {r.get('moves', {}).get('refused', 0)} | {fmt(lat.get('map'), 'p50')} / {fmt(lat.get('map'), 'p99')} "
            f"| {fmt(lat.get('move'), 'p50')} |")
    return "\n".join(lines)


def versus(a: Path, b: Path) -> str:
    """One line per strategy: A's run beside B's (a real compare and a simulated one)."""
    head = (f"| strategy | races (A / B) | {LOST_WRITE} (A / B) | {STALE_READ} (A / B) | corrupted jobs (A / B) "
            "| moves completed (A / B) | map p50 us (A / B) |")
    lines = [head, "|" + "---|" * 7]
    for label, _ in variants():
        reports = []
        for d in (a, b):
            path = d / _dirname(label) / "report.json"
            reports.append(json.loads(path.read_text()) if path.exists() else None)
        if None in reports:
            continue

        def both(get: Callable[[dict[str, Any]], Any]) -> str:
            return " / ".join("-" if (v := get(r)) is None else (f"{v:.0f}" if isinstance(v, float) else str(v))
                              for r in reports)  # type: ignore[arg-type]
        lines.append(f"| {label} | {both(lambda r: r['races']['total'])} | {both(lambda r: r['races'][LOST_WRITE])} "
                     f"| {both(lambda r: r['races'][STALE_READ])} | {both(lambda r: r['corruption']['jobs'])} "
                     f"| {both(lambda r: r['moves']['completed'])} "
                     f"| {both(lambda r: (r.get('latency_us', {}).get('map') or {}).get('p50'))} |")
    return "\n".join(lines)
