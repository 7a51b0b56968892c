"""The routing decision: deadlines, weights, affinity, failover, ejection, shadow, hedging."""

from __future__ import annotations

import pytest

from edgefabric.errors import DeadlineExceededError, ModelNotFoundError, ModelNotReadyError
from gateway.routing import PoolSnapshot, RoutingPolicy, parse_route, parse_routes

pytestmark = pytest.mark.unit

MS = 0.001


def pool(name: str, latency_ms: float | None = 1.0, **kw: object) -> PoolSnapshot:
    values: dict[str, object] = {
        "name": name,
        "kind": "remote",
        "healthy": True,
        "serves": frozenset({"mlp"}),
        "latency_ewma_s": None if latency_ms is None else latency_ms * MS,
        "in_flight": 0,
        "capacity": 4,
    }
    values.update(kw)
    return PoolSnapshot(**values)  # type: ignore[arg-type]


def test_the_best_prediction_wins_and_the_rest_are_failovers_in_order() -> None:
    plan = RoutingPolicy().choose(
        "mlp", None, [pool("slow", 9), pool("fast", 1), pool("mid", 4)], deadline_s=None, now_s=0
    )
    assert (plan.primary, plan.fallbacks) == ("fast", ("mid", "slow"))


def test_load_counts_in_the_prediction() -> None:
    busy = pool("busy", 1, in_flight=40)
    plan = RoutingPolicy().choose("mlp", None, [busy, pool("idle", 3)], deadline_s=None, now_s=0)
    assert plan.primary == "idle"


def test_pools_that_cannot_meet_the_deadline_are_skipped() -> None:
    plan = RoutingPolicy().choose(
        "mlp", None, [pool("slow", 50), pool("ok", 5)], deadline_s=0.010, now_s=0
    )
    assert (plan.primary, plan.fallbacks) == ("ok", ())
    with pytest.raises(DeadlineExceededError, match=r"within 2\.0 ms: slow predicts 50\.0 ms"):
        RoutingPolicy().choose("mlp", None, [pool("slow", 50)], deadline_s=0.002, now_s=0)


def test_unknown_and_down_models_are_told_apart() -> None:
    with pytest.raises(ModelNotFoundError, match="no pool serves a model named 'cnn'"):
        RoutingPolicy().choose("cnn", None, [pool("a")], deadline_s=None, now_s=0)
    with pytest.raises(ModelNotReadyError, match="every pool serving it is down"):
        RoutingPolicy().choose("mlp", None, [pool("a", healthy=False)], deadline_s=None, now_s=0)


def test_a_canary_split_follows_its_weights_within_two_percent() -> None:
    policy = RoutingPolicy(rng_seed=7)
    route = parse_route("mlp=stable:0.9,canary:0.1")
    pools = [pool("stable"), pool("canary")]
    picks = [
        policy.choose("mlp", route, pools, deadline_s=None, now_s=0).primary for _ in range(5000)
    ]
    assert abs(picks.count("canary") / 5000 - 0.1) <= 0.02


def test_site_affinity_goes_local_first_and_falls_back() -> None:
    pools = [pool("cloud", 1), pool("plant7", 3, site="plant-7")]
    policy = RoutingPolicy()
    assert policy.choose("mlp", None, pools, deadline_s=None, now_s=0, site="plant-7").primary == (
        "plant7"
    )
    down = [pools[0], pool("plant7", 3, site="plant-7", healthy=False)]
    assert policy.choose("mlp", None, down, deadline_s=None, now_s=0, site="plant-7").primary == (
        "cloud"
    )


def test_streams_get_no_failover_and_no_hedge() -> None:
    route = parse_route("mlp=a,b;hedge")
    policy = RoutingPolicy()
    policy.record("a", ok=True, latency_s=0.002, now_s=0, retryable=False)
    plan = policy.choose(
        "mlp", route, [pool("a"), pool("b", 2)], deadline_s=None, now_s=0, stream=True
    )
    assert (plan.fallbacks, plan.hedge_after_s) == ((), None)
    plan = policy.choose("mlp", route, [pool("a"), pool("b", 2)], deadline_s=None, now_s=0)
    assert plan.hedge_after_s == 0.002


def test_failing_pools_are_ejected_then_readmitted_after_a_good_trial() -> None:
    policy = RoutingPolicy(eject_after_failures=3, eject_for_s=5)
    pools = [pool("a", 1), pool("b", 5)]
    for _ in range(3):
        policy.record("a", ok=False, latency_s=0.001, now_s=10, retryable=True)
    assert policy.ejected(11) == {"a"}
    assert policy.choose("mlp", None, pools, deadline_s=None, now_s=11).primary == "b"
    assert policy.choose("mlp", None, pools, deadline_s=None, now_s=16).primary == "a"  # trial
    policy.record("a", ok=False, latency_s=0.001, now_s=16, retryable=True)
    assert policy.ejected(17) == {"a"}  # a failed trial ejects again at once
    assert policy.choose("mlp", None, pools, deadline_s=None, now_s=22).primary == "a"
    policy.record("a", ok=True, latency_s=0.001, now_s=22, retryable=False)
    assert policy.ejected(23) == frozenset()


def test_caller_faults_do_not_eject() -> None:
    policy = RoutingPolicy(eject_after_failures=1)
    policy.record("a", ok=False, latency_s=0.001, now_s=0, retryable=False)
    assert policy.ejected(1) == frozenset()


def test_a_shadow_is_never_primary_nor_a_failover() -> None:
    route = parse_route("mlp=a,b;shadow=b")
    plan = RoutingPolicy().choose(
        "mlp", route, [pool("a", 9), pool("b", 1)], deadline_s=None, now_s=0
    )
    assert (plan.primary, plan.fallbacks, plan.shadow) == ("a", (), "b")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mlp", "expected MODEL=POOL"),
        ("mlp=a:x", "weight 'x' is not a number"),
        ("mlp=a:-1", "is negative"),
        ("mlp=a;colour=blue", "unknown option"),
    ],
)
def test_bad_routes_are_refused_clearly(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_route(text)


def test_a_route_table_has_one_entry_per_model() -> None:
    routes = parse_routes(["mlp=local:0.9,edge:0.1;shadow=triton;affinity=site", "cnn=local"])
    assert routes["mlp"].weights == {"local": 0.9, "edge": 0.1}
    assert (routes["mlp"].shadow, routes["mlp"].affinity_label) == ("triton", "site")
    with pytest.raises(ValueError, match="given twice"):
        parse_routes(["mlp=a", "mlp=b"])
