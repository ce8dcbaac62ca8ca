"""dmabuf-emu run: up, drive the workload for --duration seconds, stop, down, judge, report.

The run's own events (run_start with every parameter, workload_start/stop, services that died,
run_stop) go to DIR/events/deploy.jsonl beside the services' histories; the checker reads the
parameters from there, so a run directory explains itself.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

import zmq

from deploy import procs
from deploy.interrupt import Interrupted, interrupted, pending, shielded
from deploy.control import ControlClient, call_all
from deploy.launcher import DeployError, Deployment, down, restart_importer, up, wait_ready
from deploy.progress import Progress
from protocol import wire
from runtime import watchdog
from runtime.eventlog import EventLog
from runtime.lifecycle import DRIVER_POLL_S, RESTART_POLL_S, RESTART_READY_S, START_TIMEOUT_S, STOP_TIMEOUT_S
from runtime.process_faults import ProcessFaults, schedule
from runtime.runparams import RunParams

INTERRUPTED_STOP_TIMEOUT_S = 3.0   # the user asked to stop: drain, but not for long


def sleep_until(deadline: float) -> None:
    """The driver's poll period: never past `deadline`, never longer than DRIVER_POLL_S."""
    time.sleep(max(0.0, min(DRIVER_POLL_S, deadline - time.monotonic())))


def mutant_field(strategy: str) -> dict:
    """`mutant` (the rule it breaks, its source, what to expect) for a mutant's run, else nothing."""
    from protocol.strategies import resolve
    mutant = getattr(resolve(strategy), "MUTANT", None)
    return {"mutant": mutant} if mutant else {}

def drive(deployment: Deployment, params: RunParams, log: EventLog, progress: Progress,
          until: Callable[[], bool] | None = None) -> list[str]:
    """Start pressure and workload, wait `duration` watching the services (or less: until `until()`
    says so, asked at every poll), stop and drain. Returns the names of services that died."""
    ctx = zmq.Context()
    exporter = ControlClient(ctx, deployment.exporter.control, "exporter")
    importers = {i.name: ControlClient(ctx, i.control, i.name) for i in deployment.importers}
    died: list[str] = []
    by_name = {s.name: s for s in deployment.services}

    def restart(name: str, incarnation: int) -> int:
        info = restart_importer(deployment, name, incarnation)
        importers[name].close()
        importers[name] = client = ControlClient(ctx, info.control, name)
        deadline = time.monotonic() + RESTART_READY_S
        while client.status(max(0.1, deadline - time.monotonic())).state != "ready":
            if time.monotonic() >= deadline:
                raise DeployError(f"{name} restarted but did not attach its buffers within {RESTART_READY_S:g} s")
            time.sleep(RESTART_POLL_S)  # polling its status; it answers at once
        client.start(START_TIMEOUT_S)
        if name in died:
            died.remove(name)
        return info.pid

    faults = ProcessFaults(schedule(list(params.faults), params.seed, params.importers), log.emit,
                           lambda name: by_name[name].pid if name in by_name else None, restart, progress.say)
    try:
        exporter.start(START_TIMEOUT_S)
        errors = call_all(list(importers.values()), wire.Start, START_TIMEOUT_S)
        if errors:
            raise DeployError("; ".join(errors))
        log.emit("workload_start")
        began = time.monotonic()
        end = began + params.duration
        stop: Interrupted | None = None
        try:
            while True:
                now = time.monotonic()
                faults.due(now - began)
                for svc in deployment.services:
                    if svc.name not in died and not procs.alive(svc.pid, svc.marker):
                        died.append(svc.name)
                        if svc.name not in faults.killed:
                            log.emit("service_died", name=svc.name, pid=svc.pid, how="exited during the run")
                            progress.say(f"{svc.name} (pid {svc.pid}) died during the run")
                alive = len(deployment.services) - len(died)
                progress.status(f"[{params.strategy}] {min(now - began, params.duration):5.1f}/{params.duration:g} s  "
                                f"services alive {alive}/{len(deployment.services)}")
                if now >= end or (until is not None and until()):
                    break
                next_fault = faults.next_at()
                sleep_until(min(end, began + next_fault) if next_fault is not None else end)
        except KeyboardInterrupt as exc:  # stop the workload as at its end (drained: final bytes on record)
            stop = interrupted(exc)
            log.emit("run_interrupted", **stop.as_dict(), during="workload")
            stop.logged = True
        with shielded():
            timeout_s = STOP_TIMEOUT_S if stop is None else INTERRUPTED_STOP_TIMEOUT_S
            faults.resume_all()
            live = [importers[i.name] for i in deployment.importers if i.name not in died]
            errors = call_all(live, wire.Stop, timeout_s)
            if "exporter" not in died:
                errors += call_all([exporter], wire.Stop, timeout_s)
            log.emit("workload_stop", errors=errors, died=died)
            for e in errors:
                progress.say(f"warning: {e}")
        if stop is not None:
            raise stop
    finally:
        faults.resume_all()
        exporter.close()
        for c in importers.values():
            c.close()
        ctx.destroy(linger=0)
    return died


# Past this many busy services per core, a service can go without the CPU for longer than a
# short lease, and the exporter would rightly declare a starved importer lost (tests/test_load.py).
SERVICES_PER_CORE_FOR_DEFAULT_LEASE = 8


def lease_warning(params: RunParams, cores: int) -> str | None:
    """A lease too short for this many processes on this machine, said before the run."""
    per_core = (params.importers + 1) / cores
    if per_core <= SERVICES_PER_CORE_FOR_DEFAULT_LEASE or params.lease_ms >= 2000:
        return None
    return (f"{params.importers + 1} services on {cores} core(s): a lease of {params.lease_ms:g} ms may run out "
            f"for an importer that merely waits for the CPU (it is then revoked and joins again); "
            f"consider --lease-ms 3000")


def run(params: RunParams, out: Path, *, quiet: bool = False, stream: TextIO = sys.stderr,
        until: Callable[[], bool] | None = None, predict: bool = False) -> dict[str, Any]:
    """A whole run. Returns the report (also written to DIR/report.json). `until`: a test's event
    that ends the workload before --duration (asked every poll period, a quarter second at most).
    `predict`: the checker's prediction too (report `predicted`, checker/predict.py; `{"refused":
    why}` when the history cannot be predicted from).

    Interrupted (Ctrl-C, or SIGTERM/SIGHUP under deploy.interrupt.stop_signals) at any point:
    the workload stops, the services go down, the segments are unlinked, `run_interrupted` goes
    into the history and the checker writes what the history holds (its report says
    `interrupted`); then Interrupted is raised again, its `detail` saying all that in one line.
    The services watch this process (runtime/watchdog.py), so they go even if it is SIGKILLed."""
    from checker import check_run  # the judge; imported here so that up/down work without it
    from sim.reporting import finish_report

    progress = Progress(stream, quiet)
    out = out.resolve()
    progress.say(f"dmabuf-emu run: strategy {params.strategy}, {params.importers} importers, "
                  f"{params.buffers} buffers, {params.duration:g} s -> {out}")
    if (warning := lease_warning(params, os.cpu_count() or 1)) is not None:
        progress.say(f"warning: {warning}")
    from protocol.liveness_check import strategy_warnings
    for line in strategy_warnings(params.strategy):   # what the table alone says about progress
        progress.say(f"warning: {line}")
    began = time.monotonic()
    deployment: Deployment | None = None
    log: EventLog | None = None
    stop: Interrupted | None = None
    during = "startup"
    try:
        deployment = up(params, out, launcher=watchdog.identity())
        log = EventLog(out / "events" / "deploy.jsonl", "deploy")
        wait_ready(deployment)
        log.emit("run_start", run_id=deployment.run_id, strategy=params.strategy, params=params.as_dict(),
                 **mutant_field(params.strategy))
        during = "workload"
        drive(deployment, params, log, progress, until)
        during = "stopping"
    except KeyboardInterrupt as exc:
        stop = interrupted(exc)
        if log is not None and not stop.logged:
            log.emit("run_interrupted", **stop.as_dict(), during=during)
            stop.logged = True
    finally:
        with shielded():  # a first signal now waits: this is what it asks for
            if deployment is not None:  # (a failed up took down what it had started)
                report = down(out)
                assert log is not None
                for name in report.killed:
                    log.emit("service_died", name=name, pid=None, how="killed by down (did not stop in time)")
                if stop is None and (stop := pending()) is not None:
                    log.emit("run_interrupted", **stop.as_dict(), during=during)
                    stop.logged = True
                log.emit("run_stop", graceful=report.graceful, terminated=report.terminated, killed=report.killed,
                         segments_removed=report.segments_removed)
                log.close()
    if stop is None:
        progress.say("judging the history ...")
        with shielded():
            judged = check_run(out)
            if predict:
                from checker.predict import PredictRefused, predict_history
                try:
                    judged["predicted"] = predict_history(out / "history.jsonl")
                except PredictRefused as exc:
                    judged["predicted"] = {"refused": str(exc)}
            result = finish_report(out, judged, "real")
        if (late := pending()) is not None:
            late.detail = (f"run: {late.signal} while judging; the run was complete and its report is "
                           f"written: {out / 'report.md'}")
            raise late
        return result
    raise _interrupted_run(stop, out, deployment, time.monotonic() - began, progress)


def _interrupted_run(stop: Interrupted, out: Path, deployment: Deployment | None, seconds: float,
                     progress: Progress) -> Interrupted:
    """Judge what an interrupted run left (when it left anything) and say it in one line."""
    from checker import check_run
    from sim.reporting import finish_report
    from runtime import shm

    if not stop.logged and (out / "events").is_dir():  # up was interrupted, after some service started
        log = EventLog(out / "events" / "deploy.jsonl", "deploy")
        log.emit("run_interrupted", **stop.as_dict(), during="startup")
        log.close()
    if deployment is None and (out / "deploy.json").exists():  # up was interrupted after the exporter started
        deployment = Deployment.read(out)
    if not (out / "events").is_dir():
        stop.detail = (f"run interrupted by {stop.signal} after {seconds:.1f} s, during startup: what had "
                       f"started is stopped; no history yet, so no report")
        return stop
    left: list[str] = []
    if deployment is not None:
        left += [s.name for s in deployment.services if procs.alive(s.pid, s.marker)]
        left += shm.existing(deployment.run_id)
    cleanup = "services stopped, segments removed" if not left else f"STILL PRESENT: {', '.join(left)}"
    progress.say("judging the history ...")
    with shielded():
        finish_report(out, check_run(out), "real")
    stop.detail = (f"run interrupted by {stop.signal} after {seconds:.1f} s: {cleanup}; "
                   f"report (marked interrupted): {out / 'report.md'}")
    return stop
