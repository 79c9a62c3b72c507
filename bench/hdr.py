"""Small helpers shared by the benchmarks (HdrHistogram, run sizes)."""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

__all__ = ["HdrHistogram", "new_histogram", "scale"]


def new_histogram() -> HdrHistogram:
    """1 ns to 60 s at 3 significant digits."""
    return HdrHistogram(1, 60_000_000_000, 3)


def scale(benchmark_disabled: bool, full: int, smoke: int) -> int:
    """How many iterations: the full figure when benchmarking, a smoke run in CI."""
    return smoke if benchmark_disabled else full
