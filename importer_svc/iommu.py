"""The device's IOMMU table: what the driver has programmed is reachable, the rest faults.

An entry per attachment, programmed from the placement its driver decided to use, under an I/O
virtual address (IOVA) of its own: each programming gets a fresh one, as a real IOMMU's allocator
would hand out, and a DMA job uses the IOVA its attachment had when the job started. So a device
that keeps going after its mapping was torn down uses an address that no longer translates (an
IOMMU fault), even if the driver has since mapped the same buffer again under a new IOVA.
Every access is checked before it touches memory; whether an entry is stale (points at a range
the exporter has freed) is not the IOMMU's business, which is precisely the hole option 3 of the
2012 thread worried about.
"""

from __future__ import annotations

import itertools

from protocol.wire import Placement


class IommuTable:
    def __init__(self) -> None:
        self._by_attachment: dict[int, tuple[int, Placement]] = {}
        self._by_iova: dict[int, Placement] = {}
        self._iovas = itertools.count(1)

    def program(self, attachment: int, placement: Placement) -> int:
        self.teardown(attachment)
        iova = next(self._iovas)
        self._by_attachment[attachment] = (iova, placement)
        self._by_iova[iova] = placement
        return iova

    def teardown(self, attachment: int) -> Placement | None:
        entry = self._by_attachment.pop(attachment, None)
        if entry is None:
            return None
        del self._by_iova[entry[0]]
        return entry[1]

    def iova_of(self, attachment: int) -> int | None:
        entry = self._by_attachment.get(attachment)
        return None if entry is None else entry[0]

    def covers(self, iova: int | None, heap: str, offset: int, size: int) -> bool:
        e = self._by_iova.get(iova) if iova is not None else None
        return e is not None and e.heap == heap and e.offset <= offset and offset + size <= e.offset + e.size

    def clear(self) -> None:
        self._by_attachment.clear()
        self._by_iova.clear()

    def __len__(self) -> int:
        return len(self._by_attachment)
