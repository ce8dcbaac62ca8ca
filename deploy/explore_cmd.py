"""dmabuf-emu explore and dmabuf-emu shrink: the schedule search from the command line.

explore takes every option of `run` (deploy/options.py), with the defaults of a small
configuration instead of a run's (SMALL: 2 importers, 2 buffers of 4 KiB with vram for one, one
DMA job in flight, 2 ms jobs, moves every 2 ms), the simulator's budgets (--dma-jobs per
importer, --moves) and the search's own options, and runs sim/explore.py.

Exit status: 0 done (whatever it found: see the result and explore.json); 1 a race was found
and --fail-on-race was given; 2 bad input (one line naming it, nothing written); 130
interrupted (what was found is kept; the same command goes on).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from math import comb
from pathlib import Path
from typing import Any

from deploy import options
from runtime import oplog
from deploy.helpformat import Formatter, examples, with_default
from deploy.options import OptionError

EXIT_OK, EXIT_RACE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# The small configuration's run parameters (flag values; a scenario file or a flag overrides each).
SMALL = {"importers": "2", "buffers": "2", "buffer_size": "4KiB", "vram_size": "4KiB", "queue_depth": "1",
         "dma_ms": "2", "think_ms": "0.5", "move_rate": "500", "duration": "0.05"}
DMA_JOBS, MOVES = 2, 2
LATE_POSITIONS = 4    # exhaustive --bound-kind late-frames: events a late frame may be held past, about
SUGGEST_CPU_S = 600   # --bound none refused: the bound suggested fits in this many CPU seconds

SEARCH_HELP = """\
searches (--search):
  random      a seeded random walk: at every step with a choice, an option uniformly at random
              (an actor, a link delivering its oldest frame, or time passing while frames are in
              flight); each fault that --fault allows fires with its probability p.
  pct         PCT (Burckhardt et al., ASPLOS 2010) of depth D (--depth): each actor (a service's
              loop, its DMA or copy engine, each link between two services, time) gets a random
              priority, the highest enabled one runs, and at D-1 random points among the first k
              steps the one running drops below all others. A race that needs D ordering
              constraints among those k steps is found with probability at least 1/(n*k^(D-1)) per
              schedule, n actors (explore.json's `pct` gives n, k and that bound).
  exhaustive  every schedule within --bound B preemptions: a preemption is time let pass while
              frames are in flight (the network preempted for one more event) or a fault firing
              (each fault --fault allows is a choice: duplicated or not, dropped or not, overtaken
              or not; p is ignored). --bound-kind late-frames counts each late frame once
              instead, however late. Bound 0 first, then 1, ..., then B, so the first race found
              needs the fewest; --bound none goes on until nothing is cut (the whole space),
              after a check: its first levels run for a few CPU seconds, and a space that
              grows past 1,000,000 schedules is refused with the estimate and a bound that
              fits in about 10 CPU minutes (--force starts it anyway). Across --jobs or
              --scheduler workers each level is cut into subtrees, walked as one process
              walks it: the same schedules, histories and verdict.
              --reduction dpor (the default) runs a reordering of two steps only when they
              race; sleep-sets runs every order of dependent steps once; none every order
              (brute force; sim/search/dpor.py says why the reductions are sound).
              --state-cache ends a schedule where it reaches a state (the world and the
              checker's) explored before with as much bound left: with three importers,
              whose answers meet at the exporter in every order, it cuts most of the tree.
              The result is "exhausted: N schedules within bound B, no race" or the first race.

what varies: the order of steps, when each message between services arrives (30 us to 2 ms
after it was sent), and whether a device stalls a DMA chunk past one of the exporter's pending
timers (a choice costing 1 like a fault; --no-stalls: devices punctual); the workload (which buffer, read or write, how long) is --seed's, as in a run.
The search decides from the exporter's start to the end of the workload; start-up and shutdown
run in their default order.
"""

EPILOG = SEARCH_HELP + "\n" + examples(
    "dmabuf-emu explore --strategy move-notify --search random --out runs/x-mn && dmabuf-emu replay runs/x-mn/shrunk --out runs/x-mn2",
    "dmabuf-emu explore --strategy move-notify-ack --search pct --depth 2 --schedules 500 --out runs/x-mna",
    "dmabuf-emu explore --strategy resv-fence --search exhaustive --bound 1 --out runs/x-rf",
    "dmabuf-emu explore --strategy resv-fence --search exhaustive --bound 0 --importers 3 --buffers 2 --moves 2 --no-stalls --state-cache --out runs/x-rf3",
    "dmabuf-emu explore --strategy pin --search exhaustive --bound 1 --fault dup:target=importers --fault reorder:target=exporter --out runs/x-pin",
    "dmabuf-emu explore --strategy resv-fence --search random --schedules 400 --jobs 2 --out runs/x-rf-random",
    "dmabuf-emu explore --strategy unmap-hint --search random --no-shrink --out runs/x-uh && dmabuf-emu shrink runs/x-uh",
    note="These take seconds; an exhaustive search at bound 2 takes about a minute of one core.\n\n"
         "DIR gets explore.json (what was done), races/K/ (each race's schedule: a simulated run directory "
         "that `dmabuf-emu replay` reproduces), shrunk/ (the first race shrunk), witness.md and trace.json.")


def add_parsers(sub: Any) -> None:
    e = sub.add_parser(
        "explore", help="search the schedules of a small configuration for races: random, PCT or exhaustive",
        description="Run a small configuration in the simulator again and again under schedules chosen "
                    "by a search, judge each history with the race checker, keep each race as a "
                    "replayable run directory and shrink the first to a minimal witness. Every run "
                    "parameter is a flag, with the defaults of a small configuration instead of run's "
                    "(vram for one of its two buffers; each flag below says its default).",
        epilog=EPILOG, formatter_class=Formatter)
    e.add_argument("scenario", nargs="?", type=Path, help="a TOML scenario file (flags override it)")
    e.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (created; a rerun resumes)")
    e.add_argument("--search", default="random", metavar="random|pct|exhaustive", help=with_default("the search", "random"))
    e.add_argument("--depth", default="2", metavar="D", help=with_default("pct: the bug depth, D-1 priority change points", 2))
    e.add_argument("--bound", default="2", metavar="B|none",
                   help=with_default("exhaustive: preemptions (or late frames) allowed; none: no bound", 2))
    e.add_argument("--reduction", default=None, metavar="dpor|sleep-sets|none",
                   help=with_default("exhaustive: the partial-order reduction", "dpor"))
    e.add_argument("--force", action="store_true",
                   help="exhaustive: start even when the size check says the search cannot finish (a bound's "
                        "estimated schedules, or --bound none's: a few CPU seconds of its first levels, "
                        "extrapolated, over 1,000,000 schedules); --around: explore a run of another "
                        "dmabuf-emu version")
    e.add_argument("--bound-kind", default="preemptions", metavar="preemptions|late-frames",
                   help=with_default("exhaustive: what the bound counts", "preemptions"))
    lim = e.add_mutually_exclusive_group()
    lim.add_argument("--schedules", default=None, metavar="N",
                     help=with_default("stop after N schedules", "10000 for random and pct, none for exhaustive"))
    lim.add_argument("--time", default=None, metavar="S", help="stop after S seconds")
    par = e.add_mutually_exclusive_group()
    par.add_argument("--jobs", default="1", metavar="J", help=with_default("worker processes", 1))
    par.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                     help="run on this Dask distributed scheduler's workers (as campaigns do)")
    e.add_argument("--all", action="store_true", help="go on after the first race (each new race kind and buffer kept)")
    e.add_argument("--no-shrink", action="store_true", help="do not shrink the first race")
    e.add_argument("--fail-on-race", action="store_true", help="exit 1 if a race was found (for CI)")
    e.add_argument("--dma-jobs", default=str(DMA_JOBS), metavar="N", help=with_default("DMA jobs per importer", DMA_JOBS))
    e.add_argument("--moves", default=str(MOVES), metavar="N", help=with_default("moves the memory manager may want", MOVES))
    e.add_argument("--no-stalls", action="store_true",
                   help="devices are punctual: no DMA chunk stalls past an exporter's timer (by default a "
                        "stall is a choice of every search, counted against --bound like a fault)")
    e.add_argument("--pauses", action="store_true",
                   help="an importer's process may freeze for two leases between a DMA chunk's check and its "
                        "access (SIGSTOP at the worst moment for its lease), each a choice of the search counted "
                        "against --bound like a stall (off by default)")
    e.add_argument("--state-cache", action="store_true",
                   help="exhaustive: end a schedule at a state explored before with as much bound left (the "
                        "world and the checker's state: sim/search/cache.py); pays where paths meet, as when "
                        "three importers answer the exporter at one instant; costs a hash per instant elsewhere. "
                        "Runs without snapshots; with --jobs the workers pass each other the states they "
                        "finished (with --scheduler each keeps its own; the counts then depend on the deal "
                        "and on timing, the verdict does not); a resumed search starts empty")
    e.add_argument("--no-snapshots", action="store_true",
                   help="exhaustive: run every schedule from start-up, never from a forked snapshot of its "
                        "prefix (by default snapshots are used where they measure cheaper: sim/search/snapshot.py; "
                        "the same schedules and results either way)")
    e.add_argument("--quiet", action="store_true", help="print only the result")
    e.add_argument("--around", type=Path, metavar="RUN_DIR", default=None,
                   help="instead of a search: replay RUN_DIR (a real or simulated run) guided by its history and "
                        "search the deviations within --bound that reverse its predicted races (`check --predict`), "
                        "cross its moves and revocations with a job, delay its notifications and reorder its "
                        "dependent steps; each race or catch found is shrunk and kept as DIR/races/K "
                        "(sim/around.py); DIR/around.json. --schedules defaults to 200")
    oplog.add_log_options(e)
    options.add_arguments(e, defaults=options.resolve(None, SMALL))   # the small configuration's, not run's

    s = sub.add_parser(
        "shrink", help="shrink a race an explore found to the fewest deviations that keep it",
        description="Reduce the schedule of DIR's race K (an explore directory: DIR/races/K) to the "
                    "fewest preemptions and faults that still give the same race kind on the same "
                    "buffer (delta debugging, then ties moved towards the default order), check that "
                    "it is 1-minimal (removing or simplifying any single remaining choice loses the "
                    "race) and write DIR/shrunk/ (replayable), DIR/witness.md and DIR/trace.json.",
        formatter_class=Formatter,
        epilog=examples("dmabuf-emu explore --strategy move-notify --search random --no-shrink --out runs/x-mn && "
                        "dmabuf-emu shrink runs/x-mn && dmabuf-emu replay runs/x-mn/shrunk --out runs/x-mn-again"))
    s.add_argument("dir", type=Path, metavar="DIR", help="an explore output directory")
    s.add_argument("--race", default="1", metavar="K", help=with_default("which saved race (1 is the first)", 1))
    s.add_argument("--quiet", action="store_true", help="print only the result")


def _usage(message: str) -> int:
    print(f"dmabuf-emu: {message}", file=sys.stderr)
    return EXIT_USAGE


def _int(name: str, text: str, lo: int) -> int:
    try:
        v = int(str(text), 10)
    except ValueError:
        raise OptionError(f"{name} must be a whole number, got {text!r}") from None
    if v < lo:
        raise OptionError(f"{name} must be at least {lo}, got {v}")
    return v


def _float(name: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise OptionError(f"{name} must be a number of seconds, got {text!r}") from None
    if not v > 0:
        raise OptionError(f"{name} must be more than 0 seconds, got {text!r}")
    return v


def spec_from_args(args: argparse.Namespace) -> tuple[Any, Any]:
    from sim.explore import SEARCHES, Limits, Spec
    from sim.options import SimOptions
    from sim.search.dpor import DPOR, REDUCTIONS
    from sim.search.exhaustive import BOUND_KINDS
    from sim.search.trial import Config

    if args.search not in SEARCHES:
        raise OptionError(f"--search must be one of {', '.join(SEARCHES)}, got {args.search!r}")
    depth = _int("--depth", args.depth, 1)
    bound = None if str(args.bound) == "none" else _int("--bound", args.bound, 0)
    if args.reduction is not None and args.search != "exhaustive":
        raise OptionError(f"--reduction is for --search exhaustive, not {args.search}")
    reduction = DPOR if args.reduction is None else args.reduction
    if reduction not in REDUCTIONS:
        raise OptionError(f"--reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if args.state_cache and args.search != "exhaustive":
        raise OptionError(f"--state-cache is for --search exhaustive, not {args.search}")
    if args.bound_kind not in BOUND_KINDS:
        raise OptionError(f"--bound-kind must be one of {', '.join(BOUND_KINDS)}, got {args.bound_kind!r}")
    schedules = _int("--schedules", args.schedules, 1) if args.schedules is not None else None
    seconds = _float("--time", args.time) if args.time is not None else None
    jobs = _int("--jobs", args.jobs, 1)
    if args.scheduler is not None:
        from sim.executor import SchedulerError, check_scheduler
        try:
            check_scheduler(args.scheduler)
        except SchedulerError as exc:
            raise OptionError(str(exc)) from None
    flags = vars(args).copy()
    given = set(options.load_scenario(args.scenario)) if args.scenario is not None else set()
    for key, value in SMALL.items():
        if flags.get(key) is None and key not in given:
            flags[key] = value
    params = options.resolve(args.scenario, flags)
    sim = SimOptions(network="chosen", jobs=_int("--dma-jobs", args.dma_jobs, 0), moves=_int("--moves", args.moves, 0),
                     stalls=not args.no_stalls, pauses=args.pauses)
    spec = Spec(Config(params, sim), args.search, params.seed, depth, bound, args.bound_kind, reduction,
                args.state_cache)
    return spec, (Limits(schedules, seconds, args.all), jobs)


def estimate(points: int, bound: int, kind: str) -> float:
    """Schedules an exhaustive search of `points` choice points per schedule makes within
    `bound`, about (ties and the reduction move it either way)."""
    from sim.search.exhaustive import LATE
    per = LATE_POSITIONS if kind == LATE else 1
    return float(sum(comb(points, j) * per ** j for j in range(bound + 1)))


def check_size(spec: Any) -> None:
    """Refuse an exhaustive search too large to finish: one line, how large, a bound that fits.
    With a bound, the size is estimated from the default schedule's choice points; with none,
    from a few CPU seconds of its first levels (sim/explore.py probe), which may finish it."""
    from sim import explore as sim_explore
    from sim.explore import MAX_EXHAUSTIVE, default_trial, probe
    trial, chooser = default_trial(spec.config)
    if trial.error is not None:
        raise OptionError(f"the configuration's default schedule does not run: {trial.error}")
    points = chooser.wait_points + chooser.fault_points
    if spec.bound is None:
        e = probe(spec, points)
        if e.finished or e.schedules <= MAX_EXHAUSTIVE:
            return
        measured = ", ".join(f"{n:,} at bound {d}" for d, n in enumerate(e.counts)) or f"{e.partial:,} at bound 0 (unfinished)"
        fits = e.fits(e.runs_per_s * SUGGEST_CPU_S)
        hint = (f"use --bound {fits} (about {sum(e.per_level[:fits + 1]):,.0f} schedules, "
                f"{_duration(e.runs(fits) / e.runs_per_s)} of CPU)" if fits is not None else "use a smaller configuration")
        raise OptionError(f"exhaustive --bound none: {sim_explore.PROBE_S:g} CPU seconds of the first levels gave {measured}; "
                          f"the whole space is about {e.schedules:,.0f} schedules over {len(e.per_level) - 1} levels "
                          f"(about {_duration(e.runs(len(e.per_level)) / e.runs_per_s)} of CPU at "
                          f"{e.runs_per_s:,.0f}/s), more than {MAX_EXHAUSTIVE:,}; {hint}, or --force to go on")
    n = estimate(points, spec.bound, spec.bound_kind)
    if n > MAX_EXHAUSTIVE:
        fits = max([b for b in range(spec.bound) if estimate(points, b, spec.bound_kind) <= MAX_EXHAUSTIVE], default=None)
        hint = (f"use --bound {fits} (about {estimate(points, fits, spec.bound_kind):,.0f})" if fits is not None
                else "use a smaller configuration")
        raise OptionError(f"exhaustive: this configuration has {points} choice points per schedule "
                          f"({chooser.wait_points} where time may pass, {chooser.fault_points} faults): about "
                          f"{n:,.0f} schedules within bound {spec.bound}, more than {MAX_EXHAUSTIVE:,}; {hint}, "
                          f"or fewer --importers, --dma-jobs or --moves (or --force)")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.0f} minutes"
    return f"{seconds / 3600:,.0f} hours"


def result_lines(r: dict[str, Any], out: Path) -> list[str]:
    from checker.findings import CATCHES
    from sim.options import DEVICES
    races = r["races"]
    lines = []
    # a finding the checker says broke a rule is a catch too (checker/findings.py CATCHES)
    kinds = sorted(set(races) & set(CATCHES))
    found = "race" if set(races) - set(CATCHES) else f"{', '.join(kinds)} (a finding, no race)"
    if r["search"] == "exhaustive":
        within = (f"within bound {r['bound']}" if r["bound"] is not None
                  else "with no bound (the whole space: no option was over a bound)")
        unbounded_so_far = f"bound {r['level']} so far" if r["bound"] is None else f"within bound {r['bound']}"
        cut = ", ".join(f"{v} by {k}" for k, v in r["cut_by"].items() if k != "bound")
        if r["exhausted"] and not races:
            lines.append(f"exhausted: {r['schedules']} schedules {within} ({r['bound_kind']}, reduction "
                         f"{r['reduction']}), no race (cut: {cut})")
        elif races:
            lines.append(f"{found} in schedule {r['first_race_schedule']} of the exhaustive search "
                         f"(bound {r['bound'] if r['bound'] is not None else 'none'}, reduction {r['reduction']}, "
                         f"shallowest first)")
        else:
            lines.append(f"not exhausted: {r['schedules']} schedules {unbounded_so_far}, no race")
    elif races:
        lines.append(f"{found} in schedule {r['first_race_schedule']} ({r['search']})")
    else:
        lines.append(f"no race in {r['schedules']} schedules ({r['search']})")
    lines.append(f"  {r['strategy']}: {r['schedules']} schedules in {r['seconds']:.1f} s "
                 f"({r['schedules_per_s'] or 0:,.0f}/s), {r['distinct_histories']} distinct histories"
                 + (f", races: {', '.join(f'{k} in {v}' for k, v in races.items())}" if races else ""))
    if r.get("devices"):
        lines.append(f"  timing: {r['devices']}" + ("" if r["devices"].startswith(DEVICES[True]) else " (--no-stalls)"))
    if r.get("pct"):
        p = r["pct"]
        lines.append(f"  pct: depth {p['depth']}, n {p['n']} actors, k {p['k']} steps: at least "
                     f"{p['guarantee']:.2g} per schedule for a race of that depth")
    for s in r["saved"][:5]:
        first = s["races"][0]
        lines.append(f"  {out / s['dir']}: schedule {s['schedule']}, {first['kind']} on buffer {first['buffer']} "
                     f"({first['importer']} job {first['job']})")
    sh = r.get("shrunk")
    if sh:
        d, b = sh["deviations"], sh["before"]["deviations"]
        lines.append(f"  shrunk: {b['waits']} waits, {b['ties']} ties, {b['faults']} faults -> {d['waits']} waits, "
                     f"{d['ties']} ties, {d['faults']} faults; decisions {sh['before']['decisions']} -> {sh['decisions']}, "
                     f"messages {sh['before']['messages']} -> {sh['messages']}; witness {sh['events']} events; "
                     + ("1-minimal" if sh["one_minimal"] else "NOT shown 1-minimal"))
        lines.append(f"  witness: {out / 'witness.md'} (trace: {out / 'trace.json'}; replay: dmabuf-emu replay "
                     f"{out / 'shrunk'} --out DIR)")
    if r.get("interrupted"):
        lines.append("  interrupted: the same command goes on from here")
    return lines


def cmd_around(args: argparse.Namespace) -> int:
    """explore --around RUN_DIR: sim/around.py; one line of result, exit 2 for a refusal."""
    from sim.around import AroundError, around
    try:
        if str(args.bound) == "none":
            raise OptionError("--bound none: --around searches within a bound (1 or more)")
        bound = _int("--bound", args.bound, 1)
        schedules = _int("--schedules", args.schedules, 1) if args.schedules is not None else 200
        if args.time is not None or args.search != "random":
            raise OptionError("--around takes --bound and --schedules, not --time or --search")
        r = around(args.around, args.out, bound=bound, schedules=schedules, force=args.force,
                   say=(lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True)))
    except (OptionError, AroundError) as exc:
        return _usage(f"explore --around: {exc}")
    found = len(r["also_found"])
    print(f"around {args.around}: {r['candidates']} candidate(s), {len(r['confirmed'])} confirmed, "
          f"{len(r['not_confirmed'])} not" + (f", {found} more race(s) or finding(s) found" if found else "")
          + f", in {r['schedules']} schedule(s) within bound {r['bound']}, {r['seconds']:g} s "
          f"({args.out / 'around.json'})")
    return EXIT_OK


def cmd_explore(args: argparse.Namespace) -> int:
    if args.around is not None:
        return cmd_around(args)
    from deploy.progress import Progress
    from sim.explore import ExploreError, Explorer
    if args.no_snapshots:       # the environment: --jobs' worker processes see it too
        from sim.search import snapshot
        os.environ[snapshot.ENV] = "off"
    try:
        spec, (limits, jobs) = spec_from_args(args)
        if spec.search == "exhaustive" and not args.force and not (args.out / "explore.state.json").exists():
            check_size(spec)
        explorer = Explorer(spec, limits, args.out, jobs=jobs, scheduler=args.scheduler,
                            do_shrink=not args.no_shrink, reporter=Progress(sys.stderr, args.quiet))
        explorer.load()  # a search of other settings in DIR: refused before anything runs
    except (OptionError, ExploreError) as exc:
        return _usage(f"explore: {exc}")
    result = explorer.run()
    print("\n".join(result_lines(result, args.out)))
    if explorer.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_RACE if result["races"] and args.fail_on_race else EXIT_OK


def cmd_shrink(args: argparse.Namespace) -> int:
    from sim.explore import shrink_into
    from sim.schedule import ScheduleError, read_schedule
    from sim.search.trial import Config
    path = args.dir / "explore.json"
    try:
        k = _int("--race", args.race, 1)
        if not path.exists():
            raise OptionError(f"{args.dir}: no explore.json here (not an explore output directory)")
        data = json.loads(path.read_text())
        saved = data.get("saved") or []
        if not saved:
            raise OptionError(f"{args.dir}: the search found no race: nothing to shrink")
        if k > len(saved):
            raise OptionError(f"--race {k}: {args.dir} has {len(saved)} saved race(s)")
        sched = read_schedule(args.dir / saved[k - 1]["dir"])
    except (OptionError, ScheduleError, ValueError) as exc:
        return _usage(f"shrink: {exc}")
    first = saved[k - 1]["races"][0]
    info = shrink_into(Config(sched.params, sched.sim), sched.decisions, sched.streams, first["kind"],
                       first["buffer"], args.dir)
    data["shrunk"] = info
    path.write_text(json.dumps(data, indent=2) + "\n")
    print("\n".join(result_lines(data, args.dir)[-2:]))
    return EXIT_OK
