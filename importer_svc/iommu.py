"""The device's IOMMU table: what the driver has programmed is reachable, the rest faults.

An entry per attachment, programmed from the placement its driver decided to use. Every DMA
access is checked against the table before it touches memory; whether an entry is stale (points
at a range the exporter has freed) is not the IOMMU's business, which is precisely the hole
option 3 of the 2012 thread worried about.
"""

from __future__ import annotations

from protocol.wire import Placement


class IommuTable:
    def __init__(self) -> None:
        self._entries: dict[int, Placement] = {}

    def program(self, attachment: int, placement: Placement) -> None:
        self._entries[attachment] = placement

    def teardown(self, attachment: int) -> Placement | None:
        return self._entries.pop(attachment, None)

    def covers(self, heap: str, offset: int, size: int) -> bool:
        end = offset + size
        return any(e.heap == heap and e.offset <= offset and end <= e.offset + e.size
                   for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
