"""A fixed-bucket histogram cheap enough for per-task hot paths."""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["LATENCY_BOUNDS", "Histogram"]

#: Seconds, from 100 µs to 60 s: firing lateness (a task taken over after a
#: crash may start many seconds late), forward and probe round trips.
LATENCY_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0)


class Histogram:
    """Counts of observations per upper bound (``le``), plus their sum.

    ``observe`` is a bisect and two additions, no lock: it is called from the
    event loop thread only. Exported by :mod:`gobucket_py.observe.metrics`.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BOUNDS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one value (seconds)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """Number of observations."""
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1), interpolated within its bucket as
        Prometheus' ``histogram_quantile`` does; None with no observations.
        Beyond the last bound it is that bound (a lower bound)."""
        total = sum(self.counts)
        if not total:
            return None
        rank, seen, lower = q * total, 0, 0.0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            if count and seen + count >= rank:
                return lower + (bound - lower) * (rank - seen) / count
            seen += count
            lower = bound
        return self.bounds[-1]

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count of values <= le), ..., ("+Inf", total)]`` as Prometheus wants."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out
