"""Fence usages through the shared-memory table the services use: a conformance test modelled on
the kernel's drivers/dma-buf/st-dma-resv.c.

The kernel's test_get_fences and test_signaling add one fence with a usage and ask with that same
usage. Here every pair (usage added, usage waited for) is asked, the full 4 x 4 matrix, on a real
`dmabuf-<run>-fences` segment: the exporter's view creates it, the importer's view attaches to it
by name as an importer process does (in one test, from a second process). Then signaling,
promotion (never degradation), the order of one context's fences, and forced fences.

The rules under test are at the top of runtime/fences.py: a wait for usage U takes exactly the
fences added with a usage <= U (KERNEL < WRITE < READ < BOOKKEEP).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

from protocol.fence import Usage
from runtime import shm
from runtime.fences import KERNEL_SLOT, FenceTable, table_bytes
from tests.helpers import ROOT

SLOTS, BUFFERS = 4, 8
MATRIX = list(itertools.product(Usage, Usage))
IDS = [f"added-{a.name}-waited-{w.name}" for a, w in MATRIX]


@dataclass
class Segment:
    run_id: str
    name: str
    exporter: FenceTable   # the creator's view
    importer: FenceTable   # a second mapping of the same segment, attached by name


@pytest.fixture
def segment() -> Iterator[Segment]:
    run_id = f"t{uuid.uuid4().hex[:10]}"
    name = shm.segment_name(run_id, "fences")
    created = shm.create(name, table_bytes(SLOTS, BUFFERS))
    attached = shm.attach(name)
    seg = Segment(run_id, name, FenceTable(created.buf, SLOTS, BUFFERS), FenceTable(attached.buf, SLOTS, BUFFERS))
    try:
        yield seg
    finally:
        seg.exporter.release()
        seg.importer.release()
        attached.close()
        created.close()
        created.unlink()
    assert shm.existing(run_id) == []


def covered(added: Usage, waited: Usage) -> bool:
    return added <= waited


# ------------------------------------------------------------------------ test_get_fences, 4 x 4

@pytest.mark.parametrize(("added", "waited"), MATRIX, ids=IDS)
def test_get_fences(segment: Segment, added: Usage, waited: Usage) -> None:
    """One fence added with `added`: a wait for `waited` takes it, and only it, iff added <= waited."""
    seq = segment.importer.emit(1, 0, added)
    assert seq == 1
    assert segment.exporter.usage_of(1, 0, seq) is added
    expected = {1: seq} if covered(added, waited) else {}
    assert segment.exporter.snapshot(0, waited) == expected
    assert all(segment.exporter.snapshot(b, Usage.BOOKKEEP) == {} for b in range(1, BUFFERS)), "other buffers"


# ------------------------------------------------------------------------ test_signaling, 4 x 4

@pytest.mark.parametrize(("added", "waited"), MATRIX, ids=IDS)
def test_signaling(segment: Segment, added: Usage, waited: Usage) -> None:
    """Unsignaled for a wait that takes it until the importer signals it; a wait that does not
    take it is over at once."""
    seq = segment.importer.emit(2, 3, added)
    assert not segment.exporter.is_signaled(2, 3, seq)
    assert (segment.exporter.snapshot(3, waited) != {}) is covered(added, waited)
    segment.importer.signal(2, 3, seq)
    assert segment.exporter.is_signaled(2, 3, seq)
    assert segment.exporter.snapshot(3, waited) == {}
    assert not segment.exporter.forced_before_signaled(2, 3, seq)


def test_a_wait_takes_exactly_the_fences_of_its_usage_and_below(segment: Segment) -> None:
    """Three importers' fences on one buffer, of three usages: each wait takes its prefix."""
    segment.importer.emit(1, 0, Usage.WRITE)
    segment.importer.emit(2, 0, Usage.READ)
    segment.importer.emit(3, 0, Usage.BOOKKEEP)
    assert segment.exporter.snapshot(0, Usage.KERNEL) == {}
    assert segment.exporter.snapshot(0, Usage.WRITE) == {1: 1}
    assert segment.exporter.snapshot(0, Usage.READ) == {1: 1, 2: 1}
    assert segment.exporter.snapshot(0, Usage.BOOKKEEP) == {1: 1, 2: 1, 3: 1}
    segment.importer.signal(1, 0, 1)
    assert segment.exporter.snapshot(0, Usage.WRITE) == {}
    assert segment.exporter.snapshot(0, Usage.BOOKKEEP) == {2: 1, 3: 1}


# ------------------------------------------------------------------------ one context, in order

def test_a_later_fence_of_a_higher_usage_leaves_the_earlier_one_to_lower_waits(segment: Segment) -> None:
    """dma_resv_add_fence: a later fence of a higher usage gets its own entry, the earlier stays.
    A WRITE wait takes WRITE fence 1, not READ fence 2; a READ wait takes 2 (which signals after 1)."""
    w = segment.importer.emit(1, 0, Usage.WRITE)
    r = segment.importer.emit(1, 0, Usage.READ)
    assert (w, r) == (1, 2)
    assert segment.exporter.snapshot(0, Usage.WRITE) == {1: w}
    assert segment.exporter.snapshot(0, Usage.READ) == {1: r}
    segment.importer.signal(1, 0, w)
    assert segment.exporter.snapshot(0, Usage.WRITE) == {}
    assert segment.exporter.snapshot(0, Usage.READ) == {1: r}
    segment.importer.signal(1, 0, r)
    assert all(segment.exporter.snapshot(0, u) == {} for u in Usage)


def test_a_later_fence_of_a_lower_usage_stands_for_the_earlier_one(segment: Segment) -> None:
    """dma_resv_add_fence replaces an entry of the same context by a later fence of a lower usage:
    every wait that took READ fence 1 now takes WRITE fence 2, which signals after it."""
    r = segment.importer.emit(1, 0, Usage.READ)
    w = segment.importer.emit(1, 0, Usage.WRITE)
    assert segment.exporter.usage_of(1, 0, r) is Usage.WRITE, "covered by a WRITE wait through fence 2"
    assert segment.exporter.snapshot(0, Usage.WRITE) == {1: w}
    assert segment.exporter.snapshot(0, Usage.READ) == {1: w}
    segment.importer.signal(1, 0, r)
    assert segment.exporter.snapshot(0, Usage.READ) == {1: w}


# ------------------------------------------------------------------------ promotion

@pytest.mark.parametrize(("first", "again"), MATRIX, ids=[f"{a.name}-then-{b.name}" for a, b in MATRIX])
def test_adding_a_fence_again_promotes_it_and_never_degrades_it(segment: Segment, first: Usage, again: Usage) -> None:
    seq = segment.importer.emit(1, 2, first)
    now = segment.importer.add_again(1, 2, seq, again)
    assert now is min(first, again)
    for waited in Usage:
        assert (segment.exporter.snapshot(2, waited) == {1: seq}) is (now <= waited), waited.name


def test_a_bookkeep_fence_promoted_step_by_step(segment: Segment) -> None:
    """A BOOKKEEP bookkeeping fence becomes READ, then WRITE; asking for READ or BOOKKEEP again
    changes nothing."""
    seq = segment.importer.emit(3, 1, Usage.BOOKKEEP)
    assert segment.exporter.snapshot(1, Usage.READ) == {}
    for again, expected in ((Usage.READ, Usage.READ), (Usage.BOOKKEEP, Usage.READ),
                            (Usage.WRITE, Usage.WRITE), (Usage.READ, Usage.WRITE)):
        assert segment.importer.add_again(3, 1, seq, again) is expected
        assert segment.exporter.snapshot(1, Usage.KERNEL) == {}
        assert segment.exporter.snapshot(1, expected) == {3: seq}
    segment.importer.signal(3, 1, seq)
    assert segment.exporter.snapshot(1, Usage.WRITE) == {}


def test_promoting_an_earlier_fence_keeps_the_later_one(segment: Segment) -> None:
    first = segment.importer.emit(1, 0, Usage.BOOKKEEP)
    later = segment.importer.emit(1, 0, Usage.READ)
    segment.importer.add_again(1, 0, first, Usage.READ)
    assert segment.exporter.snapshot(0, Usage.READ) == {1: later}, "the cell never goes back"
    assert segment.importer.add_again(1, 0, first, Usage.WRITE) is Usage.WRITE
    assert segment.exporter.snapshot(0, Usage.WRITE) == {1: first}
    assert segment.exporter.snapshot(0, Usage.READ) == {1: later}


@pytest.mark.parametrize("seq", [0, 2, -1])
def test_adding_again_a_fence_never_published_is_a_clear_error(segment: Segment, seq: int) -> None:
    segment.importer.emit(1, 0, Usage.READ)
    with pytest.raises(ValueError, match=rf"fence {seq} of slot 1 buffer 0 was never published \(last published: 1\)"):
        segment.importer.add_again(1, 0, seq, Usage.WRITE)
    assert segment.exporter.usage_of(1, 0, 1) is Usage.READ


def test_a_usage_that_is_not_one_is_refused(segment: Segment) -> None:
    with pytest.raises(ValueError):
        segment.importer.emit(1, 0, 7)  # type: ignore[arg-type]
    assert segment.exporter.snapshot(0, Usage.BOOKKEEP) == {}


# ------------------------------------------------------------------------ forced fences

@pytest.mark.parametrize("added", list(Usage), ids=[u.name for u in Usage])
def test_a_forced_fence_is_signaled_for_every_wait(segment: Segment, added: Usage) -> None:
    seq = segment.importer.emit(2, 0, added)
    segment.exporter.force(2, 0, "fence_timeout")
    assert all(segment.exporter.snapshot(0, u) == {} for u in Usage)
    assert segment.importer.is_signaled(2, 0, seq)
    assert segment.importer.forced_before_signaled(2, 0, seq), "the device learns it is being reset"
    segment.importer.signal(2, 0, seq)
    assert not segment.importer.forced_before_signaled(2, 0, seq)


def test_forcing_covers_every_usage_and_only_what_was_published(segment: Segment) -> None:
    """Forcing a slot on every buffer completes its fences of all usages; a fence published
    after the force is pending again."""
    for b, u in enumerate(Usage):
        segment.importer.emit(1, b, u)
        segment.importer.emit(1, b, Usage.BOOKKEEP)
    segment.importer.emit(2, 0, Usage.WRITE)
    segment.exporter.force(1, None, "lease expired")
    assert all(segment.exporter.snapshot(b, Usage.BOOKKEEP) == {} for b in range(1, len(Usage)))
    assert segment.exporter.snapshot(0, Usage.BOOKKEEP) == {2: 1}, "another slot is not forced"
    seq = segment.importer.emit(1, 0, Usage.READ)
    assert segment.exporter.snapshot(0, Usage.READ) == {1: seq, 2: 1}


# ------------------------------------------------------------------------ the move's KERNEL fence

def test_the_moves_kernel_fence_in_slot_0(segment: Segment) -> None:
    """The exporter publishes a move's fence in slot 0 with usage KERNEL; the importer waits for
    it. An exporter's wait takes importer fences only (slot 0 is its own, signaled before the
    reservation lock is released)."""
    segment.exporter.publish_kernel(3, 1)
    assert segment.importer.usage_of(KERNEL_SLOT, 3, 1) is Usage.KERNEL
    assert not segment.importer.is_signaled(KERNEL_SLOT, 3, 1)
    assert segment.exporter.snapshot(3, Usage.BOOKKEEP) == {}
    segment.exporter.signal_kernel(3, 1)
    assert segment.importer.is_signaled(KERNEL_SLOT, 3, 1)
    assert segment.importer.usage_of(KERNEL_SLOT, 3, 2) is None


# ------------------------------------------------------------------------ from another process

IMPORTER_PROCESS = """
import json, sys
from protocol.fence import Usage
from runtime import shm
from runtime.fences import FenceTable
name, slots, buffers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seg = shm.attach(name)
table = FenceTable(seg.buf, slots, buffers)
for line in sys.stdin:
    c = json.loads(line)
    if c["op"] == "emit":
        out = table.emit(c["slot"], c["buffer"], Usage[c["usage"]])
    elif c["op"] == "add_again":
        out = table.add_again(c["slot"], c["buffer"], c["seq"], Usage[c["usage"]]).name
    elif c["op"] == "signal":
        out = table.signal(c["slot"], c["buffer"], c["seq"])
    elif c["op"] == "churn":  # publish and signal fences as fast as it can, usages in turn
        for i in range(c["n"]):
            seq = table.emit(c["slot"], c["buffer"], list(Usage)[i % len(Usage)])
            table.signal(c["slot"], c["buffer"], seq)
        out = seq
    print(json.dumps(out), flush=True)
table.release()
seg.close()
"""


class ImporterProcess:
    def __init__(self, name: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", IMPORTER_PROCESS, name, str(SLOTS), str(BUFFERS)],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, **command: Any) -> None:
        self.proc.stdin.write(json.dumps(command) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def reply(self) -> Any:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert line, f"the importer process exited ({self.proc.wait(10)})"
        return json.loads(line)

    def __call__(self, **command: Any) -> Any:
        self.send(**command)
        return self.reply()

    def close(self) -> int:
        self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def importer_process(segment: Segment) -> Iterator[ImporterProcess]:
    p = ImporterProcess(segment.name)
    try:
        yield p
    finally:
        assert p.close() == 0


def test_the_matrix_with_the_importer_in_another_process(segment: Segment, importer_process: ImporterProcess) -> None:
    """The importer publishes, promotes and signals from its own process; the exporter's view
    sees each fence exactly where its usage puts it."""
    seqs = {added: importer_process(op="emit", slot=1, buffer=int(added), usage=added.name) for added in Usage}
    for added, waited in MATRIX:
        expected = {1: seqs[added]} if covered(added, waited) else {}
        assert segment.exporter.snapshot(int(added), waited) == expected, (added.name, waited.name)
    assert importer_process(op="add_again", slot=1, buffer=int(Usage.BOOKKEEP), seq=1, usage="WRITE") == "WRITE"
    assert importer_process(op="add_again", slot=1, buffer=int(Usage.KERNEL), seq=1, usage="READ") == "KERNEL"
    assert segment.exporter.snapshot(int(Usage.BOOKKEEP), Usage.WRITE) == {1: 1}
    assert segment.exporter.snapshot(int(Usage.KERNEL), Usage.KERNEL) == {1: 1}
    for added in Usage:
        importer_process(op="signal", slot=1, buffer=int(added), seq=seqs[added])
    assert all(segment.exporter.snapshot(b, Usage.BOOKKEEP) == {} for b in range(BUFFERS))


def test_snapshots_while_another_process_publishes_are_consistent(segment: Segment,
                                                                 importer_process: ImporterProcess) -> None:
    """Lock-free with one writer per cell: while the importer publishes and signals thousands of
    fences, every snapshot names a fence it published, never going back."""
    n = 3000
    importer_process.send(op="churn", slot=2, buffer=5, n=n)
    seen = {u: 0 for u in Usage}
    deadline = time.monotonic() + 60
    while not segment.exporter.is_signaled(2, 5, n):
        assert time.monotonic() < deadline, "the importer process did not publish its fences in 60 s"
        for u in Usage:
            got = segment.exporter.snapshot(5, u)
            assert set(got) <= {2}
            if got:
                assert seen[u] <= got[2] <= n, (u.name, seen[u], got)
                seen[u] = got[2]
    assert importer_process.reply() == n
    assert all(segment.exporter.snapshot(5, u) == {} for u in Usage)
    assert segment.exporter.last(2, 5) == n
    assert [segment.exporter.last(2, 5, u) for u in Usage] == [n - 3, n - 2, n - 1, n]


def test_an_importer_process_exiting_leaves_the_segment(segment: Segment) -> None:
    """gh-82300: an attaching process must not take the exporter's segment with it."""
    p = ImporterProcess(segment.name)
    assert p(op="emit", slot=1, buffer=0, usage="READ") == 1
    assert p.close() == 0
    assert shm.existing(segment.run_id) == [segment.name]
    assert segment.exporter.snapshot(0, Usage.READ) == {1: 1}
