"""The comparison of a campaign: OUT/summary.json and OUT/summary.md, one row per strategy x plan.

Everything is derived from the finished run directories OUT/runs/<strategy>/<plan>/seed-<n>/:
their report.json (the checker's verdict) and, where present, their events files:

- a run "has a race" when the checker found at least one (`races.total > 0`); the rate over the
  row's runs comes with its 95% Wilson score interval;
- races per second: the row's races over its runs' workload seconds (`--duration` each);
- time to the first race: from the deploy service's `workload_start` event to the end of the first
  DMA job the checker judged racy (the earliest witness: witnesses are kept in the order jobs are
  judged, which is the order they end); the median is over the runs that raced;
- moves completed and refused: totals over the row's runs;
- map p50 / p99: percentiles of every map latency of the row's runs pooled, from the importers'
  `map` events (`latency_ns`); a run without events contributes its report's p50 / p99 instead;
- remaps per map: maps that programmed the IOMMU afresh (`maps.remapped`) over all maps.

Rows are sorted so that "which strategy survives what" reads at a glance: strategies that raced in
the fewest runs first, then fewest races per second, then (among the clean ones) the smallest share
of moves refused; plans in campaign order within a strategy.

The mutation score (when the campaign ran mutants, `--strategies mutants`): per mutant, the rule it
breaks and its source (as its runs' reports quote them: the `mutant` of report.json), in how many
runs the checker caught it (a race, or a finding that says a rule was broken: deadlock,
revoke_incomplete, checker/findings.py CATCHES), which kinds, whether every witness
quoted the broken rule, and the length of the shortest witness (its events); the correct
strategies the mutants derive from are the controls, which must be caught in no run.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable

from checker.findings import CATCHES
from checker.model import RACE_KINDS
MAX_SAMPLES_PER_RUN = 4000       # map latencies kept per run for the pooled percentiles and plots


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (95% by default); (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# ---------------------------------------------------------------------------------- one run

def _iter_json_lines(path: Path, needle: bytes) -> Iterable[dict[str, Any]]:
    """The JSON objects of a JSON-lines file whose line contains `needle` (a cheap pre-filter)."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            if needle in line:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    yield obj


def workload_start_ns(run_dir: Path) -> int | None:
    for ev in _iter_json_lines(run_dir / "events" / "deploy.jsonl", b"workload_start"):
        if ev.get("event") == "workload_start" and isinstance(ev.get("t_ns"), int):
            return ev["t_ns"]
    return None


def map_latencies_us(run_dir: Path) -> list[float] | None:
    """Every map latency of the run in microseconds, from the importers' events (None without them)."""
    files = sorted((run_dir / "events").glob("importer-*.jsonl"))
    if not files:
        return None
    out: list[float] = []
    for path in files:
        for ev in _iter_json_lines(path, b'"map"'):
            if ev.get("event") == "map" and isinstance(ev.get("latency_ns"), (int, float)):
                out.append(ev["latency_ns"] / 1000.0)
    if len(out) > MAX_SAMPLES_PER_RUN:       # an even thinning keeps the distribution's shape
        out.sort()
        step = len(out) / MAX_SAMPLES_PER_RUN
        out = [out[int(i * step)] for i in range(MAX_SAMPLES_PER_RUN)]
    return out


def first_race_ns(report: dict[str, Any]) -> int | None:
    """The end of the first job judged racy: the earliest race instant among the witnesses."""
    best: int | None = None
    for kind in RACE_KINDS:
        for w in (report.get("witnesses") or {}).get(kind, [])[:1]:
            t = (w.get("job") or {}).get("end_t_ns")
            if not isinstance(t, int):
                ends = [e.get("t_ns") for e in w.get("events", [])
                        if e.get("event") in ("dma_end", "end_of_history") and isinstance(e.get("t_ns"), int)]
                t = ends[0] if ends else None
            if isinstance(t, int) and (best is None or t < best):
                best = t
    return best


def digest(run_dir: Path, report: dict[str, Any], strategy: str, plan: str, seed: int) -> dict[str, Any]:
    """What the summary needs of one finished run."""
    races = report.get("races") or {}
    moves = report.get("moves") or {}
    ops = report.get("ops") or {}
    maps = report.get("maps") or {}
    params = report.get("params") or {}
    total = int(races.get("total", 0) or 0)
    duration = report.get("duration_s", params.get("duration"))
    first = None
    if total:
        t_race = first_race_ns(report)
        t_start = workload_start_ns(run_dir)
        if t_start is None:
            t_start = report.get("t0_ns")
        if isinstance(t_race, int) and isinstance(t_start, int):
            first = max(0.0, (t_race - t_start) / 1e9)
    lat = (report.get("latency_us") or {}).get("map") or {}
    findings = {k: (report.get("findings") or {}).get(k) or {} for k in CATCHES}
    witnesses = [w for kind in sorted(report.get("witnesses") or {}) for w in (report.get("witnesses") or {})[kind]]
    shown = witnesses + [item for f in findings.values() for item in f.get("items") or []]
    mutant = report.get("mutant") if isinstance(report.get("mutant"), dict) else None
    return {
        "strategy": strategy, "plan": plan, "seed": seed, "dir": str(run_dir),
        "races": total, "races_by_kind": {k: int(races.get(k, 0) or 0) for k in RACE_KINDS},
        "raced": total > 0, "first_race_s": first,
        "duration_s": float(duration) if isinstance(duration, (int, float)) else None,
        "moves_completed": int(moves.get("completed", 0) or 0),
        "moves_refused": int(moves.get("refused", 0) or 0),
        "maps": int(ops.get("map", 0) or 0), "remapped": int(maps.get("remapped", 0) or 0),
        "map_p50_us": lat.get("p50"), "map_p99_us": lat.get("p99"),
        "corrupted_jobs": int((report.get("corruption") or {}).get("jobs", 0) or 0),
        "iommu_faults": int(report.get("iommu_faults", 0) or 0),
        "services_died": int(report.get("services_died", 0) or 0),
        "faults": params.get("faults", []),
        "move_rate": params.get("move_rate"),
        "mutant": mutant,
        "findings_caught": {k: int(f.get("count", 0) or 0) for k, f in findings.items()},
        "witness_events": min((len(w.get("events") or []) for w in shown), default=None),
        "rule_quoted": bool(shown) and mutant is not None
                       and all((w.get("broken_rule") or {}).get("rule") == mutant.get("rule") for w in shown),
    }


def read_report(run_dir: Path) -> dict[str, Any] | None:
    """The run's report if it finished (report.json parses, has the race counts and does not say
    the run was interrupted), else None."""
    try:
        report = json.loads((run_dir / "report.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError):
        return None
    if not isinstance(report, dict) or not isinstance(report.get("races"), dict):
        return None
    return None if report.get("interrupted") else report  # the report of a run cut short: run it again


def collect(out: Path) -> list[tuple[dict[str, Any], list[float] | None]]:
    """(digest, map latencies) of every finished run under OUT/runs."""
    runs = []
    for report_path in sorted((out / "runs").glob("*/*/seed-*/report.json")):
        run_dir = report_path.parent
        report = read_report(run_dir)
        if report is None:
            continue
        try:
            seed = int(run_dir.name.removeprefix("seed-"))
        except ValueError:
            continue
        runs.append((digest(run_dir, report, run_dir.parent.parent.name, run_dir.parent.name, seed),
                     map_latencies_us(run_dir)))
    return runs


# ---------------------------------------------------------------------------------- rows

def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def row(strategy: str, plan: str, runs: list[tuple[dict[str, Any], list[float] | None]]) -> dict[str, Any]:
    ds = [d for d, _ in runs]
    n = len(ds)
    k = sum(d["raced"] for d in ds)
    lo, hi = wilson(k, n)
    races = sum(d["races"] for d in ds)
    seconds = sum(d["duration_s"] or 0.0 for d in ds)
    pooled: list[float] = []
    p50s: list[float] = []
    p99s: list[float] = []
    for d, samples in runs:
        if samples is not None:
            pooled.extend(samples)
        else:
            if d["map_p50_us"] is not None:
                p50s.append(d["map_p50_us"])
            if d["map_p99_us"] is not None:
                p99s.append(d["map_p99_us"])
    if pooled:
        map_p50, map_p99 = percentile(pooled, 50), percentile(pooled, 99)
    else:
        map_p50, map_p99 = _median(p50s), (max(p99s) if p99s else None)
    maps = sum(d["maps"] for d in ds)
    firsts = [d["first_race_s"] for d in ds if d["first_race_s"] is not None]
    return {
        "strategy": strategy, "plan": plan, "runs": n, "runs_with_race": k,
        "race_rate": k / n if n else None, "race_rate_ci95": [lo, hi],
        "races": races, "workload_s": seconds, "races_per_s": races / seconds if seconds else None,
        "races_by_kind": {kind: sum(d["races_by_kind"][kind] for d in ds) for kind in RACE_KINDS},
        "first_race_median_s": _median(firsts), "first_race_s": sorted(firsts),
        "moves_completed": sum(d["moves_completed"] for d in ds),
        "moves_refused": sum(d["moves_refused"] for d in ds),
        "map_p50_us": map_p50, "map_p99_us": map_p99,
        "remaps_per_map": sum(d["remapped"] for d in ds) / maps if maps else None,
        "corrupted_jobs": sum(d["corrupted_jobs"] for d in ds),
        "iommu_faults": sum(d["iommu_faults"] for d in ds),
        "services_died": sum(d["services_died"] for d in ds),
        "seeds": sorted(d["seed"] for d in ds),
    }


def _ordered(names: Iterable[str], preferred: list[str] | None) -> list[str]:
    pref = {n: i for i, n in enumerate(preferred or [])}
    return sorted(set(names), key=lambda n: (pref.get(n, len(pref)), n))


def summarize(runs: list[tuple[dict[str, Any], list[float] | None]], strategy_order: list[str] | None = None,
              plan_order: list[str] | None = None) -> dict[str, Any]:
    """The summary dict: rows (sorted), strategy and plan order, the plans' faults, every run."""
    from deploy.faultplans import SHIPPED_ORDER
    groups: dict[tuple[str, str], list] = {}
    for d, samples in runs:
        groups.setdefault((d["strategy"], d["plan"]), []).append((d, samples))
    plans = _ordered((p for _, p in groups), plan_order or list(SHIPPED_ORDER))
    rows = {key: row(*key, members) for key, members in groups.items()}
    # survivors first: fewest racing runs overall, then fewest races per second, then given order
    seen_order = _ordered((s for s, _ in groups), strategy_order)

    def robustness(s: str) -> tuple:
        mine = [r for (st, _), r in rows.items() if st == s]
        n = sum(r["runs"] for r in mine)
        k = sum(r["runs_with_race"] for r in mine)
        secs = sum(r["workload_s"] for r in mine)
        races = sum(r["races"] for r in mine)
        moved = sum(r["moves_completed"] for r in mine)
        refused = sum(r["moves_refused"] for r in mine)
        return (k / n if n else 0.0, races / secs if secs else 0.0,
                refused / (moved + refused) if moved + refused else 0.0, seen_order.index(s))

    strategies = sorted(seen_order, key=robustness)
    ordered_rows = [rows[(s, p)] for s in strategies for p in plans if (s, p) in rows]
    plan_info = {}
    for d, _ in runs:
        plan_info.setdefault(d["plan"], {"faults": d["faults"], "move_rate": d["move_rate"]})
    return {
        "strategies": strategies, "plans": plans, "rows": ordered_rows, "plan_info": plan_info,
        "strategy_order": seen_order,
        "runs_total": len(runs), "runs": [d for d, _ in runs],
        "_latencies": {f"{d['strategy']}\t{d['plan']}": samples for d, samples in runs if samples},
    }


# ---------------------------------------------------------------------------------- markdown

def _f(v: Any, fmt: str = "{:.0f}", dash: str = "-") -> str:
    return dash if v is None else fmt.format(v)


def render_matrix(summary: dict[str, Any]) -> str:
    """Strategy x plan: runs with a race / runs (bold when any raced)."""
    plans = summary["plans"]
    cells = {(r["strategy"], r["plan"]): r for r in summary["rows"]}
    lines = ["| strategy | " + " | ".join(plans) + " |", "|---|" + "---|" * len(plans)]
    for s in summary["strategies"]:
        out = []
        for p in plans:
            r = cells.get((s, p))
            if r is None:
                out.append("")
            elif r["runs_with_race"]:
                out.append(f"**{r['runs_with_race']}/{r['runs']} raced**")
            else:
                out.append(f"0/{r['runs']}")
        lines.append(f"| {s} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def render_table(summary: dict[str, Any]) -> str:
    head = ("| strategy | plan | runs | runs with a race | race rate (95% CI) | races/s "
            "| median time to 1st race (s) | moves completed | moves refused | map p50 / p99 (us) "
            "| remaps per map |")
    lines = [head, "|" + "---|" * 11]
    for r in summary["rows"]:
        lo, hi = r["race_rate_ci95"]
        lines.append(
            f"| {r['strategy']} | {r['plan']} | {r['runs']} | {r['runs_with_race']} "
            f"| {_f(r['race_rate'], '{:.2f}')} ({lo:.2f}-{hi:.2f}) | {_f(r['races_per_s'], '{:.1f}')} "
            f"| {_f(r['first_race_median_s'], '{:.3f}')} | {r['moves_completed']} | {r['moves_refused']} "
            f"| {_f(r['map_p50_us'])} / {_f(r['map_p99_us'])} | {_f(r['remaps_per_map'], '{:.2f}')} |")
    return "\n".join(lines)


def render_kinds(summary: dict[str, Any]) -> str:
    lines = ["| strategy | plan | " + " | ".join(RACE_KINDS) + " | corrupted jobs | iommu faults | services died |",
             "|" + "---|" * (len(RACE_KINDS) + 5)]
    for r in summary["rows"]:
        lines.append(f"| {r['strategy']} | {r['plan']} | "
                     + " | ".join(str(r["races_by_kind"][k]) for k in RACE_KINDS)
                     + f" | {r['corrupted_jobs']} | {r['iommu_faults']} | {r['services_died']} |")
    return "\n".join(lines)


def mutation_score(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per mutant (and per control: a strategy of the campaign that is no mutant), in
    campaign order: caught in k of n runs (a race, or a finding of checker/findings.py CATCHES)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for d in summary["runs"]:
        by.setdefault(d["strategy"], []).append(d)
    if not any(d.get("mutant") for ds in by.values() for d in ds):
        return []
    out = []
    for label in _ordered(by, summary.get("strategy_order")):
        ds = by[label]
        mutant = next((d["mutant"] for d in ds if d.get("mutant")), None)
        caught = [d for d in ds if d["races"] or any((d.get("findings_caught") or {}).values())]
        kinds = {k: sum(d["races_by_kind"][k] for d in ds) for k in RACE_KINDS}
        for d in ds:
            for k, n in (d.get("findings_caught") or {}).items():
                kinds[k] = kinds.get(k, 0) + n
        lengths = [d["witness_events"] for d in caught if d.get("witness_events") is not None]
        out.append({
            "strategy": label, "mutant": mutant is not None,
            "rule": mutant.get("rule") if mutant else "(control: the correct strategy)",
            "source": mutant.get("source") if mutant else "",
            "runs": len(ds), "caught": len(caught), "seeds_caught": sorted(d["seed"] for d in caught),
            "kinds": {k: n for k, n in kinds.items() if n},
            "rule_quoted": sum(1 for d in caught if d.get("rule_quoted")),
            "witness_events_min": min(lengths) if lengths else None,
            "plans": sorted({d["plan"] for d in ds}),
        })
    return out


def render_mutation_score(summary: dict[str, Any], explore: dict[str, Any] | None = None) -> str:
    """The mutation-score table (markdown); empty when the campaign ran no mutant. `explore`: an
    `explore-table --strategies mutants` table.json, for the simulator's columns (else "-")."""
    rows = summary.get("mutation_score") or mutation_score(summary)
    if not rows:
        return ""
    sim = {r["strategy"]: r for r in (explore or {}).get("rows", [])}
    lines = ["| mutant | rule it breaks | source | caught in real runs | kinds found | witnesses quoting the rule "
             "| shortest witness in real runs (events) | simulator: schedules to the first catch "
             "| simulator: shrunk witness (events) |",
             "|" + "---|" * 9]
    for r in rows:
        kinds = ", ".join(f"{k} {n}" for k, n in r["kinds"].items()) or "none"
        quoted = f"{r['rule_quoted']}/{r['caught']}" if r["mutant"] and r["caught"] else "-"
        first, witness = _simulator_cells(sim.get(r["strategy"]), explore) if r["mutant"] else ("-", "-")
        lines.append(f"| {r['strategy']} | {r['rule']} | {r['source'] or '-'} | **{r['caught']}/{r['runs']}** "
                     f"| {kinds} | {quoted} | {_f(r['witness_events_min'])} | {first} | {witness} |")
    return "\n".join(lines)


def _simulator_cells(row: dict[str, Any] | None, explore: dict[str, Any] | None) -> tuple[str, str]:
    """explore-table's figures for one mutant: random's median schedules to the first catch (and
    how many seeds caught it), the exhaustive search's first catch, and the shrunk witness."""
    if row is None or explore is None:
        return "-", "-"
    rnd, ex = row["random"], row["exhaustive"]
    median = "none" if not rnd["raced"] else (f"> {explore['cap']}" if rnd["median"] > explore["cap"]
                                             else f"{rnd['median']:g}")
    exhaustive = (f"schedule {ex['first_race_schedule']}" if ex["first_race_schedule"] is not None
                  else "exhausted, none" if ex["exhausted"] else f"none in {ex['schedules']} (not exhausted)")
    first = f"random {median} ({rnd['raced']}/{rnd['seeds']} seeds); exhaustive (seed 1, bound {explore['bound']}) {exhaustive}"
    events = [x.get("witness_events") for x in (rnd, ex) if x.get("witness_events") is not None]
    return first, (str(min(events)) if events else "-")


def _plan_line(name: str, info: dict[str, Any]) -> str:
    from runtime.faults import describe
    faults = info.get("faults") or []
    text = "; ".join(describe(f) for f in faults) if faults else "no faults"
    return f"- `{name}`: {text}; move rate {_f(info.get('move_rate'), '{:g}')}/s"


def render_md(summary: dict[str, Any], plots: list[str]) -> str:
    runs = summary["runs"]
    seeds = sorted({d["seed"] for d in runs})
    durations = sorted({d["duration_s"] for d in runs if d["duration_s"] is not None})
    parts = [
        "# Campaign summary", "",
        f"{summary['runs_total']} finished runs: {len(summary['strategies'])} strategies x "
        f"{len(summary['plans'])} fault plans, seeds {', '.join(map(str, seeds)) or '-'}, "
        f"{', '.join(f'{d:g}' for d in durations) or '-'} s of workload each.", "",
        "## Which strategy survives what", "",
        "Runs in which the checker found at least one race, out of the runs. Strategies that raced "
        "least come first; among those that never raced, the ones that refused the fewest moves.", "",
        render_matrix(summary), "",
        "## Per strategy and plan", "",
        render_table(summary), "",
        "Race rate: share of runs with at least one race, with its 95% Wilson interval. Races/s: "
        "races over workload seconds. Time to first race: from the workload's start to the end of the "
        "first racing DMA job, median over the runs that raced. Moves: totals over the runs. Map "
        "latency: all maps of the runs pooled. Remaps per map: maps that programmed the IOMMU afresh.", "",
        "### Races by kind (totals)", "",
        render_kinds(summary), "",
        "## Fault plans", "",
        *(_plan_line(p, summary["plan_info"].get(p, {})) for p in summary["plans"]), "",
    ]
    score = render_mutation_score(summary)
    if score:
        parts += ["## Mutation score", "",
                  "Each mutant is a correct strategy with one rule broken (protocol/strategies/mutants.py); "
                  "caught: the checker found a race, a deadlock or an incomplete revocation in the run. The controls are the correct "
                  "strategies, under the same workloads.", "", score, ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(parts)


def write_summary(out: Path, *, strategy_order: list[str] | None = None, plan_order: list[str] | None = None,
                  plots: bool = True) -> dict[str, Any]:
    """Write OUT/summary.json, OUT/summary.md and (unless plots=False) OUT/plots/*.png."""
    if strategy_order is None or plan_order is None:
        try:
            meta = json.loads((out / "campaign.json").read_text())
            strategy_order = strategy_order or meta.get("strategies")
            plan_order = plan_order or [p["name"] for p in meta.get("plans", [])]
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
            pass
    summary = summarize(collect(out), strategy_order, plan_order)
    written: list[str] = []
    if plots and summary["rows"]:
        from deploy.plots import write_plots
        written = [str(p.relative_to(out)) for p in write_plots(summary, out / "plots")]
    latencies = summary.pop("_latencies")
    summary["plots"] = written
    summary["mutation_score"] = mutation_score(summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (out / "summary.md").write_text(render_md(summary, written))
    del latencies
    return summary
