"""The routes a zero-downtime version swap steps through: pure functions of the original route.

Swapping model ``M`` on pool ``P`` from its served versions (``old``) to ``new``:

- :func:`swap_route` at ``fraction`` f: every target of the route on ``P`` is replaced by the
  pinned ``P@old`` targets and ``P@new``; their share of the weight (all of it when the route
  has no weights, or there is no route) goes ``1 - f`` to the old versions, evenly, and ``f``
  to ``P@new``. Other targets keep their weights; when the original route had none, they take
  requests only as failovers while the swap runs.
- :func:`settled_route`: ``P@new`` alone where ``P``'s targets were, for the moments between
  the last shift and the old versions' unload.
- :func:`final_route`: the original route once only ``new`` is served: a pinned ``P@old``
  becomes ``P@new`` (weights of several add up), an unpinned ``P`` stays as it was; no route
  stays no route.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.routing._types import NAME_PATTERN, Route, split_target

__all__ = ["final_route", "settled_route", "swap_route"]


def swap_route(
    model: str,
    original: Route | None,
    pool: str,
    old: Sequence[str],
    new: str,
    *,
    fraction: float,
) -> Route:
    """The route with ``fraction`` of ``pool``'s share on ``pool@new``, the rest on ``old``."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"swap fraction must be in [0, 1], got {fraction}")
    _check(model, pool, new)
    old_targets = [f"{pool}@{v}" for v in old if v != new]
    shares = {f"{pool}@{new}": fraction}
    for target in old_targets:
        shares[target] = (1 - fraction) / len(old_targets)
    if not old_targets:
        shares[f"{pool}@{new}"] = 1.0
    return _replace(model, original, pool, shares)


def settled_route(model: str, original: Route | None, pool: str, new: str) -> Route:
    """Every request for ``pool`` on ``pool@new``; the old versions get none."""
    _check(model, pool, new)
    return _replace(model, original, pool, {f"{pool}@{new}": 1.0})


def final_route(original: Route | None, pool: str, new: str) -> Route | None:
    """The original route, its pinned targets on ``pool`` moved to ``new``."""
    if original is None:
        return None
    moved = f"{pool}@{new}"

    def rename(target: str) -> str:
        name, version = split_target(target)
        return moved if name == pool and version else target

    pools = tuple(dict.fromkeys(rename(t) for t in original.pools))
    weights: dict[str, float] = {}
    for target, weight in original.weights.items():
        weights[rename(target)] = weights.get(rename(target), 0.0) + weight
    shadow = original.shadow if original.shadow is None else rename(original.shadow)
    return Route(
        original.model,
        pools,
        weights,
        None if shadow in pools or shadow in weights else shadow,
        original.affinity_label,
        original.hedge,
        original.hedge_quantile,
        original.hedge_after_ms,
    )


def _check(model: str, pool: str, new: str) -> None:
    if not NAME_PATTERN.fullmatch(pool) or not NAME_PATTERN.fullmatch(new):
        raise ValueError(
            f"swap of {model!r}: expected POOL@VERSION (letters, digits, '_', '.', '-'), "
            f"got {pool!r}@{new!r}"
        )


def _replace(model: str, original: Route | None, pool: str, shares: dict[str, float]) -> Route:
    """``original`` with ``pool``'s targets replaced by ``shares`` (fractions of its weight)."""
    base = original or Route(model)
    ours = [t for t in base.targets() if split_target(t)[0] == pool]
    if base.pools and not ours:
        raise ValueError(
            f"swap of {model!r}: its route does not send to pool {pool!r} "
            f"(it names {', '.join(base.targets())}); add the pool to the route first"
        )
    weighted = bool(base.weights)
    total = sum(base.weights.get(t, 0.0) for t in ours) if weighted else 1.0
    weights = {t: w for t, w in base.weights.items() if t not in ours}
    if total > 0:
        weights.update({t: total * share for t, share in shares.items()})
    pools: list[str] = []
    for target in base.pools:
        if target not in ours:
            pools.append(target)
        elif not any(split_target(p)[0] == pool for p in pools):
            pools.extend(shares)  # where the pool's first target was
    shadow = base.shadow
    if shadow is not None and split_target(shadow)[0] == pool:
        shadow = None  # a pool being swapped does not also shadow itself
    return Route(
        model,
        tuple(pools),
        weights,
        shadow,
        base.affinity_label,
        base.hedge,
        base.hedge_quantile,
        base.hedge_after_ms,
    )
