"""Counting for the metrics, in plain memory: the exporter reads it at scrape time.

The rooms that count (the gRPC interceptor, the sync) import nothing of
Prometheus: an observation is a list index and two additions. The exporter
(:mod:`pretrade.app.metrics`) turns these into Prometheus families.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence


class Buckets:
    """A fixed-bucket histogram: counts per bucket (not cumulative) and the sum.

    ``bounds`` are the upper bounds, increasing; a value above the last one
    lands in one more bucket past it (Prometheus's ``+Inf``).
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("bucket bounds must be distinct and increasing")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``[(upper bound, observations <= it), ..., (inf, all)]``, as Prometheus shows them."""
        out = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


#: Seconds: gRPC handling time and Redis-write-to-applied lag (0.1 ms .. 10 s).
SECONDS_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
