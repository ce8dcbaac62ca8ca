"""What the device is asked to do: which buffer, read or write, how long, how often.

All randomness of an importer lives here, drawn from one generator (stream
`workload:<index>:<job base>`) seeded by the run's seed and the importer's index, so the same
seed asks for the same jobs (their timing still depends on the machine; in the simulator every
draw is a decision of the scheduler: runtime/rng.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.params import default
from runtime.rng import MakeRng, real_rng


@dataclass(frozen=True)
class WorkloadConfig:
    queue_depth: int = default("queue_depth")    # jobs in flight at once (each on a different buffer)
    dma_ms: float = default("dma_ms")              # mean job duration
    think_ms: float = default("think_ms")          # mean pause before a freed slot takes the next job
    write_ratio: float = default("write_ratio")
    pin_ratio: float = default("pin_ratio")        # share of jobs that pin their buffer first, unpin after


@dataclass(frozen=True)
class JobSpec:
    job: int
    buffer: int
    access: str
    duration_s: float
    pin: bool = False


class Workload:
    def __init__(self, config: WorkloadConfig, seed: int, index: int, job_base: int = 0,
                 make_rng: MakeRng = real_rng) -> None:
        self.config = config
        # A restarted importer (job_base > 0) draws a new sequence: it is a new device run.
        self.rng = make_rng(f"workload:{index}:{job_base}", f"{seed}:{index}" + (f":{job_base}" if job_base else ""))
        self._next_job = job_base + 1
        self.running = False

    def next_job(self, idle_buffers: list[int]) -> JobSpec | None:
        if not idle_buffers:
            return None
        buffer = self.rng.choice(sorted(idle_buffers))
        access = "write" if self.rng.chance(self.config.write_ratio) else "read"
        duration = self.config.dma_ms * self.rng.uniform(0.5, 1.5) / 1000
        # Drawn only when asked for, so that a workload without pins draws what it always drew.
        pin = self.config.pin_ratio > 0 and self.rng.random() < self.config.pin_ratio
        job = JobSpec(self._next_job, buffer, access, duration, pin)
        self._next_job += 1
        return job

    def think_s(self) -> float:
        return self.rng.uniform(0, 2 * self.config.think_ms) / 1000
