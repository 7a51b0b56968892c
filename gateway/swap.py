"""Zero-downtime version swap of one model on one pool, driven through the router.

1. *load*: the pool serves the old versions and the new one (a load with a specific version
   policy; the old versions keep serving throughout).
2. *ready*: wait until the pool says the new version is ready.
3. *shift*: ``steps`` route changes, ``step_s`` apart, move the pool's share of the traffic
   from ``POOL@old`` to ``POOL@new`` (:func:`gateway.routing.swap_route`).
4. *drain*: only ``POOL@new`` takes requests; wait for those still on the old versions.
5. *unload*: the pool serves the new version only; the route returns to its original form
   (:func:`gateway.routing.final_route`).

A failure before the shift leaves the route as it was; a failure later puts the original
route back (the old versions are still loaded until step 5). Requests never see a version
that is not loaded: the route only names versions the pool reported ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from edgefabric.errors import (
    ConflictError,
    InvalidInputError,
    ModelLoadError,
    ModelNotReadyError,
)
from gateway.router import Router
from gateway.routing import final_route, settled_route, split_target, swap_route

__all__ = ["SwapPlan", "SwapProgress", "swap_version"]

log = logging.getLogger(__name__)

_POLL_S = 0.05


@dataclass(frozen=True)
class SwapPlan:
    """What to swap, and how gradually."""

    model: str
    target: str
    """``POOL@VERSION``: the version to serve from that pool."""
    steps: int = 4
    step_s: float = 1.0
    ready_timeout_s: float = 60.0
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        pool, version = split_target(self.target)
        if not self.model:
            raise InvalidInputError("swap: the model name is empty")
        if not pool or not version:
            raise InvalidInputError(
                f"swap of {self.model!r}: expected --to POOL@VERSION (e.g. local@2), "
                f"got {self.target!r}"
            )
        if not 1 <= self.steps <= 100:
            raise InvalidInputError(f"swap: steps must be 1 to 100, got {self.steps}")
        if not 0 <= self.step_s <= 3600:
            raise InvalidInputError(f"swap: step_s must be 0 to 3600 seconds, got {self.step_s}")
        if self.ready_timeout_s <= 0 or self.drain_timeout_s <= 0:
            raise InvalidInputError("swap: the ready and drain timeouts must be > 0 seconds")


@dataclass(frozen=True)
class SwapProgress:
    """One phase reached: ``load``, ``ready``, ``shift``, ``drain``, ``unload`` or ``done``."""

    phase: str
    new_share: float
    """Fraction of the pool's traffic on the new version from now on."""
    detail: str


_running: set[tuple[int, str]] = set()


async def swap_version(router: Router, plan: SwapPlan) -> AsyncIterator[SwapProgress]:
    """Run the swap, yielding each phase as it is reached; raises a project error on failure."""
    key = (id(router), plan.model)
    if key in _running:
        raise ConflictError(f"a swap of {plan.model!r} is already running; wait for it to end")
    _running.add(key)
    try:
        async for progress in _swap(router, plan):
            yield progress
    finally:
        _running.discard(key)


async def _swap(router: Router, plan: SwapPlan) -> AsyncIterator[SwapProgress]:
    model = plan.model
    pool, new = split_target(plan.target)
    before = await router.served_versions(pool, model)
    if not before:
        raise ModelNotReadyError(
            f"pool {pool!r} does not serve {model!r} now; a swap moves traffic between "
            "versions of a model the pool already serves"
        )
    old = [v for v in before if v != new]
    original = router.route(model)
    try:
        swap_route(model, original, pool, old, new, fraction=0.0)  # a route without the pool?
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    await router.load_versions(pool, model, [*old, new])
    if new not in await router.served_versions(pool, model):
        raise ModelLoadError(
            f"pool {pool!r} has no version {new} of {model!r} to load (it serves "
            f"{', '.join(await router.served_versions(pool, model)) or 'none'}); "
            "put the version into the pool's model repository first"
        )
    yield SwapProgress("load", 0.0, f"{pool} serves {model} versions {', '.join([*old, new])}")
    await _until_ready(router, pool, model, new, plan.ready_timeout_s)
    yield SwapProgress("ready", 0.0, f"{pool}@{new} is ready")
    try:
        for step in range(1, plan.steps + 1):
            fraction = step / plan.steps
            router.set_route(model, swap_route(model, original, pool, old, new, fraction=fraction))
            yield SwapProgress("shift", fraction, f"{fraction:.0%} of {pool}'s traffic on {new}")
            if step < plan.steps:
                await asyncio.sleep(plan.step_s)
        router.set_route(model, settled_route(model, original, pool, new))
        await _drained(router, [f"{pool}@{v}" for v in old], plan.drain_timeout_s)
        yield SwapProgress("drain", 1.0, f"no request left on {pool}@{', '.join(old) or '-'}")
        await router.load_versions(pool, model, [new])
    except BaseException:
        router.set_route(model, original)
        log.warning("swap of %s to %s failed; its route is back as it was", model, plan.target)
        raise
    router.set_route(model, final_route(original, pool, new))
    yield SwapProgress("unload", 1.0, f"{pool} serves {model} version {new} only")
    log.info("swap of %s to %s done (old versions %s)", model, plan.target, old)
    yield SwapProgress("done", 1.0, f"{model} now served by {plan.target}")


async def _until_ready(
    router: Router, pool: str, model: str, version: str, timeout_s: float
) -> None:
    """Ask the pool until the version is ready (the pool offers no notification)."""
    try:
        async with asyncio.timeout(timeout_s):
            while not await router.version_ready(pool, model, version):  # noqa: ASYNC110
                await asyncio.sleep(_POLL_S)  # the pool has no readiness notification: ask
    except TimeoutError:
        raise ModelNotReadyError(
            f"{pool}@{version} of {model!r} was not ready within {timeout_s:.0f} s; "
            "the route is unchanged (check the pool's log for the load error)"
        ) from None


async def _drained(router: Router, targets: list[str], timeout_s: float) -> None:
    """Wait until no request is in flight on ``targets``."""
    try:
        async with asyncio.timeout(timeout_s):
            await router.wait_idle(targets)
    except TimeoutError:
        raise ModelNotReadyError(
            f"requests on {', '.join(targets)} did not finish within {timeout_s:.0f} s; "
            "the old versions stay loaded and the original route is back"
        ) from None
