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
unpacked into OUT/runs/... here. Workers need dmabuf-emu installed; see README "Campaigns".

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
STOP_TIMEOUT_S = 20.0      # after SIGINT, how long a run may take to take its services down
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


def _child_argv(scratch: str, spec_params: RunParams) -> list[str]:
    return [sys.executable, "-m", "deploy.cli", "run", "--out", scratch, "--quiet", *run_flags(spec_params)]


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

class Progress:
    """A rich progress bar on a terminal (done/total, races so far, time left); one line per
    finished run otherwise."""

    def __init__(self, total: int, skipped: int, races: int, racing: int, stream: TextIO, quiet: bool) -> None:
        self.total, self.done, self.races, self.racing, self.failed = total, skipped, races, racing, 0
        self.quiet = quiet
        self.stream = stream
        self.tty = stream.isatty() and not quiet
        self._bar = None
        self._began = time.monotonic()
        self._skipped = skipped
        self._end: float | None = None     # the estimated end: now + time per run so far x runs left
        if self.tty:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, ProgressColumn,
                                       TextColumn, TimeElapsedColumn)
            from rich.text import Text
            outer = self

            class TimeLeft(ProgressColumn):
                def render(self, task: Any) -> Text:
                    if outer._end is None:
                        return Text("left -:--", style="progress.remaining")
                    left = max(0, int(outer._end - time.monotonic()))
                    return Text(f"left {left // 60}:{left % 60:02d}", style="progress.remaining")

            self._bar = Bar(TextColumn("campaign"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("races {task.fields[races]} in {task.fields[racing]} runs"
                                       "{task.fields[failed]}"),
                            TimeElapsedColumn(), TimeLeft(), console=Console(file=stream), transient=False)
            self._task = self._bar.add_task("campaign", total=total, completed=skipped,
                                            races=races, racing=racing, failed="")
            self._bar.start()

    def say(self, text: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def finished(self, spec: RunSpec, report: dict[str, Any] | None, seconds: float) -> None:
        self.done += 1
        if report is None:
            self.failed += 1
            self.say(f"  FAILED {spec.label} after {seconds:.1f} s: see {spec.rel}/")
        else:
            n = int(report.get("races", {}).get("total", 0) or 0)
            self.races += n
            self.racing += bool(n)
            if self._bar is None:
                self.say(f"  [{self.done}/{self.total}] {spec.label}: races {n} ({seconds:.1f} s); "
                         f"so far {self.races} races in {self.racing} runs")
        ran = self.done - self._skipped
        now = time.monotonic()
        self._end = now + (now - self._began) / ran * (self.total - self.done)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, races=self.races, racing=self.racing,
                             failed=f", {self.failed} failed" if self.failed else "")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# ---------------------------------------------------------------------------------- local backend

@dataclass
class _Running:
    spec: RunSpec
    proc: subprocess.Popen
    scratch: Path
    began: float
    log: Any


def _stop_local(running: list[_Running]) -> None:
    """SIGINT every run (each takes its own services down), wait, then kill and clean up."""
    for r in running:
        if r.proc.poll() is None:
            try:
                os.kill(r.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_TIMEOUT_S
    try:
        while any(r.proc.poll() is None for r in running) and time.monotonic() < deadline:
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass  # a second ^C: stop waiting, kill
    for r in running:
        if r.proc.poll() is None:
            r.proc.kill()
        r.proc.wait()
        r.log.close()
        _safety_down(r.scratch)
        shutil.rmtree(r.scratch, ignore_errors=True)


def run_local(todo: list[RunSpec], out: Path, jobs: int, progress: Progress) -> None:
    pending = list(reversed(todo))
    running: list[_Running] = []
    env = _child_env()
    try:
        while pending or running:
            while pending and len(running) < jobs:
                spec = pending.pop()
                scratch = Path(tempfile.mkdtemp(prefix="dmc-", dir=_scratch_root()))
                log = open(scratch / "campaign-run.log", "wb")
                # a session of its own: a ^C on the terminal reaches the campaign only, which then
                # sends each run exactly one SIGINT (a second one could cut its cleanup short)
                proc = subprocess.Popen(_child_argv(str(scratch), spec.params), stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True)
                running.append(_Running(spec, proc, scratch, time.monotonic(), log))
            for r in list(running):
                if r.proc.poll() is None:
                    if time.monotonic() - r.began > r.spec.params.duration + RUN_GRACE_S:
                        _stop_local([r])
                        running.remove(r)
                        progress.say(f"  {r.spec.label}: no end after {time.monotonic() - r.began:.0f} s: stopped")
                        progress.finished(r.spec, None, time.monotonic() - r.began)
                    continue
                r.log.close()
                running.remove(r)
                report = _land(r.scratch, out / r.spec.rel)
                progress.finished(r.spec, report, time.monotonic() - r.began)
            time.sleep(0.05)
    except BaseException:
        _stop_local(running)
        raise


# ---------------------------------------------------------------------------------- dask backend

def remote_run(argv: list[str]) -> dict[str, Any]:
    """A Dask task: one run on this worker, in a scratch directory; returns its exit status,
    the worker's host name and the whole run directory as a gzipped tar blob."""
    import socket
    scratch = Path(tempfile.mkdtemp(prefix="dmc-", dir=_scratch_root()))
    try:
        with open(scratch / "campaign-run.log", "wb") as log:
            try:
                rc = subprocess.run([sys.executable, "-m", "deploy.cli", "run", "--out", str(scratch), "--quiet",
                                     *argv], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=_child_env(), start_new_session=True).returncode
            except BaseException:
                _safety_down(scratch)
                raise
        if read_report(scratch) is None:
            _safety_down(scratch)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
            tar.add(str(scratch), arcname=".")
        return {"rc": rc, "host": socket.gethostname(), "tar": buf.getvalue()}
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


def check_scheduler(address: str) -> None:
    """A Dask scheduler address (tcp://HOST:PORT, or another scheme distributed knows), checked
    before anything runs; distributed parses it, so what passes here is what Client accepts."""
    from distributed.comm import parse_address
    from distributed.comm.registry import backends
    why = f"--scheduler must be a Dask scheduler address such as tcp://HOST:PORT, got {address!r}"
    try:
        scheme, where = parse_address(address, strict=True)
    except ValueError:
        raise CampaignError(why) from None
    if scheme not in backends:
        raise CampaignError(f"{why} (schemes: {', '.join(sorted(backends))})")
    if scheme in ("tcp", "tls", "ws", "wss"):
        host, _, port = where.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise CampaignError(why)


def run_dask(todo: list[RunSpec], out: Path, scheduler: str, progress: Progress) -> None:
    from distributed import Client, as_completed
    client = Client(scheduler, timeout="20s")
    futures = {}
    began: dict[Any, float] = {}
    try:
        token = uuid.uuid4().hex[:8]
        for spec in todo:
            key = f"dmabuf-run-{spec.strategy}-{spec.plan}-{spec.seed}-{token}"
            fut = client.submit(remote_run, run_flags(spec.params), key=key, pure=False, retries=0)
            futures[fut] = spec
            began[fut] = time.monotonic()
        for fut in as_completed(list(futures)):
            spec = futures[fut]
            try:
                result = fut.result()
            except Exception as exc:  # the task failed on its worker: the run failed
                progress.say(f"  {spec.label}: the task failed: {exc!r}")
                progress.finished(spec, None, time.monotonic() - began[fut])
                continue
            report = _unpack(result["tar"], out / spec.rel)
            progress.finished(spec, report, time.monotonic() - began[fut])
    except BaseException:
        # runs already started on workers finish by themselves (bounded by --duration) and clean up
        client.cancel(list(futures))
        raise
    finally:
        client.close()


# ---------------------------------------------------------------------------------- the campaign

def campaign(base: RunParams, strategies: str, plans: str, seeds: int, out: Path, *, jobs: int = 1,
             scheduler: str | None = None, quiet: bool = False, stream: TextIO | None = None,
             plots: bool = True, dry_run: bool = False,
             backend: Callable[[list[RunSpec], Path, Progress], None] | None = None) -> dict[str, Any]:
    """Run what is missing of the campaign, then write the summary and plots; returns the summary.
    With `dry_run`, only check everything a run would check and say what would run. Progress and
    the last line go to `stream` (sys.stderr)."""
    from deploy import rundir
    stream = stream or sys.stderr
    if jobs < 1:
        raise CampaignError(f"--jobs must be at least 1, got {jobs}")
    if scheduler is not None:
        check_scheduler(scheduler)
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
    progress = Progress(len(specs), skipped, races, racing, stream, quiet)
    progress.say(f"campaign: {len(specs)} runs ({len(strategy_variants(strategies))} strategies x "
                 f"{len(loaded)} plans x {seeds} seeds, {base.duration:g} s each) -> {out}"
                 + (f"; {skipped} finished runs skipped" if skipped else "") + (f"; {len(todo)} to run {where}" if todo else ""))
    try:
        if todo:
            if backend is not None:
                backend(todo, out, progress)
            elif scheduler:
                run_dask(todo, out, scheduler, progress)
            else:
                run_local(todo, out, jobs, progress)
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
