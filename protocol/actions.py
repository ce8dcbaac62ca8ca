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
    """Send `message` to `peer` (the exporter's routing id for an importer; b"" from an importer).
    `recorded`: a reply whose request and answer the half's own event already records
    (map_served, unmap_served): the shell logs neither op_received nor op_answered for it.
    `reliable=False`: a request sent once, never retried and outside the request window (a
    heartbeat); its reply goes straight back to the half."""

    peer: bytes
    message: Message
    peer_name: str = "exporter"
    recorded: bool = False
    reliable: bool = True


@dataclass(frozen=True, slots=True)
class Emit:
    """Record an event in the service's history (the shell adds t_ns, svc, pid)."""

    event: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Call the half's timer_fired(key) after `seconds`; a timer of the same key is replaced."""

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
    trigger: tuple[tuple[str, Any], ...] = ()   # what fired the row that copies: copy_begin's fields


@dataclass(frozen=True, slots=True)
class WaitFences:
    """Watch every importer fence on `buffer` published so far (of `usage` and below) until all
    have signaled. Report first what is waited for, with Exporter.fences_snapshot(move, fences):
    slot -> (seqno, usage) of the latest such fence of each slot still unsignaled; then, at each
    change, Exporter.fences_pending(move, slots) with the slots still unsignaled (none left: the
    wait is over). For the slots in `confirm` (their fences were forced) only the device's own
    signal counts, not the exporter's forcing: the device confirms that its engine stopped. How
    long to wait is the half's business (its timers): a WaitFences for a move already watched
    replaces the watch."""

    move: int
    buffer: int
    usage: Usage
    confirm: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ForceCompleteFences:
    """Complete every fence importer `slot` published on `buffer` (all buffers if None), with the
    error `error` (one of protocol.fence.FORCE_REASONS, recorded where the device reads it), so
    that nobody waits for a dead or hung device forever."""

    slot: int
    buffer: int | None
    error: str


@dataclass(frozen=True, slots=True)
class ConfirmStopped:
    """The lease of importer `slot` (process `pid`) ran out: report (device_stopped) once its
    device has no access under way (its access count in the fence table is 0) or its process is
    gone. Until then it is not lost: an access it checked before its own lease ran out may still
    run (a paused device resumes where it stopped), so nothing it may touch is revoked or freed."""

    slot: int
    pid: int


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
    """Run DMA job `job` against `placement`; report with Importer.dma_done(job, fence).
    `fenced`: publish a fence (usage WRITE or READ) before the first access; `signal` says when
    it signals: "end" after the last access; "submit" at once, before the first (a known bug:
    the early-signal mutant); "held" not by the engine: the half signals it later (SignalFence;
    the signal-after-next-map mutant). dma_done reports the fence's seqno (0 if none)."""

    job: int
    buffer: int
    attachment: int
    access: str
    placement: Placement
    fenced: bool
    signal: str = "end"


@dataclass(frozen=True, slots=True)
class WaitKernelFence:
    """Wait for the exporter's KERNEL fence `seq` on `buffer`; report with
    Importer.kernel_fence_signaled(attachment)."""

    attachment: int
    buffer: int
    seq: int


@dataclass(frozen=True, slots=True)
class StopDma:
    """Stop job `job` on `buffer` now, before the next action (a pinned-revocable importer's revoke
    callback stops its hardware's access before it returns): its dma_end says aborted, with
    `reason`, its fence signals. The half has ended the job already: no dma_done follows."""

    job: int
    buffer: int
    reason: str


@dataclass(frozen=True, slots=True)
class Invalidated:
    """The driver's invalidate_mappings callback returned for `attachment` of `buffer` (Linux 7.1):
    the device may go on until its fences retire, then only read and discard until the unmap
    (a rogue device writes regardless)."""

    attachment: int
    buffer: int


@dataclass(frozen=True, slots=True)
class SignalFence:
    """Signal fence `seq` of this importer's `slot` (the slot it published the fence under) on
    `buffer` (one the engine left unsignaled: StartDma with signal "held"), and record its
    fence_signal (`usage`, `job`)."""

    slot: int
    buffer: int
    seq: int
    usage: str
    job: int


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


@dataclass(frozen=True, slots=True)
class AckOwed:
    """The driver owes the exporter an ack of `move` on `attachment`, which it sends when the job
    running on `buffer` drains. A device that claims to be done at once (the early-ack fault)
    sends one of its own now."""

    attachment: int
    buffer: int
    move: int


@dataclass(frozen=True, slots=True)
class Acked:
    """The driver acked `move` on `attachment` of `buffer`: it told the exporter the device no
    longer uses the old placement (a rogue device goes on regardless)."""

    attachment: int
    buffer: int
    move: int


@dataclass(frozen=True, slots=True)
class LeaseExpired:
    """The importer's lease ran out: stop every DMA job now, forget the requests in flight, and
    record lease_expired (since_ns: how long since the last grant; None: none yet)."""

    since_ns: int | None


@dataclass(frozen=True, slots=True)
class ExporterLost:
    """The exporter has answered nothing for `silent_ns` while we were awake: stop all DMA, exit."""

    silent_ns: int
    lease_s: float


Action = (Send | Emit | StartTimer | CancelTimer | StampBuffer | CopyBuffer | WaitFences
          | ForceCompleteFences | ConfirmStopped | PublishKernelFence | SignalKernelFence | Joined | Ready
          | ProgramIommu | TeardownIommu | StartDma | WaitKernelFence | SignalFence | JobFinished | Left
          | AckOwed | Acked | LeaseExpired | ExporterLost | StopDma | Invalidated)
