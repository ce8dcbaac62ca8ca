"""Fence usages, as in include/linux/dma-resv.h.

Usages are ordered KERNEL < WRITE < READ < BOOKKEEP. Asking for the fences of one usage returns
those of every lower usage too: waiting for BOOKKEEP waits for everything, waiting for KERNEL only
for the kernel's own memory-management fences (a move's copy). Waiting only for KERNEL fences
before reusing memory was a real bug (a 2026 VFIO fix): a move must wait for BOOKKEEP.
"""

from __future__ import annotations

import enum


class Usage(enum.IntEnum):
    KERNEL = 0
    WRITE = 1
    READ = 2
    BOOKKEEP = 3

    def includes(self, other: "Usage") -> bool:
        """A wait for `self` covers fences published with usage `other`."""
        return other <= self


def usage_for_access(access: str) -> Usage:
    """The usage a DMA job's fence is published with."""
    return Usage.WRITE if access == "write" else Usage.READ
