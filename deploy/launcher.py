"""up, status and down: start a run's services in the background, see them, stop them and leave
nothing behind.

Layout of a run directory (`--out DIR`):
    DIR/deploy.json        who was started: run id, pids, endpoints, segment names
    DIR/events/*.jsonl     each service's history
    DIR/logs/*.log         each service's stdout and stderr
    DIR/run/*.json         where each service listens (written by the service once bound)
    DIR/sock/              ipc socket files (mode 0700), removed by down
    DIR/secrets/           the run's credentials (mode 0700, files 0600), removed by down:
                           exporter.json (the secret keying every token, CURVE server keys),
                           importer-N.json (its join and export tokens, CURVE client keys)

Who stops the services: started by `up`, they outlive it and stop at `down`. Started with
`launcher` (what `run` does: its own `PID:START`), each gets `--launcher` and stops by itself
when that process is gone, SIGKILLed included (runtime/watchdog.py); deploy.json records it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from deploy import procs
from deploy.control import ControlClient, ControlError
from deploy.interrupt import Interrupted
from protocol import capability
from runtime import faults, oplog, security, shm, transport
from runtime.lifecycle import (ABORT_DOWN_TIMEOUT_S, DOWN_TIMEOUT_S, READY_TIMEOUT_S, SHUTDOWN_TIMEOUT_S,
                               STATUS_POLL_S, DownReport)
from runtime.params import service_argv
from runtime.runparams import RunParams
from runtime.service import write_json_atomic

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXPORTER_MARKER = "exporter_svc"
IMPORTER_MARKER = "importer_svc"


RUN_LOG = "dmabuf-emu.log"  # DIR/logs/: the deployment's own operational log (up, down), beside each service's


class DeployError(Exception):
    """Something the user must hear about in one line (which service, what happened)."""


@dataclass
class ServiceInfo:
    name: str
    pid: int
    control: str
    marker: str
    endpoint: str = ""

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "pid": self.pid, "control": self.control}
        if self.endpoint:
            d["endpoint"] = self.endpoint
        return d


@dataclass
class Deployment:
    out: Path
    run_id: str
    params: RunParams
    exporter: ServiceInfo
    importers: list[ServiceInfo] = field(default_factory=list)
    shm: list[str] = field(default_factory=list)
    launcher: str = ""      # PID:START the services watch (runtime/watchdog.py); "" for up

    @property
    def services(self) -> list[ServiceInfo]:
        return [self.exporter, *self.importers]

    def write(self) -> None:
        write_json_atomic(self.out / "deploy.json", {
            "run_id": self.run_id,
            "strategy": self.params.strategy,
            "exporter": {"pid": self.exporter.pid, "endpoint": self.exporter.endpoint,
                         "control": self.exporter.control},
            "importers": [i.as_dict() for i in self.importers],
            "shm": self.shm,
            "launcher": self.launcher or None,
            "transport": self.params.transport,
            "params": self.params.as_dict(),
        })

    @classmethod
    def read(cls, out: Path) -> "Deployment":
        path = out / "deploy.json"
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise DeployError(f"{out}: no deploy.json here: nothing was started with --out {out}") from None
        except OSError as exc:
            raise DeployError(f"{path}: cannot read it ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise DeployError(f"{path}: not valid JSON ({exc})") from None
        raw = dict(data.get("params", {"strategy": data.get("strategy", "pin")}))
        raw["faults"] = tuple(raw.get("faults", ()))
        params = RunParams(**raw)
        e = data["exporter"]
        return cls(out=out, run_id=data["run_id"], params=params,
                   exporter=ServiceInfo("exporter", e["pid"], e.get("control", ""), EXPORTER_MARKER, e.get("endpoint", "")),
                   importers=[ServiceInfo(i["name"], i["pid"], i.get("control", ""), IMPORTER_MARKER)
                              for i in data.get("importers", [])],
                   shm=list(data.get("shm", [])), launcher=data.get("launcher") or "")


def _service_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(oplog.service_env())  # the CLI's --log-level reaches the services
    return env


def _spawn(out: Path, name: str, argv: list[str]) -> subprocess.Popen:
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        # A session of its own: ^C on dmabuf-emu must not kill the services before down cleans up.
        return subprocess.Popen([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=_service_env(), start_new_session=True,
                                cwd=str(out))


def _log_tail(out: Path, name: str, lines: int = 5) -> str:
    try:
        text = (out / "logs" / f"{name}.log").read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return " | ".join(oplog.readable(line) for line in text[-lines:])


def _wait_listening(ctx: zmq.Context, out: Path, name: str, proc: subprocess.Popen,
                    timeout_s: float) -> dict[str, Any]:
    """Wait for the service's endpoints file, then for an answer to ping. Bounded; the error
    names the service and says what it last printed."""
    deadline = time.monotonic() + timeout_s
    path = out / "run" / f"{name}.json"
    while not path.exists():
        if proc.poll() is not None:
            tail = _log_tail(out, name)
            raise DeployError(f"{name} exited with status {proc.returncode} before listening"
                              + (f": {tail}" if tail else f" (see {out / 'logs' / (name + '.log')})"))
        if time.monotonic() >= deadline:
            raise DeployError(f"{name} did not come up within {timeout_s:g} s (no {path}); see {out / 'logs' / (name + '.log')}")
        time.sleep(0.01)
    info = json.loads(path.read_text())
    client = ControlClient(ctx, info["control"], name)
    try:
        client.ping(max(0.1, deadline - time.monotonic()))
    except ControlError as exc:
        raise DeployError(f"{name} did not answer ping: {exc}") from None
    finally:
        client.close()
    return info


def _endpoints(params: RunParams, out: Path) -> tuple[str, Any]:
    """The exporter's rpc endpoint and each service's control endpoint. tcp binds the rpc socket to
    --bind (127.0.0.1 by default); control sockets stay on loopback whatever --bind says."""
    if params.transport == "tcp":
        host = params.bind_address
        host = f"[{host}]" if ":" in host else host
        return f"tcp://{host}:*", lambda name: "tcp://127.0.0.1:*"
    sock = out / "sock"
    sock.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(sock, 0o700)
    short = {"exporter": "e"}
    try:
        # the longest name we will bind, checked before anything starts
        transport.ipc_endpoint(str(sock / "i64.ctl"))
    except ValueError as exc:
        raise DeployError(str(exc)) from None
    return (transport.ipc_endpoint(str(sock / "e.rpc")),
            lambda name: transport.ipc_endpoint(str(sock / f"{short.get(name, name.replace('importer-', 'i'))}.ctl")))


def write_credentials(params: RunParams, out: Path) -> None:
    """Make the run's secret (and CURVE keys when the run uses CURVE) and write each service's
    credentials file, 0600 in DIR/secrets (0700). Each importer gets its join token and the
    export tokens of the buffers the scenario grants it, nothing else."""
    if params.uses_curve and not security.curve_available():
        raise DeployError(f"refusing to bind {params.bind_address} without CURVE: this libzmq has no "
                          f"CURVE support (zmq.has('curve') is false)")
    d = security.secrets_dir(out)
    secret = secrets.token_bytes(32)
    names = [f"importer-{n}" for n in range(1, params.importers + 1)]
    exporter: dict[str, Any] = {"secret": secret.hex()}
    clients: dict[str, tuple[str, str]] = {}
    if params.uses_curve:
        public, secret_key = security.keypair()
        clients = {name: security.keypair() for name in names}
        exporter["curve"] = {"public": public, "secret": secret_key,
                             "clients": [pub for pub, _ in clients.values()]}
    security.write_private(d / "exporter.json", exporter)
    for name in names:
        creds: dict[str, Any] = {
            "join": capability.join_token(secret, name),
            "exports": {str(b): capability.export_token(secret, b) for b in params.granted(name)}}
        if name in clients:
            creds["curve"] = {"server": exporter["curve"]["public"], "public": clients[name][0],
                              "secret": clients[name][1]}
        security.write_private(d / f"{name}.json", creds)


def _watch_argv(launcher: str) -> list[str]:
    return ["--launcher", launcher] if launcher else []


def _exporter_argv(params: RunParams, out: Path, run_id: str, rpc: str, control: str,
                   launcher: str = "") -> list[str]:
    return ["-m", "exporter_svc", "--run-id", run_id, *_watch_argv(launcher), "--out", str(out), "--endpoint", rpc,
            "--credentials", str(out / "secrets" / "exporter.json"), "--control", control,
            *service_argv(params.as_dict(), "exporter"), "--faults", faults.encode(list(params.faults))]


def _importer_argv(params: RunParams, out: Path, n: int, rpc: str, control: str, incarnation: int,
                   run_id: str = "", launcher: str = "") -> list[str]:
    return ["-m", "importer_svc", "--name", f"importer-{n}", "--index", str(n),
            *(["--run-id", run_id] if run_id else []), *_watch_argv(launcher), "--out", str(out),
            "--exporter", security.connect_endpoint(rpc), "--control", control,
            "--credentials", str(out / "secrets" / f"importer-{n}.json"),
            *service_argv(params.for_importer(f"importer-{n}"), "importer"),
            "--faults", faults.encode(list(params.faults)), "--incarnation", str(incarnation)]


def restart_importer(deployment: Deployment, name: str, incarnation: int, timeout_s: float = 20.0) -> ServiceInfo:
    """Start importer `name` again (its previous process is dead): same name, index and control
    endpoint, a new pid and incarnation. Returns when it answers ping; deploy.json is updated
    first, so that down finds the new process whatever happens next."""
    out = deployment.out
    n = int(name.split("-", 1)[1])
    old = next(i for i in deployment.importers if i.name == name)
    (out / "run" / f"{name}.json").unlink(missing_ok=True)
    control = old.control
    if deployment.params.transport == "tcp":
        control = "tcp://127.0.0.1:*"
    proc = _spawn(out, name, _importer_argv(deployment.params, out, n, deployment.exporter.endpoint,
                                             control, incarnation, deployment.run_id, deployment.launcher))
    old.pid = proc.pid
    deployment.write()
    ctx = zmq.Context()
    try:
        old.control = _wait_listening(ctx, out, name, proc, timeout_s)["control"]
    finally:
        ctx.destroy(linger=0)
    deployment.write()
    return old


def up(params: RunParams, out: Path, *, start_timeout_s: float = 20.0, launcher: str = "") -> Deployment:
    """Start the exporter, then the importers, each in the background; wait until each answers
    ping; write DIR/deploy.json. On failure stop whatever was started and raise DeployError.
    With `launcher` (a runtime.watchdog identity, normally the caller's own) every service stops
    by itself once that process is gone; without, they run until `down`."""
    out = out.resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeployError(f"--out {out}: cannot make the run directory there ({exc.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise DeployError(f"--out {out}: the run directory is not writable")
    if (out / "deploy.json").exists():
        old = Deployment.read(out)
        if any(procs.alive(s.pid, s.marker) for s in old.services):
            raise DeployError(f"{out} already has a running deployment (run id {old.run_id}): "
                              f"run 'dmabuf-emu down {out}' first")
    for stale in ("deploy.json", "history.jsonl", "report.json", "report.md", "trace.json"):
        (out / stale).unlink(missing_ok=True)
    for d in ("events", "run", "logs"):
        shutil.rmtree(out / d, ignore_errors=True)
    run_id = secrets.token_hex(4)
    try:
        log = oplog.run_logger(out / "logs" / RUN_LOG, run_id=run_id)
    except oplog.LogError as exc:
        raise DeployError(f"--out {out}: {exc}") from None
    rpc, control_for = _endpoints(params, out)
    shutil.rmtree(out / "secrets", ignore_errors=True)
    write_credentials(params, out)
    ctx = zmq.Context()
    started: list[tuple[subprocess.Popen, str]] = []
    deployment: Deployment | None = None
    try:
        argv = _exporter_argv(params, out, run_id, rpc, control_for("exporter"), launcher)
        proc = _spawn(out, "exporter", argv)
        started.append((proc, EXPORTER_MARKER))
        log.info("service starting", service="exporter", pid=proc.pid, strategy=params.strategy)
        info = _wait_listening(ctx, out, "exporter", proc, start_timeout_s)
        log.info("service listening", service="exporter", pid=proc.pid, endpoint=info["rpc"])
        deployment = Deployment(out, run_id, params,
                                ServiceInfo("exporter", proc.pid, info["control"], EXPORTER_MARKER, info["rpc"]),
                                shm=list(info.get("shm", [])), launcher=launcher)
        deployment.write()  # already now, so that down can clean up a half-started run
        procs_by_name = {}
        for n in range(1, params.importers + 1):
            name = f"importer-{n}"
            argv = _importer_argv(params, out, n, info["rpc"], control_for(name), 0, run_id, launcher)
            proc = _spawn(out, name, argv)
            started.append((proc, IMPORTER_MARKER))
            log.info("service starting", service=name, pid=proc.pid)
            procs_by_name[name] = proc
            deployment.importers.append(ServiceInfo(name, proc.pid, "", IMPORTER_MARKER))
            deployment.write()
        for imp in deployment.importers:
            imp.control = _wait_listening(ctx, out, imp.name, procs_by_name[imp.name], start_timeout_s)["control"]
            log.info("service listening", service=imp.name, pid=imp.pid)
        deployment.write()
        log.info("deployment up", services=len(deployment.services), dir=str(out))
        return deployment
    except BaseException as exc:
        log.error("deployment failed to start: stopping what was started", error=str(exc) or type(exc).__name__)
        if deployment is not None:
            down(out, timeout_s=ABORT_DOWN_TIMEOUT_S)
        else:
            for proc, _ in started:
                proc.kill()
                proc.wait()
            for name in shm.existing(run_id):
                shm.unlink(name)
            remove_run_files(out)
        if isinstance(exc, Interrupted):
            exc.detail = f"up interrupted by {exc.signal} while starting: what it had started is stopped"
        raise
    finally:
        ctx.destroy(linger=0)


def wait_ready(deployment: Deployment, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait until every importer has attached its buffers (status 'ready')."""
    ctx = zmq.Context()
    try:
        deadline = time.monotonic() + timeout_s
        for imp in deployment.importers:
            client = ControlClient(ctx, imp.control, imp.name)
            state = "unknown"
            try:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise DeployError(f"{imp.name} did not attach its buffers within {timeout_s:g} s "
                                          f"(last state: {state}); see {deployment.out / 'logs' / (imp.name + '.log')}")
                    state = client.status(left).state
                    if state in ("ready", "running"):
                        break
                    if not procs.alive(imp.pid, imp.marker):
                        raise DeployError(f"{imp.name} exited before it was ready: {_log_tail(deployment.out, imp.name)}")
                    time.sleep(STATUS_POLL_S)
            except ControlError as exc:
                raise DeployError(str(exc)) from None
            finally:
                client.close()
    finally:
        ctx.destroy(linger=0)


@dataclass
class ServiceStatus:
    name: str
    pid: int
    alive: bool
    state: str
    uptime_s: float | None = None   # how long the process has run (None once it is gone)


def status(out: Path, timeout_s: float = 1.0) -> tuple[Deployment, list[ServiceStatus]]:
    deployment = Deployment.read(out.resolve())
    ctx = zmq.Context()
    result = []
    try:
        for svc in deployment.services:
            is_alive = procs.alive(svc.pid, svc.marker)
            state = "dead"
            if is_alive and svc.control:
                client = ControlClient(ctx, svc.control, svc.name)
                try:
                    state = client.status(timeout_s).state
                except ControlError:
                    state = "not answering"
                finally:
                    client.close()
            elif is_alive:
                state = "starting"
            result.append(ServiceStatus(svc.name, svc.pid, is_alive, state,
                                        procs.uptime_s(svc.pid) if is_alive else None))
    finally:
        ctx.destroy(linger=0)
    return deployment, result


def down(out: Path, *, timeout_s: float = DOWN_TIMEOUT_S) -> DownReport:
    """Stop every service of the run: shutdown over the control socket (importers first, so they
    can detach), SIGTERM, then SIGKILL after `timeout_s`; then unlink the run's segments and
    remove its socket files. Works on a run whose services were all SIGKILLed, and twice."""
    out = out.resolve()
    deployment = Deployment.read(out)
    report = DownReport()
    log = _down_logger(out, deployment.run_id)
    log.info("stopping services", services=len(deployment.services))
    ctx = zmq.Context()
    try:
        live = [s for s in deployment.services if procs.alive(s.pid, s.marker)]
        report.already_gone = [s.name for s in deployment.services if s not in live]
        for group in ([s for s in live if s.name != "exporter"], [s for s in live if s.name == "exporter"]):
            for svc in group:
                if not svc.control:
                    continue
                client = ControlClient(ctx, svc.control, svc.name)
                try:
                    client.shutdown(min(SHUTDOWN_TIMEOUT_S, timeout_s))
                except ControlError:
                    pass
                finally:
                    client.close()
            left = procs.wait_gone({s.pid: s.marker for s in group}, timeout_s / 2)
            report.graceful += [s.name for s in group if s.pid not in left]
            if left:
                procs.signal_all(left, signal.SIGTERM)
                still = procs.wait_gone(left, timeout_s / 2)
                report.terminated += [s.name for s in group if s.pid in left and s.pid not in still]
                if still:
                    procs.signal_all(still, signal.SIGKILL)
                    procs.wait_gone(still, 5.0)
                    report.killed += [s.name for s in group if s.pid in still]
    finally:
        ctx.destroy(linger=0)
    for name in sorted(set(deployment.shm) | set(shm.existing(deployment.run_id))):
        if shm.unlink(name):
            report.segments_removed.append(name)
    remove_run_files(out)
    if report.killed or report.terminated:
        log.warning("services did not stop when asked", terminated=report.terminated, killed=report.killed)
    log.info("deployment down", graceful=len(report.graceful), already_gone=len(report.already_gone),
             segments_removed=len(report.segments_removed))
    return report


def _down_logger(out: Path, run_id: str) -> Any:
    """down's logger: the run's log if it can still be written, else one that writes nowhere
    (down must work on a run directory it cannot write to, e.g. after a full disk)."""
    try:
        return oplog.run_logger(out / "logs" / RUN_LOG, run_id=run_id)
    except oplog.LogError:
        return oplog.cli_logger()


def remove_run_files(out: Path) -> None:
    """What a stopped run no longer needs and must not leave: its socket files and credentials."""
    shutil.rmtree(out / "sock", ignore_errors=True)
    shutil.rmtree(out / "secrets", ignore_errors=True)
