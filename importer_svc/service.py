"""The importer's shell: a DEALER connected to the exporter, the exporter's segments attached
without tracking, the IOMMU table, the DMA engine and the workload. Every protocol decision is the
strategy's importer half (protocol/importer.py); this file only performs actions.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from protocol import wire
from protocol.actions import (JobFinished, Joined, Left, ProgramIommu, Ready, Send, StartDma,
                              TeardownIommu, WaitKernelFence)
from protocol.importer import Importer, ImporterFatal
from protocol.strategies import get as get_strategy
from protocol.machine import TransitionError
from runtime import memory, shm, transport
from runtime.fences import KERNEL_SLOT, FenceTable
from runtime.service import ServiceShell, now_ns

from importer_svc.dma import DmaEngine
from importer_svc.iommu import IommuTable
from importer_svc.workload import Workload, WorkloadConfig

KERNEL_FENCE_POLL_S = 0.0005


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


class ImporterService(ServiceShell):
    def __init__(self, args: ImporterArgs) -> None:
        super().__init__(args.name, args.out, args.control)
        self.args = args
        self.engine = Importer(get_strategy(args.strategy).IMPORTER, args.name, os.getpid())
        self.dealer = transport.dealer(self.ctx, args.exporter, identity=args.name.encode())
        self.loop.add_reader(self.dealer, self._on_dealer)
        self.iommu = IommuTable()
        self.dma = DmaEngine(self.loop, self.log, self.iommu, args.index, self._dma_done, args.chunk_ms)
        self.workload = Workload(args.workload, args.seed, args.index)
        self.segments: dict[str, Any] = {}
        self.views: dict[str, memory.HeapView] = {}
        self.fences: FenceTable | None = None
        self._durations: dict[int, float] = {}
        self._refill_pending = False
        self.jobs_done = 0
        self.handlers.update({
            Send: self._do_send, Joined: self._do_joined, Ready: self._do_ready,
            ProgramIommu: self._do_program, TeardownIommu: self._do_teardown,
            StartDma: self._do_start_dma, WaitKernelFence: self._do_wait_kernel_fence,
            JobFinished: self._do_job_finished, Left: self._do_left,
        })

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        self.log.emit("service_start", index=self.args.index, strategy=self.args.strategy,
                      endpoint=self.args.exporter)
        self.publish_endpoints()
        self._call(lambda: self.engine.start(now_ns()))
        return self.serve()

    def cleanup(self) -> None:
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
        self._call(lambda: self.engine.shutdown(now_ns()))

    def after_actions(self) -> None:
        if self.has_deferred("stop") and self.engine.busy_jobs == 0:
            if self.state == "stopping":
                self.state = "stopped"
            self.answer_deferred("stop")

    def _call(self, call: Any) -> None:
        try:
            actions = call()
        except ImporterFatal as exc:
            self.log.emit("fatal", error=str(exc))
            print(f"{self.svc}: {exc}", flush=True)
            self.finish(str(exc), exit_code=3)
            return
        except Exception as exc:
            self.internal_error("engine", exc)
            return
        self.perform(actions)

    # ------------------------------------------------------------------ the exporter's socket

    def _on_dealer(self) -> None:
        for _ in range(256):
            try:
                frames = self.dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 1:
                self.log.emit("bad_message_from_exporter", reason=f"{len(frames)} frames")
                continue
            try:
                msg = wire.decode(frames[0])
            except wire.ProtocolError as err:
                self.log.emit("bad_message_from_exporter", code=err.code, reason=err.message)
                continue
            handle = self.engine.handle_reply if msg.REPLY else self.engine.handle_request
            self._call(functools.partial(handle, msg, now_ns()))

    # ------------------------------------------------------------------ actions

    def _do_send(self, action: Send) -> None:
        try:
            self.dealer.send(wire.encode(action.message), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.log.emit("send_failed", op=getattr(action.message, "op", action.message.OP), error=str(exc))

    def _do_joined(self, action: Joined) -> None:
        for heap, name, size in action.heaps:
            self.segments[heap] = seg = shm.attach(name)
            self.views[heap] = memory.HeapView(heap, seg.buf, size)
        self.segments["fences"] = fseg = shm.attach(action.fences_shm)
        self.fences = FenceTable(fseg.buf, action.fence_slots, len(action.buffers))
        self.dma.attach_memory(self.views, self.fences, action.slot)
        self.log.emit("joined", slot=action.slot, heaps=[h for h, _, _ in action.heaps],
                      buffers=len(action.buffers))

    def _do_ready(self, action: Ready) -> None:
        self.state = "ready"
        self.log.emit("ready", attachments=len(self.engine.idle_buffers()))

    def _do_program(self, action: ProgramIommu) -> None:
        p = action.placement
        self.iommu.program(action.attachment, p)
        self.log.emit("iommu_program", buffer=action.buffer, attachment=action.attachment,
                      heap=p.heap, offset=p.offset, size=p.size, gen=p.gen)

    def _do_teardown(self, action: TeardownIommu) -> None:
        p = action.placement
        self.iommu.teardown(action.attachment)
        self.log.emit("iommu_teardown", buffer=action.buffer, attachment=action.attachment,
                      heap=p.heap, offset=p.offset, size=p.size, gen=p.gen)

    def _do_start_dma(self, action: StartDma) -> None:
        self.dma.start(action, self._durations.pop(action.job, self.args.workload.dma_ms / 1000))

    def _dma_done(self, job: int) -> None:
        self._call(lambda: self.engine.dma_done(job, now_ns()))

    def _do_wait_kernel_fence(self, action: WaitKernelFence) -> None:
        began = now_ns()

        def poll() -> None:
            if self.fences.is_signaled(KERNEL_SLOT, action.buffer, action.seq):  # type: ignore[union-attr]
                self.log.emit("kernel_fence_wait", buffer=action.buffer, seq=action.seq, waited_ns=now_ns() - began)
                self._call(lambda: self.engine.kernel_fence_signaled(action.attachment, now_ns()))
            else:
                self.loop.call_later(KERNEL_FENCE_POLL_S, poll)

        self.loop.call_soon(poll)

    def _do_job_finished(self, action: JobFinished) -> None:
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
            try:
                actions = self.engine.job(spec.job, spec.buffer, spec.access, now_ns())
            except TransitionError as exc:
                self.internal_error("job", exc)
                return
            self.perform(actions)
