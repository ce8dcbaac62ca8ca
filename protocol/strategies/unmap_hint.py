"""unmap-hint: option 1 of the 2012 thread. The unmap reply says whether the buffer will move.

    "At dma_buf_unmap() time, the exporter will tell the importer that the buffer will move, and
     that it should be unmapped from whatever the importer mapped it to. [...] I expect it to be
     difficult for the exporter to know at dma_buf_unmap() time if the buffer will need to be
     moved or not."  (Laurent Pinchart, linux-media, 2 Feb 2012)

Rules:
- The exporter never moves a mapped buffer: a move wanted while it is mapped is queued and
  starts at the last unmap. It never hands out a placement while copying one (BASE_TABLE).
- Every unmap reply carries `will_move`. --hint-policy conservative: always true. optimistic:
  true only if a move is already queued; otherwise it promises the buffer stays, and moves it
  anyway later if the memory manager wants it while it is unmapped (move_begin says
  broke_promise).
- Importers keep their IOMMU entries across unmap unless told the buffer will move, and on the
  next map reuse the kept entries without looking at the placement in the reply: that is the
  saving the hint exists for. Told it will move, they tear the entries down and remap.
Hazard: the stale cache. The exporter cannot know at unmap time whether it will need to move the
buffer; when pressure makes it break an optimistic promise, the importer's kept entries point at
the freed range, and its next job reads and writes memory that now belongs to another buffer.
"""

from protocol.exporter import BASE_TABLE as EXPORTER_BASE, ExporterSpec, Guard, MoveEvent, MoveState, Step
from protocol.importer import (BASE_TABLE as IMPORTER_BASE, KEEP_ENTRIES_ROWS, AttEvent, AttState, IGuard,
                               ImporterSpec, IStep)
from protocol.machine import ANY, SAME, Rule

NAME = "unmap-hint"
SUMMARY = "option 1: the unmap reply says whether the buffer will move; importers cache mappings otherwise"

EXPORTER = ExporterSpec(
    strategy=NAME,
    table={
        **EXPORTER_BASE,
        (MoveState.IDLE, MoveEvent.MOVE_WANTED): (
            Rule(Guard.PINNED, MoveState.IDLE, (Step.REFUSE,)),
            Rule(Guard.MAPPED, MoveState.QUEUED, (Step.QUEUE,)),
            Rule(Guard.ALWAYS, MoveState.COPYING, (Step.BEGIN, Step.COPY)),
        ),
        # A queued move holds no map off: it waits for the mappings to go.
        (MoveState.QUEUED, MoveEvent.MAP): (Rule(Guard.ALWAYS, SAME, (Step.SERVE_MAP,)),),
        (MoveState.QUEUED, MoveEvent.LAST_UNMAP): (
            Rule(Guard.MAPPED, SAME, ()),                       # mapped again meanwhile
            Rule(Guard.NO_ROOM, MoveState.IDLE, (Step.REFUSE,)),  # the destination filled up meanwhile
            Rule(Guard.ALWAYS, MoveState.COPYING, (Step.BEGIN, Step.COPY)),
        ),
        (MoveState.QUEUED, MoveEvent.CANCEL): (Rule(Guard.ALWAYS, MoveState.IDLE, (Step.CANCEL_QUEUED,)),),
        (ANY, MoveEvent.UNMAP): (
            Rule(Guard.CONSERVATIVE_HINTS, SAME, (Step.HINT_WILL_MOVE,)),
            Rule(Guard.MOVE_QUEUED, SAME, (Step.HINT_WILL_MOVE,)),
            Rule(Guard.ALWAYS, SAME, (Step.HINT_STAY,)),
        ),
    },
)

IMPORTER = ImporterSpec(
    strategy=NAME,
    table={
        **IMPORTER_BASE,
        **KEEP_ENTRIES_ROWS,
        (AttState.MAPPING, AttEvent.MAP_OK): (
            Rule(IGuard.CACHED, AttState.ACTIVE, (IStep.REUSE_IOMMU, IStep.LOG_MAP, IStep.START_DMA)),
            Rule(IGuard.ALWAYS, AttState.ACTIVE, (IStep.PROGRAM_IOMMU, IStep.LOG_MAP, IStep.START_DMA)),
        ),
        (AttState.UNMAPPING, AttEvent.UNMAP_OK): (
            Rule(IGuard.WILL_MOVE, AttState.IDLE, (IStep.TEARDOWN_IOMMU, IStep.FINISH_JOB, IStep.LOG_UNMAP)),
            Rule(IGuard.ALWAYS, AttState.CACHED, (IStep.FINISH_JOB, IStep.LOG_UNMAP)),
        ),
    },
)
