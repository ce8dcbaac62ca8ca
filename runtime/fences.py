"""Fences in shared memory: int64 cells [slot][buffer][emitted, signaled, forced, error].

Slot 0 holds the exporter's KERNEL fences (one per move); slot N importer-N's job fences (WRITE
or READ usage, one per DMA job). Each cell has one writer: an importer writes `emitted` and
`signaled` of its own slot, the exporter writes `forced` and `error` of every slot and all of
slot 0. A fence `s` is signaled once max(signaled, forced) >= s. `error` records why the exporter
forced the fences (protocol.fence.FORCE_REASONS: a reason it does not list is refused, not
recorded as something else), so that the device names it when it aborts the job. Aligned 8-byte
stores are atomic on the machines we run on, and a reader that sees a stale value only waits a
little longer.
"""

from __future__ import annotations

import numpy as np

from protocol.fence import FORCE_REASONS, force_reason

EMITTED, SIGNALED, FORCED, ERROR = range(4)
FIELDS = 4
KERNEL_SLOT = 0


def table_bytes(slots: int, buffers: int) -> int:
    return slots * buffers * FIELDS * 8


class FenceTable:
    def __init__(self, buf: memoryview, slots: int, buffers: int) -> None:
        self.slots = slots
        self.buffers = buffers
        self.cells: np.ndarray | None = np.ndarray((slots, buffers, FIELDS), dtype="<i8", buffer=buf)

    def release(self) -> None:
        self.cells = None

    # importer side
    def emit(self, slot: int, buffer: int) -> int:
        cell = self.cells[slot, buffer]  # type: ignore[index]
        seq = int(cell[EMITTED]) + 1
        cell[EMITTED] = seq
        return seq

    def signal(self, slot: int, buffer: int, seq: int) -> None:
        self.cells[slot, buffer, SIGNALED] = seq  # type: ignore[index]

    def is_signaled(self, slot: int, buffer: int, seq: int) -> bool:
        cell = self.cells[slot, buffer]  # type: ignore[index]
        return max(int(cell[SIGNALED]), int(cell[FORCED])) >= seq

    def forced_before_signaled(self, slot: int, buffer: int, seq: int) -> bool:
        """The exporter completed fence `seq` before the device did: the device is being reset."""
        cell = self.cells[slot, buffer]  # type: ignore[index]
        return int(cell[FORCED]) >= seq > int(cell[SIGNALED])

    def error(self, slot: int, buffer: int) -> str:
        """Why the exporter last forced this cell's fences ("" if it never did)."""
        return force_reason(int(self.cells[slot, buffer, ERROR]))  # type: ignore[index]

    # exporter side
    def snapshot(self, buffer: int) -> dict[int, int]:
        """Importer slots with unsignaled fences on `buffer`: slot -> last seq emitted."""
        col = self.cells[1:, buffer]  # type: ignore[index]
        done = np.maximum(col[:, SIGNALED], col[:, FORCED])
        pending = np.flatnonzero(col[:, EMITTED] > done)
        return {int(i) + 1: int(col[i, EMITTED]) for i in pending}

    def force(self, slot: int, buffer: int | None, error: str) -> None:
        """Complete every fence of `slot` on `buffer` (all buffers if None), recording `error`."""
        try:
            code = FORCE_REASONS[error]
        except KeyError:
            raise ValueError(f"cannot record {error!r} as a fence error (reasons: {', '.join(FORCE_REASONS)})") from None
        rows = self.cells[slot] if buffer is None else self.cells[slot, buffer:buffer + 1]  # type: ignore[index]
        rows[:, ERROR] = code
        rows[:, FORCED] = rows[:, EMITTED]

    def publish_kernel(self, buffer: int, seq: int) -> None:
        self.cells[KERNEL_SLOT, buffer, EMITTED] = seq  # type: ignore[index]

    def signal_kernel(self, buffer: int, seq: int) -> None:
        self.cells[KERNEL_SLOT, buffer, SIGNALED] = seq  # type: ignore[index]
