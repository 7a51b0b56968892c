"""A gateway's routing statistics per model and pool, one report interval at a time.

Sans-I/O: :class:`RouteStats` is told of every answered attempt (``record``) and hands over
what the interval since the last ``drain`` saw: requests, errors, and the p50/p99 latency of
the successful attempts. Latencies are kept in a bounded reservoir per model and pool (Vitter's
algorithm R, ``max_samples`` each), so percentiles are exact up to that many successes in an
interval and a uniform sample beyond; memory stays bounded under any load. At most
``max_series`` models and pools are kept per interval; attempts beyond are only counted in
:attr:`RouteStats.overflow`. :mod:`gateway.reporting` publishes the result.

Thread-safe (one lock); ``record`` is cheap enough for the request path.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, field

__all__ = ["PoolInterval", "RouteStats", "percentile"]


@dataclass(frozen=True, slots=True)
class PoolInterval:
    """One model in one pool over an interval; latencies None when nothing succeeded."""

    model: str
    pool: str
    requests: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass(slots=True)
class _Series:
    requests: int = 0
    errors: int = 0
    successes: int = 0
    samples: list[float] = field(default_factory=list)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least ``q`` of them at or below it."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = max(math.ceil(q * len(sorted_values)), 1)
    return sorted_values[rank - 1]


class RouteStats:
    """Per-interval counters and latency reservoirs, keyed by (model, pool)."""

    def __init__(
        self,
        *,
        max_samples: int = 512,
        max_series: int = 1024,
        rng: random.Random | None = None,
    ) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be 1 or more, got {max_samples}")
        if max_series < 1:
            raise ValueError(f"max_series must be 1 or more, got {max_series}")
        self.max_samples = max_samples
        self.max_series = max_series
        self.overflow = 0
        """Attempts dropped because their interval already held ``max_series`` series (a total)."""
        self._rng = rng or random.Random()  # noqa: S311  (sampling, not security)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], _Series] = {}

    def record(self, model: str, pool: str, seconds: float, ok: bool) -> None:
        """One attempt at ``pool`` answered after ``seconds``; ``ok`` when it succeeded.

        A failure's time says little about the model (it may never have run), so only
        successes are latency samples; a time that is not a finite number >= 0 is not one.
        """
        key = (model, pool)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                if len(self._series) >= self.max_series:
                    self.overflow += 1
                    return
                series = self._series[key] = _Series()
            series.requests += 1
            if not ok:
                series.errors += 1
                return
            if not (math.isfinite(seconds) and seconds >= 0):
                return
            series.successes += 1
            if len(series.samples) < self.max_samples:
                series.samples.append(seconds)
            else:
                slot = self._rng.randrange(series.successes)
                if slot < self.max_samples:
                    series.samples[slot] = seconds

    def drain(self) -> tuple[PoolInterval, ...]:
        """What was recorded since the last drain, sorted by model then pool; starts afresh."""
        with self._lock:
            taken, self._series = self._series, {}
        intervals = []
        for (model, pool), series in sorted(taken.items()):
            latencies = sorted(series.samples)
            intervals.append(
                PoolInterval(
                    model=model,
                    pool=pool,
                    requests=series.requests,
                    errors=series.errors,
                    p50_ms=percentile(latencies, 0.50) * 1000.0 if latencies else None,
                    p99_ms=percentile(latencies, 0.99) * 1000.0 if latencies else None,
                )
            )
        return tuple(intervals)
