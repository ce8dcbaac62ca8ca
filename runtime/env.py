"""What a service shell is given instead of reaching for it: the seams between a real run and a
simulated one.

A shell (runtime/service.py and the two services) takes one `ServiceEnv`:
- `loop`: the clock and the scheduling (runtime/loop.py: the real Loop, or a simulated
  service's view of the virtual loop);
- `transport`: where its sockets come from (runtime/transport.py: ZeroMQ, or the simulated
  network carrying the same encoded frames);
- `memory`: where its segments come from (`create(name, size)` / `attach(name)`, each giving an
  object with `name`, `buf`, `close()` and `unlink()`: POSIX shared memory, or in-process
  buffers that runtime/memory.py stamps and verifies all the same);
- `sink`: where its events go (None: DIR/events/<svc>.jsonl, flushed per line);
- `pid`: the pid written into its events, its hello and its status (fixed in the simulator);
- `make_rng`: where its random numbers come from (runtime/rng.py);
- `say`: how it tells the operator something: in a real process an info line in its
  operational log (runtime/oplog.py: stdout, which `dmabuf-emu` sends to DIR/logs/<svc>.log);
  in the simulator, the line the shell's operational logger renders for it;
- `process_gone(pid)`: whether that process has exited (a zombie not yet reaped counts as gone):
  the exporter's last word on an importer whose lease ran out while its device was in mid-access
  (runtime/watchdog.py; in the simulator, the world's);
- `process`: True in a real OS process: it installs signal handlers and publishes its
  endpoints in DIR/run/<svc>.json for dmabuf-emu to find.
Everything else a shell does is the same code in both modes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from runtime import oplog, shm, watchdog
from runtime.eventlog import Sink
from runtime.loop import Loop, LoopLike
from runtime.rng import MakeRng, real_rng
from runtime.transport import Transport, ZmqTransport


class Segment(Protocol):
    name: str
    buf: memoryview

    def close(self) -> None: ...
    def unlink(self) -> None: ...


class Memory(Protocol):
    def create(self, name: str, size: int) -> Segment: ...
    def attach(self, name: str) -> Segment: ...


class SharedMemory:
    """POSIX shared memory (runtime/shm.py): the exporter creates, importers attach untracked."""

    def create(self, name: str, size: int) -> Any:
        return shm.create(name, size)

    def attach(self, name: str) -> Any:
        return shm.attach(name)


def _say(text: str) -> None:
    oplog.process_logger().info(text)


@dataclass
class ServiceEnv:
    loop: LoopLike = field(default_factory=Loop)
    transport: Transport = field(default_factory=ZmqTransport)
    memory: Memory = field(default_factory=SharedMemory)
    sink: Callable[[str], Sink] | None = None
    pid: int = field(default_factory=os.getpid)
    make_rng: MakeRng = real_rng
    say: Callable[[str], None] = _say
    process_gone: Callable[[int], bool] = watchdog.process_gone
    process: bool = True
