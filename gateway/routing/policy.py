"""Which target answers a request: a pure decision from pool snapshots, the route and ``now``.

For one request:

1. *Candidates*: the route's targets (every pool that serves the model when the route names
   none; weighted targets are added), minus the shadow and, when the client asked for a
   version, targets pinned to another version.
2. *Up*: healthy, reporting the model, and not ejected (see :mod:`gateway.routing._health`).
3. *Fit*: predicted completion, the pool's latency EWMA (``prior_latency_s`` before it has
   one) times ``1 + (in_flight + queue_depth) / capacity``, within the remaining deadline.
4. *Primary*: with affinity, only fitting targets at the request's site compete when there
   are any. Among them a weighted draw (seeded RNG) when some carry a weight, else the best
   prediction (ties: the route's order, then the name).
5. *Failovers*: the other fitting targets, site first then best predicted, other pools
   before other versions on the primary's pool. None for streams: a stream is not retried.
6. *Hedge*: with ``route.hedge``, after the primary's recent p95 (the route's quantile, or
   its fixed delay), when the first failover could still finish in time. Never for streams.

Errors: :class:`ModelNotFoundError` when nothing serves the model,
:class:`ModelNotReadyError` when everything that serves it is down, and
:class:`DeadlineExceededError` listing each prediction when nothing fits.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgefabric.errors import DeadlineExceededError, ModelNotFoundError, ModelNotReadyError
from gateway.routing._health import Ejector, LatencyWindow
from gateway.routing._types import PoolSnapshot, Route, split_target

__all__ = ["PoolSnapshot", "Route", "RoutingPlan", "RoutingPolicy"]


@dataclass(frozen=True)
class RoutingPlan:
    """Where one request goes; every entry is a target (``POOL`` or ``POOL@VERSION``)."""

    primary: str
    fallbacks: tuple[str, ...] = ()
    """Failover order after the primary, for retryable failures only."""
    shadow: str | None = None
    """Gets a copy; its answer is compared, never returned."""
    hedge_after_s: float | None = None
    """Send a copy to ``fallbacks[0]`` if the primary has not answered by then."""


class RoutingPolicy:
    """Chooses targets and learns from outcomes; no sockets, no clock of its own."""

    def __init__(
        self,
        *,
        rng_seed: int | None = None,
        eject_after_failures: int = 3,
        eject_for_s: float = 5.0,
        hedge_quantile: float = 0.95,
        prior_latency_s: float = 0.005,
        latency_window: int = 256,
        trial_timeout_s: float | None = None,
    ) -> None:
        if eject_after_failures < 1:
            raise ValueError(f"eject_after_failures must be >= 1, got {eject_after_failures}")
        if not eject_for_s > 0 or not prior_latency_s > 0:
            raise ValueError("eject_for_s and prior_latency_s must be positive seconds")
        if not 0 < hedge_quantile <= 1:
            raise ValueError(f"hedge_quantile must be in (0, 1], got {hedge_quantile}")
        if latency_window < 1:
            raise ValueError(f"latency_window must be >= 1 sample, got {latency_window}")
        self._rng = random.Random(rng_seed)  # noqa: S311  (a traffic split, not a secret)
        self._hedge_quantile = hedge_quantile
        self._prior_s = prior_latency_s
        self._window = latency_window
        self._ejector = Ejector(
            eject_after_failures,
            eject_for_s,
            eject_for_s if trial_timeout_s is None else trial_timeout_s,
        )
        self._latencies: dict[str, LatencyWindow] = {}

    def choose(
        self,
        model: str,
        route: Route | None,
        pools: Sequence[PoolSnapshot],
        *,
        deadline_s: float | None,
        now_s: float,
        site: str = "",
        version: str = "",
        stream: bool = False,
    ) -> RoutingPlan:
        """The plan for one request; reserves the trial of any half-open target it names."""
        by_name = {p.name: p for p in pools}
        if len(by_name) != len(pools):
            raise ValueError(f"a pool is reported twice: {sorted(p.name for p in pools)}")
        remaining = None if deadline_s is None else deadline_s - now_s
        if remaining is not None and remaining <= 0:
            raise DeadlineExceededError(
                f"model {model!r}: the deadline passed {-remaining * 1e3:.1f} ms before routing"
            )
        serving = self._serving(model, route, by_name, version)
        predicted = self._up(model, serving, by_name, now_s)
        fitting = _fitting(model, predicted, remaining)
        explicit = route.targets() if route else ()
        at_site = {
            t: bool(route and route.affinity_label and site)
            and by_name[split_target(t)[0]].site == site
            for t in fitting
        }
        ranked = sorted(
            fitting,
            key=lambda t: (
                not at_site[t],
                predicted[t],
                explicit.index(t) if t in explicit else len(explicit),
                t,
            ),
        )
        group = [t for t in ranked if at_site[t]] or ranked
        weights = route.weights if route else {}
        primary = self._draw(group, weights)
        fallbacks: tuple[str, ...] = ()
        if not stream:
            same_pool = split_target(primary)[0]
            others = [t for t in ranked if t != primary]
            fallbacks = tuple(sorted(others, key=lambda t: split_target(t)[0] == same_pool))
        for target in (primary, *fallbacks):
            self._ejector.reserve_trial(target, now_s)
            self._ejector.reserve_trial(split_target(target)[0], now_s)
        return RoutingPlan(
            primary,
            fallbacks,
            self._shadow(model, route, by_name, now_s),
            self._hedge(route, primary, fallbacks, predicted, remaining),
        )

    def record(
        self, pool: str, *, ok: bool, latency_s: float, now_s: float, retryable: bool
    ) -> None:
        """Learn from one outcome of target ``pool``.

        ``retryable``: the failure says the target is unreachable or not ready (it counts
        towards ejection); ``False`` for the caller's faults, which count for nothing.
        Latencies of successes feed :meth:`latency_quantile`.
        """
        if latency_s < 0:
            raise ValueError(f"latency_s cannot be negative, got {latency_s}")
        self._ejector.record(pool, ok=ok, retryable=retryable, now_s=now_s)
        if ok:
            self._latencies.setdefault(pool, LatencyWindow(self._window)).add(latency_s)

    def ejected(self, now_s: float) -> frozenset[str]:
        """Targets sitting out an ejection at ``now_s`` (half-open ones are back)."""
        return self._ejector.ejected(now_s)

    def latency_quantile(self, pool: str, quantile: float | None = None) -> float | None:
        """The target's ``quantile`` (default ``hedge_quantile``) over its recent successes;
        ``None`` before any."""
        window = self._latencies.get(pool)
        q = self._hedge_quantile if quantile is None else quantile
        return None if window is None else window.quantile(q)

    # ------------------------------------------------------------------ internals

    def _serving(
        self, model: str, route: Route | None, by_name: Mapping[str, PoolSnapshot], version: str
    ) -> list[str]:
        """Targets that serve the model, up or down (an unhealthy named target counts)."""
        explicit = route.targets() if route else ()
        found = explicit
        if not (route and route.pools):
            found += tuple(n for n, p in by_name.items() if model in p.serves and n not in found)
        if route and route.shadow:
            shadow_pool, shadow_version = split_target(route.shadow)
            found = tuple(
                t for t in found if t != route.shadow and (shadow_version or t != shadow_pool)
            )
        if version:
            pinned = [t for t in found if split_target(t)[1] in ("", version)]
            if found and not pinned:
                raise ModelNotFoundError(
                    f"model {model!r} version {version!r} is not routed; its route sends to "
                    f"{', '.join(found)} (ask for one of those versions, or none)"
                )
            found = tuple(pinned)
        serving = [
            t
            for t in found
            if (pool := by_name.get(split_target(t)[0])) is not None
            and (model in pool.serves or (t in explicit and not pool.healthy))
        ]
        if not serving:
            known = f"; its route names {', '.join(explicit)}" if explicit else ""
            raise ModelNotFoundError(f"no pool serves a model named {model!r}{known}")
        return serving

    def _up(
        self, model: str, serving: Sequence[str], by_name: Mapping[str, PoolSnapshot], now_s: float
    ) -> dict[str, float]:
        """Predicted seconds of every serving target that is up; raises when none is."""
        down = {t: self._down_reason(t, model, by_name, now_s) for t in serving}
        if all(down.values()):
            reasons = ", ".join(f"{t} {reason}" for t, reason in down.items())
            raise ModelNotReadyError(f"model {model!r}: no pool that serves it is up ({reasons})")
        return {
            t: by_name[split_target(t)[0]].predicted_s(self._prior_s)
            for t, reason in down.items()
            if reason is None
        }

    def _down_reason(
        self, target: str, model: str, by_name: Mapping[str, PoolSnapshot], now_s: float
    ) -> str | None:
        name = split_target(target)[0]
        pool = by_name[name]
        if not pool.healthy:
            return "is unhealthy"
        if model not in pool.serves:
            return "does not report the model"
        reason = self._ejector.unavailable_reason(target, now_s)
        return reason or self._ejector.unavailable_reason(name, now_s)

    def _draw(self, ranked: Sequence[str], weights: Mapping[str, float]) -> str:
        """A weighted draw among weighted targets, else the first (best) one."""
        weighted = [(t, w) for t in ranked if (w := weights.get(t, 0.0)) > 0]
        if not weighted:
            return ranked[0]
        point = self._rng.random() * sum(w for _, w in weighted)
        for target, weight in weighted:
            point -= weight
            if point < 0:
                return target
        return weighted[-1][0]  # float rounding left a sliver at the end

    def _shadow(
        self, model: str, route: Route | None, by_name: Mapping[str, PoolSnapshot], now_s: float
    ) -> str | None:
        if route is None or route.shadow is None:
            return None
        name = split_target(route.shadow)[0]
        pool = by_name.get(name)
        if pool is None or not pool.healthy or model not in pool.serves:
            return None
        ejected = self._ejector.ejected(now_s)
        return None if route.shadow in ejected or name in ejected else route.shadow

    def _hedge(
        self,
        route: Route | None,
        primary: str,
        fallbacks: tuple[str, ...],
        predicted: Mapping[str, float],
        remaining: float | None,
    ) -> float | None:
        if route is None or not route.hedge or not fallbacks:
            return None
        after = (
            route.hedge_after_ms / 1e3
            if route.hedge_after_ms is not None
            else self.latency_quantile(primary, route.hedge_quantile)
        )
        if after is None or (remaining is not None and after + predicted[fallbacks[0]] > remaining):
            return None
        return after


def _fitting(model: str, predicted: Mapping[str, float], remaining_s: float | None) -> list[str]:
    """Targets predicted to finish in time; raises, listing every prediction, when none is."""
    fitting = [t for t, s in predicted.items() if remaining_s is None or s <= remaining_s]
    if fitting:
        return fitting
    listed = ", ".join(
        f"{t} predicts {s * 1e3:.1f} ms" for t, s in sorted(predicted.items(), key=lambda i: i[1])
    )
    raise DeadlineExceededError(
        f"no pool can answer model {model!r} within {(remaining_s or 0) * 1e3:.1f} ms: {listed}"
    )
