"""dmabuf-emu sim and dmabuf-emu replay: the deterministic simulator from the command line.

sim takes every option of `run` (deploy/options.py, the same parsing and checks) and writes a run
directory of the same layout plus schedule.json (sim/run.py). Options that only mean something
for real sockets (--transport, --bind, --curve) are accepted, recorded, and said to be ignored:
the simulated network is neither ipc nor tcp, and has nothing to encrypt.

Exit status: 0 done; 1 a race was found and --fail-on-race was given, a finding (deadlock, fence
forced, timeout, revoke_incomplete, stuck) and --fail-on-finding, or a replay did not give the
same history; 2 bad input (an option, a scenario, a schedule: one line naming it, nothing
written); 3 the simulated run could not drive its workload (it says why; the report is still
written); 4 --check-determinism found two different histories. `replay RUN_DIR --race N` of a real run
exits 0 whether or not the race recurred (its verdict is printed), 2 for bad input.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from deploy import options, rundir
from runtime import oplog
from deploy.helpformat import Formatter, examples, with_default
from runtime.runparams import RunParams, from_mapping

EXIT_OK, EXIT_RACE, EXIT_USAGE, EXIT_DRIVER, EXIT_NONDETERMINISTIC = 0, 1, 2, 3, 4
SOCKET_ONLY = ("transport", "bind", "curve")


def add_parsers(sub: Any) -> None:
    s = sub.add_parser(
        "sim", help="simulate a run: the same services in one process on virtual time, replayable",
        description="Run the exporter and the importers (the same service code as `run`) in one "
                    "process on a virtual clock, every choice (which step next, each network delay, "
                    "each fault and workload draw) made by one scheduler seeded by --seed and logged. "
                    "Writes the layout of a real run (events/, history.jsonl with virtual t_ns, "
                    "report.json with mode \"sim\" and sim_speedup, report.md, trace.json) plus "
                    "schedule.json, which `dmabuf-emu replay` re-executes byte for byte. The same "
                    "options and seed give the same history. --transport, --bind and --curve are "
                    "accepted and ignored (no sockets).",
        epilog=examples(
            "dmabuf-emu sim --strategy move-notify --importers 4 --duration 3 --seed 7 --out runs/sim-mn",
            "dmabuf-emu sim scenarios/resv-fence-lossy.toml --seed 3 --check-determinism --out runs/sim-lossy"),
        formatter_class=Formatter)
    s.add_argument("scenario", nargs="?", type=Path, help="a TOML scenario file (flags override it)")
    s.add_argument("--out", required=True, type=Path, help="run directory (created)")
    s.add_argument("--force", action="store_true", help=rundir.FORCE_HELP)
    s.add_argument("--check-determinism", action="store_true",
                   help="simulate twice and fail (exit 4) unless both histories are byte-identical")
    s.add_argument("--fail-on-race", action="store_true", help="exit 1 if the checker finds any race")
    s.add_argument("--fail-on-finding", action="store_true",
                   help="exit 1 if the checker reports any finding (deadlock, fence forced, timeout, stuck, ...)")
    s.add_argument("--quiet", action="store_true", help="print only the summary")
    s.add_argument("--json", action="store_true", help="print report.json instead of the summary")
    oplog.add_log_options(s)
    options.add_arguments(s)

    r = sub.add_parser(
        "replay", help="re-execute a simulated run's schedule and check the history is byte-identical",
        description="Run a schedule.json again (a simulated run directory, or the file) with every "
                    "decision taken from it, write the run to --out and compare the history's sha256 "
                    "with the one the schedule recorded: exit 0 when identical, 1 when not. A schedule "
                    "made by other sources (sha256 of protocol/, runtime/, the services and sim/) is "
                    "refused unless --force, which replays what still fits and makes the rest afresh.",
        epilog=examples(
            "dmabuf-emu replay runs/sim-mn --out runs/sim-mn-again",
            "dmabuf-emu sim --strategy pin --seed 2 --out runs/sim-pin && dmabuf-emu replay runs/sim-pin/schedule.json --out runs/sim-pin-again",
            "dmabuf-emu run --strategy move-notify --importers 4 --duration 1 --seed 3 --out runs/x && dmabuf-emu replay runs/x --race 0 --out runs/x-sim"),
        formatter_class=Formatter)
    r.add_argument("schedule", type=Path, metavar="DIR_OR_SCHEDULE", help="a sim run directory or its schedule.json")
    r.add_argument("--out", required=True, type=Path, help="run directory for the replay (created)")
    r.add_argument("--force", action="store_true",
                   help="replay a schedule made by other sources; decisions that no longer fit are made by the scheduler")
    r.add_argument("--quiet", action="store_true", help="print only the verdict")
    r.add_argument("--race", type=int, default=None, metavar="N",
                   help=with_default("DIR is a REAL run: simulate it guided by its history (sim/realguide.py: the "
                                     "memory manager's moves, the importers' jobs, their timing, network delays, "
                                     "step order) and say whether the N-th witness of its report (0-based: 0 is the "
                                     "first, as report.md lists them; `check --witness` counts from 1) recurs on "
                                     "the same buffer and generation", "0 for a real run"))


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def _ignored(args: argparse.Namespace, params: RunParams) -> list[str]:
    defaults = RunParams()
    return [k for k in SOCKET_ONLY if getattr(params, k) != getattr(defaults, k) or getattr(args, k, None) is not None]


def _sim_line(result: Any) -> str:
    sim = result.report["sim"]
    return (f"  sim        {sim['virtual_s']:.3f} virtual s in {sim['wall_s']:.3f} s (sim_speedup "
            f"{result.report['sim_speedup']}x), {sim['steps']} steps, {sim['decisions']} decisions, "
            f"history sha256 {result.history_sha256[:16]}...")


def _first_difference(a: Path, b: Path) -> str:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for n, (la, lb) in enumerate(zip(fa, fb), 1):
            if la != lb:
                return f"line {n}: {la[:160]!r} != {lb[:160]!r}"
    return "one history is a prefix of the other"


def cmd_sim(args: argparse.Namespace) -> int:
    import json

    from deploy.summary import summary_lines
    from sim.run import simulate

    params = options.resolve(args.scenario, vars(args))
    quiet = args.quiet or args.json
    _warn_liveness(params.strategy)
    out = args.out.resolve()
    rundir.claim([out], force=args.force, say=lambda line: _say(False, line))
    _say(quiet, f"dmabuf-emu sim: strategy {params.strategy}, {params.importers} importers, {params.buffers} buffers, "
                f"{params.duration:g} virtual s, seed {params.seed} -> {out}")
    ignored = _ignored(args, params)
    if ignored:
        _say(quiet, f"note: {', '.join('--' + k for k in ignored)} do not apply to a simulated run (no sockets): ignored")
    result = simulate(params, out)
    if args.json:
        print(json.dumps(result.report, indent=2, sort_keys=True))
    else:
        print("\n".join(summary_lines(result.report, str(args.out)) + [_sim_line(result)]))
    for name in result.outcome.crashes:
        print(f"warning: {name} crashed in the simulation: its traceback is in {args.out}/logs/{name}.log", file=sys.stderr)
    code = EXIT_OK
    if args.check_determinism:
        again = out / ".determinism-check"
        try:
            second = simulate(params, again)
            if second.history_sha256 != result.history_sha256:
                print(f"dmabuf-emu: determinism check FAILED: the same options and seed gave two histories "
                      f"(sha256 {result.history_sha256} and {second.history_sha256}; {result.events} and "
                      f"{second.events} events); first difference at "
                      f"{_first_difference(out / 'history.jsonl', again / 'history.jsonl')}", file=sys.stderr)
                return EXIT_NONDETERMINISTIC
            print(f"  determinism: the same history twice (sha256 {result.history_sha256}, {result.events} events, "
                  f"{len(result.outcome.scheduler.log)} decisions)")
        finally:
            shutil.rmtree(again, ignore_errors=True)
    if result.outcome.error is not None:
        print(f"dmabuf-emu: sim: {result.outcome.error}", file=sys.stderr)
        return EXIT_DRIVER
    if args.fail_on_race and result.report.get("races", {}).get("total"):
        code = EXIT_RACE
    if args.fail_on_finding and result.report.get("findings", {}).get("total"):
        code = EXIT_RACE
    return code


def _warn_liveness(strategy: str) -> None:
    """What the strategy's table alone says about progress (protocol/liveness_check.py), on stderr."""
    from protocol.liveness_check import strategy_warnings
    for line in strategy_warnings(strategy):
        print(f"warning: {line}", file=sys.stderr)


def cmd_replay(args: argparse.Namespace) -> int:
    from deploy.reporting import read_report
    from sim.run import sha256_file, simulate
    from sim.schedule import ScheduleError, read_schedule, sources_sha256
    from sim.scheduler import ListGuide, ScheduleDiverged

    def usage(message: str) -> int:
        print(f"dmabuf-emu: replay: {message}", file=sys.stderr)
        return EXIT_USAGE

    if args.race is not None or (args.schedule.is_dir() and (read_report(args.schedule.resolve()) or {}).get("mode") == "real"):
        return _replay_real(args, usage)
    try:
        sched = read_schedule(args.schedule)
    except ScheduleError as exc:
        return usage(str(exc))
    source_dir = sched.path.parent.resolve()
    out = args.out.resolve()
    if out == source_dir:
        return usage(f"--out {args.out} is the directory being replayed: choose another")
    recorded = sched.history_sha256
    if args.schedule.is_dir():
        previous = read_report(source_dir)
        if previous is not None and previous.get("strategy") not in (None, sched.params.strategy):
            return usage(f"{sched.path} is a schedule of strategy {sched.params.strategy}, but "
                         f"{source_dir / 'report.json'} is a run of {previous.get('strategy')}")
        history = source_dir / "history.jsonl"
        if history.exists() and sha256_file(history) != recorded:
            return usage(f"{history} is not the history {sched.path} recorded (sha256 {sha256_file(history)[:16]}... "
                         f"!= {recorded[:16]}...): the directory was changed after the run")
    if not sched.same_sources and not args.force:
        return usage(f"{sched.path} was made by other sources (sha256 {sched.data['sources_sha256'][:16]}..., these are "
                     f"{sources_sha256()[:16]}...): its decisions may mean other things here; --force to replay it anyway")
    guide = ListGuide(sched.decisions, sched.streams, strict=not args.force)
    _say(args.quiet, f"dmabuf-emu replay: {sched.path} ({len(sched.decisions)} decisions, strategy "
                     f"{sched.params.strategy}, seed {sched.params.seed}) -> {out}")
    try:
        result = simulate(sched.params, out, guide=guide, options=sched.sim)
    except ScheduleDiverged as exc:
        print(f"dmabuf-emu: replay diverged from {sched.path}: {exc}", file=sys.stderr)
        return EXIT_RACE
    counts = result.outcome.scheduler.counts
    same = result.history_sha256 == recorded
    print(f"recorded history sha256 {recorded}")
    print(f"replayed history sha256 {result.history_sha256}")
    print(f"{'identical' if same else 'DIFFERENT'}: {result.events} events; decisions {counts.from_guide} from the "
          f"schedule, {counts.made} made by the scheduler" + (f" ({guide.mismatches} did not fit)" if args.force else ""))
    return EXIT_OK if same else EXIT_RACE


def _replay_real(args: argparse.Namespace, usage: Any) -> int:
    """replay RUN_DIR --race N: a real run's race, re-run in the simulator guided by its history."""
    from checker.explain import listed_witnesses
    from deploy.reporting import read_report
    from sim.realguide import RealGuide, all_races, witness_key
    from sim.run import simulate

    run = args.schedule.resolve()
    report = read_report(run) if run.is_dir() else None
    if report is None or report.get("mode") != "real":
        what = "has no report.json" if report is None else f"is a run of mode {report.get('mode')!r}"
        return usage(f"{args.schedule} {what}: --race replays a real run (report.json mode \"real\")")
    if not (run / "history.jsonl").exists():
        return usage(f"{run / 'history.jsonl'} is missing: the real run was not judged")
    out = args.out.resolve()
    if out == run:
        return usage(f"--out {args.out} is the run being replayed: choose another")
    n = 0 if args.race is None else args.race
    listed = listed_witnesses(report)
    if not 0 <= n < len(listed):
        return usage(f"--race {n} is out of range: {args.schedule} has {len(listed)} race witnesses"
                     + (f" (0..{len(listed) - 1})" if listed else ""))
    try:
        params = from_mapping(report.get("params") or {}, f"{run / 'report.json'} params")
        guide = RealGuide.from_history(run / "history.jsonl", params)
    except (ValueError, KeyError, TypeError) as exc:
        return usage(f"{args.schedule}: {exc}")
    kind, witness = listed[n]
    target = witness_key(kind, witness)
    _say(args.quiet, f"dmabuf-emu replay: real run {args.schedule}, race {n} ({kind} on buffer {target[1]} gen "
                     f"{target[2]}), guided by its history ({sum(len(j) for j in guide.jobs.values())} jobs) -> {out}")
    result = simulate(params, out, guide=guide)
    counts = result.outcome.scheduler.counts
    found = all_races(out / "history.jsonl")           # the checker's every race, not only the listed witnesses
    same = target in found
    total = result.report.get("races", {}).get("total", 0)
    importer = (witness.get("job") or {}).get("svc")
    by = (f", by {importer} as in the real run" if importer in found[target] else
          f", by {', '.join(sorted(found[target]))} (the real run: {importer})") if same else ""
    print(f"{'REPRODUCED' if same else 'NOT reproduced'}: {kind} on buffer {target[1]} gen {target[2]} "
          f"{'is' if same else 'is not'} among the simulated run's {total} races{by} ({out / 'report.md'})")
    real = all_races(run / "history.jsonl")
    print(f"the real run's races (kind, buffer, gen): {len(real.keys() & found.keys())} of {len(real)} recur "
          f"in the simulated run")

    def by_what(tally: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(tally.items())) or "none"
    print(f"decisions: {counts.from_guide} taken from the real history ({by_what(guide.taken)}), "
          f"{counts.made} made by the scheduler ({by_what(guide.left)})")
    return EXIT_OK          # the verdict is the line above: not reproducing is a finding, not a failure
