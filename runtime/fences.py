"""Fences in shared memory: int64 cells [slot][buffer][KERNEL, WRITE, READ, BOOKKEEP, signaled,
forced, error].

Slot 0 holds the exporter's KERNEL fences (one per move); slot N importer-N's job fences (WRITE
or READ usage, one per DMA job). Each (slot, buffer) is one fence context, a timeline as a
dma_fence context is: its seqnos grow by one per fence and its fences signal in order, so a
fence `s` is signaled once max(signaled, forced) >= s, and with it every earlier one.

Usage (include/linux/dma-resv.h, enum dma_resv_usage (kernel-doc)):
- The cell of usage `u` holds the latest seqno of the context added with usage `u` (0: none).
  Usages are ordered KERNEL < WRITE < READ < BOOKKEEP, and asking for the fences of one usage
  returns those of every lower usage too ("when the dma_resv object is asked for fences for one
  use case the fences for the lower use case are returned as well"). The iterators filter the
  same way: dma_resv_iter_next() skips an entry while `fence_usage > usage` (dma-resv.c). So a
  wait for `u` takes, per context, the fence max(cell[v] for v <= u): on an ordered timeline
  that one fence stands for exactly the fences added with a usage <= u, no more, no fewer.
- Adding a fence again with another usage is dma_resv_add_fence() (dma-resv.c; its replace test
  reads `old->context == fence->context && old_usage >= usage &&
  dma_fence_is_later_or_same(fence, old)`, or the old fence is signaled: lines 303-305 as
  95ba893c9f4f "dma-buf: fix check in dma_resv_add_fence" left them, v6.7): an entry of the same context is replaced only by a fence of the same or a
  lower usage; a fence added again with a higher usage gets an entry of its own and the old entry
  stays. So a fence is *promoted* when added again with a lower usage (the header: a BOOKKEEP
  fence "could become DMA_RESV_USAGE_READ by adding it again with this usage") and never
  *degraded* ("fences can never be degraded in the sense that a fence with
  DMA_RESV_USAGE_WRITE could become DMA_RESV_USAGE_READ"). Here add_again() raises the cell of
  the new usage to the fence's seqno and lowers none: every wait that took the fence before
  still takes it.

After the cells, one int64 per slot: how many of the device's chunk accesses are under way, from
the check before a chunk (may the device still touch memory?) to the end of its access
(importer_svc/dma.py; in_access). A device whose lease ran out stops at its next check; one that
was paused between a check and its access touches memory when it resumes. So the exporter lets an
importer whose lease expired go (revoking it, completing its fences) only once this count is 0
or its process is gone (exporter_svc/service.py, ConfirmStopped). Written by the device only.

`error` records why the exporter forced the fences (protocol.fence.FORCE_REASONS: a reason it
does not list is refused, not recorded as something else), so that the device names it when it
aborts the job.

Writers: each cell has one. An importer writes the usage cells and `signaled` of its own slot
(emit, add_again, signal), the exporter writes `forced` and `error` of every slot and all of
slot 0. No lock: aligned 8-byte stores are atomic on the machines we run on, every seqno cell
only grows, and a reader that sees a stale value only waits a little longer or misses a fence
published after it looked (a fence is published before its job's first access, so a wait that
began after that access sees it).
"""

from __future__ import annotations

import sys

import numpy as np

from protocol.fence import FORCE_REASONS, Usage, force_reason

USAGES = len(Usage)
EMITTED = slice(0, USAGES)  # the usage cells, indexed by Usage
SIGNALED, FORCED, ERROR = USAGES, USAGES + 1, USAGES + 2
FIELDS = USAGES + 3
KERNEL_SLOT = 0


def table_bytes(slots: int, buffers: int) -> int:
    """The fence cells, then one access count per slot."""
    return slots * buffers * FIELDS * 8 + slots * 8


# The polls (is_signaled, signaled_by_device, pending) read two cells each, hundreds of times a
# run: through a flat int64 view of the same bytes a read is an index, not a numpy view and a
# conversion. Little-endian machines only (the cells are "<i8"); elsewhere, and for an index
# numpy would refuse, the numpy path answers.
_FLAT = sys.byteorder == "little"


class FenceTable:
    def __init__(self, buf: memoryview, slots: int, buffers: int) -> None:
        self.slots = slots
        self.buffers = buffers
        self.cells: np.ndarray | None = np.ndarray((slots, buffers, FIELDS), dtype="<i8", buffer=buf)
        self._flat: memoryview | None = (
            memoryview(buf).cast("B")[:slots * buffers * FIELDS * 8].cast("q") if _FLAT else None)
        self.access: np.ndarray | None = np.ndarray((slots,), dtype="<i8", buffer=buf,
                                                    offset=slots * buffers * FIELDS * 8)

    def release(self) -> None:
        self.cells = None
        self._flat = None
        self.access = None

    # the device's accesses under way (see the rules at the top)
    def set_in_access(self, slot: int, count: int) -> None:
        """The device of `slot` has `count` chunk accesses between their check and their end.
        Requires: the caller owns the slot."""
        self.access[slot] = count  # type: ignore[index]

    def in_access(self, slot: int) -> int:
        return int(self.access[slot])  # type: ignore[index]

    def _at(self, slot: int, buffer: int) -> int:
        """The flat index of cell (slot, buffer)'s first field, or -1: ask numpy."""
        if self._flat is not None and 0 <= slot < self.slots and 0 <= buffer < self.buffers:
            return (slot * self.buffers + buffer) * FIELDS
        return -1

    def last(self, slot: int, buffer: int, usage: Usage = Usage.BOOKKEEP) -> int:
        """The latest seqno of context (slot, buffer) of `usage` or lower (0: none): the one
        fence a wait for `usage` takes from this context."""
        return int(self.cells[slot, buffer, :Usage(usage) + 1].max())  # type: ignore[index]

    def usage_of(self, slot: int, buffer: int, seq: int) -> Usage | None:
        """The lowest usage whose wait takes fence `seq` (None: never published)."""
        cell = self.cells[slot, buffer]  # type: ignore[index]
        return next((u for u in Usage if int(cell[u]) >= seq), None)

    # importer side (and the exporter for slot 0): the writer of the slot's usage cells
    def emit(self, slot: int, buffer: int, usage: Usage) -> int:
        """Publish the next fence of context (slot, buffer) with `usage`; returns its seqno.
        Requires: the caller owns the slot. Publish before the job's first access."""
        usage = Usage(usage)
        seq = self.last(slot, buffer) + 1
        self.cells[slot, buffer, usage] = seq  # type: ignore[index]
        return seq

    def add_again(self, slot: int, buffer: int, seq: int, usage: Usage) -> Usage:
        """Add published fence `seq` again with `usage`, as dma_resv_add_fence() with a fence the
        object holds: a lower usage promotes it (waits for that usage now take it), a higher one
        changes nothing (it is never degraded). Returns the usage it has now. Requires: the caller
        owns the slot; `seq` was published (ValueError otherwise)."""
        usage = Usage(usage)
        cell = self.cells[slot, buffer]  # type: ignore[index]
        head = self.last(slot, buffer)
        if not 0 < seq <= head:
            raise ValueError(f"fence {seq} of slot {slot} buffer {buffer} was never published "
                             f"(last published: {head})")
        if int(cell[usage]) < seq:
            cell[usage] = seq
        return self.usage_of(slot, buffer, seq)  # type: ignore[return-value]

    def signal(self, slot: int, buffer: int, seq: int) -> None:
        """Signal fence `seq` of context (slot, buffer), and with it every earlier one. The cell
        only grows: signalling an earlier fence again changes nothing."""
        cell = self.cells[slot, buffer]  # type: ignore[index]
        if int(cell[SIGNALED]) < seq:
            cell[SIGNALED] = seq

    def is_signaled(self, slot: int, buffer: int, seq: int) -> bool:
        q = self._flat
        if q is not None and 0 <= slot < self.slots and 0 <= buffer < self.buffers:   # _at, inline: the hottest read
            i = (slot * self.buffers + buffer) * FIELDS
            return max(q[i + SIGNALED], q[i + FORCED]) >= seq
        cell = self.cells[slot, buffer]  # type: ignore[index]
        return max(int(cell[SIGNALED]), int(cell[FORCED])) >= seq

    def forced_before_signaled(self, slot: int, buffer: int, seq: int) -> bool:
        """The exporter completed fence `seq` before the device did: the device is being reset."""
        cell = self.cells[slot, buffer]  # type: ignore[index]
        return int(cell[FORCED]) >= seq > int(cell[SIGNALED])

    def error(self, slot: int, buffer: int) -> str:
        """Why the exporter last forced this cell's fences ("" if it never did)."""
        return force_reason(int(self.cells[slot, buffer, ERROR]))  # type: ignore[index]

    def signaled_by_device(self, slot: int, buffer: int, seq: int) -> bool:
        """The device itself signaled fence `seq` (forcing does not count): after a forced
        completion, its confirmation that its engine stopped."""
        i = self._at(slot, buffer)
        if i >= 0:
            return self._flat[i + SIGNALED] >= seq  # type: ignore[index]
        return int(self.cells[slot, buffer, SIGNALED]) >= seq  # type: ignore[index]

    # exporter side
    def snapshot(self, buffer: int, usage: Usage, confirm: tuple[int, ...] = ()) -> dict[int, int]:
        """Importer slots with an unsignaled fence of `usage` or lower on `buffer`: slot -> the
        seqno to wait for (the latest such fence; see the rules at the top). For a slot in
        `confirm`, only the device's own signal counts (signaled_by_device). Slot 0 is not asked:
        its KERNEL fences are the exporter's own, signaled when its copy ends."""
        col = self.cells[1:, buffer]  # type: ignore[index]
        last = col[:, :Usage(usage) + 1].max(axis=1)
        done = np.maximum(col[:, SIGNALED], col[:, FORCED])
        for slot in confirm:
            if 0 < slot < self.slots:
                done[slot - 1] = col[slot - 1, SIGNALED]
        pending = np.flatnonzero(last > done)
        return {int(i) + 1: int(last[i]) for i in pending}

    def pending(self, buffer: int, fences: dict[int, int], confirm: tuple[int, ...] = ()) -> dict[int, int]:
        """The fences of a snapshot that have not signaled yet (for `confirm` slots: not by
        their device)."""
        return {s: q for s, q in fences.items()
                if not (self.signaled_by_device(s, buffer, q) if s in confirm else self.is_signaled(s, buffer, q))}

    def force(self, slot: int, buffer: int | None, error: str) -> None:
        """Complete every fence of `slot` on `buffer` (all buffers if None), recording `error`."""
        try:
            code = FORCE_REASONS[error]
        except KeyError:
            raise ValueError(f"cannot record {error!r} as a fence error (reasons: {', '.join(FORCE_REASONS)})") from None
        rows = self.cells[slot] if buffer is None else self.cells[slot, buffer:buffer + 1]  # type: ignore[index]
        rows[:, ERROR] = code
        rows[:, FORCED] = rows[:, EMITTED].max(axis=1)

    def publish_kernel(self, buffer: int, seq: int) -> None:
        self.cells[KERNEL_SLOT, buffer, Usage.KERNEL] = seq  # type: ignore[index]

    def signal_kernel(self, buffer: int, seq: int) -> None:
        self.cells[KERNEL_SLOT, buffer, SIGNALED] = seq  # type: ignore[index]
