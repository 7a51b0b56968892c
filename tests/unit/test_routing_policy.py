"""The routing decision, fed snapshots and ``now``: no loop, no sockets, no sleeps."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefabric.errors import DeadlineExceededError, ModelNotFoundError, ModelNotReadyError
from gateway.routing import PoolSnapshot, Route, RoutingPlan, RoutingPolicy, split_target

pytestmark = pytest.mark.unit

MS = 0.001
T0 = 1_000.0  # any monotonic origin


def pool(name: str, latency_ms: float | None = 1.0, **fields: Any) -> PoolSnapshot:
    values: dict[str, Any] = {
        "name": name,
        "kind": "remote",
        "healthy": True,
        "serves": frozenset({"mlp"}),
        "latency_ewma_s": None if latency_ms is None else latency_ms * MS,
        "in_flight": 0,
        "capacity": 4,
    }
    return PoolSnapshot(**{**values, **fields})


def choose(
    policy: RoutingPolicy,
    pools: list[PoolSnapshot],
    route: Route | None = None,
    *,
    deadline_ms: float | None = None,
    now_s: float = T0,
    **kw: Any,
) -> RoutingPlan:
    deadline = None if deadline_ms is None else now_s + deadline_ms * MS
    return policy.choose("mlp", route, pools, deadline_s=deadline, now_s=now_s, **kw)


def fail(policy: RoutingPolicy, target: str, now_s: float, times: int = 1) -> None:
    for _ in range(times):
        policy.record(target, ok=False, latency_s=0.001, now_s=now_s, retryable=True)


# ------------------------------------------------------------------ prediction and deadline


def test_the_best_prediction_wins_and_the_rest_fail_over_best_first() -> None:
    plan = choose(RoutingPolicy(), [pool("slow", 9), pool("fast", 1), pool("mid", 4)])
    assert plan == RoutingPlan("fast", ("mid", "slow"))


def test_load_scales_the_prediction_by_in_flight_and_queue_over_capacity() -> None:
    # busy: 1 ms * (1 + (6 + 2) / 2) = 5 ms; idle: 3 ms.
    busy = pool("busy", 1, in_flight=6, queue_depth=2, capacity=2)
    assert choose(RoutingPolicy(), [busy, pool("idle", 3)]).primary == "idle"
    with pytest.raises(DeadlineExceededError, match=r"busy predicts 5\.0 ms"):
        choose(RoutingPolicy(), [busy], deadline_ms=4)


def test_a_pool_without_measurements_is_predicted_from_the_prior() -> None:
    pools = [pool("new", None), pool("known", 3)]
    assert choose(RoutingPolicy(prior_latency_s=0.005), pools).primary == "known"
    assert choose(RoutingPolicy(prior_latency_s=0.001), pools).primary == "new"


def test_pools_that_cannot_meet_the_remaining_deadline_are_skipped() -> None:
    plan = choose(
        RoutingPolicy(), [pool("slow", 50), pool("ok", 5), pool("ok2", 8)], deadline_ms=10
    )
    assert plan == RoutingPlan("ok", ("ok2",))


def test_when_nothing_fits_the_error_lists_every_prediction_best_first() -> None:
    pools = [pool("edge", 9), pool("local", 5.1)]
    with pytest.raises(
        DeadlineExceededError,
        match=r"^no pool can answer model 'mlp' within 3\.2 ms: "
        r"local predicts 5\.1 ms, edge predicts 9\.0 ms$",
    ):
        choose(RoutingPolicy(), pools, deadline_ms=3.2)


def test_a_deadline_already_past_says_so() -> None:
    with pytest.raises(DeadlineExceededError, match=r"deadline passed 2\.0 ms before routing"):
        choose(RoutingPolicy(), [pool("a")], deadline_ms=-2)


def test_unknown_down_and_misrouted_models_are_told_apart() -> None:
    policy = RoutingPolicy()
    with pytest.raises(ModelNotFoundError, match="no pool serves a model named 'cnn'"):
        policy.choose("cnn", None, [pool("a")], deadline_s=None, now_s=T0)
    with pytest.raises(ModelNotReadyError, match=r"no pool that serves it is up \(a is unhealthy"):
        choose(policy, [pool("a", healthy=False)])
    with pytest.raises(ModelNotFoundError, match="its route names x, y"):
        choose(policy, [pool("a")], Route("mlp", ("x", "y")))


def test_a_routed_pool_that_is_down_and_reports_nothing_is_not_ready_not_unknown() -> None:
    lost = pool("a", healthy=False, serves=frozenset())
    with pytest.raises(ModelNotReadyError, match="a is unhealthy"):
        choose(RoutingPolicy(), [lost], Route("mlp", ("a",)))


def test_a_route_restricts_pools_and_its_order_breaks_ties() -> None:
    pools = [pool("a", 2), pool("b", 2), pool("c", 1)]
    assert choose(RoutingPolicy(), pools, Route("mlp", ("b", "a"))) == RoutingPlan("b", ("a",))


# ------------------------------------------------------------------ weights


def test_a_canary_split_follows_its_weights_within_two_percent() -> None:
    policy = RoutingPolicy(rng_seed=7)
    route = Route("mlp", ("local", "edge-plant7"), {"local": 0.9, "edge-plant7": 0.1})
    pools = [pool("local", 1), pool("edge-plant7", 4)]
    picks = Counter(choose(policy, pools, route).primary for _ in range(5000))
    assert abs(picks["edge-plant7"] / 5000 - 0.1) <= 0.02
    assert abs(picks["local"] / 5000 - 0.9) <= 0.02


def test_a_version_canary_splits_targets_on_one_pool() -> None:
    policy = RoutingPolicy(rng_seed=3)
    route = Route("mlp", weights={"local@1": 3, "local@2": 1})
    picks = Counter(choose(policy, [pool("local")], route).primary for _ in range(5000))
    assert abs(picks["local@2"] / 5000 - 0.25) <= 0.02
    plan = choose(policy, [pool("local")], route)
    assert set(plan.fallbacks) == {"local@1", "local@2", "local"} - {plan.primary}
    assert split_target("local@2") == ("local", "2")


def test_the_same_seed_makes_the_same_decisions() -> None:
    route = Route("mlp", ("a", "b"), {"a": 1, "b": 1})
    runs = [
        [choose(policy, [pool("a"), pool("b")], route).primary for _ in range(50)]
        for policy in (RoutingPolicy(rng_seed=11), RoutingPolicy(rng_seed=11))
    ]
    assert runs[0] == runs[1]


def test_unweighted_targets_only_take_over_when_no_weighted_one_fits() -> None:
    route = Route("mlp", ("a", "b", "spare"), {"a": 1, "b": 1})
    pools = [pool("a", 5), pool("b", 5), pool("spare", 1)]
    policy = RoutingPolicy(rng_seed=1)
    assert {choose(policy, pools, route).primary for _ in range(100)} == {"a", "b"}
    assert choose(policy, pools, route, deadline_ms=2).primary == "spare"


# ------------------------------------------------------------------ affinity


def test_a_site_tagged_request_goes_to_that_sites_pool_first_and_falls_back() -> None:
    route = Route("mlp", affinity_label="site")
    pools = [pool("cloud", 1), pool("plant7", 3, site="plant-7")]
    plan = choose(RoutingPolicy(), pools, route, site="plant-7")
    assert plan == RoutingPlan("plant7", ("cloud",))
    down = [pools[0], pool("plant7", 3, site="plant-7", healthy=False)]
    assert choose(RoutingPolicy(), down, route, site="plant-7").primary == "cloud"


def test_affinity_yields_to_the_deadline_and_needs_the_route_to_ask() -> None:
    pools = [pool("cloud", 1), pool("plant7", 30, site="plant-7")]
    route = Route("mlp", affinity_label="site")
    assert choose(RoutingPolicy(), pools, route, site="plant-7", deadline_ms=10).primary == "cloud"
    assert choose(RoutingPolicy(), pools, None, site="plant-7").primary == "cloud"


def test_affinity_comes_before_weights() -> None:
    route = Route("mlp", weights={"cloud": 1}, affinity_label="site")
    pools = [pool("cloud", 1), pool("plant7", 3, site="plant-7")]
    policy = RoutingPolicy(rng_seed=5)
    assert {choose(policy, pools, route, site="plant-7").primary for _ in range(50)} == {"plant7"}


# ------------------------------------------------------------------ failover, streams, versions


def test_failovers_exclude_the_primary_and_pools_that_are_down_or_ejected() -> None:
    policy = RoutingPolicy(eject_after_failures=1)
    fail(policy, "ejected", T0)
    pools = [pool("a", 1), pool("b", 2), pool("sick", 1, healthy=False), pool("ejected", 1)]
    assert choose(policy, pools) == RoutingPlan("a", ("b",))


def test_other_pools_fail_over_before_other_versions_on_the_primarys_pool() -> None:
    route = Route("mlp", ("a@2", "a@1", "b"), {"a@2": 1})
    plan = choose(RoutingPolicy(), [pool("a", 1), pool("b", 5)], route)
    assert plan == RoutingPlan("a@2", ("b", "a@1"))


def test_streams_get_no_failover_and_no_hedge() -> None:
    policy = RoutingPolicy()
    policy.record("a", ok=True, latency_s=0.002, now_s=T0, retryable=False)
    route = Route("mlp", ("a", "b"), hedge=True)
    pools = [pool("a", 1), pool("b", 2)]
    assert choose(policy, pools, route, stream=True) == RoutingPlan("a")
    assert choose(policy, pools, route) == RoutingPlan("a", ("b",), hedge_after_s=0.002)


def test_a_pinned_version_skips_targets_pinned_to_other_versions() -> None:
    route = Route("mlp", ("a@1", "a@2", "b"))
    pools = [pool("a", 1), pool("b", 5)]
    assert choose(RoutingPolicy(), pools, route, version="2") == RoutingPlan("a@2", ("b",))
    with pytest.raises(ModelNotFoundError, match="version '3' is not routed"):
        choose(RoutingPolicy(), pools, Route("mlp", ("a@1", "a@2")), version="3")


# ------------------------------------------------------------------ ejection


def test_consecutive_retryable_failures_eject_for_a_while() -> None:
    policy = RoutingPolicy(eject_after_failures=3, eject_for_s=5)
    fail(policy, "a", T0, times=2)
    policy.record("a", ok=True, latency_s=0.001, now_s=T0, retryable=False)
    fail(policy, "a", T0, times=2)
    assert policy.ejected(T0) == frozenset()  # a success broke the run
    fail(policy, "a", T0)
    assert policy.ejected(T0 + 4.9) == {"a"}
    assert choose(policy, [pool("a", 1), pool("b", 5)], now_s=T0 + 1).primary == "b"
    with pytest.raises(ModelNotReadyError, match=r"a ejected for 4\.0 s more"):
        choose(policy, [pool("a")], now_s=T0 + 1)


def test_caller_faults_neither_count_nor_eject() -> None:
    policy = RoutingPolicy(eject_after_failures=1)
    policy.record("a", ok=False, latency_s=0.001, now_s=T0, retryable=False)
    assert policy.ejected(T0) == frozenset()


def test_after_the_ejection_one_trial_decides_and_a_failed_trial_ejects_again() -> None:
    policy = RoutingPolicy(eject_after_failures=3, eject_for_s=5)
    pools = [pool("a", 1), pool("b", 5)]
    fail(policy, "a", T0, times=3)
    late = T0 + 5
    assert policy.ejected(late) == frozenset()
    assert choose(policy, pools, now_s=late).primary == "a"  # the trial
    assert choose(policy, pools, now_s=late) == RoutingPlan("b")  # one trial at a time
    fail(policy, "a", late)
    assert policy.ejected(late + 4.9) == {"a"}
    assert choose(policy, pools, now_s=late + 5).primary == "a"  # the next trial
    policy.record("a", ok=True, latency_s=0.001, now_s=late + 5, retryable=False)
    assert choose(policy, pools, now_s=late + 5) == RoutingPlan("a", ("b",))
    fail(policy, "a", late + 5, times=2)
    assert policy.ejected(late + 5) == frozenset()  # fully re-admitted: needs 3 again


def test_a_trial_that_never_reports_back_expires() -> None:
    policy = RoutingPolicy(eject_after_failures=1, eject_for_s=5, trial_timeout_s=2)
    pools = [pool("a", 1), pool("b", 5)]
    fail(policy, "a", T0)
    assert choose(policy, pools, now_s=T0 + 5).primary == "a"
    assert choose(policy, pools, now_s=T0 + 6.9).primary == "b"
    assert choose(policy, pools, now_s=T0 + 7).primary == "a"


def test_late_outcomes_during_an_ejection_change_nothing() -> None:
    policy = RoutingPolicy(eject_after_failures=1, eject_for_s=5)
    fail(policy, "a", T0)
    policy.record("a", ok=True, latency_s=0.001, now_s=T0 + 1, retryable=False)
    fail(policy, "a", T0 + 4)
    assert policy.ejected(T0 + 4.9) == {"a"}
    assert policy.ejected(T0 + 5) == frozenset()


def test_an_ejected_pool_takes_its_versioned_targets_with_it() -> None:
    policy = RoutingPolicy(eject_after_failures=1)
    fail(policy, "a", T0)
    plan = choose(policy, [pool("a", 1), pool("b", 5)], Route("mlp", ("a@2", "b")))
    assert plan == RoutingPlan("b")


# ------------------------------------------------------------------ shadow and hedge


def test_a_shadow_is_never_primary_nor_a_failover() -> None:
    pools = [pool("a", 9), pool("b", 5), pool("candidate", 1)]
    plan = choose(RoutingPolicy(), pools, Route("mlp", shadow="candidate"))
    assert plan == RoutingPlan("b", ("a",), shadow="candidate")
    version_shadow = choose(RoutingPolicy(), [pool("a")], Route("mlp", ("a",), shadow="a@3"))
    assert version_shadow == RoutingPlan("a", shadow="a@3")


def test_a_shadow_that_is_down_gets_no_copy() -> None:
    policy = RoutingPolicy(eject_after_failures=1)
    route = Route("mlp", ("a",), shadow="s")
    assert choose(policy, [pool("a"), pool("s", healthy=False)], route).shadow is None
    assert choose(policy, [pool("a"), pool("s", serves=frozenset())], route).shadow is None
    fail(policy, "s", T0)
    assert choose(policy, [pool("a"), pool("s")], route).shadow is None


def test_hedge_after_is_the_primarys_p95_of_recorded_latencies() -> None:
    policy = RoutingPolicy()
    for ms in range(100, 0, -1):
        policy.record("a", ok=True, latency_s=ms * MS, now_s=T0, retryable=False)
    assert policy.latency_quantile("a") == pytest.approx(0.095)
    plan = choose(policy, [pool("a", 1), pool("b", 2)], Route("mlp", hedge=True))
    assert plan.hedge_after_s == pytest.approx(0.095)


def test_no_hedge_without_samples_a_second_pool_or_time_for_it() -> None:
    policy = RoutingPolicy()
    route = Route("mlp", hedge=True)
    assert choose(policy, [pool("a"), pool("b")], route).hedge_after_s is None
    policy.record("a", ok=True, latency_s=0.004, now_s=T0, retryable=False)
    assert choose(policy, [pool("a")], route).hedge_after_s is None
    # 4 ms p95 + b's predicted 2 ms do not fit in 5 ms; in 6.5 ms they do.
    assert choose(policy, [pool("a"), pool("b", 2)], route, deadline_ms=5).hedge_after_s is None
    assert choose(policy, [pool("a"), pool("b", 2)], route, deadline_ms=6.5).hedge_after_s == 0.004


def test_a_fixed_hedge_delay_needs_no_samples_and_a_route_quantile_overrides_p95() -> None:
    policy = RoutingPolicy()
    pools = [pool("a", 1), pool("b", 2)]
    fixed = Route("mlp", hedge=True, hedge_after_ms=20)
    assert choose(policy, pools, fixed).hedge_after_s == pytest.approx(0.020)
    assert choose(policy, pools, fixed, deadline_ms=21).hedge_after_s is None  # 20 + b's 2 ms
    for ms in range(1, 101):
        policy.record("a", ok=True, latency_s=ms * MS, now_s=T0 + ms, retryable=False)
    p50 = Route("mlp", hedge=True, hedge_quantile=0.5)
    assert choose(policy, pools, p50, now_s=T0 + 200).hedge_after_s == pytest.approx(0.050)
    assert choose(policy, pools, Route("mlp", hedge=True)).hedge_after_s == pytest.approx(0.095)


def test_the_hedge_delay_follows_each_targets_own_recent_latencies() -> None:
    policy = RoutingPolicy(latency_window=10)
    route = Route("mlp", ("a", "b"), hedge=True)
    pools = [pool("a", 1), pool("b", 2)]
    for _ in range(10):
        policy.record("a", ok=True, latency_s=0.010, now_s=T0, retryable=False)
        policy.record("b", ok=True, latency_s=0.500, now_s=T0, retryable=False)
    assert choose(policy, pools, route).hedge_after_s == pytest.approx(0.010)
    for _ in range(10):  # a slows down: its delay follows, b's samples do not matter
        policy.record("a", ok=True, latency_s=0.030, now_s=T0 + 1, retryable=False)
    assert choose(policy, pools, route, now_s=T0 + 2).hedge_after_s == pytest.approx(0.030)
    assert choose(policy, pools, route, stream=True).hedge_after_s is None


def test_the_latency_window_forgets_old_samples() -> None:
    policy = RoutingPolicy(latency_window=4, hedge_quantile=1.0)
    for latency in (0.5, 0.001, 0.002, 0.003, 0.004):
        policy.record("a", ok=True, latency_s=latency, now_s=T0, retryable=False)
    assert policy.latency_quantile("a") == 0.004
    assert policy.latency_quantile("never") is None


# ------------------------------------------------------------------ misuse


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"eject_after_failures": 0}, "eject_after_failures must be >= 1"),
        ({"eject_for_s": 0}, "must be positive"),
        ({"hedge_quantile": 0}, r"hedge_quantile must be in \(0, 1\]"),
        ({"latency_window": 0}, "latency_window must be >= 1"),
    ],
)
def test_bad_policy_settings_are_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RoutingPolicy(**kw)


def test_bad_snapshots_and_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity must be at least 1, got 0"):
        pool("a", capacity=0)
    with pytest.raises(ValueError, match="cannot be negative"):
        pool("a", in_flight=-1)
    with pytest.raises(ValueError, match="a pool is reported twice"):
        choose(RoutingPolicy(), [pool("a"), pool("a")])
    with pytest.raises(ValueError, match="latency_s cannot be negative"):
        RoutingPolicy().record("a", ok=True, latency_s=-1, now_s=T0, retryable=False)


# ------------------------------------------------------------------ properties

snapshots = st.lists(
    st.builds(
        lambda i, ms, healthy, in_flight, serves, site: pool(
            f"p{i}", ms, healthy=healthy, in_flight=in_flight, serves=serves, site=site
        ),
        st.integers(0, 5),
        st.none() | st.floats(0.1, 50),
        st.booleans(),
        st.integers(0, 10),
        st.sampled_from([frozenset({"mlp"}), frozenset({"mlp", "cnn"}), frozenset({"cnn"})]),
        st.sampled_from(["", "plant-7"]),
    ),
    max_size=6,
    unique_by=lambda p: p.name,
)


cases = st.fixed_dictionaries(
    {
        "pools": snapshots,
        "deadline_ms": st.none() | st.floats(-1, 60),
        "weighted": st.booleans(),
        "shadow": st.none() | st.sampled_from(["p0", "p1"]),
        "stream": st.booleans(),
        "site": st.sampled_from(["", "plant-7"]),
        "seed": st.integers(0, 100),
    }
)


@given(case=cases)
def test_every_plan_names_distinct_fitting_pools_and_keeps_the_shadow_out(
    case: dict[str, Any],
) -> None:
    pools: list[PoolSnapshot] = case["pools"]
    deadline_ms, shadow, site = case["deadline_ms"], case["shadow"], case["site"]
    weights = {p.name: 1.0 + i for i, p in enumerate(pools) if p.name != shadow}
    route = Route(
        "mlp",
        weights=weights if case["weighted"] and weights else {},
        shadow=shadow,
        affinity_label="site",
        hedge=True,
    )
    policy = RoutingPolicy(rng_seed=case["seed"])
    policy.record("p2", ok=True, latency_s=0.001, now_s=0.0, retryable=False)
    try:
        plan = choose(
            policy,
            pools,
            route,
            deadline_ms=deadline_ms,
            now_s=0.0,
            stream=case["stream"],
            site=site,
        )
    except (ModelNotFoundError, ModelNotReadyError, DeadlineExceededError):
        return
    named = (plan.primary, *plan.fallbacks)
    assert len(set(named)) == len(named)
    assert shadow not in named
    by_name = {p.name: p for p in pools}
    for target in named:
        assert by_name[target].healthy
        assert "mlp" in by_name[target].serves
        if deadline_ms is not None:
            assert by_name[target].predicted_s(0.005) <= deadline_ms * MS
    if case["stream"]:
        assert (plan.fallbacks, plan.hedge_after_s) == ((), None)
    if not route.weights and not site:
        predictions = [by_name[t].predicted_s(0.005) for t in named]
        assert predictions == sorted(predictions)
