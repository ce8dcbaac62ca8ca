"""dmabuf-emu demo: what the project is for, in one short command.

The callback design proposed in 2012 (`move-notify`: notify the importers, then move at once) and
the fenced design Linux shipped (`resv-fence`: reservation lock, move_notify, wait for fences)
run the same workload, one after the other, each a whole real run (deploy.run.run: an exporter
and importer processes, shared memory, the checker) in OUT/<strategy>, through the machinery of
`dmabuf-emu compare`, whose table it prints. Everything said after the table is read from the two
report.json files: the race counts, one witness as the checker wrote it, and where the reports and
the Perfetto traces are. Nothing here decides what raced.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
from pathlib import Path
from typing import Any, TextIO

from deploy import options
from deploy.options import RunParams
from deploy.summary import RACE_KINDS

STRATEGIES = ("move-notify", "resv-fence")
DEFAULTS = RunParams(importers=4, duration=2.0)   # the README's compare workload, shorter
DEFAULT_OUT = Path("runs/demo")
WIDTH = 100
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")


def add_parser(sub: Any, formatter: type[argparse.HelpFormatter], epilog: str) -> None:
    from protocol.strategies import STRATEGIES as ALL
    d = sub.add_parser(
        "demo", help="move-notify racing and resv-fence not, side by side, in under a minute",
        formatter_class=formatter, epilog=epilog,
        description=f"Run the same workload under move-notify ({ALL['move-notify'].SUMMARY}) and "
                    f"resv-fence ({ALL['resv-fence'].SUMMARY}), {DEFAULTS.duration:g} s each, as two "
                    f"real runs in OUT/move-notify and OUT/resv-fence. Prints their race counts side by "
                    f"side, one race as the checker's witness tells it, and where the reports and the "
                    f"Perfetto traces are.")
    d.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the two runs (created)")
    d.add_argument("--force", action="store_true", help="replace the runs an earlier demo left in --out")
    options.add_arguments(d, title="run parameters of both runs", defaults=DEFAULTS,
                          skip=("strategy", "hint_policy"))


def params_from(flags: dict[str, Any]) -> RunParams:
    """The demo's defaults, then the flags given (--fault too); checked like `run`'s."""
    given = {k: v for k, v in flags.items() if v is not None}
    own = {f.name: getattr(DEFAULTS, f.name) for f in dataclasses.fields(RunParams)
           if getattr(DEFAULTS, f.name) != getattr(RunParams(), f.name)}
    return options.resolve(None, {**own, **given})


def witness(report: dict[str, Any]) -> list[tuple[str, str]]:
    """One race as the checker told it: a read that found another buffer's bytes together with
    the race the checker linked it to, if it linked one; else the first witness it kept."""
    for example in report.get("corruption", {}).get("examples", []):
        race = example.get("race") or {}
        if race.get("sentence") and example.get("sentence"):
            return [(race.get("kind", "race"), race["sentence"]), ("in the bytes", example["sentence"])]
    for kind in RACE_KINDS:
        for w in report.get("witnesses", {}).get(kind, []):
            if w.get("sentence"):
                return [(kind, w["sentence"])]
    return []


def _counts(report: dict[str, Any]) -> str:
    races = report.get("races", {})
    moves = report.get("moves", {}).get("completed", 0)
    if not races.get("total"):
        return f"no race in {moves} moves"
    kinds = ", ".join(f"{k} {races[k]}" for k in RACE_KINDS if races.get(k))
    corrupted = report.get("corruption", {}).get("jobs", 0)
    return (f"{races['total']} races ({kinds}) in {moves} moves"
            + (f"; {corrupted} reads found another buffer's bytes" if corrupted else ""))


def _how_many(n: int) -> str:
    return NUMBERS[n] if n < len(NUMBERS) else str(n)


def ending(reports: dict[str, dict[str, Any]], dirs: dict[str, Path], table: str) -> list[str]:
    """What the demo prints when both runs are judged. Its last line points at `compare`, which runs
    every built-in strategy: their number is the registry's, so that a strategy added is counted."""
    from protocol.strategies import STRATEGIES as ALL
    lines = ["", table, ""]
    width = max(map(len, reports))
    for name, report in reports.items():
        lines.append(f"{name.ljust(width)}  {_counts(report)}")
    mn, rf = reports["move-notify"], reports["resv-fence"]
    if not mn.get("races", {}).get("total"):
        lines.append("(move-notify met no DMA in flight in so short a run: try a longer --duration)")
    if rf.get("races", {}).get("total"):
        lines.append(f"(resv-fence should never race: see {dirs['resv-fence'] / 'report.md'})")
    told = witness(mn)
    if told:
        lines += ["", f"One of move-notify's races, as the checker tells it ({dirs['move-notify'] / 'report.md'} has more):"]
        for label, sentence in told:
            lines.append(textwrap.fill(sentence, WIDTH, initial_indent=f"  {label}: ", subsequent_indent="    "))
    lines += ["",
              "reports  " + "  ".join(str(d / "report.md") for d in dirs.values()),
              "traces   " + "  ".join(str(d / "trace.json") for d in dirs.values())
              + "  (open in https://ui.perfetto.dev)",
              f"next     dmabuf-emu compare --out runs/compare  (all {_how_many(len(ALL))} strategies, "
              f"README \"The strategies\")"]
    return lines


def dirs_of(out: Path) -> dict[str, Path]:
    from deploy.compare import run_dirs
    return dict(zip(STRATEGIES, run_dirs(out, STRATEGIES)))


def demo(params: RunParams, out: Path, *, stream: TextIO | None = None) -> tuple[dict[str, dict[str, Any]], str]:
    """Both runs, each with its progress lines on `stream` (sys.stderr); returns their reports and the table."""
    stream = stream or sys.stderr
    from deploy.compare import compare
    from deploy.run import run
    reports: dict[str, dict[str, Any]] = {}

    def one(p: RunParams, run_out: Path) -> dict[str, Any]:
        print(f"demo {len(reports) + 1}/{len(STRATEGIES)}: {p.strategy}", file=stream, flush=True)
        return run(p, run_out, stream=stream)

    def done(label: str, report: dict[str, Any]) -> None:
        reports[label] = report
        print(f"  {label}: {_counts(report)}", file=stream, flush=True)

    print(f"demo: move-notify and resv-fence under the same workload ({params.importers} importers, "
          f"{params.buffers} buffers, {params.move_rate:g} moves/s), {params.duration:g} s each -> {out}",
          file=stream, flush=True)
    table = compare(params, out, one, done, only=STRATEGIES)
    return reports, table


def main(args: argparse.Namespace) -> int:
    from deploy import rundir
    params = params_from(vars(args))
    dirs = dirs_of(args.out)
    rundir.claim(list(dirs.values()), force=args.force, say=lambda line: print(line, file=sys.stderr))
    reports, table = demo(params, args.out)
    print("\n".join(ending(reports, dirs, table)))
    return 0
