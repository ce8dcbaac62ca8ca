"""The device's DMA engine: runs a job as chunks spread over real time, every chunk through the
IOMMU, writes stamping lines and reads verifying them.

A job of duration D over a buffer is cut into about D / chunk_ms chunks; chunk i runs at
start + i * D / n, so a job really overlaps with what the exporter and other devices do in the
meantime. An access the IOMMU does not cover is blocked and recorded (`iommu_fault`); a read
that finds another buffer's stamps, or wrong line indices, records `corruption`. A fenced job
publishes its fence in shared memory before its first access and signals it after its last.
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
from runtime.loop import Loop
from runtime.service import now_ns

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


class DmaEngine:
    def __init__(self, loop: Loop, log: EventLog, iommu: IommuTable, writer: int,
                 on_done: Callable[[int], None], chunk_ms: float = 1.0) -> None:
        self.loop = loop
        self.log = log
        self.iommu = iommu
        self.writer = writer
        self.on_done = on_done
        self.chunk_ms = chunk_ms
        self.heaps: dict[str, memory.HeapView] = {}
        self.fences: FenceTable | None = None
        self.slot = 0
        self._jobs: dict[int, _Job] = {}

    def attach_memory(self, heaps: dict[str, memory.HeapView], fences: FenceTable, slot: int) -> None:
        self.heaps, self.fences, self.slot = heaps, fences, slot

    @property
    def running(self) -> int:
        return len(self._jobs)

    def start(self, start: StartDma, duration_s: float) -> None:
        """Begin a job. Requires memory attached; its placement as the driver decided it."""
        p = start.placement
        lines = p.size // LINE
        chunks = max(1, min(lines, round(duration_s * 1000 / self.chunk_ms)))
        job = _Job(start, int(duration_s * 1e9), chunks, math.ceil(lines / chunks))
        self._jobs[start.job] = job
        if start.fenced:
            job.fence_seq = self.fences.emit(self.slot, start.buffer)  # type: ignore[union-attr]
        job.t0 = now_ns()
        self.log.emit("dma_begin", job=start.job, buffer=start.buffer, attachment=start.attachment,
                      access=start.access, heap=p.heap, offset=p.offset, size=p.size, gen=p.gen,
                      fence=job.fence_seq or None)
        self._chunk(job)

    def _chunk(self, job: _Job) -> None:
        s = job.start
        p = s.placement
        first = job.index * job.lines_per_chunk
        count = min(job.lines_per_chunk, p.size // LINE - first)
        offset = p.offset + first * LINE
        nbytes = count * LINE
        if not self.iommu.covers(p.heap, offset, nbytes):
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
            job.bytes += nbytes
        job.index += 1
        if job.index < job.chunks:
            self.loop.call_at(job.t0 + job.index * job.duration_ns // job.chunks, lambda: self._chunk(job))
        else:
            self._finish(job)

    def _finish(self, job: _Job) -> None:
        s = job.start
        p = s.placement
        status = "fault" if job.faults else ("corrupt" if job.bad_lines else "ok")
        self.log.emit("dma_end", job=s.job, buffer=s.buffer, attachment=s.attachment, access=s.access,
                      heap=p.heap, offset=p.offset, size=p.size, gen=p.gen, status=status,
                      bytes=job.bytes, faults=job.faults)
        if job.first_bad is not None:
            c = job.first_bad
            self.log.emit("corruption", job=s.job, buffer=s.buffer, gen=p.gen, heap=p.heap,
                          offset=p.offset + c.line * LINE, lines=job.bad_lines, line=c.line,
                          expected={"buffer": s.buffer, "line": c.line},
                          found={"buffer": c.found[0], "line": c.found[1], "writer": c.found[2], "seq": c.found[3]},
                          samples=(c.samples + job.samples)[:memory.MAX_SAMPLES])
        if s.fenced:
            self.fences.signal(self.slot, s.buffer, job.fence_seq)  # type: ignore[union-attr]
            self.log.emit("fence_signal", buffer=s.buffer, usage=usage_for_access(s.access).name,
                          seq=job.fence_seq, job=s.job)
        del self._jobs[s.job]
        self.on_done(s.job)
