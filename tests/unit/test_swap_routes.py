"""The routes a version swap steps through, from the route it started with."""

from __future__ import annotations

import pytest

from gateway.routing import Route, final_route, settled_route, swap_route

pytestmark = pytest.mark.unit


def test_without_a_route_the_pools_traffic_moves_and_other_pools_only_fail_over() -> None:
    assert swap_route("mlp", None, "local", ["1"], "2", fraction=0.25) == Route(
        "mlp", (), {"local@2": 0.25, "local@1": 0.75}
    )
    assert settled_route("mlp", None, "local", "2") == Route("mlp", (), {"local@2": 1.0})
    assert final_route(None, "local", "2") is None


def test_the_pools_weight_is_split_and_other_targets_keep_theirs() -> None:
    original = Route("mlp", ("a", "edge"), {"a": 0.8, "edge": 0.2}, shadow="cand", hedge=True)
    half = swap_route("mlp", original, "a", ["1"], "2", fraction=0.5)
    assert half.pools == ("a@2", "a@1", "edge")
    assert dict(half.weights) == {"edge": 0.2, "a@2": 0.4, "a@1": 0.4}
    assert (half.shadow, half.hedge) == ("cand", True)
    assert final_route(original, "a", "2") == original  # an unpinned pool stays unpinned


def test_a_canary_between_old_versions_converges_on_the_new_one() -> None:
    original = Route("mlp", ("a@1", "a@2"), {"a@1": 0.9, "a@2": 0.1})
    step = swap_route("mlp", original, "a", ["1", "2"], "3", fraction=0.5)
    assert dict(step.weights) == pytest.approx({"a@3": 0.5, "a@1": 0.25, "a@2": 0.25})
    done = swap_route("mlp", original, "a", ["1", "2"], "3", fraction=1.0)
    assert dict(done.weights) == pytest.approx({"a@3": 1.0, "a@1": 0.0, "a@2": 0.0})
    assert final_route(original, "a", "3") == Route("mlp", ("a@3",), {"a@3": 1.0})


def test_a_swap_to_the_version_already_served_moves_everything_at_once() -> None:
    assert swap_route("mlp", None, "a", [], "2", fraction=0.25).weights == {"a@2": 1.0}


@pytest.mark.parametrize(
    ("original", "pool", "new", "fraction", "message"),
    [
        (Route("mlp", ("b",)), "a", "2", 0.5, "its route does not send to pool 'a'"),
        (None, "a", "2", 1.5, r"fraction must be in \[0, 1\], got 1.5"),
        (None, "a b", "2", 0.5, "expected POOL@VERSION"),
    ],
)
def test_impossible_swaps_are_refused(
    original: Route | None, pool: str, new: str, fraction: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        swap_route("mlp", original, pool, ["1"], new, fraction=fraction)
