"""What the sans-IO halves ask their shells to do.

A half never touches a socket, a segment, a clock or a random number; it returns a list of these
actions, in order, and the shell performs them. Whatever the shell learns by performing one
(a copy finished, fences signaled, a timer fired) comes back as a call into the half.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable

from protocol.fence import Usage
from protocol.wire import Message, Placement


@dataclass(frozen=True, slots=True)
class Send:
    """Send `message` to `peer` (the exporter's routing id for an importer; b"" from an importer)."""

    peer: bytes
    message: Message
    peer_name: str = "exporter"


@dataclass(frozen=True, slots=True)
class Emit:
    """Record an event in the service's history (the shell adds t_ns, svc, pid)."""

    event: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StartTimer:
    key: Hashable
    seconds: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    key: Hashable


# Exporter side -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StampBuffer:
    """Write the initial stamps of `buffer` at `placement` (every line: buffer, line, writer 0)."""

    buffer: int
    placement: Placement


@dataclass(frozen=True, slots=True)
class CopyBuffer:
    """Copy the bytes of `src` to `dst`; report with Exporter.copy_done(move)."""

    move: int
    buffer: int
    src: Placement
    dst: Placement


@dataclass(frozen=True, slots=True)
class WaitFences:
    """Wait until every importer fence on `buffer` published so far (of `usage` and below) has
    signaled; report with Exporter.fences_signaled(move), or, after `timeout_s`,
    Exporter.fences_timed_out(move, slots) naming the slots still unsignaled."""

    move: int
    buffer: int
    usage: Usage
    timeout_s: float


@dataclass(frozen=True, slots=True)
class ForceCompleteFences:
    """Complete every fence importer `slot` published on `buffer` (all buffers if None), with an
    error, so that nobody waits for a dead or hung device forever."""

    slot: int
    buffer: int | None
    error: str


@dataclass(frozen=True, slots=True)
class PublishKernelFence:
    """Publish the move's KERNEL fence `seq` on `buffer`: unsignaled until SignalKernelFence."""

    buffer: int
    seq: int


@dataclass(frozen=True, slots=True)
class SignalKernelFence:
    buffer: int
    seq: int


# Importer side -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Joined:
    """The exporter accepted the hello: open its segments (without tracking them)."""

    slot: int
    heaps: tuple[tuple[str, str, int], ...]  # (heap name, segment name, size)
    fences_shm: str
    fence_slots: int
    buffers: tuple[tuple[int, int], ...]     # (buffer, size)


@dataclass(frozen=True, slots=True)
class Ready:
    """Every buffer is attached: the workload may start jobs."""


@dataclass(frozen=True, slots=True)
class ProgramIommu:
    """Make `placement` reachable by the device through `attachment`'s IOMMU entries."""

    attachment: int
    buffer: int
    placement: Placement


@dataclass(frozen=True, slots=True)
class TeardownIommu:
    attachment: int
    buffer: int
    placement: Placement


@dataclass(frozen=True, slots=True)
class StartDma:
    """Run DMA job `job` against `placement`; report with Importer.dma_done(job).
    `fenced`: publish a fence (usage WRITE or READ) before the first access, signal it after
    the last."""

    job: int
    buffer: int
    attachment: int
    access: str
    placement: Placement
    fenced: bool


@dataclass(frozen=True, slots=True)
class WaitKernelFence:
    """Wait for the exporter's KERNEL fence `seq` on `buffer`; report with
    Importer.kernel_fence_signaled(attachment)."""

    attachment: int
    buffer: int
    seq: int


@dataclass(frozen=True, slots=True)
class JobFinished:
    """The job is over (ok or not): its attachment is free for the next one."""

    job: int
    buffer: int
    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Left:
    """Every attachment is detached and the exporter has answered bye."""


Action = (Send | Emit | StartTimer | CancelTimer | StampBuffer | CopyBuffer | WaitFences
          | ForceCompleteFences | PublishKernelFence | SignalKernelFence | Joined | Ready
          | ProgramIommu | TeardownIommu | StartDma | WaitKernelFence | JobFinished | Left)
