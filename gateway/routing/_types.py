"""What the routing decision reads: pool snapshots, routes and their targets.

A *target* is where a request can be sent: ``POOL`` (whatever version the pool serves, or the
one the client asked for) or ``POOL@VERSION`` (that version on that pool). Route pools,
weights and the shadow are all targets, so one syntax covers splits between pools
(``local: 0.9, edge-plant7: 0.1``) and between versions of a model (``local@1: 0.9,
local@2: 0.1``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = ["NAME_PATTERN", "PoolKind", "PoolSnapshot", "Route", "split_target"]

PoolKind = Literal["local", "remote", "edge"]
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.\-]+")
"""Pool names and versions: letters, digits, ``_``, ``.`` and ``-``."""


def split_target(target: str) -> tuple[str, str]:
    """``"pool@3"`` -> ``("pool", "3")``; ``"pool"`` -> ``("pool", "")``."""
    pool, _, version = target.partition("@")
    return pool, version


def _check_target(what: str, target: str) -> None:
    pool, sep, version = target.partition("@")
    if not NAME_PATTERN.fullmatch(pool) or (sep and not NAME_PATTERN.fullmatch(version)):
        raise ValueError(
            f"{what} {target!r}: expected POOL or POOL@VERSION (letters, digits, '_', '.', '-')"
        )


def _check_hedge(where: str, hedge: bool, quantile: float | None, after_ms: float | None) -> None:
    if (quantile is not None or after_ms is not None) and not hedge:
        raise ValueError(f"{where}: hedge_quantile and hedge_after_ms need hedge=True")
    if quantile is not None and after_ms is not None:
        raise ValueError(f"{where}: hedge after a quantile or after fixed ms, not both")
    if quantile is not None and not 0 < quantile <= 1:
        raise ValueError(f"{where}: hedge quantile must be in (0, 1], got {quantile}")
    if after_ms is not None and not (math.isfinite(after_ms) and after_ms > 0):
        raise ValueError(f"{where}: hedge delay must be > 0 ms, got {after_ms}")


@dataclass(frozen=True, kw_only=True)
class PoolSnapshot:
    """One pool as the I/O layer reports it when a request is routed."""

    name: str
    kind: PoolKind
    healthy: bool
    serves: frozenset[str]
    """Names of the models the pool reports it can serve."""
    latency_ewma_s: float | None
    """Smoothed seconds per request; ``None`` before the first answer (a prior is used)."""
    in_flight: int
    capacity: int
    """Concurrent requests the pool handles without queueing (at least 1)."""
    queue_depth: int = 0
    site: str = ""

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(
                f"pool {self.name!r}: capacity must be at least 1, got {self.capacity}"
            )
        if self.in_flight < 0 or self.queue_depth < 0:
            raise ValueError(f"pool {self.name!r}: in_flight and queue_depth cannot be negative")

    def predicted_s(self, prior_s: float) -> float:
        """Seconds one more request is expected to take here: latency scaled by load."""
        base = prior_s if self.latency_ewma_s is None else self.latency_ewma_s
        return base * (1 + (self.in_flight + self.queue_depth) / self.capacity)


@dataclass(frozen=True)
class Route:
    """How one model is routed.

    ``pools``: the targets allowed, in preference order (which breaks ties between equal
    predictions); empty allows every pool that serves the model. ``weights``: relative
    weights (any positive numbers) splitting primaries between targets; targets without a
    weight are failovers only. ``shadow``: a target that gets a copy of each request; its
    answer is dropped. ``affinity_label``: the request parameter naming the client's site;
    pools at that site go first. ``hedge``: send a second copy to the first failover when the
    primary has not answered after its recent latency quantile (``hedge_quantile``, else the
    policy's, p95 by default) or after a fixed ``hedge_after_ms``; never for streams.
    """

    model: str
    pools: tuple[str, ...] = ()
    weights: Mapping[str, float] = field(default_factory=dict, hash=False)
    shadow: str | None = None
    affinity_label: str | None = None
    hedge: bool = False
    hedge_quantile: float | None = None
    hedge_after_ms: float | None = None

    def __post_init__(self) -> None:
        where = f"route for {self.model!r}"
        _check_hedge(where, self.hedge, self.hedge_quantile, self.hedge_after_ms)
        if not self.model:
            raise ValueError("route: the model name is empty")
        for target in (*self.pools, *self.weights, *([self.shadow] if self.shadow else [])):
            _check_target(f"{where}: target", target)
        if len(set(self.pools)) != len(self.pools):
            raise ValueError(f"{where}: a pool is listed twice in {list(self.pools)}")
        for target, weight in self.weights.items():
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"{where}: weight of {target!r} must be >= 0, got {weight}")
            if self.pools and target not in self.pools:
                raise ValueError(f"{where}: weighted target {target!r} is not in its pools")
        if self.weights and not any(self.weights.values()):
            raise ValueError(f"{where}: weights are all zero; give at least one a share")
        if self.shadow is not None and (self.shadow in self.pools or self.shadow in self.weights):
            raise ValueError(f"{where}: shadow {self.shadow!r} also serves; a shadow only watches")
        if self.affinity_label is not None and not NAME_PATTERN.fullmatch(self.affinity_label):
            raise ValueError(f"{where}: affinity label {self.affinity_label!r} is not a name")
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))

    def targets(self) -> tuple[str, ...]:
        """The explicitly named serving targets: pools, then weighted ones not among them."""
        return (*self.pools, *(t for t in self.weights if t not in self.pools))
