"""What the device is asked to do: which buffer, read or write, how long, how often.

All randomness of an importer lives here, drawn from one generator (stream
`workload:<index>:<job base>`) seeded by the run's seed and the importer's index, so the same
seed asks for the same jobs (their timing still depends on the machine; in the simulator every
draw is a decision of the scheduler: runtime/rng.py).

A job's duration D (`JobSpec.duration_s`) is uniform on [0.5, 1.5] x --dma-ms: mean dma_ms,
standard deviation dma_ms / sqrt(12) (0.29 x), no tail at all: no job is ever longer than 1.5 x
dma_ms as drawn (9 ms at the default 6 ms). What a real run measures is D plus the importer's
lateness (its loop wakes late under load; docs/faults.md gives the measured tail). A device in the
kernel's model may take arbitrarily long (only a fence timeout, with a reset, bounds a fence), so
a strategy that waits a fixed time is right only against this thin distribution: --dma-stall
P,MS adds the tail (a stall of MS ms with probability P per job; the decision is drawn from a
generator of its own, stream `stall:<index>:<job base>`, only when --dma-stall is given, so the
same seed asks for the same jobs with and without it), and the schedule search makes any chunk
stall past any exporter timer (sim/world.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.params import default
from runtime.params import stall_pair
from runtime.rng import MakeRng, real_rng


@dataclass(frozen=True)
class WorkloadConfig:
    queue_depth: int = default("queue_depth")    # jobs in flight at once (each on a different buffer)
    dma_ms: float = default("dma_ms")              # mean job duration
    think_ms: float = default("think_ms")          # mean pause before a freed slot takes the next job
    write_ratio: float = default("write_ratio")
    pin_ratio: float = default("pin_ratio")        # share of jobs that pin their buffer first, unpin after
    dma_stall: str | None = default("dma_stall")   # "P,MS": a job stalls MS ms with probability P (None: never)


@dataclass(frozen=True)
class JobSpec:
    job: int
    buffer: int
    access: str
    duration_s: float
    pin: bool = False
    stall_s: float = 0.0     # how long its device holds it before its last chunk (--dma-stall)


class Workload:
    def __init__(self, config: WorkloadConfig, seed: int, index: int, job_base: int = 0,
                 make_rng: MakeRng = real_rng) -> None:
        self.config = config
        # A restarted importer (job_base > 0) draws a new sequence: it is a new device run.
        self.rng = make_rng(f"workload:{index}:{job_base}", f"{seed}:{index}" + (f":{job_base}" if job_base else ""))
        self._next_job = job_base + 1
        # Drawn apart, so that the workload's own draws are the same with and without stalls.
        self.stall = stall_pair(config.dma_stall) if config.dma_stall else None
        self.stall_rng = (make_rng(f"stall:{index}:{job_base}", f"{seed}:{index}:{job_base}:stall")
                          if self.stall else None)
        self.running = False

    def next_job(self, idle_buffers: list[int]) -> JobSpec | None:
        if not idle_buffers:
            return None
        buffer = self.rng.choice(sorted(idle_buffers))
        access = "write" if self.rng.chance(self.config.write_ratio) else "read"
        duration = self.config.dma_ms * self.rng.uniform(0.5, 1.5) / 1000
        # Drawn only when asked for, so that a workload without pins draws what it always drew.
        pin = self.config.pin_ratio > 0 and self.rng.random() < self.config.pin_ratio
        stall = 0.0
        if self.stall is not None and self.stall_rng.chance(self.stall[0]):  # type: ignore[union-attr]
            stall = self.stall[1] / 1000
        job = JobSpec(self._next_job, buffer, access, duration, pin, stall)
        self._next_job += 1
        return job

    def think_s(self) -> float:
        return self.rng.uniform(0, 2 * self.config.think_ms) / 1000
