"""The simulated `dmabuf-emu run`: start the real services in the world, drive the workload,
apply the process faults, stop, shut down, and write deploy's events, as deploy/run.py and
deploy/launcher.py do with real processes.

Rules (each the real driver's, on virtual time):
- Services: the exporter first, then importer-1..N, each an ExporterService / ImporterService
  (the classes real runs start) given a ServiceEnv of the world: its loop, the simulated
  network, the simulated memory, an event sink, a fixed pid (exporter 1000, importer-N
  1000 + N + 100 x incarnation) and the scheduler's generators. The run's secret is derived from
  the seed; the importers get the tokens `dmabuf-emu` would write into their credentials files.
- Control: the driver is an actor of its own (`deploy`) that talks to each service's control
  socket with the same wire messages and the same timeouts (runtime/lifecycle.py, declared once
  for both drivers): status polled until every importer is ready, start the exporter then every
  importer, the workload for `duration`, the process faults as their time comes
  (runtime/process_faults.py, the same class, whose signals stop, resume or end a simulated
  process), stop the importers then the exporter, then down: shutdown importers first, then
  SIGTERM, then SIGKILL, each after half of the down timeout.
- deploy.jsonl gets run_start, workload_start, fault, service_died, service_restarted,
  workload_stop and run_stop with the fields of a real run (pid 999: the driver's own).
- SimOptions (sim/options.py) may limit the run for the schedule search: `jobs` per importer
  (the workload's next_job is wrapped), `moves` of the memory manager (its pressure tick and
  timer are wrapped, the moves counted where the exporter's Emit actions are performed), and
  `network` "chosen" (sim/network.py elastic). The services themselves are the real ones; the
  memory manager's moves (which buffer, when: steer_moves) and how late an importer's refill
  and DMA timers fire (steer_importer) are scheduler decisions whose defaults are what the simulator
  did before: the real exporter's choice, the period, on time.
- The driver's code is written as generators: `yield Sleep(s)` waits on the virtual clock,
  `yield Await(id, timeout)` waits for a control reply.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator

from exporter_svc.service import ExporterArgs, ExporterService, heap_sizes
from importer_svc.service import ImporterArgs, ImporterService
from importer_svc.workload import WorkloadConfig
from protocol import capability, wire
from protocol.timers import LENGTH_PARAMS
from protocol.actions import Emit
from runtime.env import ServiceEnv
from runtime.eventlog import EventLog, Sink
from runtime.lifecycle import (ABORT_DOWN_TIMEOUT_S, DOWN_TIMEOUT_S, DRIVER_POLL_S, GONE_POLL_S, READY_TIMEOUT_S,
                               RESTART_POLL_S, RESTART_READY_S, SHUTDOWN_TIMEOUT_S, START_TIMEOUT_S,
                               STATUS_POLL_S, STOP_TIMEOUT_S, DownReport)
from runtime.process_faults import ProcessFaults, schedule
from runtime.runparams import RunParams
from sim.memory import SimMemory
from sim.network import SimNetwork
from sim.options import SimOptions
from sim.scheduler import Scheduler
from sim.world import SimProcess, World

EXPORTER_PID = 1000
DRIVER_PID = 999
LATE_MAX_S = 1.0                # the most an importer's timer may fire late (steer_importer): a starved
                                # real process can sleep for 100 ms and more


def importer_pid(index: int, incarnation: int) -> int:
    return EXPORTER_PID + index + 100 * incarnation


def run_secret(seed: int) -> bytes:
    """The run's secret, from the seed: the capability checks run, the entropy is the seed's."""
    return hashlib.sha256(f"dmabuf-emu sim secret {seed}".encode()).digest()


@dataclass
class Sleep:
    seconds: float


@dataclass
class Await:
    msg_id: int
    timeout_s: float


Task = Generator[Any, Any, Any]
WANTED = ("move_begin", "move_refused", "move_queued")


def budget_jobs(service: ImporterService, jobs: int) -> None:
    """SimOptions.jobs: the workload hands out `jobs` jobs, then none (the service stays idle)."""
    given = [0]
    next_job = service.workload.next_job

    def limited(idle_buffers: list[int]) -> Any:
        if given[0] >= jobs:
            return None
        spec = next_job(idle_buffers)
        if spec is not None:
            given[0] += 1
        return spec

    service.workload.next_job = limited  # type: ignore[method-assign]


def budget_moves(service: ExporterService, moves: int) -> None:
    """SimOptions.moves: the memory manager wants no move once `moves` were wanted (move_begin,
    move_refused or move_queued; a queued move that begins later counts once), and its pressure
    timer stops. Counted where the shell performs the engine's Emit actions."""
    wanted, queued = [0], set()
    emit = service.handlers[Emit]

    def counting(action: Emit) -> None:
        if action.event in WANTED:
            buffer = action.fields.get("buffer")
            if action.event == "move_begin" and buffer in queued:
                queued.discard(buffer)
            else:
                wanted[0] += 1
                if action.event == "move_queued":
                    queued.add(buffer)
        elif action.event == "move_cancelled":
            queued.discard(action.fields.get("buffer"))
        emit(action)

    tick, schedule_pressure = service.engine.pressure_tick, service._schedule_pressure
    service.handlers[Emit] = counting
    service.engine.pressure_tick = lambda now: tick(now) if wanted[0] < moves else []  # type: ignore[method-assign]
    service._schedule_pressure = lambda: schedule_pressure() if wanted[0] < moves else None  # type: ignore[method-assign]


def steer_importer(service: ImporterService, scheduler: Scheduler) -> None:
    """How late an importer's timers fire, as the scheduler's decisions (LATE_MAX_S times x,
    default x = 0: on time, as every simulated timer fires): its first refill (the workload's
    start) and its refill timer after a think time (`late:<importer>`), and its DMA engine's chunks over a job (`dma-late:<importer>`: the job
    is stretched by that much). A real importer under load wakes late: its jobs begin later and
    last longer than the workload drew. A guide replaying a real run (sim/realguide.py) sets them
    so that each job begins and ends when the real one did. Unguided, the defaults are what the
    simulator always did."""
    think, next_job = service.workload.think_s, service.workload.next_job
    late, dma_late = f"late:{service.args.name}", f"dma-late:{service.args.name}"

    def stretched(idle_buffers: list[int]) -> Any:
        spec = next_job(idle_buffers)
        if spec is None:
            return None
        return dataclasses.replace(spec, duration_s=spec.duration_s + LATE_MAX_S * scheduler.fixed(dma_late, 0.0))

    refill, first = service._refill, [True]

    def refill_late() -> None:
        """The first refill (the workload's start) late too; later ones come after a think time."""
        if first[0]:
            first[0] = False
            wait = LATE_MAX_S * scheduler.fixed(late, 0.0)
            if wait > 0:
                service.loop.call_later(wait, refill)
                return
        refill()

    service.workload.think_s = lambda: think() + LATE_MAX_S * scheduler.fixed(late, 0.0)  # type: ignore[method-assign]
    service.workload.next_job = stretched  # type: ignore[method-assign]
    service._refill = refill_late  # type: ignore[method-assign]


def steer_moves(service: ExporterService, scheduler: Scheduler) -> None:
    """The memory manager's moves as the scheduler's decisions, so that a guide can replay a real
    run's (sim/realguide.py): at each pressure tick, which of the moves the policy would want
    (`move:exporter`, a pick among Exporter.move_options(), default the policy's own) and how
    long until the next tick (`pressure:exporter`: the wait is 8x the period times x, default
    x = 1/8, the period: exact in binary). Unguided, both defaults are what a real exporter does."""
    tick, period = service.engine.pressure_tick, service.pressure_period_s
    service.engine.pressure_tick = lambda now: tick(now, scheduler.pick("move:exporter", service.engine.move_options()))  # type: ignore[method-assign]
    service.pressure_period_s = lambda: 8 * period() * scheduler.fixed("pressure:exporter", 0.125)  # type: ignore[method-assign]


class SimDeployment:
    """One simulated run: the world, its services and the driver."""

    def __init__(self, params: RunParams, out: Path, scheduler: Scheduler, world: World,
                 sink_for: Callable[[str], Sink], say: Callable[[str, str], None],
                 options: SimOptions = SimOptions()) -> None:
        self.params = params
        self.options = options
        self.out = out
        self.scheduler = scheduler
        self.world = world
        self.sink_for = sink_for
        self.say = say
        self.memory = SimMemory()
        self.net = SimNetwork(world, scheduler, params.seed, elastic=options.network == "chosen")
        self.run_id = f"sim{params.seed}"
        self.secret = run_secret(params.seed)
        self.driver = world.process("deploy", DRIVER_PID)
        self.loop = world.loop(self.driver)
        self.log = EventLog(None, "deploy", pid=DRIVER_PID, clock=self.loop.now_ns, sink=sink_for("deploy"))
        self.control_transport = self.net.transport("deploy")
        self.procs: dict[str, SimProcess] = {}        # by service name: the current incarnation
        self.services: dict[str, Any] = {}
        self._by_pid: dict[int, SimProcess] = {}
        self._control: dict[str, Any] = {}
        self._waiters: dict[int, tuple[list, Any]] = {}    # request id -> (task state, timeout timer)
        self._early: dict[int, wire.Message] = {}           # replies no task waits for yet
        self._abandoned: set[int] = set()                   # requests whose wait timed out
        self._ids = 0
        self.died: list[str] = []
        self.finished = False

    # ------------------------------------------------------------------ services

    def _env(self, name: str, pid: int) -> tuple[SimProcess, ServiceEnv]:
        proc = self.world.process(name, pid)
        env = ServiceEnv(loop=self.world.loop(proc), transport=self.net.transport(name), memory=self.memory,
                         sink=self.sink_for, pid=pid, make_rng=self.scheduler.rng,
                         say=lambda text: self.say(name, text), process=False, process_gone=self._process_gone)
        proc.on_kill = env.transport.close
        return proc, env

    def _control_endpoint(self, name: str) -> str:
        return f"sim://{name}/control"

    def _adopt(self, name: str, proc: SimProcess, service: Any) -> None:
        proc.on_exit = service.end_serving
        self.procs[name] = proc
        self.services[name] = service
        self._by_pid[proc.pid] = proc
        if name not in self._control:
            dealer = self.control_transport.dealer(self._control_endpoint(name))
            self.loop.add_reader(dealer, lambda d=dealer: self._on_control_reply(d))
            self._control[name] = dealer
        self.world.loop(proc).call_soon(service.begin)   # its first step: service_start, hello, timers

    def start_exporter(self) -> None:
        p = self.params
        vram, sys_size = heap_sizes(p.buffers, p.buffer_size, p.vram_size)
        proc, env = self._env("exporter", EXPORTER_PID)
        args = ExporterArgs(run_id=self.run_id, out=self.out, endpoint="sim://exporter/rpc",
                            control=self._control_endpoint("exporter"), strategy=p.strategy,
                            buffers=p.buffers, buffer_size=p.buffer_size, vram_size=vram, sys_size=sys_size,
                            max_importers=p.importers, move_rate=p.move_rate,
                            ack_timeout_s=p.ack_timeout_ms / 1000, fence_timeout_s=p.fence_timeout_ms / 1000,
                            unmap_wait_s=p.unmap_wait_ms / 1000, reset_grace_s=p.reset_grace_ms / 1000,
                            hint_policy=p.hint_policy, lease_s=p.lease_ms / 1000, retry_s=p.retry_ms / 1000,
                            faults=tuple(p.faults), seed=p.seed,
                            params={n: v for n, v in p.as_dict().items() if n in LENGTH_PARAMS and v is not None})
        service = ExporterService(args, env, credentials=(self.secret, None))
        steer_moves(service, self.scheduler)
        if self.options.moves is not None:
            budget_moves(service, self.options.moves)
        self._adopt("exporter", proc, service)

    def start_importer(self, n: int, incarnation: int = 0) -> int:
        p = self.params
        name = f"importer-{n}"
        pid = importer_pid(n, incarnation)
        proc, env = self._env(name, pid)
        args = ImporterArgs(name=name, index=n, out=self.out, exporter="sim://exporter/rpc",
                            control=self._control_endpoint(name), strategy=p.strategy, seed=p.seed,
                            workload=WorkloadConfig(p.queue_depth, p.dma_ms, p.think_ms, p.write_ratio, p.pin_ratio,
                                                             p.dma_stall),
                            lease_ms=p.lease_ms, retry_ms=p.retry_ms, faults=tuple(p.faults),
                            incarnation=incarnation, kind=p.for_importer(name)["importer_kind"])
        tokens = (capability.join_token(self.secret, name),
                  {b: capability.export_token(self.secret, b) for b in p.granted(name)}, None)
        service = ImporterService(args, env, credentials=tokens)
        steer_importer(service, self.scheduler)
        if self.options.jobs is not None:
            budget_jobs(service, self.options.jobs)
        self._adopt(name, proc, service)
        return pid

    @property
    def importer_names(self) -> list[str]:
        return [f"importer-{n}" for n in range(1, self.params.importers + 1)]

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.alive

    def _process_gone(self, pid: int) -> bool:
        """ServiceEnv.process_gone in the simulated world: a pid never started, or dead."""
        proc = self._by_pid.get(pid)
        return proc is None or proc.dead

    def _signal(self, pid: int, sig: int) -> None:
        """ProcessFaults' kill(): a signal to a simulated process."""
        proc = self._by_pid.get(pid)
        if proc is None or proc.dead:
            raise ProcessLookupError(pid)
        if sig == signal.SIGKILL:
            self.world.kill(proc)
        elif sig == signal.SIGSTOP:
            self.world.pause(proc)
        elif sig == signal.SIGCONT:
            self.world.resume(proc)
        elif sig == signal.SIGTERM:
            self.services[proc.name].finish(f"signal {signal.Signals(sig).name}")  # its signal handler
        else:
            raise ValueError(f"signal {sig} is not simulated")

    # ------------------------------------------------------------------ tasks and control

    def spawn(self, task: Task, on_done: Callable[[Any], None] | None = None) -> None:
        state = [task, on_done]
        self.loop.call_soon(lambda: self._resume(state, None))

    def _resume(self, state: list, value: Any) -> None:
        task, on_done = state
        while True:
            try:
                cmd = task.send(value)
            except StopIteration as stop:
                if on_done is not None:
                    on_done(stop.value)
                return
            if isinstance(cmd, Sleep):
                # Rounded up to a whole nanosecond, at least one: a wait of what is left until a
                # deadline computed in float seconds must get there, not stop a hair short.
                wake = self.loop.now_ns() + max(1, math.ceil(cmd.seconds * 1e9))
                self.loop.call_at(wake, lambda: self._resume(state, None))
                return
            if not isinstance(cmd, Await):
                raise TypeError(f"driver task yielded {cmd!r}")
            if cmd.msg_id in self._early:      # answered while the task waited for another reply
                value = self._early.pop(cmd.msg_id)
                continue
            timer = self.loop.call_later(cmd.timeout_s, lambda: self._timed_out(cmd.msg_id))
            self._waiters[cmd.msg_id] = (state, timer)
            return

    def _timed_out(self, msg_id: int) -> None:
        waiter = self._waiters.pop(msg_id, None)
        if waiter is not None:
            self._abandoned.add(msg_id)
            self._resume(waiter[0], None)

    def _on_control_reply(self, dealer: Any) -> None:
        while (frames := dealer.recv()) is not None:
            try:
                reply = wire.decode(frames[0])
            except wire.ProtocolError:
                continue
            waiter = self._waiters.pop(reply.id, None)
            if waiter is not None:
                self.loop.cancel(waiter[1])
                self._resume(waiter[0], reply)
            elif reply.id in self._abandoned:
                self._abandoned.discard(reply.id)  # a late answer to a request that timed out
            else:
                self._early[reply.id] = reply

    def _send(self, name: str, op: type[wire.Message]) -> wire.Message:
        self._ids += 1
        msg = op(id=self._ids)
        self._control[name].send(b"", wire.encode(msg))
        return msg

    def request(self, name: str, op: type[wire.Message], timeout_s: float) -> Generator[Any, Any, wire.Message | str]:
        """The reply, or a one-line error (deploy/control.py's ControlError text)."""
        msg = self._send(name, op)
        reply = yield Await(msg.id, timeout_s)
        return self._checked(name, msg, reply, timeout_s)

    def _checked(self, name: str, msg: wire.Message, reply: Any, timeout_s: float) -> wire.Message | str:
        if reply is None:
            return f"{name} did not answer '{msg.OP}' within {timeout_s:g} s ({self._control_endpoint(name)})"
        if isinstance(reply, wire.ErrorReply):
            return f"{name} refused '{msg.OP}': {reply.code}: {reply.message}"
        return reply

    def call_all(self, names: list[str], op: type[wire.Message], timeout_s: float) -> Generator[Any, Any, list[str]]:
        """Send to all at once, then collect (deploy/control.py call_all)."""
        sent = [(name, self._send(name, op)) for name in names]
        deadline = self.loop.now_ns() + int(timeout_s * 1e9)
        errors = []
        for name, msg in sent:
            reply = yield Await(msg.id, max(0.05, (deadline - self.loop.now_ns()) / 1e9))
            checked = self._checked(name, msg, reply, timeout_s)
            if isinstance(checked, str):
                errors.append(checked)
        return errors

    # ------------------------------------------------------------------ the run

    def now_s(self) -> float:
        return self.loop.now_ns() / 1e9

    def main(self) -> Task:
        """deploy/run.py run(): up, wait ready, drive, down."""
        p = self.params
        self.start_exporter()
        for n in range(1, p.importers + 1):
            self.start_importer(n)
        error = yield from self.wait_ready(READY_TIMEOUT_S)
        if error is not None:
            return (yield from self.abort(error))
        self.log.emit("run_start", run_id=self.run_id, strategy=p.strategy, params=p.as_dict())
        error = yield from self.drive()
        report = yield from self.down(DOWN_TIMEOUT_S)
        for name in report.killed:
            self.log.emit("service_died", name=name, pid=None, how="killed by down (did not stop in time)")
        self.log.emit("run_stop", graceful=report.graceful, terminated=report.terminated, killed=report.killed,
                      segments_removed=report.segments_removed)
        return error

    def abort(self, error: str) -> Task:
        yield from self.down(ABORT_DOWN_TIMEOUT_S)
        return error

    def wait_ready(self, timeout_s: float) -> Generator[Any, Any, str | None]:
        """deploy/launcher.py wait_ready(): every importer's status is ready."""
        deadline = self.loop.now_ns() + int(timeout_s * 1e9)
        for name in self.importer_names:
            state = "unknown"
            while True:
                left = (deadline - self.loop.now_ns()) / 1e9
                if left <= 0:
                    return f"{name} did not attach its buffers within {timeout_s:g} s (last state: {state})"
                reply = yield from self.request(name, wire.Status, left)
                if isinstance(reply, wire.StatusReply):
                    state = reply.state
                    if state in ("ready", "running"):
                        break
                if not self.alive(name):
                    return f"{name} exited before it was ready"
                yield Sleep(STATUS_POLL_S)
        return None

    def drive(self) -> Generator[Any, Any, str | None]:
        """deploy/run.py drive(): start, run `duration` with the process faults, stop."""
        p = self.params
        faults = ProcessFaults(schedule(list(p.faults), p.seed, p.importers, self.scheduler.rng), self.log.emit,
                               lambda name: self.procs[name].pid if name in self.procs else None,
                               self._restart, lambda text: self.say("deploy", text), kill=self._signal)
        errors = yield from self.call_all(["exporter"], wire.Start, START_TIMEOUT_S)
        errors += yield from self.call_all(self.importer_names, wire.Start, START_TIMEOUT_S)
        if errors:
            faults.resume_all()
            return "; ".join(errors)
        self.log.emit("workload_start")
        began = self.now_s()
        end = began + p.duration
        services = ["exporter", *self.importer_names]
        while True:
            now = self.now_s()
            faults.due(now - began)
            for name in services:
                if name not in self.died and not self.alive(name):
                    self.died.append(name)
                    if name not in faults.killed:
                        self.log.emit("service_died", name=name, pid=self.procs[name].pid, how="exited during the run")
                        self.say("deploy", f"{name} (pid {self.procs[name].pid}) died during the run")
            if now >= end:
                break
            next_fault = faults.next_at()
            until = min(end, began + next_fault) if next_fault is not None else end
            yield Sleep(max(0.0, min(DRIVER_POLL_S, until - now)))
        faults.resume_all()
        live = [n for n in self.importer_names if n not in self.died]
        errors = yield from self.call_all(live, wire.Stop, STOP_TIMEOUT_S)
        if "exporter" not in self.died:
            errors += yield from self.call_all(["exporter"], wire.Stop, STOP_TIMEOUT_S)
        self.log.emit("workload_stop", errors=errors, died=list(self.died))
        for e in errors:
            self.say("deploy", f"warning: {e}")
        return None

    def _restart(self, name: str, incarnation: int) -> int:
        """ProcessFaults' restart(): a new incarnation now; ready and started by a task of its own."""
        n = int(name.split("-", 1)[1])
        pid = self.start_importer(n, incarnation)
        if name in self.died:
            self.died.remove(name)
        self.spawn(self._start_when_ready(name))
        return pid

    def _start_when_ready(self, name: str) -> Task:
        deadline = self.loop.now_ns() + int(RESTART_READY_S * 1e9)
        while True:
            reply = yield from self.request(name, wire.Status, max(0.1, (deadline - self.loop.now_ns()) / 1e9))
            if isinstance(reply, wire.StatusReply) and reply.state == "ready":
                break
            if self.loop.now_ns() >= deadline or not self.alive(name):
                self.say("deploy", f"fault: {name} restarted but did not attach its buffers within {RESTART_READY_S:g} s")
                return
            yield Sleep(RESTART_POLL_S)
        reply = yield from self.request(name, wire.Start, START_TIMEOUT_S)
        if isinstance(reply, str):
            self.say("deploy", f"fault: restart of {name}: {reply}")

    def down(self, timeout_s: float) -> Generator[Any, Any, DownReport]:
        """deploy/launcher.py down(): shutdown (importers first), SIGTERM, SIGKILL; unlink."""
        report = DownReport()
        names = ["exporter", *self.importer_names]
        live = [n for n in names if self.alive(n)]
        report.already_gone = [n for n in names if n not in live]
        for group in ([n for n in live if n != "exporter"], [n for n in live if n == "exporter"]):
            for name in group:
                yield from self.request(name, wire.Shutdown, min(SHUTDOWN_TIMEOUT_S, timeout_s))
            left = yield from self.wait_gone(group, timeout_s / 2)
            report.graceful += [n for n in group if n not in left]
            if left:
                for name in left:
                    self._signal(self.procs[name].pid, signal.SIGTERM)
                still = yield from self.wait_gone(left, timeout_s / 2)
                report.terminated += [n for n in left if n not in still]
                for name in still:
                    self.world.kill(self.procs[name])
                report.killed += still
        for seg in sorted(self.memory.segments):
            self.memory.unlink(seg)
            report.segments_removed.append(seg)
        return report

    def wait_gone(self, names: list[str], timeout_s: float) -> Generator[Any, Any, list[str]]:
        deadline = self.loop.now_ns() + int(timeout_s * 1e9)
        left = list(names)
        while left:
            left = [n for n in left if self.alive(n)]
            if not left or self.loop.now_ns() >= deadline:
                break
            yield Sleep(GONE_POLL_S)
        return left
