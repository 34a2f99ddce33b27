"""Summary statistics for repeated timings."""

from __future__ import annotations

import statistics


def summarize(values: list[float]) -> dict[str, float]:
    """Median and spread. `spread` is (max - min) / median: how far to trust the median."""
    if not values:
        raise ValueError("no values to summarize")
    med = statistics.median(values)
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / med if med else 0.0,
        "n": len(values),
    }


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None
