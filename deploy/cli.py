"""The dmabuf-emu command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deploy import options, rundir
from runtime import oplog
from deploy.helpformat import Formatter, examples, with_default
from deploy.interrupt import Interrupted, stop_signals
from deploy.launcher import DeployError, down, status, up
from deploy.options import OptionError
from protocol.strategies import StrategyError

EXIT_OK, EXIT_RACE, EXIT_USAGE, EXIT_DEPLOY = 0, 1, 2, 3

DESCRIPTION = """\
dmabuf-emu: run the answers to "what may an exporter do when it wants to move a buffer that
importers have mapped?" (linux-media, February 2012) for real. An exporter process and N importer
processes share POSIX shared memory and talk over ZeroMQ; a memory manager moves buffers under
pressure; every DMA access goes through an emulated IOMMU; a race checker judges the history."""

EPILOG = examples(
    "dmabuf-emu demo",
    "dmabuf-emu strategies",
    "dmabuf-emu strategies --diagram resv-fence",
    "dmabuf-emu run --strategy pin --importers 2 --duration 3 --out runs/pin",
    "dmabuf-emu run --strategy move-notify --importers 4 --out runs/mn --fail-on-race",
    "dmabuf-emu run --strategy docs/examples/move_notify_ack_defer.py --importers 4 --out runs/mine",
    "dmabuf-emu check runs/mn",
    "dmabuf-emu check runs/mn --witness 1",
    "dmabuf-emu run scenarios/resv-fence.toml --seed 7 --out runs/rf",
    "dmabuf-emu run scenarios/revalidate-rogue.toml --out runs/rogue",
    "dmabuf-emu up --strategy resv-fence --out runs/live && dmabuf-emu status runs/live && dmabuf-emu down runs/live",
    "dmabuf-emu sim --strategy move-notify --importers 4 --seed 7 --out runs/sim-mn && dmabuf-emu replay runs/sim-mn --out runs/sim-mn2",
    "dmabuf-emu explore --strategy move-notify-ack --search pct --out runs/x-mna",
    "dmabuf-emu explore --strategy resv-fence --search exhaustive --bound 1 --out runs/x-rf",
    note="scenarios/*.toml: one scenario per strategy and a few with faults, each saying what it shows "
         "(docs/commands-and-scenarios.md, Scenarios). A strategy of your own is a .py file given to --strategy "
         "(docs/writing-a-strategy.md). A run directory holds deploy.json, events/*.jsonl, history.jsonl, "
         "report.json, report.md and trace.json (open it in https://ui.perfetto.dev). A command refuses "
         "an --out that already holds a run unless given --force.\n\n"
         "Ctrl-C, SIGTERM and SIGHUP stop a command the same way: services down, segments removed, the "
         "report written and marked interrupted; the exit status is 128 + the signal (130, 143, 129).")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("dmabuf-emu")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed: pip install -e .)"


RUN_EPILOG = examples(
    "dmabuf-emu run --strategy move-notify --importers 4 --duration 3 --out runs/mn",
    "dmabuf-emu run scenarios/move-notify-ack.toml --out runs/mna",
    "dmabuf-emu run --strategy resv-fence --fault restart:target=importer-2,at=1.5 --out runs/restart",
    "dmabuf-emu run scenarios/revoke.toml --out runs/revoke",
    note="Stopped by Ctrl-C, SIGTERM or SIGHUP (timeout, a CI runner, a closing terminal), run stops the "
         "workload, takes the services down, removes the segments, writes report.json and report.md with "
         "`interrupted` ({signal, at, during}), says so in one line and exits 128 + the signal: 130 for "
         "SIGINT, 143 for SIGTERM, 129 for SIGHUP. Its services watch it: SIGKILLed, they stop by "
         "themselves within a lease and the exporter unlinks the segments.\n\n"
         "  timeout --preserve-status -s TERM 5 dmabuf-emu run --strategy pin --duration 30 --out runs/cut; echo \"exit $?\"")

DOWN_EPILOG = examples(
    "dmabuf-emu down runs/live",
    "dmabuf-emu down --all --dry-run      # list every run's leftovers on this machine, change nothing",
    "dmabuf-emu down --all                # stop orphaned services, unlink segments nobody holds",
    note="--all looks at this user's /dev/shm/dmabuf-* segments and exporter_svc / importer_svc processes. "
         "It stops services whose launcher (--launcher PID:START) is gone, then unlinks segments no process "
         "has open or mapped. Live runs, services started by up (they have no launcher, by design: stop them "
         "with down DIR) and other users' segments are left alone.")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmabuf-emu", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=Formatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    from deploy.demo import add_parser as add_demo_parser
    add_demo_parser(sub, Formatter, examples(
        "dmabuf-emu demo", note="Run it again with --force (it replaces the runs it left in --out), or "
                                "with another --out; --duration and the other run parameters apply to both runs."))

    r = sub.add_parser("run", help="up, drive the workload for --duration seconds, down, judge, report",
                       formatter_class=Formatter,
                       description="Start the services, run the workload under memory pressure for "
                                   "--duration seconds, stop everything, merge the history, judge it "
                                   "and write report.json, report.md and trace.json.",
                       epilog=RUN_EPILOG)
    r.add_argument("scenario", nargs="?", type=Path, help="a TOML scenario file (flags override it)")
    r.add_argument("--out", required=True, type=Path, help="run directory (created)")
    r.add_argument("--force", action="store_true", help=rundir.FORCE_HELP)
    r.add_argument("--fail-on-race", action="store_true", help="exit 1 if the checker finds any race")
    r.add_argument("--fail-on-finding", action="store_true",
                   help="exit 1 if the checker reports any finding (deadlock, fence forced, timeout)")
    r.add_argument("--predict", action="store_true",
                   help="after the checker, list the races the run could have had (as `check --predict`)")
    r.add_argument("--quiet", action="store_true", help="print only the summary")
    r.add_argument("--json", action="store_true", help="print report.json instead of the summary")
    oplog.add_log_options(r)
    options.add_arguments(r)

    u = sub.add_parser("up", help="start the exporter and importers in the background",
                       formatter_class=Formatter,
                       description="Start the exporter and the importers as background processes, wait "
                                   "until each answers ping, and write DIR/deploy.json. They attach "
                                   "their buffers and idle (no workload, no moves) until 'down' stops them. "
                                   "They outlive this command by design (no launcher watch): only 'down' stops them.",
                       epilog=examples("dmabuf-emu up --strategy resv-fence --out runs/live && "
                                       "dmabuf-emu status runs/live && dmabuf-emu down runs/live"))
    u.add_argument("scenario", nargs="?", type=Path, help="a TOML scenario file (flags override it)")
    u.add_argument("--out", required=True, type=Path, help="run directory (created)")
    u.add_argument("--force", action="store_true", help=rundir.FORCE_HELP)
    oplog.add_log_options(u)
    options.add_arguments(u)

    s = sub.add_parser("status", help="which services of a run are alive", formatter_class=Formatter,
                       description="Show each service of DIR's deployment: pid, alive or not, its state and "
                                   "how long it has run, and what stops it (down, for services started by up).",
                       epilog=examples("dmabuf-emu up --strategy pin --out runs/live && "
                                       "dmabuf-emu status runs/live && dmabuf-emu down runs/live"))
    s.add_argument("dir", type=Path, metavar="DIR")

    d = sub.add_parser("down", help="stop a run's services and remove its segments and sockets (--all: every run's leftovers)",
                       formatter_class=Formatter,
                       description="Ask every service to shut down (importers first), SIGTERM then "
                                   "SIGKILL those that do not, then unlink the run's shared-memory "
                                   "segments and remove its socket files. Safe after a crash, and twice.",
                       epilog=DOWN_EPILOG)
    d.add_argument("dir", type=Path, metavar="DIR", nargs="?", help="the run directory (not with --all)")
    d.add_argument("--all", action="store_true", help="every run on this machine: remove what nobody owns any more")
    d.add_argument("--dry-run", action="store_true", help="with --all: list only, change nothing")
    d.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help=with_default("seconds before escalating to signals", 5))

    c = sub.add_parser("check", help="re-judge a finished run directory and rewrite its reports",
                       formatter_class=Formatter, epilog=examples("dmabuf-emu check runs/mn --fail-on-race"),
                       description="Merge DIR/events into DIR/history.jsonl, run the race checker and "
                                   "rewrite report.json, report.md and trace.json.")
    c.add_argument("dir", type=Path, metavar="DIR")
    c.add_argument("--fail-on-race", action="store_true", help="exit 1 if any race was found (for CI)")
    c.add_argument("--fail-on-finding", action="store_true",
                   help="exit 1 if any finding was reported (deadlock, fence forced, timeout)")
    c.add_argument("--witness", type=int, metavar="N",
                   help="also write DIR/witness.md: the N-th race witness (1-based: 1 is the first, in "
                        "report.md's order; `replay --race` counts from 0) with its because-chain and a "
                        "Mermaid sequence diagram")
    c.add_argument("--predict", action="store_true",
                   help="also list the races the run could have had: DMA accesses that nothing orders before "
                        "a copy or free of their placement (report.json `predicted`, report.md \"Could have "
                        "raced\"; docs/prediction.md)")

    cm = sub.add_parser("compare", help="run the same workload under every strategy and print one table",
                        formatter_class=Formatter,
                        description="Run every strategy (unmap-hint under both hint policies) with the same "
                                    "parameters, one after the other, each in OUT/<strategy>, and print a "
                                    "markdown table: races, corrupted jobs, moves completed and refused, "
                                    "map and move latency. --strategy naming a strategy of your own (a .py "
                                    "file or an installed one) adds it as a last row.",
                        epilog=examples("dmabuf-emu compare --importers 4 --duration 3 --out runs/compare",
                                        "dmabuf-emu compare --strategy docs/examples/move_notify_ack_defer.py "
                                        "--importers 4 --duration 3 --out runs/compare",
                                        "dmabuf-emu compare --table-only --out runs/compare",
                                        "dmabuf-emu compare --sim --strategies resv-fence,revoke,resv-fence+map-unlocked "
                                        "--duration 0.5 --out runs/subset"))
    cm.add_argument("scenario", nargs="?", type=Path, help="a TOML scenario file (flags override it)")
    cm.add_argument("--out", required=True, type=Path, help="directory for the runs (created)")
    cm.add_argument("--force", action="store_true", help="replace the runs already in --out")
    cm.add_argument("--table-only", action="store_true", help="do not run: rebuild the table from OUT/*/report.json")
    cm.add_argument("--strategies", default=None, metavar="NAME,...",
                    help="only these, in this order: built-in names (unmap-hint: both hint policies), .py files, "
                         "installed strategies, mutants BASE+MUTATION (default: every built-in one)")
    cm.add_argument("--sim", action="store_true", help="simulate each run (dmabuf-emu sim) instead of running it")
    cm.add_argument("--versus", type=Path, default=None, metavar="DIR",
                    help="with --table-only: one table of OUT's runs beside DIR's (real against simulated)")
    options.add_arguments(cm)

    from deploy.campaign import add_parser as add_campaign_parser
    add_campaign_parser(sub, Formatter)
    from deploy.sim_cmd import add_parsers as add_sim_parsers
    add_sim_parsers(sub)
    from deploy.explore_cmd import add_parsers as add_explore_parsers
    add_explore_parsers(sub)
    from deploy.explore_table import add_parser as add_explore_table_parser
    add_explore_table_parser(sub)
    b = sub.add_parser("bench", help="measure the emulator against its floors (zmq round trip, memcpy)",
                       formatter_class=Formatter,
                       description="Round trips, DMA bandwidth, move latency, scaling, checker speed and "
                                   "time to first race, each as the median of repetitions with min and max, "
                                   "ratios against baselines measured in the same run. Writes OUT/bench.json "
                                   "and OUT/bench.md and prints the table.",
                       epilog=examples("dmabuf-emu bench --quick --out runs/bench"))
    b.add_argument("--out", required=True, type=Path, help="directory for bench.json and bench.md (created)")
    b.add_argument("--quick", action="store_true", help="fewer and shorter repetitions (under 3 minutes)")
    b.add_argument("--force", action="store_true", help="replace the bench.json and bench.md already in --out")
    b.add_argument("--dry-run", action="store_true", help="say what would be measured, measure nothing")
    b.add_argument("--parts", default=None, metavar="PART,...",
                   help="only these parts: rtt, mem, scaling, checker, predict, moves, races, sim, explore (default: all)")

    st = sub.add_parser("strategies", help="list the buffer-move strategies, check one, or draw its state diagrams",
                        formatter_class=Formatter,
                        description="List the strategies with one line each (built-in, then installed ones: entry "
                                    "point group dmabuf_emu.strategies); the rules, the sentence of the 2012 thread "
                                    "each built-in one models and its hazard are in protocol/strategies/*.py. "
                                    "--diagram draws both halves' state diagrams from the strategy's tables; "
                                    "NAME --table prints the tables that run, every row marked by its origin "
                                    "(base, strategy, load, kind), and the strategy's timers (each declared "
                                    "beside its tables with its length in run parameters, e.g. grace = 2 * dma_ms; "
                                    "the notify timer is ack_timeout_ms unless the strategy declares its own), "
                                    "which the diagrams' titles name too; --vocabulary lists what a table may "
                                    "name, each with its rule; "
                                    "--check loads a strategy of your own and checks its tables, as every "
                                    "command does before it starts anything.",
                        epilog=examples("dmabuf-emu strategies --diagram resv-fence",
                                        "dmabuf-emu strategies resv-fence --table",
                                        "dmabuf-emu strategies --diagram move-notify-ack --format dot --steps",
                                        "dmabuf-emu strategies --check docs/examples/move_notify_ack_defer.py",
                                        "dmabuf-emu strategies --doc",
                                        "dmabuf-emu strategies --mutants",
                                        "dmabuf-emu strategies --vocabulary",
                                        "dmabuf-emu strategies --diagram resv-fence+map-unlocked"))
    st.add_argument("name", nargs="?", metavar="NAME|PATH", help="the strategy --table prints")
    what = st.add_mutually_exclusive_group()
    what.add_argument("--table", action="store_true",
                      help="print NAME's tables as they run: base, strategy and load rows, each marked by origin")
    what.add_argument("--diagram", metavar="NAME|PATH", help="print the exporter's and the importer's state diagrams")
    what.add_argument("--check", metavar="NAME|PATH", help="load the strategy and check its tables; one line either way, then one per "
                           "warning (a state a move may never leave: protocol/liveness_check.py)")
    what.add_argument("--doc", action="store_true", help="print docs/strategies.md (every built-in strategy's diagrams)")
    what.add_argument("--vocabulary", action="store_true",
                      help="print every state, event, guard and step a table may name, both halves, each with "
                           "its one-line rule")
    what.add_argument("--mutants", action="store_true",
                      help="list the mutants (kernel rules broken: BASE+MUTATION), each with the rule it breaks, "
                           "its source, what the checker must find and the workload it needs")
    st.add_argument("--format", choices=("mermaid", "dot"), default="mermaid", help="diagram format")
    st.add_argument("--steps", action="store_true", help="put each rule's steps on its edge")
    return p


def _fail(code: int, message: str) -> int:
    try:
        print(f"dmabuf-emu: {message}", file=sys.stderr)
    except (OSError, ValueError):  # no terminal any more (SIGHUP): the exit status says it
        pass
    return code


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if hasattr(args, "log_level"):  # run, up, sim, explore: the operational logs' level and --verbose
            oplog.configure_cli_logging(args)
        with stop_signals():  # SIGTERM and SIGHUP stop a command as Ctrl-C does (deploy/interrupt.py)
            return _COMMANDS[args.command](args)
    except Interrupted as exc:
        return _fail(exc.exit_code, str(exc))
    except (OptionError, StrategyError, oplog.LevelError) as exc:
        return _fail(EXIT_USAGE, str(exc))
    except DeployError as exc:
        return _fail(EXIT_DEPLOY, str(exc))
    except OSError as exc:  # a path that cannot be used: one line, not a traceback
        return _fail(EXIT_DEPLOY, f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
    except KeyboardInterrupt:
        return _fail(130, "interrupted")


def _cmd_strategies(args: argparse.Namespace) -> int:
    from deploy import diagram
    from protocol import strategies
    if args.doc:
        print(diagram.document(strategies.STRATEGIES), end="")
        return EXIT_OK
    if args.mutants:
        print("\n".join(_mutant_lines()))
        return EXIT_OK
    if args.vocabulary:
        print(diagram.vocabulary(), end="")
        return EXIT_OK
    if args.table or args.name:
        if not (args.table and args.name):
            raise OptionError("strategies: NAME goes with --table (dmabuf-emu strategies NAME --table)")
        print(diagram.tables(strategies.resolve(args.name)), end="")
        return EXIT_OK
    if args.diagram or args.check:
        module = strategies.resolve(args.diagram or args.check)
        if args.check:
            from protocol.liveness_check import strategy_warnings
            warned = strategy_warnings(module)
            print(f"{module.SOURCE}: strategy {module.NAME}: tables checked, ok"
                  + (f" ({len(warned)} warning{'s' if len(warned) > 1 else ''})" if warned else ""))
            for line in warned:
                print(f"warning: {line}")
        else:
            print(diagram.diagrams(module, args.format, args.steps), end="")
        return EXIT_OK
    listed = dict(strategies.STRATEGIES)
    for name in strategies.installed():
        try:
            listed[name] = strategies.resolve(name)
        except strategies.StrategyError as exc:
            print(f"dmabuf-emu: {exc}", file=sys.stderr)
    width = max(map(len, listed))
    for name, module in listed.items():
        where = "" if name in strategies.STRATEGIES else "  (installed)"
        own = module.EXPORTER.timers   # the timers it declares (the notify timer's default is not one)
        timers = f"  (timers: {', '.join(f'{t} = {n}' for t, n in own.items())})" if own else ""
        print(f"{name.ljust(width)}  {module.SUMMARY}{timers}{where}")
    return EXIT_OK


def _mutant_lines() -> list[str]:
    from protocol.strategies import mutants, resolve
    lines = [f"{len(mutants.names())} mutants (protocol/strategies/mutants.py); run them all with: dmabuf-emu "
             f"campaign --strategies mutants --seeds 10 --importers 4 --buffers 8 --duration 3 --jobs 2 "
             f"--table mutation-score --out runs/mutants", ""]
    for name in mutants.names():
        m = resolve(name).MUTANT
        params = mutants.params_of(name)
        lines += [name, f"    breaks    {m['rule']}", f"    source    {m['source']}", f"    kind      {m['kind']}",
                  f"    expect    {m['expect']}"]
        if params:
            lines.append("    workload  " + " ".join(
                [f"--{k.replace('_', '-')} {v:g}" for k, v in params.items() if k != "faults"]
                + [f"--fault {text}" for text in params.get("faults", ())]))
        lines.append("")
    return lines[:-1]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _cmd_up(args: argparse.Namespace) -> int:
    params = options.resolve(args.scenario, vars(args))
    rundir.claim([args.out], force=args.force, say=_say)
    dep = up(params, args.out)
    print(f"up: run {dep.run_id}, strategy {params.strategy}: exporter pid {dep.exporter.pid}, "
          + ", ".join(f"{i.name} pid {i.pid}" for i in dep.importers))
    print(f"    {dep.out / 'deploy.json'}; stop with: dmabuf-emu down {args.out}")
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    dep, services = status(args.dir)
    stops = (f"they stop with their launcher, pid {dep.launcher.split(':')[0]}" if dep.launcher
             else f"started by up: they run until dmabuf-emu down {args.dir}")
    print(f"run {dep.run_id}, strategy {dep.params.strategy}; {stops}")
    for s in services:
        up_for = f"up {s.uptime_s:.0f} s" if s.uptime_s is not None else ""
        print(f"  {s.name:<12} pid {s.pid:<8} {'alive' if s.alive else 'dead ':<6} {up_for:<10} {s.state}")
    return EXIT_OK if all(s.alive for s in services) else EXIT_RACE


def _cmd_down(args: argparse.Namespace) -> int:
    if args.all == (args.dir is not None):
        raise OptionError("down: give a run directory DIR, or --all for every run on this machine")
    if args.dry_run and not args.all:
        raise OptionError("down: --dry-run goes with --all")
    if args.all:
        from deploy.leftovers import render, sweep
        result = sweep(dry_run=args.dry_run, timeout_s=args.timeout)
        print("\n".join(render(result)))
        return EXIT_OK if not result.not_stopped else EXIT_DEPLOY
    report = down(args.dir, timeout_s=args.timeout)
    parts = []
    for label, names in (("stopped", report.graceful), ("terminated", report.terminated),
                         ("killed", report.killed), ("already gone", report.already_gone)):
        if names:
            parts.append(f"{label}: {', '.join(names)}")
    parts.append(f"segments removed: {len(report.segments_removed)}")
    print("down: " + "; ".join(parts))
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from deploy.run import run
    from deploy.summary import summary_lines
    params = options.resolve(args.scenario, vars(args))
    rundir.claim([args.out], force=args.force, say=_say)
    report = run(params, args.out, quiet=args.quiet or args.json, predict=args.predict)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print("\n".join(summary_lines(report, str(args.out))))
        if args.predict:
            from checker.predict import summary_line
            pred = report["predicted"]
            print(f"  {pred['refused'] if 'refused' in pred else summary_line(pred)}")
            if "refused" not in pred:
                print(_around_line(report, args.out))
    return _exit_status(args, report)


def _around_line(report: dict, run_dir: Path) -> str:
    """After a prediction: the command that confirms its candidates (and lockdep's potential
    deadlocks) by executed schedules, or tries the crossings the run did not have when it has none."""
    potential = (report.get("findings", {}).get("potential_deadlock") or {}).get("count") or 0
    candidates = report["predicted"]["candidates"]
    cmd = f"dmabuf-emu explore --around {run_dir} --out {run_dir}-around"
    if candidates or potential:
        return f"  confirm them: {cmd}   (candidates {candidates}, potential deadlocks {potential})"
    return f"  nothing predicted; to try crossings the run did not have: {cmd}"


def _exit_status(args: argparse.Namespace, report: dict) -> int:
    failed = (args.fail_on_race and report.get("races", {}).get("total")) or \
        (args.fail_on_finding and report.get("findings", {}).get("total"))
    return EXIT_RACE if failed else EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    from checker import check_run
    from deploy.summary import summary_lines
    if not (args.dir / "events").is_dir() and not (args.dir / "history.jsonl").exists():
        raise DeployError(f"{args.dir}: not a run directory (no events/ and no history.jsonl)")
    from deploy.reporting import read_report, rejudged
    previous = read_report(args.dir)
    report = check_run(args.dir, merge=(args.dir / "events").is_dir())
    refused = None
    if args.predict:
        from checker.predict import PredictRefused, predict_history, summary_line
        try:
            report["predicted"] = predict_history(args.dir / "history.jsonl")
        except PredictRefused as exc:
            refused = str(exc)
    report = rejudged(args.dir, report, previous)
    print("\n".join(summary_lines(report, str(args.dir))))
    if refused is not None:
        return _fail(EXIT_USAGE, f"check --predict: {refused}")
    if args.predict:
        print(f"  {summary_line(report['predicted'])}")
        print(_around_line(report, args.dir))
    if args.witness is not None:
        from checker.explain import write_witness_md
        try:
            w = write_witness_md(args.dir / "history.jsonl", args.witness, args.dir / "witness.md", report=report)
        except IndexError as exc:
            return _fail(EXIT_USAGE, f"check --witness: {exc}")
        print(f"  witness    {args.dir / 'witness.md'}: {w['kind']} {w['index']}")
    return _exit_status(args, report)


def _cmd_compare(args: argparse.Namespace) -> int:
    from deploy.compare import compare, parse_strategies, run_dirs, table, variants, versus
    from deploy.run import run
    try:
        only = parse_strategies(args.strategies) if args.strategies is not None else None
        if only is not None:
            variants(only)
    except ValueError as exc:
        raise OptionError(f"--strategies: {exc}") from None
    if args.table_only:
        print(table(args.out, only) if args.versus is None else versus(args.out, args.versus))
        return EXIT_OK
    params = options.resolve(args.scenario, vars(args))
    rundir.claim(run_dirs(args.out, only, extra=params.strategy), force=args.force, say=_say)

    def one(p: options.RunParams, out: Path) -> dict:
        if args.sim:
            from sim.run import simulate
            return simulate(p, out).report
        return run(p, out, quiet=True)

    def done(label: str, report: dict) -> None:
        print(f"  {label}: races {report['races']['total']}, moves completed {report['moves']['completed']}, "
              f"refused {report['moves']['refused']}", file=sys.stderr, flush=True)

    print(f"compare: {len(variants(only, extra=params.strategy))} runs of "
          f"{params.duration:g} s each -> {args.out}", file=sys.stderr)
    print(compare(params, args.out, one, done, only))
    return EXIT_OK


def _cmd_campaign(args: argparse.Namespace) -> int:
    from deploy.campaign import main as campaign_main
    return campaign_main(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from deploy.demo import main as demo_main
    return demo_main(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from deploy.bench import FULL, QUICK, run_bench, stderr_progress
    from deploy.bench.report import render_md
    import dataclasses
    from deploy.bench import PARTS
    cfg = QUICK if args.quick else FULL
    if args.parts is not None:
        parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
        bad = [p for p in parts if p not in PARTS]
        if bad or not parts:
            return _fail(EXIT_USAGE, f"bench: --parts: unknown part {bad[0] if bad else '(none)'!r} (known: {', '.join(PARTS)})")
        cfg = dataclasses.replace(cfg, parts=parts)
    rundir.claim_result(args.out, ("bench.json", "bench.md"), force=args.force, what="a bench result")
    if args.dry_run:
        print(f"bench ({'quick' if args.quick else 'full'}): would measure {', '.join(cfg.parts)} "
              f"and write {args.out / 'bench.json'} and {args.out / 'bench.md'}")
        return EXIT_OK
    command = ("dmabuf-emu bench" + (" --quick" if args.quick else "") + (f" --parts {args.parts}" if args.parts else "")
               + f" --out {args.out}")
    result = run_bench(cfg, args.out, command=command, progress=stderr_progress)
    print(render_md(result))
    return EXIT_OK


def _cmd_sim(args: argparse.Namespace) -> int:
    from deploy.sim_cmd import cmd_sim
    return cmd_sim(args)


def _cmd_replay(args: argparse.Namespace) -> int:
    from deploy.sim_cmd import cmd_replay
    return cmd_replay(args)


def _cmd_explore(args: argparse.Namespace) -> int:
    from deploy.explore_cmd import cmd_explore
    return cmd_explore(args)


def _say_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _cmd_shrink(args: argparse.Namespace) -> int:
    from deploy.explore_cmd import cmd_shrink
    return cmd_shrink(args)


def _cmd_explore_table(args: argparse.Namespace) -> int:
    from deploy.explore_table import cmd
    return cmd(args)


_COMMANDS = {"demo": _cmd_demo, "run": _cmd_run, "sim": _cmd_sim, "replay": _cmd_replay, "explore": _cmd_explore, "shrink": _cmd_shrink,
             "explore-table": _cmd_explore_table, "compare": _cmd_compare, "campaign": _cmd_campaign, "bench": _cmd_bench,
             "up": _cmd_up, "status": _cmd_status, "down": _cmd_down, "check": _cmd_check,
             "strategies": _cmd_strategies}

if __name__ == "__main__":
    sys.exit(main())
