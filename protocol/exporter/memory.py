"""The exporter's memory manager: the heaps, where each buffer lives, and which move it wants.

Rules of this file:
- Heaps are sub-allocated first fit (protocol/heap.py): a range freed by a move is the first one
  handed to the next allocation, so a late access to it lands in another buffer's bytes.
- The memory manager wants at most one move per pressure tick, and only a move that can be made
  now: fewer than `max_moves_in_flight` moves are running and the destination has room. What
  happens to a move it wants is the strategy's table (moves.py): it may be refused or queued.
- Its choice: promote the spill buffer the importers mapped most recently into the scarce heap; if
  it does not fit, first evict the scarce buffer this exporter placed longest ago, and promote
  into its range once freed (a follow-up want, re-checked when it runs: by then another move may
  have taken the room or the slot). `move_options` lists the other moves of the same kind, this
  choice first: the simulator may steer which buffer moves (a replay of a real run), never
  whether a move is wanted or of which kind. The eviction order is the exporter's own use of its memory
  (an exporting GPU driver's LRU follows its own work, not the importers' DMA), so it may well
  pick a buffer a device is using right now: that is the 2012 problem.
- Nothing here reads a clock; `lru` and `resident_since` are logical clocks (one tick per map,
  one per placement).
"""

from __future__ import annotations

from protocol.actions import StampBuffer
from protocol.exporter.state import Buffer, ExporterState
from protocol.exporter.table import MoveState
from protocol.heap import HeapFull, RangeAllocator
from protocol.wire import Placement


def _hottest(b: Buffer) -> tuple[int, int]:
    return (b.lru, -b.id)


def _coldest(b: Buffer) -> tuple[int, int]:
    return (b.resident_since, b.id)


class MemoryManager:
    def __init__(self, state: ExporterState) -> None:
        self.state = state
        config = state.config
        self.heaps = {h.name: RangeAllocator(h.name, h.size) for h in config.heaps}
        self.scarce = config.heaps[0].name
        self.spill = config.heaps[-1].name
        self.map_clock = 0           # one tick per map served: the importers' demand
        self.placements = 0          # one tick per placement: the exporter's own use

    def boot(self) -> None:
        """Allocate every buffer (scarce heap first, then the spill heap) and stamp it."""
        st, config = self.state, self.state.config
        for b in range(config.buffers):
            heap = self.scarce if self.heaps[self.scarce].can_fit(config.buffer_size) else self.spill
            try:
                offset = self.heaps[heap].alloc(config.buffer_size)
            except HeapFull as exc:
                raise ValueError(f"{exc}: the heaps cannot hold {config.buffers} buffers "
                                 f"of {config.buffer_size} bytes") from None
            placement = Placement(heap, offset, config.buffer_size, 1)
            st.buffers[b] = Buffer(b, config.buffer_size, placement)
            st.out.append(StampBuffer(b, placement))
            st.emit("buffer_created", buffer=b, heap=heap, offset=offset, size=config.buffer_size, gen=1)

    def at_move_limit(self) -> bool:
        return len(self.state.moves) >= self.state.config.max_moves_in_flight

    def admits(self, buf: Buffer, to_heap: str) -> bool:
        """A move of `buf` to `to_heap` can begin now: a free move slot, room at the destination."""
        return not self.at_move_limit() and self.heaps[to_heap].can_fit(buf.size)

    def move_options(self) -> list[tuple[Buffer, str, str, int | None]]:
        """Every move of the kind the policy wants now, its own choice first: promote a spill
        buffer into the scarce heap (the most recently mapped first) if the hottest fits; else
        evict a scarce buffer (the one placed longest ago first), each with each spill buffer to
        promote after it (hottest first). The real exporter takes the first; the simulator's
        scheduler may take another (sim/driver.py), so that a replay can move the buffer a real
        run moved when the importers' demand (lru) came out otherwise."""
        idle = [b for b in self.state.buffers.values() if b.state is MoveState.IDLE]
        spill_heap, scarce_heap = self.spill, self.scarce
        spill = sorted([b for b in idle if b.placement.heap == spill_heap], key=_hottest, reverse=True)
        scarce = sorted([b for b in idle if b.placement.heap == scarce_heap], key=_coldest)
        fits = self.heaps[scarce_heap].can_fit
        if spill and fits(spill[0].size):
            return [(b, scarce_heap, "promote", None) for b in spill if fits(b.size)]
        thens: list[int | None] = [b.id for b in spill] or [None]
        return [(cold, spill_heap, "evict", then) for cold in scarce for then in thens]

    def touched(self, buf: Buffer) -> None:
        """A map was served: the importers want this buffer."""
        self.map_clock += 1
        buf.lru = self.map_clock

    def alloc(self, to_heap: str, size: int) -> int:
        return self.heaps[to_heap].alloc(size)

    def placed(self, buf: Buffer, placement: Placement) -> None:
        buf.placement = placement
        self.placements += 1
        buf.resident_since = self.placements

    def free(self, p: Placement) -> None:
        self.heaps[p.heap].free(p.offset, p.size)

    def can_fit(self, to_heap: str, size: int) -> bool:
        return self.heaps[to_heap].can_fit(size)

    def usage(self) -> dict[str, int]:
        return {name: heap.used_bytes for name, heap in self.heaps.items()}
