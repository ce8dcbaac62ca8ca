"""The device's DMA engine: runs a job as chunks spread over time, every chunk through the
IOMMU, writes stamping lines and reads verifying them. Its loop is the importer's `dma` lane
(runtime/loop.py): the same loop in a real process, an actor of its own in the simulator.

A job of duration D over a buffer is cut into about D / chunk_ms chunks; chunk i runs at
start + i * D / n, so a job really overlaps with what the exporter and other devices do in the
meantime. An access the IOMMU does not cover is blocked and recorded (`iommu_fault`); a read
that finds another buffer's stamps, or wrong line indices, records `corruption`. A fenced job
publishes its fence in shared memory before its first access and signals it after its last
(StartDma.signal says otherwise only for a mutant's known bug).

Before every chunk the engine asks its gate (the shell's lease check) whether the device may still
touch memory; when it may not, the shell aborts every job (abort_all). A fenced job whose fence the
exporter completed first (a fence timeout, a lost lease: the emulated device reset) is aborted
before its next access; its dma_end names the reason the exporter recorded in the fence table.
A chunk is two steps, as on a device: the check, then the access, a deferred call of the DMA lane
that runs when the check is done (a real process: next on its loop, and the copy of the lines takes
its time; the simulator: LANE_COST_NS["dma"] later, sim/world.py). The device does not look at its
fence again until the next chunk, so an exporter that forces a fence while a chunk is under way
and copies at once overlaps that chunk's access: the forced-fence window, which the exporter
closes by waiting for the device's confirmation that it stopped (reset_confirmed).
The device says how many chunks are between their check and the end of their access (the slot's
access count in the fence table, runtime/fences.py): the lease's promise (no access after the
device's own lease ran out) holds for every access whose check comes after that, but an access
already checked runs when a paused device resumes, so the exporter lets an importer whose lease
expired go only once that count is 0 (or its process is gone).
An aborted job ends with dma_end status "aborted"; every dma_end says when the job last touched
memory (`last_access_ns`), which is what the race checker judges.

A stalled job (--dma-stall, importer_svc/workload.py): the device holds the job for `stall_s`
before its last chunk: its fence stays unsignalled and its last access comes that much later, as a
device that hangs mid-job and recovers (a stall, not a slower device: the chunks before run as
drawn). Its dma_end says `stalled_ms`. The same code runs in the simulator on virtual time. (The
schedule search's own stalls are the world's: a chunk's timer held past an exporter timer,
sim/world.py; they show in the decision log, not in the events.)

Rogue jobs (a device fault) are DMA the driver never asked for: same path through the IOMMU, same
stamps, `rogue: true` in their events, and nobody is told when they end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from protocol.actions import StartDma
from protocol.fence import usage_for_access
from protocol.heap import LINE
from runtime import memory
from runtime.eventlog import EventLog
from runtime.fences import FenceTable
from runtime.loop import LoopLike

from importer_svc.iommu import IommuTable


@dataclass
class _Job:
    start: StartDma
    duration_ns: int
    chunks: int
    lines_per_chunk: int
    t0: int = 0
    index: int = 0
    faults: int = 0
    bad_lines: int = 0
    first_bad: memory.Corruption | None = None
    samples: list[dict] = field(default_factory=list)
    fence_seq: int = 0
    bytes: int = 0
    rogue: bool = False
    last_access_ns: int | None = None
    iova: int | None = None
    stall_ns: int = 0


class DmaEngine:
    def __init__(self, loop: LoopLike, log: EventLog, iommu: IommuTable, writer: int,
                 on_done: Callable[[int, int], None], chunk_ms: float = 1.0,
                 gate: Callable[[], bool] = lambda: True) -> None:
        self.loop = loop
        self.log = log
        self.iommu = iommu
        self.writer = writer
        self.on_done = on_done
        self.chunk_ms = chunk_ms
        self.gate = gate
        self.heaps: dict[str, memory.HeapView] = {}
        self.fences: FenceTable | None = None
        self.slot = 0
        self._jobs: dict[int, _Job] = {}
        self._in_access = 0       # chunks between their check and the end of their access

    def attach_memory(self, heaps: dict[str, memory.HeapView], fences: FenceTable | None, slot: int) -> None:
        """The exporter's memory and our fence slot (a rejoin keeps the slot). Publishes the access
        count: a new incarnation's 0 stands in for a dead one's, which can touch nothing."""
        self.heaps, self.fences, self.slot = heaps, fences, slot
        self._access_count(0)

    def _access_count(self, delta: int) -> None:
        self._in_access += delta
        if self.fences is not None:
            self.fences.set_in_access(self.slot, self._in_access)

    @property
    def running(self) -> int:
        return len(self._jobs)

    def jobs_on(self, buffer: int) -> list[StartDma]:
        return [j.start for j in self._jobs.values() if j.start.buffer == buffer and not j.rogue]

    def iova_of_job(self, job: int) -> int | None:
        j = self._jobs.get(job)
        return None if j is None else j.iova

    def start(self, start: StartDma, duration_s: float, *, rogue: bool = False, iova: int | None = None,
              stall_s: float = 0.0) -> None:
        """Begin a job. Requires memory attached; its placement as the driver decided it. A
        driver's job uses its attachment's current IOVA; a rogue job the one it had (`iova`).
        `stall_s`: the device holds the job that long before its last chunk (--dma-stall)."""
        p = start.placement
        lines = p.size // LINE
        chunks = max(1, min(lines, round(duration_s * 1000 / self.chunk_ms)))
        job = _Job(start, int(duration_s * 1e9), chunks, math.ceil(lines / chunks), rogue=rogue,
                   iova=iova if rogue else self.iommu.iova_of(start.attachment), stall_ns=int(stall_s * 1e9))
        self._jobs[start.job] = job
        if start.fenced:
            job.fence_seq = self.fences.emit(self.slot, start.buffer, usage_for_access(start.access))  # type: ignore[union-attr]
        job.t0 = self.loop.now_ns()
        self.log.emit("dma_begin", job=start.job, buffer=start.buffer, attachment=start.attachment,
                      access=start.access, heap=p.heap, offset=p.offset, size=p.size, gen=p.gen,
                      fence=job.fence_seq or None, **({"rogue": True} if rogue else {}))
        if start.fenced and start.signal == "submit":
            self._signal(job)  # the early-signal bug: "done" before the first access
        if job.stall_ns and chunks == 1:
            self.loop.call_at(job.t0 + job.stall_ns, lambda: self._chunk(job))   # held before its only chunk
        else:
            self._chunk(job)

    def signal_early(self, buffer: int) -> list[int]:
        """The early-ack device fault: signal the fences of running jobs on `buffer` now."""
        out = []
        for job in self._jobs.values():
            if job.start.buffer == buffer and job.fence_seq and not job.rogue:
                self.fences.signal(self.slot, buffer, job.fence_seq)  # type: ignore[union-attr]
                out.append(job.start.job)
        return out

    def abort(self, job: int, reason: str) -> None:
        """Stop one job now (a synchronous revoke): dma_end aborted with `reason`, its fence
        signaled; nobody is told it is done (the driver stopped it)."""
        j = self._jobs.get(job)
        if j is not None:
            self._finish(j, aborted=reason)

    def abort_all(self, reason: str) -> list[int]:
        """Stop every job now (the lease ran out, or the exporter is gone). Returns the driver's
        jobs (not rogue ones) that were running."""
        jobs = [j for j in self._jobs.values()]
        for job in jobs:
            self._finish(job, aborted=reason)
        return [j.start.job for j in jobs if not j.rogue]

    def _chunk(self, job: _Job) -> None:
        """Chunk job.index is due: may the device still touch memory, and is its fence still its
        own? Then its access runs as the lane's next deferred call (_access). Runs on the DMA lane
        (the first chunk in start(), on the caller's)."""
        if self._jobs.get(job.start.job) is not job:
            return  # aborted meanwhile
        # In access from before the check until the access ends (_access): counted first, so an
        # exporter that finds the count 0 after the device's lease ran out knows that any later
        # access must pass a check that the lease now fails.
        self._access_count(+1)
        if not self.gate():
            self._access_count(-1)
            return  # the shell aborted every job
        s = job.start
        if job.fence_seq and self.fences.forced_before_signaled(self.slot, s.buffer, job.fence_seq):  # type: ignore[union-attr]
            self._access_count(-1)
            why = self.fences.error(self.slot, s.buffer)  # type: ignore[union-attr]
            self._finish(job, aborted=f"fence forced by the exporter ({why}): device reset")
            if not job.rogue:
                self.on_done(s.job, job.fence_seq)
            return
        self.loop.call_soon(lambda: self._access(job))

    def _access(self, job: _Job) -> None:
        """The access of the chunk _chunk checked, through the IOMMU. It does not look at the fence
        again: a force since the check is seen at the next chunk (the forced-fence window)."""
        if self._jobs.get(job.start.job) is not job:
            self._access_count(-1)
            return  # the driver stopped it since the check (abort, abort_all): no access
        try:
            self._touch(job)
        finally:
            self._access_count(-1)
        s = job.start
        job.index += 1
        if job.index < job.chunks:
            stall = job.stall_ns if job.index == job.chunks - 1 else 0    # held before its last chunk
            self.loop.call_at(job.t0 + job.index * job.duration_ns // job.chunks + stall, lambda: self._chunk(job))
        else:
            self._finish(job)
            if not job.rogue:
                self.on_done(s.job, job.fence_seq)

    def _touch(self, job: _Job) -> None:
        """The chunk's access itself: through the IOMMU, stamp or verify its lines."""
        s = job.start
        p = s.placement
        first = job.index * job.lines_per_chunk
        count = min(job.lines_per_chunk, p.size // LINE - first)
        offset = p.offset + first * LINE
        nbytes = count * LINE
        if not self.iommu.covers(job.iova, p.heap, offset, nbytes):
            job.faults += 1
            if job.faults == 1:
                self.log.emit("iommu_fault", job=s.job, buffer=s.buffer, attachment=s.attachment,
                              access=s.access, heap=p.heap, offset=offset, size=nbytes, gen=p.gen)
        else:
            rows = self.heaps[p.heap].rows(offset, nbytes)
            if s.access == "write":
                memory.stamp(rows, s.buffer, first, self.writer, s.job)
            else:
                bad = memory.verify(rows, s.buffer, first)
                if bad is not None:
                    job.bad_lines += bad.lines
                    if job.first_bad is None:
                        job.first_bad = bad
                    elif len(job.samples) < memory.MAX_SAMPLES:
                        job.samples.append({"line": bad.line, "found": list(bad.found)})
            # When the access ended, not when it began: a chunk preempted half-way through still
            # touches memory after it resumes, and the checker must see that.
            job.last_access_ns = self.loop.now_ns()
            job.bytes += nbytes

    def _finish(self, job: _Job, aborted: str = "") -> None:
        s = job.start
        p = s.placement
        status = "aborted" if aborted else "fault" if job.faults else ("corrupt" if job.bad_lines else "ok")
        extra: dict = {"rogue": True} if job.rogue else {}
        if aborted:
            extra["reason"] = aborted
        if job.stall_ns:
            extra["stalled_ms"] = job.stall_ns / 1e6
        self.log.emit("dma_end", job=s.job, buffer=s.buffer, attachment=s.attachment, access=s.access,
                      heap=p.heap, offset=p.offset, size=p.size, gen=p.gen, status=status,
                      bytes=job.bytes, faults=job.faults, last_access_ns=job.last_access_ns, **extra)
        if job.first_bad is not None:
            c = job.first_bad
            self.log.emit("corruption", job=s.job, buffer=s.buffer, gen=p.gen, heap=p.heap,
                          offset=p.offset + c.line * LINE, lines=job.bad_lines, line=c.line,
                          expected={"buffer": s.buffer, "line": c.line},
                          found={"buffer": c.found[0], "line": c.found[1], "writer": c.found[2], "seq": c.found[3]},
                          samples=(c.samples + job.samples)[:memory.MAX_SAMPLES])
        if s.fenced and (s.signal == "end" or (aborted and s.signal == "held")):
            # An aborted job's device has stopped touching the buffer: its fence signals too (the
            # exporter, if it forced it, takes this as the device's confirmation of the reset).
            self._signal(job)
        del self._jobs[s.job]

    def _signal(self, job: _Job) -> None:
        s = job.start
        self.fences.signal(self.slot, s.buffer, job.fence_seq)  # type: ignore[union-attr]
        self.log.emit("fence_signal", buffer=s.buffer, usage=usage_for_access(s.access).name,
                      seq=job.fence_seq, job=s.job)
