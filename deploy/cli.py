"""The dmabuf-emu command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deploy import options
from deploy.launcher import DeployError, down, status, up
from deploy.options import OptionError

EXIT_OK, EXIT_RACE, EXIT_USAGE, EXIT_DEPLOY = 0, 1, 2, 3

DESCRIPTION = """\
dmabuf-emu: run the answers to "what may an exporter do when it wants to move a buffer that
importers have mapped?" (linux-media, February 2012) for real. An exporter process and N importer
processes share POSIX shared memory and talk over ZeroMQ; a memory manager moves buffers under
pressure; every DMA access goes through an emulated IOMMU; a race checker judges the history."""

EPILOG = """\
examples:
  dmabuf-emu strategies
  dmabuf-emu run --strategy pin --importers 2 --duration 3 --out runs/pin
  dmabuf-emu run --strategy move-notify --importers 4 --out runs/mn --fail-on-race
  dmabuf-emu run scenarios/resv-fence.toml --seed 7 --out runs/rf
  dmabuf-emu up --strategy resv-fence --out runs/live && dmabuf-emu status runs/live && dmabuf-emu down runs/live
  dmabuf-emu check runs/mn
  dmabuf-emu sim --strategy move-notify --importers 4 --seed 7 --out runs/sim-mn && dmabuf-emu replay runs/sim-mn --out runs/sim-mn2
  dmabuf-emu explore --strategy move-notify-ack --search pct --out runs/x-mna
  dmabuf-emu explore --strategy resv-fence --search exhaustive --bound 1 --out runs/x-rf

a run directory holds deploy.json, events/*.jsonl, history.jsonl, report.json, report.md and
trace.json (open it in https://ui.perfetto.dev).
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmabuf-emu", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="up, drive the workload for --duration seconds, down, judge, report",
                       description="Start the services, run the workload under memory pressure for "
                                   "--duration seconds, stop everything, merge the history, judge it "
                                   "and write report.json, report.md and trace.json.",
                       epilog="example: dmabuf-emu run --strategy move-notify --importers 4 --duration 3 --out runs/mn")
    r.add_argument("scenario", nargs="?", type=Path, help="a TOML scenario file (flags override it)")
    r.add_argument("--out", required=True, type=Path, help="run directory (created)")
    r.add_argument("--fail-on-race", action="store_true", help="exit 1 if the checker finds any race")
    r.add_argument("--quiet", action="store_true", help="print only the summary")
    r.add_argument("--json", action="store_true", help="print report.json instead of the summary")
    options.add_arguments(r)

    u = sub.add_parser("up", help="start the exporter and importers in the background",
                       description="Start the exporter and the importers as background processes, wait "
                                   "until each answers ping, and write DIR/deploy.json. They attach "
                                   "their buffers and idle until 'run' drives them or 'down' stops them.")
    u.add_argument("scenario", nargs="?", type=Path, help="a TOML scenario file (flags override it)")
    u.add_argument("--out", required=True, type=Path, help="run directory (created)")
    options.add_arguments(u)

    s = sub.add_parser("status", help="which services of a run are alive",
                       description="Show each service of DIR's deployment: pid, alive or not, and its state.")
    s.add_argument("dir", type=Path, metavar="DIR")

    d = sub.add_parser("down", help="stop a run's services and remove its segments and sockets",
                       description="Ask every service to shut down (importers first), SIGTERM then "
                                   "SIGKILL those that do not, then unlink the run's shared-memory "
                                   "segments and remove its socket files. Safe after a crash, and twice.")
    d.add_argument("dir", type=Path, metavar="DIR")
    d.add_argument("--timeout", type=float, default=5.0, help="seconds before escalating to signals (default 5)")

    c = sub.add_parser("check", help="re-judge a finished run directory and rewrite its reports",
                       description="Merge DIR/events into DIR/history.jsonl, run the race checker and "
                                   "rewrite report.json, report.md and trace.json.")
    c.add_argument("dir", type=Path, metavar="DIR")
    c.add_argument("--fail-on-race", action="store_true", help="exit 1 if any race was found (for CI)")

    cm = sub.add_parser("compare", help="run the same workload under every strategy and print one table",
                        description="Run every strategy (unmap-hint under both hint policies) with the same "
                                    "parameters, one after the other, each in OUT/<strategy>, and print a "
                                    "markdown table: races, corrupted jobs, moves completed and refused, "
                                    "map and move latency.",
                        epilog="example: dmabuf-emu compare --importers 4 --duration 3 --out runs/compare")
    cm.add_argument("scenario", nargs="?", type=Path, help="a TOML scenario file (flags override it)")
    cm.add_argument("--out", required=True, type=Path, help="directory for the runs (created)")
    cm.add_argument("--table-only", action="store_true", help="do not run: rebuild the table from OUT/*/report.json")
    cm.add_argument("--sim", action="store_true", help="simulate each run (dmabuf-emu sim) instead of running it")
    cm.add_argument("--versus", type=Path, default=None, metavar="DIR",
                    help="with --table-only: one table of OUT's runs beside DIR's (real against simulated)")
    options.add_arguments(cm)

    from deploy.campaign import add_parser as add_campaign_parser
    add_campaign_parser(sub)
    from deploy.sim_cmd import add_parsers as add_sim_parsers
    add_sim_parsers(sub)
    from deploy.explore_cmd import add_parsers as add_explore_parsers
    add_explore_parsers(sub)
    from deploy.explore_table import add_parser as add_explore_table_parser
    add_explore_table_parser(sub)
    b = sub.add_parser("bench", help="measure the emulator against its floors (zmq round trip, memcpy)",
                       description="Round trips, DMA bandwidth, move latency, scaling, checker speed and "
                                   "time to first race, each as the median of repetitions with min and max, "
                                   "ratios against baselines measured in the same run. Writes OUT/bench.json "
                                   "and OUT/bench.md and prints the table.",
                       epilog="example: dmabuf-emu bench --quick --out runs/bench")
    b.add_argument("--out", required=True, type=Path, help="directory for bench.json and bench.md (created)")
    b.add_argument("--quick", action="store_true", help="fewer and shorter repetitions (under 3 minutes)")
    b.add_argument("--parts", default=None, metavar="PART,...",
                   help="only these parts: rtt, mem, scaling, checker, moves, races, sim, explore (default: all)")

    sub.add_parser("strategies", help="list the buffer-move strategies",
                   description="List the strategies with one line each; the rules, the sentence of the "
                               "2012 thread each one models and its hazard are in protocol/strategies/*.py.")
    return p


def _fail(code: int, message: str) -> int:
    print(f"dmabuf-emu: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return _COMMANDS[args.command](args)
    except OptionError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except DeployError as exc:
        return _fail(EXIT_DEPLOY, str(exc))
    except OSError as exc:  # a path that cannot be used: one line, not a traceback
        return _fail(EXIT_DEPLOY, f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
    except KeyboardInterrupt:
        return _fail(130, "interrupted")


def _cmd_strategies(args: argparse.Namespace) -> int:
    from protocol.strategies import STRATEGIES
    width = max(map(len, STRATEGIES))
    for name, module in STRATEGIES.items():
        print(f"{name.ljust(width)}  {module.SUMMARY}")
    return EXIT_OK


def _cmd_up(args: argparse.Namespace) -> int:
    params = options.resolve(args.scenario, vars(args))
    dep = up(params, args.out)
    print(f"up: run {dep.run_id}, strategy {params.strategy}: exporter pid {dep.exporter.pid}, "
          + ", ".join(f"{i.name} pid {i.pid}" for i in dep.importers))
    print(f"    {dep.out / 'deploy.json'}; stop with: dmabuf-emu down {args.out}")
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    dep, services = status(args.dir)
    print(f"run {dep.run_id}, strategy {dep.params.strategy}")
    for s in services:
        print(f"  {s.name:<12} pid {s.pid:<8} {'alive' if s.alive else 'dead ':<6} {s.state}")
    return EXIT_OK if all(s.alive for s in services) else EXIT_RACE


def _cmd_down(args: argparse.Namespace) -> int:
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
    report = run(params, args.out, quiet=args.quiet or args.json)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print("\n".join(summary_lines(report, str(args.out))))
    return EXIT_RACE if args.fail_on_race and report.get("races", {}).get("total") else EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    from checker import check_run
    from deploy.summary import summary_lines
    if not (args.dir / "events").is_dir() and not (args.dir / "history.jsonl").exists():
        raise DeployError(f"{args.dir}: not a run directory (no events/ and no history.jsonl)")
    from deploy.reporting import read_report, rejudged
    previous = read_report(args.dir)
    report = rejudged(args.dir, check_run(args.dir, merge=(args.dir / "events").is_dir()), previous)
    print("\n".join(summary_lines(report, str(args.dir))))
    return EXIT_RACE if args.fail_on_race and report.get("races", {}).get("total") else EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from deploy.compare import compare, table, variants, versus
    from deploy.run import run
    if args.table_only:
        print(table(args.out) if args.versus is None else versus(args.out, args.versus))
        return EXIT_OK
    params = options.resolve(args.scenario, vars(args))

    def one(p: options.RunParams, out: Path) -> dict:
        if args.sim:
            from sim.run import simulate
            return simulate(p, out).report
        return run(p, out, quiet=True)

    def done(label: str, report: dict) -> None:
        print(f"  {label}: races {report['races']['total']}, moves completed {report['moves']['completed']}, "
              f"refused {report['moves']['refused']}", file=sys.stderr, flush=True)

    print(f"compare: {len(variants())} runs of "
          f"{params.duration:g} s each -> {args.out}", file=sys.stderr)
    print(compare(params, args.out, one, done))
    return EXIT_OK


def _cmd_campaign(args: argparse.Namespace) -> int:
    from deploy.campaign import main as campaign_main
    return campaign_main(args)


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


def _cmd_shrink(args: argparse.Namespace) -> int:
    from deploy.explore_cmd import cmd_shrink
    return cmd_shrink(args)


def _cmd_explore_table(args: argparse.Namespace) -> int:
    from deploy.explore_table import cmd
    return cmd(args)


_COMMANDS = {"run": _cmd_run, "sim": _cmd_sim, "replay": _cmd_replay, "explore": _cmd_explore, "shrink": _cmd_shrink,
             "explore-table": _cmd_explore_table, "compare": _cmd_compare, "campaign": _cmd_campaign, "bench": _cmd_bench,
             "up": _cmd_up, "status": _cmd_status, "down": _cmd_down, "check": _cmd_check,
             "strategies": _cmd_strategies}

if __name__ == "__main__":
    sys.exit(main())
