"""Small helpers shared by the benchmarks (HdrHistogram, run sizes)."""

from __future__ import annotations

from typing import TypeVar

from hdrh.histogram import HdrHistogram

#: A run size: a count of iterations, or seconds.
Size = TypeVar("Size", int, float)

__all__ = ["HdrHistogram", "new_histogram", "scale"]


def new_histogram() -> HdrHistogram:
    """1 ns to 60 s at 3 significant digits."""
    return HdrHistogram(1, 60_000_000_000, 3)


def scale(benchmark_disabled: bool, full: Size, smoke: Size) -> Size:
    """How many iterations (or seconds): the full figure when benchmarking, a smoke run in CI."""
    return smoke if benchmark_disabled else full
