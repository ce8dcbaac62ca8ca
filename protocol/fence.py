"""Fence usages, as in include/linux/dma-resv.h.

Usages are ordered KERNEL < WRITE < READ < BOOKKEEP. Asking for the fences of one usage returns
those of every lower usage too: waiting for BOOKKEEP waits for everything, waiting for KERNEL only
for the kernel's own memory-management fences (a move's copy). A move, which copies and frees,
must wait for BOOKKEEP. Waiting only for KERNEL fences was caught in review of the 2026 VFIO
revoke series ([PATCH v3 6/7] "vfio: Wait for dma-buf invalidation to complete", dri-devel, 20
Jan 2026; never merged), where the wait guards a revocation, not a reuse of memory. Christian
König: "This should be DMA_RESV_USAGE_BOOKKEEP so that we wait for everything." (21 Jan 2026)
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


# Why the exporter completed an importer's fences before its device did, as recorded in the fence
# table's `error` cell (runtime/fences.py) and named by the device when it aborts the job. Code 0
# is "not forced". A reason not listed here cannot be recorded: the exporter refuses it.
FORCE_REASONS: dict[str, int] = {
    "fence_timeout": 1,          # the move's fence wait timed out on a responsive importer
    "lease expired": 2,          # the importer was silent past its lease
    "restarted": 3,              # a new incarnation said hello under its name
    "rejoined": 4,               # the same incarnation said hello again (after its own lease ran out)
    "bye with attachments": 5,   # it left without detaching
    "reset unconfirmed": 6,      # forced at a fence timeout, its device did not confirm it stopped
}
_BY_CODE = {code: reason for reason, code in FORCE_REASONS.items()}


def force_reason(code: int) -> str:
    """The reason recorded as `code` ("" if not forced)."""
    if code == 0:
        return ""
    try:
        return _BY_CODE[code]
    except KeyError:
        raise ValueError(f"fence error code {code} names no reason (known: {FORCE_REASONS})") from None
