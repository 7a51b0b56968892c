"""Which pool answers a request: a pure decision from pool snapshots and the deadline.

Predicted completion of a pool = its latency EWMA (a prior for pools with none yet) scaled by
its load, ``(1 + (in_flight + queue_depth) / capacity)``. Pools that are unhealthy, ejected,
do not serve the model, or cannot finish before the deadline are skipped. With route weights
the primary is drawn at random by weight among the pools that fit (canary/A-B); otherwise
the best prediction wins, pools at the request's site first. The rest, best first, are the
failover order (none for streams: a stream is not retried). Consecutive retryable failures
eject a pool for a while; after that one trial request decides whether it is re-admitted.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edgefabric.errors import DeadlineExceededError, ModelNotFoundError, ModelNotReadyError

__all__ = ["PoolSnapshot", "Route", "RoutingPlan", "RoutingPolicy"]

UNKNOWN_LATENCY_S = 0.005
_WINDOW = 256


@dataclass(frozen=True)
class PoolSnapshot:
    """A pool as the I/O layer sees it at decision time."""

    name: str
    kind: str
    healthy: bool
    serves: frozenset[str]
    latency_ewma_s: float | None
    in_flight: int
    capacity: int = 1
    queue_depth: int = 0
    site: str = ""

    def predicted_s(self) -> float:
        """Expected seconds to answer one more request."""
        base = UNKNOWN_LATENCY_S if self.latency_ewma_s is None else self.latency_ewma_s
        return base * (1 + (self.in_flight + self.queue_depth) / max(self.capacity, 1))


@dataclass(frozen=True)
class Route:
    """One model's route: allowed pools, weights (canary split), shadow, site affinity."""

    model: str
    pools: tuple[str, ...] = ()
    weights: Mapping[str, float] = field(default_factory=dict)
    shadow: str | None = None
    affinity_label: str | None = None
    hedge: bool = False


@dataclass(frozen=True)
class RoutingPlan:
    """Where to send: the primary, then failovers in order; a shadow copy; when to hedge."""

    primary: str
    fallbacks: tuple[str, ...] = ()
    shadow: str | None = None
    hedge_after_s: float | None = None


@dataclass
class _Health:
    failures: int = 0
    ejected_until_s: float = 0.0
    trial: bool = False
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))


class RoutingPolicy:
    """Chooses pools and learns from outcomes; holds no sockets and no clock of its own."""

    def __init__(
        self,
        *,
        rng_seed: int | None = None,
        eject_after_failures: int = 3,
        eject_for_s: float = 5.0,
        hedge_quantile: float = 0.95,
    ) -> None:
        self._rng = random.Random(rng_seed)  # noqa: S311  (traffic split, not security)
        self._eject_after = eject_after_failures
        self._eject_for_s = eject_for_s
        self._hedge_quantile = hedge_quantile
        self._health: dict[str, _Health] = {}

    def choose(
        self,
        model: str,
        route: Route | None,
        pools: Sequence[PoolSnapshot],
        *,
        deadline_s: float | None,
        now_s: float,
        site: str = "",
        stream: bool = False,
    ) -> RoutingPlan:
        """The plan for one request (errors say why no pool can take it)."""
        allowed = set(route.pools) if route and route.pools else None
        shadow = route.shadow if route else None
        serving = [
            p
            for p in pools
            if model in p.serves and (allowed is None or p.name in allowed) and p.name != shadow
        ]
        if not serving:
            raise ModelNotFoundError(f"no pool serves a model named {model!r}")
        up = [p for p in serving if p.healthy and self._admitted(p.name, now_s)]
        if not up:
            names = ", ".join(p.name for p in serving)
            raise ModelNotReadyError(f"model {model!r}: every pool serving it is down ({names})")
        remaining = None if deadline_s is None else deadline_s - now_s
        fitting = [p for p in up if remaining is None or p.predicted_s() <= remaining]
        if not fitting:
            predictions = ", ".join(f"{p.name} predicts {p.predicted_s() * 1e3:.1f} ms" for p in up)
            raise DeadlineExceededError(
                f"no pool can answer model {model!r} within {max(remaining or 0, 0) * 1e3:.1f} "
                f"ms: {predictions}"
            )
        ranked = sorted(fitting, key=lambda p: (not (site and p.site == site), p.predicted_s()))
        primary = self._weighted(ranked, route) if route and route.weights else ranked[0]
        fallbacks = () if stream else tuple(p.name for p in ranked if p is not primary)
        hedge = None
        if route and route.hedge and fallbacks and not stream:
            hedge = self.latency_quantile(primary.name)
        return RoutingPlan(primary.name, fallbacks, shadow, hedge)

    def record(
        self, pool: str, *, ok: bool, latency_s: float, now_s: float, retryable: bool
    ) -> None:
        """Learn from one outcome: latencies for hedging, failures for ejection."""
        health = self._health.setdefault(pool, _Health())
        if ok:
            health.failures, health.trial, health.ejected_until_s = 0, False, 0.0
            health.latencies.append(latency_s)
            return
        if not retryable:
            return
        health.failures += 1
        if health.trial or health.failures >= self._eject_after:
            health.ejected_until_s = now_s + self._eject_for_s
            health.trial = False

    def ejected(self, now_s: float) -> frozenset[str]:
        """Pools sitting out an ejection now."""
        return frozenset(n for n, h in self._health.items() if h.ejected_until_s > now_s)

    def latency_quantile(self, pool: str) -> float | None:
        """The pool's recent ``hedge_quantile`` latency (None before any success)."""
        latencies = sorted(self._health.get(pool, _Health()).latencies)
        if not latencies:
            return None
        index = min(int(self._hedge_quantile * len(latencies)), len(latencies) - 1)
        return latencies[index]

    def _admitted(self, pool: str, now_s: float) -> bool:
        health = self._health.get(pool)
        if health is None or health.ejected_until_s == 0.0:
            return True
        if now_s < health.ejected_until_s:
            return False
        if not health.trial:  # half-open: one trial request decides
            health.trial = True
        return True

    def _weighted(self, ranked: Sequence[PoolSnapshot], route: Route) -> PoolSnapshot:
        weighted = [(p, route.weights.get(p.name, 0.0)) for p in ranked]
        total = sum(w for _, w in weighted)
        if total <= 0:
            return ranked[0]
        pick = self._rng.uniform(0, total)
        for pool, weight in weighted:
            pick -= weight
            if pick <= 0 and weight > 0:
                return pool
        return next(p for p, w in reversed(weighted) if w > 0)
