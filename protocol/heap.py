"""Sub-allocation of a heap segment into buffer ranges: first fit, freed ranges coalesce.

Rules: offsets and sizes are multiples of LINE (64 bytes, one stamp line). Lowest-offset first
fit is deliberate: a range freed by a move is the first one handed to the next allocation, so a
stale access to a freed range lands in another buffer's bytes soon, as it would on real hardware
under memory pressure. Pure bookkeeping: no memory is touched here.
"""

from __future__ import annotations

import bisect

LINE = 64


class HeapFull(Exception):
    pass


class RangeAllocator:
    def __init__(self, name: str, size: int) -> None:
        if size <= 0 or size % LINE:
            raise ValueError(f"heap {name}: size {size} must be a positive multiple of {LINE}")
        self.name = name
        self.size = size
        # Sorted, non-adjacent free ranges as parallel lists (offset, length).
        self._starts: list[int] = [0]
        self._lengths: list[int] = [size]

    @property
    def free_bytes(self) -> int:
        return sum(self._lengths)

    @property
    def used_bytes(self) -> int:
        return self.size - self.free_bytes

    def can_fit(self, size: int) -> bool:
        return any(length >= size for length in self._lengths)

    def alloc(self, size: int) -> int:
        """Return the offset of a free range of `size` bytes, lowest first; HeapFull if none."""
        if size <= 0 or size % LINE:
            raise ValueError(f"heap {self.name}: allocation of {size} bytes is not a positive multiple of {LINE}")
        for i, length in enumerate(self._lengths):
            if length >= size:
                offset = self._starts[i]
                if length == size:
                    del self._starts[i], self._lengths[i]
                else:
                    self._starts[i] += size
                    self._lengths[i] -= size
                return offset
        raise HeapFull(f"heap {self.name}: no free range of {size} bytes ({self.free_bytes} free in all)")

    def free(self, offset: int, size: int) -> None:
        """Release [offset, offset+size). Refuses double frees and ranges outside the heap."""
        end = offset + size
        if offset < 0 or end > self.size or size <= 0:
            raise ValueError(f"heap {self.name}: free of [{offset:#x}, {end:#x}) is outside the heap")
        i = bisect.bisect_left(self._starts, offset)
        if i < len(self._starts) and self._starts[i] < end:
            raise ValueError(f"heap {self.name}: double free of [{offset:#x}, {end:#x})")
        if i > 0 and self._starts[i - 1] + self._lengths[i - 1] > offset:
            raise ValueError(f"heap {self.name}: double free of [{offset:#x}, {end:#x})")
        merge_left = i > 0 and self._starts[i - 1] + self._lengths[i - 1] == offset
        merge_right = i < len(self._starts) and self._starts[i] == end
        if merge_left and merge_right:
            self._lengths[i - 1] += size + self._lengths[i]
            del self._starts[i], self._lengths[i]
        elif merge_left:
            self._lengths[i - 1] += size
        elif merge_right:
            self._starts[i] = offset
            self._lengths[i] += size
        else:
            self._starts.insert(i, offset)
            self._lengths.insert(i, size)
