"""Real shared memory between processes: segments survive their attachers, and a stale write into
a range that belongs to another buffer is caught, in the bytes, by the reader of that buffer."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from importer_svc.dma import DmaEngine
from importer_svc.iommu import IommuTable
from protocol.actions import StartDma
from protocol.wire import Placement
from runtime import memory, shm
from runtime.eventlog import EventLog
from runtime.loop import Loop
from tests.helpers import ROOT


@pytest.fixture
def segment():
    name = shm.segment_name(uuid.uuid4().hex[:8], "t")
    seg = shm.create(name, 64 * 1024)
    yield seg
    seg.close()
    shm.unlink(name)


def _in_child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_segment_is_created_0600_with_our_prefix(segment) -> None:
    import os
    import stat
    mode = stat.S_IMODE(os.stat(f"/dev/shm/{segment.name.lstrip('/')}").st_mode)
    assert mode == 0o600
    with pytest.raises(ValueError, match="dmabuf-"):
        shm.create("not-ours", 4096)


def test_an_attaching_process_that_exits_leaves_the_segment_alone(segment) -> None:
    r = _in_child(f"from runtime import shm; s = shm.attach({segment.name!r}); s.buf[0] = 7; s.close()")
    assert r.returncode == 0, r.stderr
    assert segment.name in shm.existing(), "attach() must not register with the resource tracker"
    assert segment.buf[0] == 7


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="3.13 SharedMemory has track=False")
def test_control_plain_sharedmemory_attach_would_destroy_the_segment(segment) -> None:
    """The hazard attach() avoids (CPython gh-82300): proof that the test above can fail."""
    r = _in_child("from multiprocessing.shared_memory import SharedMemory as S; "
                  f"s = S({segment.name!r}); s.close()")
    assert r.returncode == 0, r.stderr
    assert segment.name not in shm.existing(), "the attacher's tracker unlinked the creator's segment"


def _run_job(engine: DmaEngine, loop: Loop, start: StartDma) -> None:
    done: list[int] = []
    engine.on_done = lambda job, fence: (done.append(job), loop.stop())
    engine.start(start, 0.002)
    loop.run()
    assert done == [start.job]


def test_a_stale_write_from_another_process_is_seen_by_the_reader(tmp_path: Path, segment) -> None:
    """Buffer 1 owns [16 KiB, 32 KiB). A process that still believes buffer 0 lives there (a
    stale mapping) writes it; the next reader of buffer 1 must report corruption naming buffer 0."""
    view = memory.HeapView("vram", segment.buf, segment.size)
    owner = Placement("vram", 16 * 1024, 16 * 1024, 2)
    memory.stamp(view.rows(owner.offset, owner.size), 1, 0, 0, 0)         # the exporter's stamp
    stale_writer = (f"from runtime import shm, memory; s = shm.attach({segment.name!r}); "
                    f"v = memory.HeapView('vram', s.buf, {segment.size}); "
                    f"memory.stamp(v.rows({owner.offset} + 64 * 10, 64 * 5), 0, 10, 3, 41); v.release(); s.close()")
    r = _in_child(stale_writer)
    assert r.returncode == 0, r.stderr

    log = EventLog(tmp_path / "events" / "importer-2.jsonl", "importer-2")
    loop = Loop()
    iommu = IommuTable()
    iommu.program(5, owner)
    engine = DmaEngine(loop, log, iommu, writer=2, on_done=lambda j, f: None)
    engine.attach_memory({"vram": view}, None, 2)  # type: ignore[arg-type]
    _run_job(engine, loop, StartDma(job=1, buffer=1, attachment=5, access="read", placement=owner, fenced=False))
    log.close()
    events = [json.loads(line) for line in (tmp_path / "events" / "importer-2.jsonl").read_text().splitlines()]
    corruption = [e for e in events if e["event"] == "corruption"]
    assert len(corruption) == 1
    c = corruption[0]
    assert c["lines"] == 5 and c["line"] == 10
    assert c["found"] == {"buffer": 0, "line": 10, "writer": 3, "seq": 41}
    assert [e["status"] for e in events if e["event"] == "dma_end"] == ["corrupt"]
    view.release()


def test_an_access_outside_the_iommu_table_faults_and_touches_nothing(tmp_path: Path, segment) -> None:
    view = memory.HeapView("vram", segment.buf, segment.size)
    target = Placement("vram", 0, 8 * 1024, 1)
    before = np.array(view.rows(0, 8 * 1024), copy=True)
    log = EventLog(tmp_path / "events" / "importer-1.jsonl", "importer-1")
    loop = Loop()
    engine = DmaEngine(loop, log, IommuTable(), writer=1, on_done=lambda j, f: None)  # nothing programmed
    engine.attach_memory({"vram": view}, None, 1)  # type: ignore[arg-type]
    _run_job(engine, loop, StartDma(job=7, buffer=0, attachment=1, access="write", placement=target, fenced=False))
    log.close()
    events = [json.loads(line) for line in (tmp_path / "events" / "importer-1.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("iommu_fault") == 1
    assert np.array_equal(view.rows(0, 8 * 1024), before), "a blocked access must not reach memory"
    view.release()


def test_stamp_and_verify_agree_and_pinpoint_the_bad_line() -> None:
    rows = np.zeros((100, memory.WORDS), dtype="<u4")
    memory.stamp(rows, 4, 0, 1, 9)
    assert memory.verify(rows, 4, 0) is None
    rows[37, 1] = 5
    bad = memory.verify(rows, 4, 0)
    assert bad is not None and bad.lines == 1 and bad.line == 37 and bad.found == (4, 5, 1, 9)


@pytest.mark.parametrize("n", [1, memory.BLOCK - 1, memory.BLOCK, memory.BLOCK + 1, 3 * memory.BLOCK + 5])
def test_block_stamp_writes_what_the_column_stamp_wrote(n: int) -> None:
    """The fast stamp (scratch block, 64-bit words) and verify agree with the plain column
    definition on every line, across block boundaries, and on non-contiguous rows too."""
    fast = np.zeros((n + 2, memory.WORDS), dtype="<u4")
    memory.stamp(fast[1:n + 1], 0xDEADBEEF, 70_000, 3, 2**32 - 2)
    ref = np.zeros_like(fast)
    ref[1:n + 1, 0] = 0xDEADBEEF
    ref[1:n + 1, 1] = np.arange(n, dtype="<u4") + 70_000
    ref[1:n + 1, 2] = 3
    ref[1:n + 1, 3:] = 2**32 - 2
    assert (fast == ref).all()
    assert memory.verify(fast[1:n + 1], 0xDEADBEEF, 70_000) is None
    fast[n, 1] += 1
    bad = memory.verify(fast[1:n + 1], 0xDEADBEEF, 70_000)
    assert bad is not None and bad.lines == 1 and bad.line == 70_000 + n - 1
    assert bad.found == (0xDEADBEEF, 70_000 + n, 3, 2**32 - 2)
    strided = np.zeros((n, 2 * memory.WORDS), dtype="<u4")[:, ::2]
    memory.stamp(strided, 5, 0, 1, 1)
    assert memory.verify(strided, 5, 0) is None and memory.verify(strided, 6, 0) is not None
