"""An in-process harness for the sans-IO halves' rules: one exporter, N importers, message
queues between them that the test drains in the order it wants to examine.

Messages cross the real codec (encode/decode) on every hop. The harness performs the shells'
jobs in memory: copies complete when told, fences live in a FenceTable over private memory (the
same table the services share, with its usages), DMA jobs run until told they are done. It
judges nothing: whether an order races is the checker's question, asked of the real services in
the simulator (sim/, tests/test_sim_races.py), which runs the shells this harness only stands in
for.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from protocol import capability, wire
from protocol.actions import (AckOwed, Acked, CancelTimer, ConfirmStopped, CopyBuffer, Emit, ForceCompleteFences, Invalidated,
                              JobFinished, Joined, Left, ProgramIommu, PublishKernelFence, Ready, Send,
                              SignalFence, SignalKernelFence, StampBuffer, StartDma, StartTimer, StopDma,
                              TeardownIommu, WaitFences, WaitKernelFence)
from protocol.exporter import Exporter, ExporterConfig, HeapConfig
from protocol.fence import usage_for_access
from protocol.importer import Importer
from protocol.strategies import get as get_strategy
from runtime.fences import KERNEL_SLOT, FenceTable, table_bytes


@dataclass
class Job:
    importer: str
    job: int
    start: StartDma
    began: int
    ended: int | None = None
    fence: int = 0


@dataclass
class World:
    strategy: str
    importers: int = 1
    buffers: int = 2
    buffer_size: int = 4096
    vram_buffers: int = 1
    hint_policy: str = "optimistic"
    secret: bytes = b"world-secret-0123456789abcdef"
    grants: dict[str, list[int]] | None = None                 # importer -> buffers (default: all)
    limits: dict[str, int] = field(default_factory=dict)       # ExporterConfig max_* overrides
    kinds: dict[str, str] = field(default_factory=dict)        # importer -> kind (default: dynamic)
    exporter: Exporter = field(init=False)
    peers: dict[str, Importer] = field(default_factory=dict)
    to_exporter: deque = field(default_factory=deque)          # (peer name, frame)
    to_importer: dict[str, deque] = field(default_factory=dict)
    now: int = 0
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # the events as a history: t_ns = now (us)
    iommu: dict[str, dict[int, wire.Placement]] = field(default_factory=dict)
    jobs: dict[tuple[str, int], Job] = field(default_factory=dict)
    copies: deque = field(default_factory=deque)               # CopyBuffer pending
    fence_waits: dict[int, tuple[WaitFences, dict[int, int]]] = field(default_factory=dict)  # move -> (wait, snapshot)
    fence_reported: dict[int, tuple[int, ...]] = field(default_factory=dict)  # move -> slots last reported
    kernel_waits: deque = field(default_factory=deque)         # (importer, WaitKernelFence)
    timers: dict[Any, int] = field(default_factory=dict)
    finished: list[JobFinished] = field(default_factory=list)
    ready: set[str] = field(default_factory=set)
    fences: FenceTable = field(init=False)
    slots: dict[str, int] = field(default_factory=dict)
    # Devices with a chunk access under way (by slot): a ConfirmStopped for one waits in
    # stop_waits until confirm_stops(); for any other it is answered at once, as the shell does.
    in_access: set[int] = field(default_factory=set)
    stop_waits: list[ConfirmStopped] = field(default_factory=list)

    def __post_init__(self) -> None:
        spec = get_strategy(self.strategy)
        size = self.buffer_size
        slots = self.importers + 1
        self.fences = FenceTable(memoryview(bytearray(table_bytes(slots, self.buffers))), slots, self.buffers)
        self.exporter = Exporter(spec.EXPORTER, ExporterConfig(
            buffers=self.buffers, buffer_size=size,
            heaps=(HeapConfig("vram", "dmabuf-t-vram", self.vram_buffers * size),
                   HeapConfig("sys", "dmabuf-t-sys", (self.buffers + self.vram_buffers) * size)),
            fences_shm="dmabuf-t-fences", fence_slots=self.importers + 1,
            ack_timeout_s=0.25, fence_timeout_s=1.0, hint_policy=self.hint_policy,
            secret=self.secret, **self.limits))
        self._apply("exporter", self.exporter.boot(self.now))
        for n in range(1, self.importers + 1):
            name = f"importer-{n}"
            granted = range(self.buffers) if self.grants is None else self.grants.get(name, [])
            self.peers[name] = Importer(spec.IMPORTER, name, 1000 + n,
                                        join_token=capability.join_token(self.secret, name),
                                        export_tokens={b: capability.export_token(self.secret, b) for b in granted},
                                        kind=self.kinds.get(name, "dynamic"))
            self.to_importer[name] = deque()
            self.iommu[name] = {}

    # ------------------------------------------------------------------ driving

    def tick(self, dt: int = 1) -> None:
        self.now += dt

    def join_all(self) -> None:
        for name, imp in self.peers.items():
            self._apply(name, imp.start(self.now))
        self.settle()

    def deliver_to_exporter(self) -> None:
        peer, frame = self.to_exporter.popleft()
        msg = wire.decode(frame)
        self.tick()
        if msg.REPLY:
            self._apply("exporter", self.exporter.handle_reply(peer.encode(), msg, self.now))
        else:
            self._apply("exporter", self.exporter.handle_request(peer.encode(), msg, self.now))

    def deliver_to_importer(self, name: str) -> None:
        msg = wire.decode(self.to_importer[name].popleft())
        self.tick()
        imp = self.peers[name]
        if msg.REPLY:
            self._apply(name, imp.handle_reply(msg, self.now))
        else:
            self._apply(name, imp.handle_request(msg, self.now))

    def settle(self, limit: int = 10_000) -> None:
        """Deliver every queued message (FIFO per channel) until none is left."""
        for _ in range(limit):
            if self.to_exporter:
                self.deliver_to_exporter()
                continue
            for name, q in self.to_importer.items():
                if q:
                    self.deliver_to_importer(name)
                    break
            else:
                return
        raise AssertionError("messages kept flowing: livelock?")

    def job(self, importer: str, job: int, buffer: int, access: str) -> None:
        self.tick()
        self._apply(importer, self.peers[importer].job(job, buffer, access, self.now))

    def dma_done(self, importer: str, job: int) -> None:
        self.tick()
        j = self.jobs[(importer, job)]
        j.ended = self.now
        if j.start.fenced and j.start.signal == "end":
            self.fences.signal(self.slots[importer], j.start.buffer, j.fence)
        self._apply(importer, self.peers[importer].dma_done(job, self.now, j.fence))

    def revoke(self, buffer: int) -> None:
        self.tick()
        self._apply("exporter", self.exporter.revoke_buffer(buffer, self.now))

    def unrevoke(self, buffer: int) -> None:
        self.tick()
        self._apply("exporter", self.exporter.unrevoke_buffer(buffer, self.now))

    def pressure(self) -> None:
        self.tick()
        self._apply("exporter", self.exporter.pressure_tick(self.now))

    def finish_copy(self) -> CopyBuffer:
        copy = self.copies.popleft()
        self.tick()
        self._apply("exporter", self.exporter.copy_done(copy.move, self.now))
        return copy

    def _pending(self, wait: WaitFences, snapshot: dict[int, int]) -> tuple[int, ...]:
        return tuple(sorted(self.fences.pending(wait.buffer, snapshot, wait.confirm)))

    def check_fences(self) -> None:
        """The exporter's fence poll: report each wait's unsignaled slots when they change
        (none left: the wait is over)."""
        for move, (wait, snapshot) in list(self.fence_waits.items()):
            pending = self._pending(wait, snapshot)
            if pending != self.fence_reported.get(move):
                self.fence_reported[move] = pending
                if not pending:
                    del self.fence_waits[move]
                self.tick()
                self._apply("exporter", self.exporter.fences_pending(move, pending, self.now))

    def time_out_fences(self, move: int) -> None:
        wait, snapshot = self.fence_waits.pop(move)
        pending = self._pending(wait, snapshot)
        self.tick()
        self._apply("exporter", self.exporter.fences_timed_out(move, pending, self.now))

    def reset_devices(self) -> None:
        """Each device whose running job's fence the exporter forced aborts the job before its
        next access and signals the fence itself (importer_svc/dma.py): its engine stopped."""
        for j in list(self.jobs.values()):
            slot = self.slots.get(j.importer)
            if j.ended is None and j.fence and self.fences.forced_before_signaled(slot, j.start.buffer, j.fence):
                self.fences.signal(slot, j.start.buffer, j.fence)
                j.ended = self.now
                self.tick()
                self._apply(j.importer, self.peers[j.importer].dma_done(j.job, self.now, j.fence))

    def check_leases(self) -> None:
        self._apply("exporter", self.exporter.check_leases(self.now))

    def confirm_stops(self) -> None:
        """The shell's poll for the ConfirmStopped still waiting: a device no longer in access."""
        waiting, self.stop_waits = self.stop_waits, []
        for a in waiting:
            self._apply_each("exporter", [a], [])

    def fire_timer(self, key: Any) -> None:
        self.timers.pop(key)
        self.tick()
        self._apply("exporter", self.exporter.timer_fired(key, self.now))

    def check_kernel_fences(self) -> None:
        for _ in range(len(self.kernel_waits)):
            name, wait = self.kernel_waits.popleft()
            if self.fences.is_signaled(KERNEL_SLOT, wait.buffer, wait.seq):
                self.tick()
                self._apply(name, self.peers[name].kernel_fence_signaled(wait.attachment, self.now))
            else:
                self.kernel_waits.append((name, wait))

    # ------------------------------------------------------------------ what happened

    def event_names(self, svc: str | None = None) -> list[str]:
        return [e for s, e, _ in self.events if svc is None or s == svc]

    # ------------------------------------------------------------------ the shells' part

    def _apply(self, svc: str, actions: list) -> None:
        snapshots: list[int] = []
        self._apply_each(svc, actions, snapshots)
        for move in snapshots:  # the shell's first report of a fence wait: what it waits for
            if move in self.fence_waits:
                wait, snapshot = self.fence_waits[move]
                pending = self._pending(wait, snapshot)
                self.fence_reported[move] = pending
                if not pending:
                    del self.fence_waits[move]
                fences = {s: (snapshot[s], self.fences.usage_of(s, wait.buffer, snapshot[s])) for s in pending}
                self._apply("exporter", self.exporter.fences_snapshot(move, fences, self.now))

    def _apply_each(self, svc: str, actions: list, snapshots: list[int]) -> None:
        for a in actions:
            if isinstance(a, Send):
                frame = wire.encode(a.message)
                if svc == "exporter":
                    self.to_importer[a.peer.decode()].append(frame)
                else:
                    self.to_exporter.append((svc, frame))
            elif isinstance(a, Emit):
                self.events.append((svc, a.event, a.fields))
                self.history.append({"t_ns": self.now * 1000, "svc": svc, "pid": 1, "event": a.event, **a.fields})
            elif isinstance(a, CopyBuffer):
                self.copies.append(a)
            elif isinstance(a, WaitFences):
                # As the exporter shell: the fences published so far, of the wait's usage or lower.
                self.fence_waits[a.move] = (a, self.fences.snapshot(a.buffer, a.usage, a.confirm))
                snapshots.append(a.move)
            elif isinstance(a, ForceCompleteFences):
                if 0 < a.slot < self.fences.slots:
                    self.fences.force(a.slot, a.buffer, a.error)
            elif isinstance(a, ConfirmStopped):
                if a.slot in self.in_access:
                    self.stop_waits.append(a)
                else:
                    self._apply("exporter", self.exporter.device_stopped(a.slot, a.pid, "no access under way", self.now))
            elif isinstance(a, PublishKernelFence):
                self.fences.publish_kernel(a.buffer, a.seq)
            elif isinstance(a, SignalKernelFence):
                self.fences.signal_kernel(a.buffer, a.seq)
            elif isinstance(a, StartTimer):
                self.timers[a.key] = self.now
            elif isinstance(a, CancelTimer):
                self.timers.pop(a.key, None)
            elif isinstance(a, Joined):
                self.slots[svc] = a.slot
            elif isinstance(a, Ready):
                self.ready.add(svc)
            elif isinstance(a, ProgramIommu):
                self.iommu[svc][a.attachment] = a.placement
            elif isinstance(a, TeardownIommu):
                self.iommu[svc].pop(a.attachment, None)
            elif isinstance(a, StartDma):
                job = self.jobs[(svc, a.job)] = Job(svc, a.job, a, self.now)
                if a.fenced:
                    job.fence = self.fences.emit(self.slots[svc], a.buffer, usage_for_access(a.access))
                    if a.signal == "submit":
                        self.fences.signal(self.slots[svc], a.buffer, job.fence)
            elif isinstance(a, SignalFence):
                assert a.slot == self.slots[svc], "an importer signals only its own slot's fences"
                self.fences.signal(a.slot, a.buffer, a.seq)
            elif isinstance(a, WaitKernelFence):
                self.kernel_waits.append((svc, a))
            elif isinstance(a, JobFinished):
                self.finished.append(a)
            elif isinstance(a, StopDma):
                # As the importer shell: the device stops the job now; its fence signals.
                j = self.jobs[(svc, a.job)]
                j.ended = self.now
                if j.start.fenced:
                    self.fences.signal(self.slots[svc], j.start.buffer, j.fence)
            elif isinstance(a, (StampBuffer, Left, AckOwed, Acked, Invalidated)):
                pass
            else:
                raise AssertionError(f"unhandled action {a!r}")
