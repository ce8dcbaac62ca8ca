"""Data-plane bandwidth over 16 MiB buffers in shared memory, against a raw numpy copy.

- memcpy_gbps: one np.copyto of 16 MiB from a shared-memory segment into another (the floor).
  Both ends are shared memory, like every copy and access measured here: a private numpy
  array may be backed by transparent huge pages (numpy madvises them; /dev/shm gets none), which
  makes a copy from it up to 1.5x faster for reasons that have nothing to do with our code. That
  figure is reported beside it as memcpy_private_src_gbps, for information;
- dma_write_gbps / dma_read_verify_gbps: one write job and one read job of the importer's real
  DMA engine (importer_svc.dma.DmaEngine: IOMMU check, runtime.memory.stamp / verify per chunk,
  dma_begin / dma_end events), its chunks run back to back by a loop that does not wait;
- move_copy_gbps: the exporter's real copy routine (ExporterService._do_copy / _copy_step, in
  COPY_CHUNK pieces, copy_begin / copy_end events) between two segments.

The passes of one repetition are interleaved (memcpy, write, read, copy), so a noisy moment hits
all of them; each ratio is taken within its repetition. GB/s is 10^9 bytes per second of buffer.
"""

from __future__ import annotations

import gc
import secrets
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import numpy as np

from deploy.bench.stats import summary
from exporter_svc.service import ExporterService
from importer_svc.dma import DmaEngine
from importer_svc.iommu import IommuTable
from protocol.actions import CopyBuffer, StartDma
from protocol.wire import Placement
from runtime import memory, shm
from runtime.eventlog import EventLog

SIZE = 16 * 1024 * 1024
DMA_CHUNKS = 16          # 1 MiB per chunk (the engine's chunking: duration / chunk_ms)


class _EagerLoop:
    """The services' Loop interface, running every callback as soon as possible, in order."""

    def __init__(self) -> None:
        self.q: deque[Callable[[], None]] = deque()

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def lane(self, name: str) -> "_EagerLoop":
        return self

    def call_soon(self, cb: Callable[[], None]) -> None:
        self.q.append(cb)

    def call_at(self, t_ns: int, cb: Callable[[], None]) -> int:
        self.q.append(cb)
        return 0

    def drain(self) -> None:
        while self.q:
            self.q.popleft()()


class _CopyShell:
    """Just enough of an ExporterService for its copy routine to run unchanged."""

    _do_copy = ExporterService._do_copy
    _copy_step = ExporterService._copy_step

    def __init__(self, views: dict[str, memory.HeapView], log: EventLog) -> None:
        self.views, self.log, self.loop, self.engine = views, log, _EagerLoop(), self
        self.copies = 0

    def copy_done(self, move: int, now: int) -> list:
        self.copies += 1
        return []

    def _guarded(self, where: str, call: Callable[[], list]) -> None:
        call()


def _seconds(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(reps: int, passes: int = 3) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    segs = {h: shm.create(shm.segment_name(f"bench-{tag}", h), SIZE) for h in ("vram", "sys", "src")}
    views = {h: memory.HeapView(h, s.buf, SIZE) for h, s in segs.items()}
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="dmb-mem-") as tmp:
            log = EventLog(Path(tmp) / "bench.jsonl", "bench")
            place = {h: Placement(h, 0, SIZE, 1) for h in views}
            iommu = IommuTable()
            iommu.program(1, place["vram"])
            loop = _EagerLoop()
            done: list[int] = []
            dma = DmaEngine(loop, log, iommu, writer=1, on_done=lambda job, fence: done.append(job), chunk_ms=1.0)  # type: ignore[arg-type]
            dma.heaps = views
            jobs = iter(range(1, 1 << 30))
            copier = _CopyShell(views, log)
            private = np.zeros((SIZE // memory.LINE, memory.WORDS), dtype="<u4")
            src, dst = views["src"].rows(0, SIZE), views["sys"].rows(0, SIZE)

            def memcpy() -> None:
                np.copyto(dst, src)

            def memcpy_private_src() -> None:
                np.copyto(dst, private)

            def dma_job(access: str) -> Callable[[], None]:
                def run() -> None:
                    dma.start(StartDma(next(jobs), 0, 1, access, place["vram"], False), DMA_CHUNKS / 1000)
                    loop.drain()
                return run

            def move_copy() -> None:
                copier._do_copy(CopyBuffer(1, 0, place["vram"], place["sys"]))
                copier.loop.drain()

            ops = {"memcpy": memcpy, "memcpy_private_src": memcpy_private_src, "dma_write": dma_job("write"), "dma_read_verify": dma_job("read"),
                   "move_copy": move_copy}
            for fn in ops.values():  # fault every page in, warm the caches and the code paths
                fn()
            for _ in range(reps):
                gc.collect()
                rows.append({k: SIZE / min(_seconds(fn) for _ in range(passes)) / 1e9 for k, fn in ops.items()})
            log.close()
            bad = [e for e in (Path(tmp) / "bench.jsonl").read_text().splitlines() if '"corruption"' in e]
            if bad:
                raise RuntimeError(f"the verified reads found corruption: {bad[0][:300]}")
    finally:
        for v in views.values():
            v.release()
        for s in segs.values():
            s.close()
            s.unlink()
    out: dict[str, Any] = {"buffer_bytes": SIZE, "dma_chunks": DMA_CHUNKS}
    out["memcpy_gbps"] = summary((r["memcpy"] for r in rows), "GB/s")
    out["memcpy_private_src_gbps"] = summary((r["memcpy_private_src"] for r in rows), "GB/s")
    for k in ("dma_write", "dma_read_verify", "move_copy"):
        out[f"{k}_gbps"] = summary((r[k] for r in rows), "GB/s")
        out[f"{k}_ratio"] = summary(r[k] / r["memcpy"] for r in rows)
    return out
