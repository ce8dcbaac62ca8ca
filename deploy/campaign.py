"""dmabuf-emu campaign: every strategy x fault plan x seed, J runs at a time, then one comparison.

Each run is `python -m deploy.cli run` in a subprocess of its own (its own run id, so its own
segment names; its own scratch directory, so its own socket files) and lands in
`OUT/runs/<strategy>/<plan>/seed-<n>/` once finished. A run directory holding a report.json is a
finished run: a campaign started again with the same command skips it, so an interrupted campaign
resumes where it stopped. The comparison (`OUT/summary.json`, `OUT/summary.md`, `OUT/plots/*.png`)
is derived from the finished runs' directories only (deploy/campaign_report.py, deploy/plots.py),
so `--report-only` rebuilds it without running anything.

Runs execute in a short scratch directory under /tmp (ipc socket paths must stay under 108 bytes
whatever OUT is) and are moved into OUT when they end. Ctrl-C (or SIGTERM, SIGHUP) stops cleanly: every
running run gets SIGINT and takes its services down itself; whatever does not stop in time is
killed and `down` is run on its directory, so nothing stays in /dev/shm or the process table.

With `--scheduler tcp://HOST:PORT` the runs are tasks on a Dask distributed cluster: a worker runs
the services locally (the same subprocess), then returns the run directory as a tar blob that is
unpacked into OUT/runs/... here. Workers need dmabuf-emu installed; see docs/commands-and-scenarios.md ("Campaigns").

This module imports only the standard library, deploy.options and deploy.campaign_report (which
imports nothing of ours) at import time: the command line parser of every `dmabuf-emu run` child
imports it. campaign_report never imports this module: the comparison is derived from the run
directories alone.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

from deploy import campaign_report, options
from deploy.campaign_report import read_report
from deploy.options import OptionError, RunParams

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RUN_GRACE_S = 120.0        # a run taking longer than duration + this is stopped as hung
RUN_STOP_TIMEOUT_S = 20.0  # after SIGINT, how long a run may take to take its services down
EXIT_OK, EXIT_USAGE, EXIT_FAILED_RUNS = 0, 2, 3


class CampaignError(OptionError):
    """A campaign that cannot start as asked: one line saying why."""


# ---------------------------------------------------------------------------------- what to run

def strategy_variants(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """`all` or `pin,move-notify,...` -> [(label, overrides)]. `all` has unmap-hint twice, as
    `unmap-hint-optimistic` and `unmap-hint-conservative` (like `dmabuf-emu compare`); those labels
    may also be named; a plain `unmap-hint` uses the campaign's --hint-policy. A strategy of the
    user's own (a .py path, or an installed one) is labelled by its NAME; `all,./mine.py` runs
    every built-in and it. `mutants` is every declared mutant (BASE+MUTATION, with the run
    parameters its workload needs) and composition, and their controls: each base strategy under
    each of those workloads (`resv-fence`, `resv-fence-pin-ratio-0.25`); a mutant may also be
    named by itself."""
    from protocol import strategies
    variants: dict[str, dict[str, Any]] = {}
    for name in strategies.STRATEGIES:
        if name == "unmap-hint":
            for policy in ("optimistic", "conservative"):
                variants[f"unmap-hint-{policy}"] = {"strategy": name, "hint_policy": policy}
        else:
            variants[name] = {"strategy": name}
    names = [s for s in (x.strip() for x in spec.split(",")) if s]
    if not names:
        raise CampaignError("--strategies: give 'all' or a comma-separated list")
    out: list[tuple[str, dict[str, Any]]] = []
    for n in names:
        if n == "all":
            out += list(variants.items())
        elif n == "mutants":
            out += mutant_variants()
        elif "+" in n and not strategies.looks_like_path(n):
            try:
                module = strategies.resolve(n)
            except strategies.StrategyError as exc:
                raise CampaignError(f"--strategies: {exc}") from None
            out.append((module.NAME, {"strategy": module.SOURCE, **mutant_workload(n)}))
        elif n in variants:
            out.append((n, variants[n]))
        elif n in strategies.STRATEGIES:
            out.append((n, {"strategy": n}))
        elif strategies.looks_like_path(n) or n in strategies.installed():
            try:
                module = strategies.resolve(n)
            except strategies.StrategyError as exc:
                raise CampaignError(f"--strategies: {exc}") from None
            out.append((module.NAME, {"strategy": module.SOURCE}))
        else:
            raise CampaignError(f"--strategies: unknown strategy {n!r} (known: all, mutants, "
                                f"{', '.join(sorted(set(variants) | set(strategies.STRATEGIES)))}, "
                                f"an installed strategy or the path of a .py file)")
    return list(dict(out).items())


def mutant_variants() -> list[tuple[str, dict[str, Any]]]:
    """The controls first (each base under each workload its mutants need), then every mutant."""
    from protocol.strategies import mutants
    controls: dict[str, dict[str, Any]] = {}
    runs: list[tuple[str, dict[str, Any]]] = []
    for name in mutants.names():
        base, _ = mutants.split(name)
        params = mutant_workload(name)
        label = base + "".join(f"-{k.replace('_', '-')}-{_num(v)}" for k, v in sorted(params.items())
                               if k != "faults")
        controls.setdefault(label, {"strategy": base, **params})
        runs.append((name, {"strategy": name, **params}))
    return list(controls.items()) + runs


def mutant_workload(spec: str) -> dict[str, Any]:
    """The run parameters mutant `spec` needs (mutants.params_of), its faults canonical
    (runtime.faults.parse_cli): plan_runs adds them to each plan's."""
    from protocol.strategies import mutants
    from runtime import faults
    params = mutants.params_of(spec)
    if "faults" in params:
        params["faults"] = tuple(faults.parse_cli(text) for text in params["faults"])
    return params


@dataclass(frozen=True)
class RunSpec:
    strategy: str          # the label: a directory name
    plan: str
    seed: int
    params: RunParams

    @property
    def rel(self) -> Path:
        return Path("runs") / self.strategy / self.plan / f"seed-{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.strategy} / {self.plan} / seed-{self.seed}"


def _num(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def fault_text(fault: dict[str, Any]) -> str:
    """A canonical fault as `--fault` text; runtime.faults.parse_cli gives the same dict back."""
    rest = ",".join(f"{k}={_num(v)}" for k, v in fault.items() if k != "kind" and v is not None)
    return fault["kind"] + (":" + rest if rest else "")


def run_flags(p: RunParams) -> list[str]:
    """The `dmabuf-emu run` flags that resolve to exactly `p`."""
    argv: list[str] = []
    for o in options.OPTIONS:
        v = getattr(p, o.key)
        if v is not None:
            argv += ["--" + o.key.replace("_", "-"), _num(v)]
    for f in p.faults:
        argv += ["--fault", fault_text(f)]
    return argv


def resolve_flags(argv: list[str]) -> RunParams:
    """What a `dmabuf-emu run` child will make of `argv` (OptionError if it would refuse it)."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    options.add_arguments(parser)
    return options.resolve(None, vars(parser.parse_args(argv)))


def plan_runs(base: RunParams, strategies: str, plans: str, seeds: int) -> tuple[list[RunSpec], list[Any]]:
    """Every (strategy, plan, seed) with its parameters, each checked as the child will check it."""
    import dataclasses

    from deploy import faultplans
    if seeds < 1:
        raise CampaignError(f"--seeds must be at least 1, got {seeds}")
    variants = strategy_variants(strategies)
    loaded = faultplans.load_all(plans)
    specs: list[RunSpec] = []
    for label, overrides in variants:
        for plan in loaded:
            for seed in range(1, seeds + 1):
                # a variant's own faults (a mutant's workload) come on top of the plan's
                own = {k: v for k, v in overrides.items() if k != "faults"}
                params = plan.apply(dataclasses.replace(base, **own, seed=seed))
                params = dataclasses.replace(params, faults=(*params.faults, *overrides.get("faults", ())))
                try:
                    if resolve_flags(run_flags(params)) != params:
                        raise CampaignError(f"{label} under plan {plan.name}: parameters do not survive "
                                            f"the command line ({run_flags(params)})")
                except OptionError as exc:
                    raise CampaignError(f"{label} under plan {plan.name} ({plan.path}): {exc}") from None
                specs.append(RunSpec(label, plan.name, seed, params))
    return specs, loaded


# ---------------------------------------------------------------------------------- finished runs

def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return all(_same(a[k], b[k]) for k in a if k in b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def mismatch(spec: RunSpec, report: dict[str, Any]) -> str | None:
    """Why a finished run is not the run this campaign asks for (None if it is)."""
    had = report.get("params")
    if not isinstance(had, dict):
        return None
    for key, want in spec.params.as_dict().items():
        if key in had and not _same(want, had[key]):
            return f"{key}={json.dumps(had[key])} where this campaign asks {key}={json.dumps(want)}"
    return None


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _scratch_root() -> str:
    """Where runs execute before they land in OUT: $DMABUF_EMU_SCRATCH, else /tmp (ipc socket
    paths live in the run directory and must stay under 108 bytes, whatever OUT is)."""
    root = os.environ.get("DMABUF_EMU_SCRATCH")
    if root:
        os.makedirs(root, exist_ok=True)
        return root
    return "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _child_argv(scratch: Path, flags: list[str]) -> list[str]:
    """`dmabuf-emu run` into `scratch` with `flags` (run_flags), quiet, as a child process."""
    return [sys.executable, "-m", "deploy.cli", "run", "--out", str(scratch), "--quiet", *flags]


def _safety_down(run_dir: Path) -> None:
    """Take down whatever a run that did not finish left: services, segments, sockets."""
    if (run_dir / "deploy.json").exists():
        from deploy.launcher import DeployError, down
        try:
            down(run_dir, timeout_s=2.0)
        except (DeployError, OSError, ValueError, KeyError):
            pass


def _land(scratch: Path, final: Path) -> dict[str, Any] | None:
    """Move a run that ended from its scratch directory to OUT/runs/...; its report, or None if it
    did not finish (then the directory is kept for the logs, and a resume runs it again)."""
    report = read_report(scratch)
    if report is None:
        _safety_down(scratch)
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(scratch), str(final))
    if report is not None:
        report["run_dir"] = str(final)
        _write_json_atomic(final / "report.json", report)
    return report


# ---------------------------------------------------------------------------------- progress

class Tally:
    """What the campaign has done so far (runs done, races, runs with races, failed runs), drawn
    by deploy/progress.py: a bar on a terminal (done/total, races, time left); one line per
    finished run otherwise."""

    def __init__(self, total: int, skipped: int, races: int, racing: int, stream: TextIO, quiet: bool) -> None:
        from deploy.progress import Progress
        self.total, self.done, self.races, self.racing, self.failed = total, skipped, races, racing, 0
        self.progress = Progress(stream, quiet)
        self.progress.begin("campaign", total, done=skipped, count=True, eta=True, every_s=None)
        self.progress.advance(skipped, self._line())

    def _line(self) -> str:
        return f"races {self.races} in {self.racing} runs" + (f", {self.failed} failed" if self.failed else "")

    def say(self, text: str) -> None:
        self.progress.say(text)

    def finished(self, spec: RunSpec, report: dict[str, Any] | None, seconds: float) -> None:
        self.done += 1
        if report is None:
            self.failed += 1
            self.say(f"  FAILED {spec.label} after {seconds:.1f} s: see {spec.rel}/")
        else:
            n = int(report.get("races", {}).get("total", 0) or 0)
            self.races += n
            self.racing += bool(n)
            if not self.progress.tty:
                self.say(f"  [{self.done}/{self.total}] {spec.label}: races {n} ({seconds:.1f} s); "
                         f"so far {self.races} races in {self.racing} runs")
        self.progress.advance(self.done, self._line())

    def close(self) -> None:
        self.progress.close()


# ---------------------------------------------------------------------------------- the runs

def _stop_run(proc: subprocess.Popen, kill: Any) -> None:
    """SIGINT the run (it takes its own services down), wait RUN_STOP_TIMEOUT_S, then kill it. A
    second Ctrl-C (here, or `kill` set by the thread that took it) stops the waiting."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + RUN_STOP_TIMEOUT_S
    try:
        while proc.poll() is None and time.monotonic() < deadline and not kill.is_set():
            kill.wait(0.05)
    except KeyboardInterrupt:
        pass  # a second ^C: stop waiting, kill
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def local_run(argv: list[str], limit_s: float, stop: Any, kill: Any) -> dict[str, Any]:
    """A unit on this machine: one run, `dmabuf-emu run` in a subprocess of its own, in a scratch
    directory; returns the directory (to land in OUT) and how long it took, or `hung` when it
    had no end after `limit_s` and was stopped. Asked to `stop` (the campaign was interrupted),
    or interrupted itself, it stops its run, cleans up after it and raises."""
    scratch = Path(tempfile.mkdtemp(prefix="dmc-", dir=_scratch_root()))
    began = time.monotonic()
    with open(scratch / "campaign-run.log", "wb") as log:
        # a session of its own: a ^C on the terminal reaches the campaign only, which then has
        # each run sent exactly one SIGINT (a second one could cut its cleanup short)
        proc = subprocess.Popen(_child_argv(scratch, argv), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=_child_env(), start_new_session=True)
        try:
            while proc.poll() is None:
                if stop.is_set():
                    raise KeyboardInterrupt
                if time.monotonic() - began > limit_s:
                    _stop_run(proc, kill)
                    _safety_down(scratch)
                    shutil.rmtree(scratch, ignore_errors=True)
                    return {"hung": True, "seconds": time.monotonic() - began}
                stop.wait(0.05)
        except BaseException:
            _stop_run(proc, kill)
            _safety_down(scratch)
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return {"scratch": str(scratch), "seconds": time.monotonic() - began}


def remote_run(argv: list[str]) -> dict[str, Any]:
    """A unit on a Dask worker: one run on this worker, in a scratch directory; returns its exit
    status, the worker's host name, how long it took and the whole run directory as a gzipped
    tar blob."""
    import socket
    began = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="dmc-", dir=_scratch_root()))
    try:
        with open(scratch / "campaign-run.log", "wb") as log:
            try:
                rc = subprocess.run(_child_argv(scratch, argv), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=_child_env(), start_new_session=True).returncode
            except BaseException:
                _safety_down(scratch)
                raise
        if read_report(scratch) is None:
            _safety_down(scratch)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
            tar.add(str(scratch), arcname=".")
        return {"rc": rc, "host": socket.gethostname(), "tar": buf.getvalue(), "seconds": time.monotonic() - began}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _unpack(blob: bytes, final: Path) -> dict[str, Any] | None:
    partial = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:6]}")
    partial.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            tar.extractall(partial, filter="data")
        return _land(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def run_all(todo: list[RunSpec], out: Path, jobs: int, scheduler: str | None, tally: Tally) -> None:
    """Every run of `todo` through sim/executor.py: `jobs` at a time here (threads, each
    supervising its run's process), or as tasks on the Dask `scheduler`'s workers; each lands in
    OUT/runs/... as it ends. Interrupted, the runs still going are stopped (each takes its
    services down) and what is left is cleaned up; tasks already running on a cluster finish by
    themselves (bounded by --duration) and clean up."""
    import threading
    from concurrent.futures import wait

    from sim.executor import executor
    pool = executor(jobs, scheduler, threads=True)
    stop, kill = threading.Event(), threading.Event()
    remote = pool.client is not None
    token = uuid.uuid4().hex[:8]
    futures = {}
    try:
        for spec in todo:
            if remote:
                fut = pool.submit(remote_run, run_flags(spec.params),
                                  key=f"dmabuf-run-{spec.strategy}-{spec.plan}-{spec.seed}-{token}")
            else:
                fut = pool.submit(local_run, run_flags(spec.params), spec.params.duration + RUN_GRACE_S, stop, kill)
            futures[fut] = spec
        while futures:
            for fut in pool.done(futures):
                spec = futures.pop(fut)
                try:
                    result = fut.result()
                except Exception as exc:  # the unit failed (on its worker): the run failed
                    tally.say(f"  {spec.label}: the task failed: {exc!r}")
                    tally.finished(spec, None, 0.0)
                    continue
                if result.get("hung"):
                    tally.say(f"  {spec.label}: no end after {result['seconds']:.0f} s: stopped")
                    tally.finished(spec, None, result["seconds"])
                elif "tar" in result:
                    tally.finished(spec, _unpack(result["tar"], out / spec.rel), result["seconds"])
                else:
                    tally.finished(spec, _land(Path(result["scratch"]), out / spec.rel), result["seconds"])
    except BaseException:
        stop.set()
        pool.cancel(futures)
        if not remote:
            try:
                wait(futures)       # each unit stops its run, bounded by RUN_STOP_TIMEOUT_S
            except KeyboardInterrupt:
                kill.set()          # a second ^C: stop waiting, kill
                wait(futures)
        raise
    finally:
        pool.close()


# ---------------------------------------------------------------------------------- the campaign

def campaign(base: RunParams, strategies: str, plans: str, seeds: int, out: Path, *, jobs: int = 1,
             scheduler: str | None = None, quiet: bool = False, stream: TextIO | None = None,
             plots: bool = True, dry_run: bool = False,
             backend: Callable[[list[RunSpec], Path, Tally], None] | None = None) -> dict[str, Any]:
    """Run what is missing of the campaign, then write the summary and plots; returns the summary.
    With `dry_run`, only check everything a run would check and say what would run. Progress and
    the last line go to `stream` (sys.stderr)."""
    from deploy import rundir
    stream = stream or sys.stderr
    if jobs < 1:
        raise CampaignError(f"--jobs must be at least 1, got {jobs}")
    if scheduler is not None:
        from sim.executor import SchedulerError, check_scheduler
        try:
            check_scheduler(scheduler)
        except SchedulerError as exc:
            raise CampaignError(str(exc)) from None
    rundir.refuse_run_dir(out, "campaign")
    out = out.resolve()
    specs, loaded = plan_runs(base, strategies, plans, seeds)
    todo: list[RunSpec] = []
    races = racing = 0
    for spec in specs:
        report = read_report(out / spec.rel)
        if report is None:
            todo.append(spec)
            continue
        why = mismatch(spec, report)
        if why is not None:
            raise CampaignError(f"{out / spec.rel} is a finished run with {why}: use another --out "
                                f"or remove it")
        n = int(report.get("races", {}).get("total", 0) or 0)
        races += n
        racing += bool(n)
    if dry_run:
        where = f"on {scheduler}" if scheduler else f"{jobs} at a time"
        print(f"campaign (dry run): {len(specs)} runs ({len(strategy_variants(strategies))} strategies x "
              f"{len(loaded)} plans x {seeds} seeds, {base.duration:g} s each) -> {out}; "
              f"{len(specs) - len(todo)} finished, {len(todo)} would run {where}", file=stream)
        return {"dry_run": True, "runs": len(specs), "todo": [spec.label for spec in todo]}
    out.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(out / "campaign.json", {
        "strategies": [s for s, _ in strategy_variants(strategies)],
        "plans": [{"name": p.name, "path": str(p.path), "description": p.description,
                   "overrides": p.overrides, "faults": list(p.faults)} for p in loaded],
        "seeds": seeds, "base": base.as_dict(), "command": sys.argv if sys.argv else None})
    skipped = len(specs) - len(todo)
    where = f"on {scheduler}" if scheduler else f"{jobs} at a time"
    progress = Tally(len(specs), skipped, races, racing, stream, quiet)
    progress.say(f"campaign: {len(specs)} runs ({len(strategy_variants(strategies))} strategies x "
                 f"{len(loaded)} plans x {seeds} seeds, {base.duration:g} s each) -> {out}"
                 + (f"; {skipped} finished runs skipped" if skipped else "") + (f"; {len(todo)} to run {where}" if todo else ""))
    try:
        if todo:
            if backend is not None:
                backend(todo, out, progress)
            else:
                run_all(todo, out, jobs, scheduler, progress)
    finally:
        progress.close()
    failed = progress.failed
    summary = campaign_report.write_summary(out, strategy_order=[s for s, _ in strategy_variants(strategies)],
                                            plan_order=[p.name for p in loaded], plots=plots)
    summary["failed_runs"] = failed
    if not quiet:
        print(f"campaign: {out / 'summary.md'}" + (f", {out / 'plots'}/*.png" if plots else "")
              + (f"; {failed} runs failed (run the same command again to retry them)" if failed else ""),
              file=stream)
    return summary


# ---------------------------------------------------------------------------------- command line

def add_parser(sub: Any, formatter: type[argparse.HelpFormatter] = argparse.HelpFormatter) -> None:
    from deploy.helpformat import examples, with_default
    c = sub.add_parser(
        "campaign", help="every strategy x fault plan x seed, in parallel, then one comparison with plots",
        formatter_class=formatter,
        description="Run every combination of --strategies, --faults plans and --seeds, J at a time "
                    "(or on a Dask cluster), each in OUT/runs/<strategy>/<plan>/seed-<n>/, then write "
                    "OUT/summary.json, OUT/summary.md and OUT/plots/*.png. Finished runs (those with a "
                    "report.json) are skipped, so the same command resumes an interrupted campaign. "
                    "Fault plans: none, net, crash, rogue, pressure (deploy/plans/*.toml) or the path "
                    "of a TOML plan file ([[faults]] tables and run parameters).",
        epilog=examples("dmabuf-emu campaign --strategies all --faults none,net,rogue --seeds 3 "
                        "--duration 2 --jobs 2 --out runs/campaign",
                        "dmabuf-emu campaign --strategies resv-fence,revalidate --faults rogue --seeds 5 "
                        "--scheduler tcp://127.0.0.1:8786 --out runs/dask",
                        "dmabuf-emu campaign --strategies all --faults all --seeds 2 --dry-run --out runs/all",
                        "dmabuf-emu campaign --strategies mutants --seeds 10 --importers 4 --buffers 8 --duration 3 "
                        "--jobs 2 --table mutation-score --out runs/mutants"))
    c.add_argument("scenario", nargs="?", type=Path, help="a TOML scenario file with the base run parameters")
    c.add_argument("--out", required=True, type=Path, help="campaign directory (created; reused to resume)")
    c.add_argument("--strategies", default="all", metavar="LIST|all",
                   help=with_default("comma-separated strategies, or all (unmap-hint under both hint policies); "
                                     "a .py path runs a strategy of your own (docs/writing-a-strategy.md)", "all"))
    c.add_argument("--faults", dest="plans", default="none", metavar="PLAN[,PLAN...]",
                   help=with_default("fault plans: shipped names (none net crash rogue pressure, or all) or .toml paths", "none"))
    c.add_argument("--seeds", type=int, default=1, metavar="N", help=with_default("seeds 1..N for every combination", 1))
    c.add_argument("--jobs", type=int, default=1, metavar="J", help=with_default("runs at a time on this machine", 1))
    c.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="run on this Dask distributed scheduler's workers instead (--jobs is then ignored)")
    c.add_argument("--report-only", action="store_true",
                   help="run nothing: rebuild summary.json, summary.md and the plots from OUT/runs")
    c.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    c.add_argument("--table", choices=("matrix", "mutation-score"), default="matrix",
                   help=with_default("the table printed at the end: strategy x plan, or the mutation score "
                                     "(mutants: caught in k of n runs, the rule each breaks)", "matrix"))
    c.add_argument("--explore", type=Path, default=None, metavar="DIR",
                   help="with --table mutation-score: the simulator's columns from this finished "
                        "`dmabuf-emu explore-table --strategies mutants --out DIR`")
    c.add_argument("--quiet", action="store_true", help="no progress bar, no per-run lines")
    c.add_argument("--dry-run", action="store_true",
                   help="check every run's parameters (and the --scheduler address), say what would run, run nothing")
    options.add_arguments(c, title="run parameters of every run (override the scenario file; a plan overrides both)",
                          skip=("strategy", "seed", "faults"))


def main(args: argparse.Namespace) -> int:
    explore = None
    if args.explore is not None:
        try:
            explore = json.loads((args.explore / "table.json").read_text())
        except (OSError, ValueError) as exc:
            print(f"dmabuf-emu: campaign: --explore {args.explore}: no explore-table result there "
                  f"(table.json: {exc.__class__.__name__})", file=sys.stderr)
            return EXIT_USAGE
    if args.report_only:
        summary = campaign_report.write_summary(args.out.resolve(), plots=not args.no_plots)
        print(_table(summary, args.table, explore))
        return EXIT_OK
    flags = {k: v for k, v in vars(args).items() if any(o.key == k for o in options.OPTIONS)}
    base = options.resolve(args.scenario, flags)
    # SIGTERM and SIGHUP raise KeyboardInterrupt (deploy.interrupt.Interrupted) as Ctrl-C does:
    # the dmabuf-emu command installs that for every command.
    summary = campaign(base, args.strategies, args.plans, args.seeds, args.out, jobs=args.jobs,
                       scheduler=args.scheduler, quiet=args.quiet, plots=not args.no_plots,
                       dry_run=args.dry_run)
    if args.dry_run:
        return EXIT_OK
    if not args.quiet:
        print(_table(summary, args.table, explore))
    return EXIT_FAILED_RUNS if summary.get("failed_runs") else EXIT_OK


def _table(summary: dict[str, Any], which: str, explore: dict[str, Any] | None = None) -> str:
    if which == "mutation-score":
        return campaign_report.render_mutation_score(summary, explore) or "(no mutant in this campaign)"
    return campaign_report.render_matrix(summary)
