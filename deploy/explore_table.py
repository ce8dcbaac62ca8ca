"""dmabuf-emu explore-table: every strategy under every search on the small configuration, one table.

For each strategy (unmap-hint under both hint policies) and each search: random and PCT over
--seeds seeds (each the workload's and the search's), at most --cap schedules a seed, give the
median number of schedules to the first race (a seed with none counts as past the cap) and the
length of the first race's shrunk witness (the checker's events that prove it, and the
deviations of its shrunk schedule); exhaustive (bound --bound) gives "exhausted, N schedules" or
the schedule of its first race and that race's shrunk witness. Every cell is an explore run in
DIR/runs/<strategy>/<search>/seed-<n>/ (explore.json, races/, shrunk/, witness.md); the table is
DIR/table.md and DIR/table.json. --jobs J runs J of them at a time (sim/executor.py).

--strategies mutants: every mutant (protocol/strategies/mutants.py) on the small configuration
with what it needs to reach its bug (each mutant's `small`), and the correct resv-fence, as a
control, on the small configuration and on each of those variants. A deadlock the checker finds
is a catch as a race is (sim/search/trial.py judge). `dmabuf-emu campaign --report-only --table
mutation-score --explore DIR` puts these figures in the mutation-score table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

VARIANTS = (("pin", {}), ("unmap-hint-optimistic", {"strategy": "unmap-hint", "hint_policy": "optimistic"}),
            ("unmap-hint-conservative", {"strategy": "unmap-hint", "hint_policy": "conservative"}),
            ("move-notify", {}), ("move-notify-ack", {}), ("revalidate", {}), ("resv-fence", {}))
SEARCHES = ("random", "pct", "exhaustive")


def add_parser(sub: Any) -> None:
    from deploy.helpformat import Formatter, examples, with_default
    t = sub.add_parser("explore-table", help="every strategy x search on the small configuration: one table",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=Formatter,
                       epilog=examples("dmabuf-emu explore-table --strategies pin,move-notify --seeds 2 --cap 20 "
                                       "--bound 1 --out runs/xt"))
    t.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (created; finished cells are kept)")
    t.add_argument("--seeds", type=int, default=20, metavar="N", help=with_default("seeds for random and pct", 20))
    t.add_argument("--cap", type=int, default=300, metavar="N", help=with_default("schedules a seed at most", 300))
    t.add_argument("--bound", type=int, default=2, metavar="B", help=with_default("the exhaustive bound", 2))
    t.add_argument("--exhaustive-cap", type=int, default=None, metavar="N",
                   help="exhaustive: stop a cell after N schedules, shown as 'not exhausted (N)' "
                        "(default: run every cell to exhaustion)")
    t.add_argument("--jobs", type=int, default=1, metavar="J", help=with_default("cells at a time", 1))
    t.add_argument("--no-stalls", dest="stalls", action="store_false",
                   help="devices are punctual: no DMA chunk stalls past an exporter's timer (by default a stall "
                        "is a choice of every search, as in explore; the table names the assumption)")
    t.add_argument("--state-cache", action="store_true",
                   help="exhaustive cells end a schedule at a state explored before (explore --state-cache: "
                        "sim/search/cache.py); pays where paths meet, as the revoke mutants' revocations do, "
                        "and costs a hash per instant elsewhere (the table names it)")
    t.add_argument("--strategies", default="all", metavar="LIST",
                   help=with_default("all, mutants (every mutant and its controls), or some of: "
                                     + ", ".join(label for label, _ in VARIANTS), "all"))


def _label(base: str, small: dict[str, Any]) -> str:
    """resv-fence-pin-ratio-0.5-dma-jobs-3, resv-fence-buffer-size-1MiB-...: a directory name."""
    def value(k: str, v: Any) -> str:
        if k.endswith("_size") and v % 1024 == 0:
            return f"{v >> 20}MiB" if v % (1 << 20) == 0 else f"{v >> 10}KiB"
        return f"{v:g}"
    return "-".join([base] + [f"{k.replace('_', '-')}-{value(k, v)}" for k, v in small.items() if k != "faults"])


def mutant_variants() -> list[tuple[str, dict[str, Any]]]:
    """The controls (resv-fence on the small configuration and on each mutant's variant of it),
    then every mutant with its variant."""
    from protocol.strategies import mutants
    names = mutants.names()
    controls: list[tuple[str, dict[str, Any]]] = []
    for name in names:
        small = mutants.small_of(name)
        c = (_label(mutants.split(name)[0], small), {"strategy": mutants.split(name)[0], **small})
        if c not in controls:
            controls.append(c)
    return sorted(controls, key=lambda c: len(c[1])) + [(n, {"strategy": n, **mutants.small_of(n)}) for n in names]


def chosen(spec: str) -> list[tuple[str, dict[str, Any]]]:
    names = [x.strip() for x in spec.split(",") if x.strip()]
    if names == ["all"]:
        return list(VARIANTS)
    if names == ["mutants"]:
        return mutant_variants()
    known = dict(VARIANTS)
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise ValueError(f"--strategies: unknown {bad[0] if bad else '(none)'!r} (known: all, mutants, "
                         f"{', '.join(known)})")
    return [(n, known[n]) for n in names]


def small_config(strategy: str, seed: int, overrides: dict[str, Any], stalls: bool = False) -> Any:
    """The small configuration (deploy/bench/exploreperf.py small) with `overrides`: run
    parameters, and dma_jobs / moves, the simulated driver's budgets (a mutant's `small`); its
    `faults`, as --fault text, are added to the configuration's. `stalls`: devices may stall past
    an exporter's timer (sim/options.py), as explore assumes unless --no-stalls."""
    import dataclasses

    from runtime import faults

    from deploy.bench.exploreperf import small
    config = small(strategy, seed)
    budgets = {"dma_jobs": "jobs", "moves": "moves"}     # SimOptions' names
    params = dataclasses.replace(config.params, **{k: v for k, v in overrides.items()
                                                   if k not in ("strategy", "faults") and k not in budgets})
    params = dataclasses.replace(params, faults=(*params.faults,
                                                 *(faults.parse_cli(t) for t in overrides.get("faults", ()))))
    options = dataclasses.replace(config.options, stalls=stalls,
                                  **{budgets[k]: v for k, v in overrides.items() if k in budgets})
    return dataclasses.replace(config, params=params, options=options)


def cell(label: str, overrides: dict[str, Any], search: str, seed: int, cap: int, bound: int, out: str,
         shrink: bool, exhaustive_cap: int | None = None, stalls: bool = True,
         state_cache: bool = False) -> dict[str, Any]:
    """One explore run (in a worker): its explore.json. A finished cell is kept when it assumed
    the same device timing and, exhaustive, ran with the state cache as asked; one that differs
    is run again from scratch."""
    import shutil

    from sim.explore import Explorer, Limits, Spec
    from sim.options import DEVICES
    cached = state_cache and search == "exhaustive"
    spec = Spec(small_config(overrides.get("strategy", label), seed, overrides, stalls), search, seed, 2, bound,
                state_cache=cached)
    limits = Limits(schedules=exhaustive_cap if search == "exhaustive" else cap)
    d = Path(out)
    if (d / "explore.json").exists():
        done = json.loads((d / "explore.json").read_text())
        if done.get("devices") == DEVICES[stalls] and (done.get("states_cached") is not None) == cached:
            if done.get("complete"):
                return done
        else:
            shutil.rmtree(d)                    # another timing assumption or cache: not resumable
    return Explorer(spec, limits, d, do_shrink=shrink, quiet=True).run()


def _witness(r: dict[str, Any] | None) -> str:
    sh = (r or {}).get("shrunk")
    if not sh:
        return ""
    d = sh["deviations"]
    return f"{sh['events']} events, {d['waits']} waits + {d['ties']} ties + {d['faults']} faults"


def build(args: argparse.Namespace) -> dict[str, Any]:
    from sim.executor import executor
    from sim.options import DEVICES

    tasks = []
    for label, over in chosen(args.strategies):
        for search in SEARCHES:
            seeds = [1] if search == "exhaustive" else range(1, args.seeds + 1)
            for seed in seeds:
                out = args.out / "runs" / label / search / f"seed-{seed}"
                # the first race of seed 1 is shrunk; a mutant's first catch of every seed (seed 1's
                # workload may not reach its bug: the witness is the first seed's that does)
                shrink = seed == 1 or "+" in over.get("strategy", label)
                tasks.append((label, over, search, seed, args.cap, args.bound, str(out), shrink, args.exhaustive_cap,
                              args.stalls, args.state_cache))
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    pool = executor(max(1, args.jobs))      # sim/executor.py: worker processes, or here for --jobs 1
    try:
        futures = [(t, pool.submit(cell, *t)) for t in tasks]
        for i, (t, f) in enumerate(futures, 1):     # in order: the lines and the table's rows are the tasks'
            pool.done([f])                           # waits for it (runs it, here)
            results.setdefault((t[0], t[2]), []).append(f.result())
            print(f"  [{i}/{len(tasks)}] {t[0]} {t[2]} seed {t[3]}", file=sys.stderr, flush=True)
    finally:
        pool.close()
    rows = []
    for label, _ in chosen(args.strategies):
        row: dict[str, Any] = {"strategy": label}
        for search in SEARCHES:
            rs = results[(label, search)]
            if search == "exhaustive":
                r = rs[0]
                row[search] = {"exhausted": r["exhausted"], "schedules": r["schedules"],
                               "first_race_schedule": r["first_race_schedule"], "witness": _witness(r),
                               "witness_events": (r.get("shrunk") or {}).get("events")}
            else:
                firsts = [r["first_race_schedule"] or args.cap + 1 for r in rs]
                raced = [r for r in rs if r["first_race_schedule"]]
                shrunk = next((r for r in rs if r.get("shrunk")), None)
                row[search] = {"median": statistics.median(firsts), "raced": len(raced), "seeds": len(rs),
                               "witness": _witness(shrunk), "witness_events": (shrunk or {}).get("shrunk", {}).get("events")}
        rows.append(row)
    table = {"command": f"dmabuf-emu explore-table --strategies {args.strategies} --seeds {args.seeds} --cap {args.cap} "
                        f"--bound {args.bound} --jobs {args.jobs}"
                        + (f" --exhaustive-cap {args.exhaustive_cap}" if args.exhaustive_cap else "")
                        + ("" if args.stalls else " --no-stalls")
                        + (" --state-cache" if args.state_cache else "")
                        + f" --out {args.out}", "rows": rows, "cap": args.cap,
             "seeds": args.seeds,
             "bound": args.bound, "devices": DEVICES[args.stalls], "state_cache": args.state_cache}
    (args.out / "table.json").write_text(json.dumps(table, indent=2) + "\n")
    (args.out / "table.md").write_text(render(table))
    return table


def render(t: dict[str, Any]) -> str:
    cap, seeds, bound = t["cap"], t["seeds"], t["bound"]

    def sampled(c: dict[str, Any]) -> str:
        if not c["raced"]:
            return f"none in {cap} x {seeds}"
        m = c["median"]
        median = f"> {cap}" if m > cap else f"{m:g}"
        return f"{median} ({c['raced']}/{c['seeds']} seeds)"

    def ex(c: dict[str, Any]) -> str:
        if c["first_race_schedule"] is not None:
            return f"caught at schedule {c['first_race_schedule']}"
        return f"exhausted, {c['schedules']} schedules" if c["exhausted"] else f"not exhausted ({c['schedules']})"

    lines = [f"    {t['command']}", "", f"Timing assumed: {t.get('devices', 'devices punctual')}.", "",
             f"| strategy | random: schedules to 1st race (median, {seeds} seeds) | pct (depth 2) | "
             f"exhaustive (bound {bound}{', state cache' if t.get('state_cache') else ''}) | shrunk witness (random, seed 1 / exhaustive) |", "|---|---|---|---|---|"]
    for r in t["rows"]:
        w = " / ".join(x for x in (r["random"]["witness"], r["exhaustive"]["witness"]) if x) or "-"
        lines.append(f"| {r['strategy']} | {sampled(r['random'])} | {sampled(r['pct'])} | {ex(r['exhaustive'])} | {w} |")
    return "\n".join(lines) + "\n"


def cmd(args: argparse.Namespace) -> int:
    if args.seeds < 1 or args.cap < 1 or args.bound < 0 or args.jobs < 1:
        print("dmabuf-emu: explore-table: --seeds, --cap and --jobs must be at least 1, --bound at least 0",
              file=sys.stderr)
        return 2
    if args.exhaustive_cap is not None and args.exhaustive_cap < 1:
        print(f"dmabuf-emu: explore-table: --exhaustive-cap must be at least 1, got {args.exhaustive_cap}",
              file=sys.stderr)
        return 2
    try:
        chosen(args.strategies)
    except ValueError as exc:
        print(f"dmabuf-emu: explore-table: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    table = build(args)
    print(render(table))
    return 0
