"""Per-tenant token buckets and concurrency quotas, on an injected clock (no sleeps)."""

from __future__ import annotations

import pytest

from edgefabric.errors import OverloadedError
from edgefabric.security.limits import TenantLimiter, TenantLimits, TokenBucket

pytestmark = pytest.mark.unit


def test_bucket_starts_full_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate_per_s=10, capacity=3, now_s=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)  # one token every 100 ms
    assert bucket.take(0.05) == pytest.approx(0.05)
    assert bucket.take(0.1) == 0.0
    assert bucket.take(10.0) == 0.0  # refills to capacity, never beyond
    assert [bucket.take(10.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


def test_bucket_ignores_a_clock_that_goes_backwards() -> None:
    bucket = TokenBucket(rate_per_s=1, capacity=1, now_s=5.0)
    assert bucket.take(5.0) == 0.0
    assert bucket.take(4.0) == pytest.approx(1.0)  # no tokens minted by going back in time


def test_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match=r"positive rate and a capacity of at least 1"):
        TokenBucket(rate_per_s=0, capacity=1, now_s=0)


def test_negative_limits_are_refused() -> None:
    with pytest.raises(ValueError, match=r"must not be negative.*rate_per_s=-1"):
        TenantLimits(rate_per_s=-1)


def test_rate_limit_sheds_with_the_time_to_the_next_token() -> None:
    limiter = TenantLimiter({"acme": TenantLimits(rate_per_s=4, burst=2)}, TenantLimits())
    for _ in range(2):
        limiter.release("acme", limiter.acquire("acme", 0.0), 0.0)
    with pytest.raises(OverloadedError, match=r"'acme' is over its rate limit of 4") as shed:
        limiter.acquire("acme", 0.0)
    assert shed.value.retry_after_ms == 250
    limiter.release("acme", limiter.acquire("acme", 0.25), 0.25)  # the promised token is there


def test_one_tenant_flooding_leaves_another_untouched() -> None:
    limiter = TenantLimiter({"flood": TenantLimits(rate_per_s=1, burst=1)}, TenantLimits())
    limiter.acquire("flood", 0.0)
    refused = 0
    for i in range(1000):
        try:
            limiter.acquire("flood", i * 1e-4)
        except OverloadedError:
            refused += 1
    assert refused == 1000
    leases = [limiter.acquire("quiet", 0.05) for _ in range(100)]  # default: unlimited
    assert limiter.in_flight("quiet") == len(leases)


def test_concurrency_quota_counts_calls_in_progress() -> None:
    limiter = TenantLimiter({"acme": TenantLimits(max_concurrent=2)}, TenantLimits())
    first, second = limiter.acquire("acme", 0.0), limiter.acquire("acme", 0.0)
    limiter.release("acme", first, 0.040)  # held 40 ms
    third = limiter.acquire("acme", 0.040)
    with pytest.raises(OverloadedError, match=r"2 requests in progress, its quota is 2") as shed:
        limiter.acquire("acme", 0.041)
    assert shed.value.retry_after_ms == 20  # mean hold 40 ms over 2 slots
    limiter.release("acme", second, 0.05)
    limiter.release("acme", third, 0.05)
    assert limiter.in_flight("acme") == 0


def test_a_refused_call_takes_no_slot_and_no_token() -> None:
    limiter = TenantLimiter(
        {"acme": TenantLimits(rate_per_s=1, burst=1, max_concurrent=1)}, TenantLimits()
    )
    lease = limiter.acquire("acme", 0.0)
    with pytest.raises(OverloadedError, match=r"in progress"):
        limiter.acquire("acme", 5.0)  # the quota refuses before the bucket is touched
    limiter.release("acme", lease, 5.0)
    limiter.acquire("acme", 5.0)  # the bucket refilled and was not drained by the refusal


def test_releasing_an_unknown_lease_is_an_error() -> None:
    limiter = TenantLimiter({}, TenantLimits())
    with pytest.raises(ValueError, match=r"lease 7 of tenant 'acme' is not held"):
        limiter.release("acme", 7, 0.0)


def test_new_limits_apply_and_keep_calls_in_progress_counted() -> None:
    limiter = TenantLimiter({}, TenantLimits())
    lease = limiter.acquire("acme", 0.0)
    limiter.configure({"acme": TenantLimits(max_concurrent=1)}, TenantLimits(), 1.0)
    with pytest.raises(OverloadedError):
        limiter.acquire("acme", 1.0)
    limiter.release("acme", lease, 1.0)
    limiter.acquire("acme", 1.0)
    assert limiter.limits("other") == TenantLimits()
