"""The importer's shell: a DEALER connected to the exporter, the exporter's segments attached
without tracking, the IOMMU table, the DMA engine and the workload. Every protocol decision is the
strategy's importer half (protocol/importer.py); this file only performs actions.

Below the protocol, the shell makes the connection reliable and keeps the device honest:
- every request is retried until answered (runtime/reliable.py), every move_notify received is
  served once per id; the half's heartbeats (its timer, every lease/4) go out once, unretried;
- the device stops all DMA when the half says its lease ran out (LeaseExpired; the DMA engine
  asks the half before every chunk), and the half starts over with a fresh hello;
- an exporter that has not answered for two leases is lost (ExporterLost): DMA stops, the
  service exits 4;
- message faults act on what we send (runtime/msgfaults.py), device faults on what the device
  does (importer_svc/device_faults.py), each application a `fault` event.

Capabilities come from the credentials file dmabuf-emu wrote for this importer (mode 0600,
runtime/security.py): its join token, the export tokens of the buffers it was granted, and, on a
CURVE run, its client keys. Without one it can join nothing. It refuses to send its tokens to a
tcp endpoint beyond loopback without CURVE.

Seams (runtime/env.py): the loop, the socket, the segments, the event sink, the pid and the random
numbers come from the ServiceEnv, and the tokens may be handed in (`credentials`), so that the
simulator runs this very class. The DMA engine runs on the loop's `dma` lane.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from protocol import wire
from protocol.actions import (AckOwed, Acked, Action, CancelTimer, ExporterLost, Invalidated, JobFinished, Joined,
                              LeaseExpired, Left, ProgramIommu, Ready, Send, SignalFence, StartDma, StartTimer,
                              StopDma, TeardownIommu, WaitKernelFence)
from protocol.importer import Importer, ImporterFatal
from protocol.params import default
from protocol.strategies import resolve as resolve_strategy
from protocol.machine import TransitionError
from runtime import memory, security
from runtime.env import ServiceEnv
from runtime.fences import KERNEL_SLOT, FenceTable
from runtime.msgfaults import MessageFaults
from runtime.reliable import IN_PROGRESS, Outstanding, ReplyCache
from runtime.service import ServiceShell
from runtime.timers import HalfTimers

from importer_svc.device_faults import DeviceFaults
from importer_svc.dma import DmaEngine
from importer_svc.iommu import IommuTable
from importer_svc.workload import Workload, WorkloadConfig

KERNEL_FENCE_POLL_S = 0.0005
EXIT_EXPORTER_LOST = 4
REQUEST_WINDOW = 16          # requests out at once; more wait in the shell (runtime/reliable.py)
# Id spaces of one incarnation: the protocol half's requests from 1, its heartbeats from
# HEARTBEAT_IDS, the early-ack device fault's forged acks from FORGED_IDS; job ids from
# incarnation << 24, rogue jobs from there + ROGUE_JOBS.
INCARNATION_ID_SHIFT = 40
HEARTBEAT_IDS = 1 << 32
FORGED_IDS = 2 << 32
ROGUE_JOBS = 1 << 23


@dataclass
class ImporterArgs:
    name: str
    index: int
    out: Path
    exporter: str
    control: str
    strategy: str
    seed: int
    workload: WorkloadConfig
    chunk_ms: float = 1.0
    lease_ms: float = default("lease_ms")
    retry_ms: float = default("retry_ms")
    faults: tuple[dict[str, Any], ...] = ()
    incarnation: int = 0
    credentials: Path | None = None
    launcher: str = ""                  # PID:START of the command to stop with (runtime/watchdog.py)
    kind: str = default("importer_kind")  # dynamic, pinned-revocable or static (protocol/importer.py)


def load_credentials(args: ImporterArgs) -> tuple[str, dict[int, str], dict[str, Any] | None]:
    """(join token, buffer -> export token, CURVE keys or None). Raises ValueError (one line)."""
    data = security.read_private(args.credentials) if args.credentials is not None else {}
    try:
        join = data.get("join", "")
        exports = {int(b): t for b, t in data.get("exports", {}).items()}
        if not isinstance(join, str) or not all(isinstance(t, str) for t in exports.values()):
            raise TypeError("tokens must be strings")
    except (TypeError, ValueError, AttributeError) as exc:
        raise security.CredentialsError(f"{args.credentials}: bad tokens ({exc})") from None
    curve = data.get("curve")
    if not security.is_local_endpoint(args.exporter) and curve is None:
        raise ValueError(f"refusing to send tokens to {args.exporter} beyond loopback without CURVE keys")
    return join, exports, curve


class ImporterService(ServiceShell):
    def __init__(self, args: ImporterArgs, env: ServiceEnv | None = None,
                 credentials: tuple[str, dict[int, str], dict[str, Any] | None] | None = None) -> None:
        """`credentials`: (join token, buffer -> export token, CURVE keys or None) when the caller
        has them; otherwise they are read from args.credentials (load_credentials)."""
        strategy = resolve_strategy(args.strategy)  # a broken strategy stops us before anything exists
        join, exports, curve = credentials if credentials is not None else load_credentials(args)
        super().__init__(args.name, args.out, args.control, env, launcher=args.launcher,
                         watch_every_s=args.lease_ms / 1000)
        self.args = args
        self.oplog = self.oplog.bind(incarnation=args.incarnation)   # run_id: python -m importer_svc's
        self.id_base = args.incarnation << INCARNATION_ID_SHIFT
        self.lease_s = args.lease_ms / 1000
        self.engine = Importer(strategy.IMPORTER, args.name, self.env.pid,
                               first_id=self.id_base + 1, join_token=join, export_tokens=exports,
                               lease_s=self.lease_s, heartbeat_first_id=self.id_base + HEARTBEAT_IDS + 1,
                               kind=args.kind)
        self.dealer = self.transport.dealer(args.exporter, identity=args.name.encode(),
                                       secure=security.curve_client(curve) if curve is not None else None)
        self.loop.add_reader(self.dealer, self._on_dealer)
        self.iommu = IommuTable()
        self.dma = DmaEngine(self.loop.lane("dma"), self.log, self.iommu, args.index, self._dma_done, args.chunk_ms,
                             gate=self._may_access)
        job_base = args.incarnation << 24
        self.workload = Workload(args.workload, args.seed, args.index, job_base, self.env.make_rng)
        self.outstanding = Outstanding(self.loop, self._resend, self._on_retry, args.retry_ms / 1000,
                                       max_backoff_s=self.lease_s / 2, window=REQUEST_WINDOW)
        self.replies = ReplyCache()
        self.msgfaults = MessageFaults(self.loop, self.log, args.name, list(args.faults), args.seed,
                                       self._raw_send, self.env.make_rng)
        self.device_faults = DeviceFaults(args.name, list(args.faults), args.seed, self.env.make_rng)
        self._forged_id = self.id_base + FORGED_IDS
        self._next_rogue = job_base + ROGUE_JOBS
        self._starts: dict[int, StartDma] = {}         # running driver jobs
        self._last_start: dict[int, StartDma] = {}     # by buffer: the last job's mapping
        self._iovas: dict[int, int | None] = {}        # job -> the IOVA it used (for its rogue twin)
        self.segments: dict[str, Any] = {}
        self.views: dict[str, memory.HeapView] = {}
        self.fences: FenceTable | None = None
        self._durations: dict[int, float] = {}
        self._stalls: dict[int, float] = {}      # job -> its device's stall (--dma-stall)
        self._refill_pending = False
        self.jobs_done = 0
        self.handlers.update({
            Send: self._do_send, Joined: self._do_joined, Ready: self._do_ready,
            ProgramIommu: self._do_program, TeardownIommu: self._do_teardown,
            StartDma: self._do_start_dma, WaitKernelFence: self._do_wait_kernel_fence,
            SignalFence: self._do_signal_fence,
            JobFinished: self._do_job_finished, Left: self._do_left,
            Acked: self._do_acked, AckOwed: lambda action: None,  # the early-ack fault reads AckOwed
            LeaseExpired: self._do_lease_expired, ExporterLost: self._do_exporter_lost,
            StopDma: self._do_stop_dma, Invalidated: self._do_invalidated,
        })
        self.timers = HalfTimers(self.loop, self._timer_fired)
        self.handlers.update({StartTimer: self.timers.start, CancelTimer: self.timers.cancel})

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        self.install_signals()      # before begin() publishes our endpoints (runtime/service.py serve)
        self.begin()
        return self.serve()

    def begin(self) -> None:
        """Say hello to the exporter (the half starts its heartbeat timer)."""
        self.log.emit("service_start", index=self.args.index, strategy=self.engine.spec.strategy,
                      endpoint=self.args.exporter, granted=sorted(self.engine.export_tokens))
        self.oplog.info("service started: saying hello to the exporter", strategy=self.engine.spec.strategy,
                        exporter=self.args.exporter, index=self.args.index)
        self.publish_endpoints()
        self._call(lambda: self.engine.start(self.loop.now_ns()))

    def cleanup(self) -> None:
        if self.dma.running:  # rogue DMA still going (or a job cut short): on record, then stopped
            self.dma.abort_all(f"service stopping: {self._stop_reason or 'loop ended'}")
        for view in self.views.values():
            view.release()
        if self.fences is not None:
            self.fences.release()
        self.views.clear()
        for seg in self.segments.values():
            try:
                seg.close()  # close only: the exporter owns (and unlinks) its segments
            except BufferError:
                pass
        self.segments.clear()

    def on_start(self, peer: bytes, msg: wire.Message) -> None:
        """Start the workload. Requires every buffer attached (state ready)."""
        if self.state not in ("ready", "running"):
            self._control_reply(peer, wire.ErrorReply(id=msg.id, op=msg.OP, code=wire.ErrorCode.BAD_STATE,
                                                      message=f"{self.svc} is {self.state}, not ready: it has not attached its buffers yet"))
            return
        self.workload.running = True
        self.state = "running"
        self.msgfaults.start_clock()
        self.device_faults.start_clock(self.loop.now_ns())
        self._control_reply(peer, wire.ok_reply(msg))
        self._refill()

    def on_stop(self, peer: bytes, msg: wire.Message) -> None:
        """Stop giving jobs; answer when the running ones are over and unmapped."""
        self.workload.running = False
        if self.state == "running":
            self.state = "stopping"
        self.defer_control("stop", peer, msg)
        self.after_actions()

    def on_shutdown(self, peer: bytes, msg: wire.Message) -> None:
        """Detach everything, say bye, then exit; answer when the exporter has said goodbye."""
        self.workload.running = False
        self.state = "leaving"
        self.defer_control("shutdown", peer, msg)
        if self.engine.slot == 0:  # never joined: nothing to give back
            self.answer_deferred("shutdown")
            self.finish("shutdown before joining")
            return
        self._call(lambda: self.engine.shutdown(self.loop.now_ns()))

    def after_actions(self) -> None:
        # A slot freed while no buffer was idle (its job failed with the unmap still out) is
        # refilled once one is: otherwise a device whose buffers were all busy so would stall.
        if (self.workload.running and not self._refill_pending
                and self.engine.busy_jobs < self.args.workload.queue_depth and self.engine.idle_buffers()):
            self._refill_pending = True
            self.loop.call_later(self.workload.think_s(), self._refill)
        if self.has_deferred("stop") and self.engine.busy_jobs == 0:
            if self.state == "stopping":
                self.state = "stopped"
            self.answer_deferred("stop")

    def _call(self, call: Any) -> None:
        try:
            actions = call()
        except ImporterFatal as exc:
            self.log.emit("fatal", error=str(exc))
            self.oplog.error("fatal: stopping", error=str(exc))
            self.finish(str(exc), exit_code=3)
            return
        except Exception as exc:
            self.internal_error("engine", exc)
            return
        self.perform(actions)

    # ------------------------------------------------------------------ the exporter's socket

    def _on_dealer(self) -> None:
        for _ in range(256):
            frames = self.dealer.recv()
            if frames is None:
                return
            if len(frames) != 1:
                self.log.emit("bad_message_from_exporter", reason=f"{len(frames)} frames")
                continue
            try:
                msg = wire.decode(frames[0])
            except wire.ProtocolError as err:
                self.log.emit("bad_message_from_exporter", code=err.code, reason=err.message)
                continue
            now = self.loop.now_ns()
            if msg.REPLY:
                self._on_reply(msg, now)
            else:
                self._on_request(msg, now)

    def _on_reply(self, msg: wire.Message, now: int) -> None:
        base = self.id_base
        if base + FORGED_IDS <= msg.id < base + FORGED_IDS + HEARTBEAT_IDS:
            return  # the answer to an ack the device forged (early-ack): nobody asked the half
        if not base + HEARTBEAT_IDS <= msg.id < base + FORGED_IDS:  # heartbeats are not retried
            if self.outstanding.answered(b"", msg.id) is None:
                self.log.emit("dedup", op=getattr(msg, "op", msg.OP), id=msg.id, what="reply")
                return
        self._call(functools.partial(self.engine.handle_reply, msg, now))

    def _on_request(self, msg: wire.Message, now: int) -> None:
        """move_notify or invalidate_mappings (the requests an exporter sends): served once per id."""
        cached = self.replies.check(b"", msg.id)
        if cached is not None:
            self.log.emit("dedup", op=msg.OP, id=msg.id, what="request")
            if cached != IN_PROGRESS:
                self.msgfaults.submit(b"", cached, "reply", msg.id)
            return
        early = False
        if isinstance(msg, (wire.MoveNotify, wire.InvalidateMappings)) and self.device_faults:
            if self.device_faults.fires("ignore-notify", now) is not None:
                self.replies.forget(b"", msg.id)  # a retry is dropped (or not) on its own draw
                self.log.emit("fault", kind="ignore-notify", target=self.svc, buffer=msg.buffer, move=msg.move,
                              id=msg.id, **({"revoke": msg.revoke} if isinstance(msg, wire.InvalidateMappings) else {}))
                return
            early = self.device_faults.fires("early-ack", now) is not None
        if not early:
            self._call(functools.partial(self.engine.handle_request, msg, now))
            return
        try:
            actions = self.engine.handle_request(msg, now)
        except Exception as exc:
            self.internal_error("engine", exc)
            return
        self._early_ack(msg, actions)
        self.perform(actions)

    def _early_ack(self, msg: wire.MoveNotify, actions: list[Action]) -> None:
        """The device says it is done with the buffer while its DMA still runs, before the
        driver's callback returns: fenced jobs signal their fences now; an ack the driver owes
        for after the drain (AckOwed) is sent now (the driver's own comes later)."""
        signaled = self.dma.signal_early(msg.buffer)
        running = [s.job for s in self.dma.jobs_on(msg.buffer)]
        forged = None
        for owed in (a for a in actions if type(a) is AckOwed):
            self._forged_id += 1
            forged = self._forged_id
            self.msgfaults.submit(b"", wire.encode(wire.Ack(id=forged, attachment=owed.attachment, move=owed.move)),
                                  "ack", forged)
        self.log.emit("fault", kind="early-ack", target=self.svc, buffer=msg.buffer, move=msg.move,
                      jobs=running, fences_signaled=signaled, ack_id=forged)

    # ------------------------------------------------------------------ actions

    def _do_send(self, action: Send) -> None:
        msg = action.message
        frame = wire.encode(msg)
        op = getattr(msg, "op", msg.OP) if msg.REPLY else msg.OP
        if msg.REPLY:
            self.replies.answered(b"", msg.id, frame)
            self.msgfaults.submit(b"", frame, op, msg.id)
            return
        if not action.reliable:  # a heartbeat: once, now, outside the window
            self.msgfaults.submit(b"", frame, op, msg.id)
            return
        self.outstanding.send(b"", msg.id, op, frame)  # now, or when the window has room

    def _raw_send(self, peer: bytes, frame: bytes) -> None:
        try:
            self.dealer.send(b"", frame)
        except zmq.ZMQError as exc:
            self.log.emit("send_failed", error=str(exc))

    def _resend(self, peer: bytes, frame: bytes, op: str, msg_id: int) -> None:
        """Every transmission of a request, first or retry (the lease counts from the first)."""
        self.engine.sent(msg_id, self.loop.now_ns())
        self.msgfaults.submit(peer, frame, op, msg_id)

    def _on_retry(self, peer: bytes, msg_id: int, op: str, attempt: int) -> None:
        if attempt:
            self.log.emit("retry", op=op, id=msg_id, attempt=attempt)
            self.oplog.info("retry: no answer yet, sending again", op=op, id=msg_id, attempt=attempt)
        else:
            self.log.emit("retry_gave_up", op=op, id=msg_id)
            self.oplog.warning("retry: gave up, no answer within two leases", op=op, id=msg_id)

    # ------------------------------------------------------------------ the lease

    def _timer_fired(self, key: Any) -> None:
        """A timer of the half (the heartbeat). Read first: answers that came in while we were
        away count before the half judges the lease."""
        self._on_dealer()
        self._call(lambda: self.engine.timer_fired(key, self.loop.now_ns()))

    def _may_access(self) -> bool:
        """The DMA engine asks before every chunk; the half knows whether the lease still holds."""
        now = self.loop.now_ns()
        if self.engine.may_access(now):
            return True
        self._call(lambda: self.engine.lease_expired(now))
        return False

    def _do_lease_expired(self, action: LeaseExpired) -> None:
        aborted = self.dma.abort_all("lease expired")
        self.log.emit("lease_expired", since_ns=action.since_ns, jobs_aborted=aborted)
        self.oplog.warning("lease expired: DMA stopped until the exporter answers", jobs_aborted=aborted)
        self.outstanding.cancel()
        self._starts.clear()

    def _do_exporter_lost(self, action: ExporterLost) -> None:
        aborted = self.dma.abort_all("exporter lost")
        self.log.emit("exporter_lost", silent_ns=action.silent_ns, jobs_aborted=aborted)
        self.oplog.error("the exporter has not answered for longer than its lease: all DMA stopped, exiting",
                         silent_ms=round(action.silent_ns / 1e6), lease_ms=round(action.lease_s * 1000))
        self.outstanding.cancel()
        self.finish("exporter lost", exit_code=EXIT_EXPORTER_LOST)

    # ------------------------------------------------------------------ device faults

    def _maybe_rogue(self, start: StartDma | None, after: str, iova: int | None = None) -> None:
        """The rogue device fault: keep doing DMA on the mapping for `ms` after unmap, ack or an
        invalidate_mappings return, through the IOVA the job had (or `iova`)."""
        if start is None or not self.device_faults:
            return
        f = self.device_faults.fires("rogue", self.loop.now_ns())
        if f is None:
            return
        self._next_rogue += 1
        rogue = StartDma(self._next_rogue, start.buffer, start.attachment, f["access"], start.placement, False)
        iova = self._iovas.get(start.job, iova)

        def go() -> None:  # after the unmap or ack is on record: the device goes on regardless
            self.log.emit("fault", kind="rogue", target=self.svc, job=rogue.job, of_job=start.job,
                          buffer=start.buffer, after=after, ms=f["ms"], access=f["access"], iova=iova)
            self.dma.start(rogue, f["ms"] / 1000, rogue=True, iova=iova)

        self.loop.call_soon(go)

    def _do_acked(self, action: Acked) -> None:
        self._maybe_rogue(self._last_start.get(action.buffer), "ack")

    def _do_invalidated(self, action: Invalidated) -> None:
        """Linux 7.1: the callback returned; a rogue device goes on through the attachment's
        entries still programmed (until the unmap tears them down)."""
        start = self._last_start.get(action.buffer)
        if start is not None and start.attachment == action.attachment:
            self._maybe_rogue(start, "invalidate_mappings", iova=self.iommu.iova_of(action.attachment))

    def _do_stop_dma(self, action: StopDma) -> None:
        self.dma.abort(action.job, action.reason)
        self._starts.pop(action.job, None)

    def _do_joined(self, action: Joined) -> None:
        if not self.segments:  # a rejoin keeps the segments it has
            for heap, name, size in action.heaps:
                self.segments[heap] = seg = self.env.memory.attach(name)
                self.views[heap] = memory.HeapView(heap, seg.buf, size)
            self.segments["fences"] = fseg = self.env.memory.attach(action.fences_shm)
            self.fences = FenceTable(fseg.buf, action.fence_slots, len(action.buffers))
        self.dma.attach_memory(self.views, self.fences, action.slot)  # type: ignore[arg-type]
        self.log.emit("joined", slot=action.slot, heaps=[h for h, _, _ in action.heaps],
                      buffers=len(action.buffers))
        self.oplog.info("joined the exporter", slot=action.slot, buffers=len(action.buffers))

    def _do_ready(self, action: Ready) -> None:
        self.log.emit("ready", attachments=len(self.engine.idle_buffers()))
        self.oplog.info("ready: every buffer attached", attachments=len(self.engine.idle_buffers()))
        if self.workload.running:  # back after a rejoin
            self._refill()
        elif self.state == "starting":
            self.state = "ready"

    def _do_program(self, action: ProgramIommu) -> None:
        p = action.placement
        iova = self.iommu.program(action.attachment, p)
        self.log.emit("iommu_program", buffer=action.buffer, attachment=action.attachment,
                      heap=p.heap, offset=p.offset, size=p.size, gen=p.gen, iova=iova)

    def _do_teardown(self, action: TeardownIommu) -> None:
        p = action.placement
        self.iommu.teardown(action.attachment)
        self.log.emit("iommu_teardown", buffer=action.buffer, attachment=action.attachment,
                      heap=p.heap, offset=p.offset, size=p.size, gen=p.gen)

    def _do_start_dma(self, action: StartDma) -> None:
        duration = self._durations.pop(action.job, self.args.workload.dma_ms / 1000)
        if self.device_faults and (f := self.device_faults.fires("slow-dma", self.loop.now_ns())) is not None:
            duration *= f["factor"]
            self.log.emit("fault", kind="slow-dma", target=self.svc, job=action.job, factor=f["factor"])
        self._starts[action.job] = self._last_start[action.buffer] = action
        self.dma.start(action, duration, stall_s=self._stalls.pop(action.job, 0.0))
        self._iovas[action.job] = self.dma.iova_of_job(action.job)

    def _dma_done(self, job: int, fence: int) -> None:
        self._call(lambda: self.engine.dma_done(job, self.loop.now_ns(), fence))

    def _do_signal_fence(self, action: SignalFence) -> None:
        if not 0 < action.slot < self.fences.slots:  # type: ignore[union-attr]
            raise ValueError(f"SignalFence of slot {action.slot}: an importer signals only fences of its own slot")
        self.fences.signal(action.slot, action.buffer, action.seq)  # type: ignore[union-attr]
        self.log.emit("fence_signal", buffer=action.buffer, usage=action.usage, seq=action.seq, job=action.job)

    def _do_wait_kernel_fence(self, action: WaitKernelFence) -> None:
        began = self.loop.now_ns()

        def poll() -> None:
            if self.fences.is_signaled(KERNEL_SLOT, action.buffer, action.seq):  # type: ignore[union-attr]
                self.log.emit("kernel_fence_wait", buffer=action.buffer, seq=action.seq, waited_ns=self.loop.now_ns() - began)
                self._call(lambda: self.engine.kernel_fence_signaled(action.attachment, self.loop.now_ns()))
            else:
                self.loop.call_later(KERNEL_FENCE_POLL_S, poll)

        self.loop.call_soon(poll)

    def _do_job_finished(self, action: JobFinished) -> None:
        start = self._starts.pop(action.job, None)
        if action.ok:
            self._maybe_rogue(start, "unmap")
        self._iovas.pop(action.job, None)
        self.jobs_done += 1
        if self.workload.running and not self._refill_pending:
            self._refill_pending = True
            self.loop.call_later(self.workload.think_s(), self._refill)

    def _do_left(self, action: Left) -> None:
        self.answer_deferred("shutdown")
        self.finish("left")

    def _refill(self) -> None:
        """Keep queue_depth jobs in flight, each on an idle buffer."""
        self._refill_pending = False
        while self.workload.running and self.engine.busy_jobs < self.args.workload.queue_depth:
            spec = self.workload.next_job(self.engine.idle_buffers())
            if spec is None:
                return
            self._durations[spec.job] = spec.duration_s
            if spec.stall_s:
                self._stalls[spec.job] = spec.stall_s
            try:
                actions = self.engine.job(spec.job, spec.buffer, spec.access, self.loop.now_ns(), spec.pin)
            except TransitionError as exc:
                self.internal_error("job", exc)
                return
            self.perform(actions)
