"""Simulated memory: the heaps and the fence table as in-process buffers, one per segment name.

The exporter creates a segment (zero-filled, as a new POSIX segment is), importers attach the
same bytes by name, and runtime/memory.py and runtime/fences.py view them with numpy exactly as
they view shared memory: a stale write lands in another buffer's bytes here too. Unlike
/dev/shm nothing outlives the simulation, so there is nothing to clean up after it; the names
are still dmabuf-<run id>-<what>, and `unlink` still removes a name.
"""

from __future__ import annotations


class SimSegment:
    def __init__(self, memory: "SimMemory", name: str, data: bytearray) -> None:
        self._memory = memory
        self.name = name
        self.size = len(data)
        self.buf = memoryview(data)

    def close(self) -> None:
        """Views of it stay valid, as a mapping stays valid until its process ends."""

    def unlink(self) -> None:
        if self._memory.segments.get(self.name) is not None:
            del self._memory.segments[self.name]
        else:
            raise FileNotFoundError(self.name)


class SimMemory:
    """runtime/env.Memory for every simulated process of one run."""

    def __init__(self) -> None:
        self.segments: dict[str, bytearray] = {}

    def create(self, name: str, size: int) -> SimSegment:
        if name in self.segments:
            raise FileExistsError(f"segment {name} exists")
        data = self.segments[name] = bytearray(size)
        return SimSegment(self, name, data)

    def attach(self, name: str) -> SimSegment:
        data = self.segments.get(name)
        if data is None:
            raise FileNotFoundError(f"no segment {name}")
        return SimSegment(self, name, data)

    def unlink(self, name: str) -> bool:
        return self.segments.pop(name, None) is not None
