"""Running statistics of constant size, for runs that never end."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LatencyHistogram"]


class LatencyHistogram:
    """Latency percentiles from a log-spaced histogram: constant memory, ~2 % resolution.

    Bins are spaced by a factor ``1 + resolution`` from ``min_ms`` to ``max_ms``;
    values outside fall into the first or last bin. A percentile is the geometric
    centre of the bin that holds it, so its relative error is below ``resolution / 2``.

    Args:
        min_ms: Smallest latency resolved.
        max_ms: Largest latency resolved.
        resolution: Relative width of a bin.
    """

    def __init__(self, min_ms: float = 0.05, max_ms: float = 600_000.0, resolution: float = 0.02) -> None:
        self._log_min = math.log(min_ms)
        self._log_step = math.log1p(resolution)
        self._counts = np.zeros(math.ceil((math.log(max_ms) - self._log_min) / self._log_step) + 1, np.int64)
        self.count = 0
        self.max_ms = 0.0

    def add(self, latency_ms: float) -> None:
        """Count one latency."""
        if not latency_ms > 0:  # also NaN
            latency_ms = math.exp(self._log_min)
        k = int((math.log(latency_ms) - self._log_min) / self._log_step)
        self._counts[min(max(k, 0), len(self._counts) - 1)] += 1
        self.count += 1
        self.max_ms = max(self.max_ms, latency_ms)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) in milliseconds; 0 when empty."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q / 100.0 * self.count))
        k = int(np.searchsorted(np.cumsum(self._counts), rank))
        return math.exp(self._log_min + (k + 0.5) * self._log_step)
