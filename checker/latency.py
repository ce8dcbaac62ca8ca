"""Latency percentiles in bounded memory.

Rules:
- A `LogHistogram` counts samples in logarithmic buckets of ratio 1.01, so a bucket's
  representative (its geometric middle) is within 0.5% of every sample in it, and the memory is
  bounded by the range of values (about 2,800 buckets from 1 ns to 1,000 s), never by the count.
- Zero and negative samples (clock ties) go to a bucket of their own whose value is 0.
- Quantiles follow numpy's default ("linear") definition: the value at fractional rank
  (n - 1) * q, interpolated between the two neighbouring order statistics. The order statistics
  are read from the buckets, clamped to the exact min and max, which are kept exactly; so a
  quantile is within about 1% of numpy's on the same samples.
- Samples are in nanoseconds; `summary_us` reports microseconds.
"""

from __future__ import annotations

import math
from typing import Any

_RATIO = 1.01
_INV_LOG = 1.0 / math.log(_RATIO)
_log = math.log


class LogHistogram:
    __slots__ = ("counts", "zeros", "n", "total", "lo", "hi")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.zeros = 0
        self.n = 0
        self.total = 0.0
        self.lo = math.inf
        self.hi = -math.inf

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        if value < self.lo:
            self.lo = value
        if value > self.hi:
            self.hi = value
        if value >= 1:
            idx = int(_log(value) * _INV_LOG)  # log >= 0 here, so int() is floor()
        elif value > 0:
            idx = math.floor(_log(value) * _INV_LOG)
        else:
            self.zeros += 1
            return
        counts = self.counts
        counts[idx] = counts.get(idx, 0) + 1

    def _value_at_rank(self, rank: int) -> float:
        """The rank-th smallest sample (0-based), to the bucket's precision."""
        if rank <= 0:
            return float(self.lo)
        if rank >= self.n - 1:
            return float(self.hi)
        if rank < self.zeros:
            return 0.0
        seen = self.zeros
        for idx in sorted(self.counts):
            seen += self.counts[idx]
            if rank < seen:
                mid = math.exp((idx + 0.5) / _INV_LOG)
                return min(max(mid, float(self.lo)), float(self.hi))
        return float(self.hi)

    def quantile(self, q: float) -> float | None:
        """numpy.percentile(samples, 100 * q) to about 1%; None when there are no samples."""
        if self.n == 0:
            return None
        h = (self.n - 1) * q
        lo_rank = math.floor(h)
        lo_val = self._value_at_rank(lo_rank)
        frac = h - lo_rank
        if frac == 0:
            return lo_val
        return lo_val + frac * (self._value_at_rank(lo_rank + 1) - lo_val)

    def summary_us(self) -> dict[str, Any]:
        def us(v: float | None) -> float | None:
            return None if v is None else round(v / 1000.0, 3)

        return {
            "n": self.n,
            "p50": us(self.quantile(0.50)),
            "p99": us(self.quantile(0.99)),
            "max": us(self.hi) if self.n else None,
            "min": us(self.lo) if self.n else None,
            "mean": us(self.total / self.n) if self.n else None,
        }
