"""Summaries of repeated measurements: median with min and max beside it, and percentiles."""

from __future__ import annotations

import statistics
from typing import Any, Iterable


def summary(values: Iterable[float | None], unit: str = "") -> dict[str, Any]:
    """{median, min, max, n, unit, values} of the repetitions; None values (a repetition that
    produced nothing, e.g. no race within the run) are counted in `missing`, not in the figure."""
    vals = list(values)
    got = [float(v) for v in vals if v is not None]
    out: dict[str, Any] = {"median": statistics.median(got) if got else None,
                           "min": min(got) if got else None, "max": max(got) if got else None,
                           "n": len(got), "values": [None if v is None else round(float(v), 6) for v in vals]}
    if unit:
        out["unit"] = unit
    if len(got) != len(vals):
        out["missing"] = len(vals) - len(got)
    return out


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def fmt(x: float | None) -> str:
    """A figure for a table: 3 significant digits or so, thousands separated."""
    if x is None:
        return "-"
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"
