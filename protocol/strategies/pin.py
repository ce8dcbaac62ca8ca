"""pin: option 4 of the 2012 thread. Hang on to the mappings; never move a pinned buffer.

    "Just hang onto the device mappings for as long as it's convenient and/or necessary and
     feel guilty about it."  (Daniel Vetter, linux-media, 2 Feb 2012)

Rules:
- attach pins the buffer (a static importer; kernel: dma_buf_pin at attach: the ATTACH row). Every
  move of a pinned buffer is refused, with reason "pinned"; a buffer nobody has attached may still move.
- The exporter never hands out a placement while it is copying one (BASE_TABLE).
- Importers map, DMA and unmap; IOMMU entries are torn down at unmap.
Hazard: none for the data. The cost is memory: pressure can no longer be relieved by moving
pinned buffers, so every move the memory manager wants is refused.
"""

from protocol.exporter import BASE_TABLE as EXPORTER_BASE, ExporterSpec, Guard, MoveEvent, MoveState, Step
from protocol.importer import BASE_TABLE as IMPORTER_BASE, ImporterSpec
from protocol.machine import ANY, SAME, Rule

NAME = "pin"
SUMMARY = "option 4: attach pins the buffer; the exporter never moves an attached buffer"

EXPORTER = ExporterSpec(
    strategy=NAME,
    table={
        **EXPORTER_BASE,
        (ANY, MoveEvent.ATTACH): (Rule(Guard.ALWAYS, SAME, (Step.PIN,)),),
        (MoveState.IDLE, MoveEvent.MOVE_WANTED): (
            Rule(Guard.PINNED, MoveState.IDLE, (Step.REFUSE,)),
            Rule(Guard.ALWAYS, MoveState.COPYING, (Step.BEGIN, Step.COPY)),
        ),
    },
)

IMPORTER = ImporterSpec(strategy=NAME, table=IMPORTER_BASE)
