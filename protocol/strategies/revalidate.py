"""revalidate: option 3 of the 2012 thread. Keep the IOMMU entries; say "moved" at the next map.

    "At dma_buf_unmap() time, keep importer's mappings around. The exporter is then free to move
     the buffer if needed, in which case the mappings will be invalid. [...] can cause stability
     issues when dealing with rogue hardware as this would punch holes in the IOMMU fence. At
     dma_buf_map() time the exporter would tell the importer whether the buffer moved or not."
     (Laurent Pinchart, linux-media, 2 Feb 2012)

Rules:
- The exporter may move any buffer that nobody has mapped right now; a mapped one is refused
  ("mapped"). It never hands out a placement while copying one (BASE_TABLE).
- Importers keep their IOMMU entries after unmap. The map reply says `moved` when the placement
  differs from the one this attachment was last handed: the importer tears the old entries down
  and programs the new; otherwise it reuses the entries it kept.
Hazard: between unmap and the next map the old range stays reachable through the kept IOMMU
entries. A well-behaved device does nothing there; a rogue one that keeps doing DMA after unmap
reaches memory the exporter has freed and reused: the hole in the IOMMU fence.
"""

from protocol.exporter import BASE_TABLE as EXPORTER_BASE, ExporterSpec, Guard, MoveEvent, MoveState, Step
from protocol.importer import (BASE_TABLE as IMPORTER_BASE, KEEP_ENTRIES_ROWS, AttEvent, AttState, IGuard,
                               ImporterSpec, IStep)
from protocol.machine import Rule

NAME = "revalidate"
SUMMARY = "option 3: importers keep IOMMU entries after unmap; the next map says whether it moved"

EXPORTER = ExporterSpec(
    strategy=NAME,
    table={
        **EXPORTER_BASE,
        (MoveState.IDLE, MoveEvent.MOVE_WANTED): (
            Rule(Guard.PINNED, MoveState.IDLE, (Step.REFUSE,)),
            Rule(Guard.MAPPED, MoveState.IDLE, (Step.REFUSE,)),
            Rule(Guard.ALWAYS, MoveState.COPYING, (Step.BEGIN, Step.COPY)),
        ),
    },
)

IMPORTER = ImporterSpec(
    strategy=NAME,
    table={
        **IMPORTER_BASE,
        **KEEP_ENTRIES_ROWS,
        (AttState.MAPPING, AttEvent.MAP_OK): (
            Rule(IGuard.MOVED, AttState.ACTIVE, (IStep.PROGRAM_IOMMU, IStep.LOG_MAP, IStep.START_DMA)),
            Rule(IGuard.CACHED, AttState.ACTIVE, (IStep.REUSE_IOMMU, IStep.LOG_MAP, IStep.START_DMA)),
            Rule(IGuard.ALWAYS, AttState.ACTIVE, (IStep.PROGRAM_IOMMU, IStep.LOG_MAP, IStep.START_DMA)),
        ),
        (AttState.UNMAPPING, AttEvent.UNMAP_OK): (
            Rule(IGuard.ALWAYS, AttState.CACHED, (IStep.FINISH_JOB, IStep.LOG_UNMAP)),),
    },
)
