"""Early admission control (edgefabric/kserve/admission.py), driven by an integer clock."""

from __future__ import annotations

import pytest

from edgefabric.kserve.admission import Admission, AdmissionConfig, RefusalReason

pytestmark = pytest.mark.unit

MS = 1_000_000
T0 = 9_000 * MS


def steady(admission: Admission, *, in_flight: int, per_ms: int, until: int) -> int:
    """Keep ``in_flight`` requests going, completing ``per_ms`` a millisecond, until ``until``."""
    now = T0
    while admission.in_flight < in_flight:
        assert admission.admit(now, None) is None
    while now < until:
        now += MS
        for _ in range(per_ms):
            admission.done(now)
            assert admission.admit(now, None) is None
    return now


def test_refuses_a_deadline_the_queue_cannot_meet_without_counting_it() -> None:
    admission = Admission()
    now = steady(admission, in_flight=50, per_ms=1, until=T0 + 100 * MS)  # 1000/s, 50 queued
    assert admission.rate_per_s == pytest.approx(1000, rel=0.05)
    refusal = admission.admit(now, 20 * MS)  # (50 + 1) / 1000/s = 51 ms > 20 ms
    assert refusal is not None
    assert refusal.reason is RefusalReason.DEADLINE
    assert "51.0 ms (50 in flight)" in refusal.message
    assert "deadline is in 20.0 ms" in refusal.message
    assert refusal.retry_after_ms == 51
    assert admission.in_flight == 50
    assert admission.admit(now, 60 * MS) is None  # a looser deadline is admitted
    assert admission.admit(now, None) is None  # and so is a request without one


def test_max_in_flight_is_resource_exhausted_with_a_retry_hint() -> None:
    admission = Admission(AdmissionConfig(max_in_flight=10))
    now = steady(admission, in_flight=10, per_ms=2, until=T0 + 100 * MS)
    refusal = admission.admit(now, None)
    assert refusal is not None
    assert refusal.reason is RefusalReason.IN_FLIGHT
    assert "10 requests in flight" in refusal.message
    assert refusal.retry_after_ms == 6  # (10 + 1) / 2 per ms, rounded up
    admission.done(now)
    assert admission.admit(now, None) is None


def test_below_min_in_flight_everything_is_admitted() -> None:
    admission = Admission(AdmissionConfig(min_in_flight=4))
    now = steady(admission, in_flight=3, per_ms=1, until=T0 + 100 * MS)
    assert admission.admit(now, 1) is None  # 3 in flight: not judged, even with 1 ns left


def test_idle_time_does_not_lower_the_rate() -> None:
    admission = Admission()
    now = steady(admission, in_flight=8, per_ms=4, until=T0 + 100 * MS)
    rate = admission.rate_per_s
    while admission.in_flight:
        admission.done(now)
    now += 60_000 * MS  # a minute without requests
    for _ in range(8):
        assert admission.admit(now, 10 * MS) is None
    now += MS
    for _ in range(4):
        admission.done(now)
    assert admission.rate_per_s == pytest.approx(rate)


def test_done_without_admit_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="without a matching admitted request"):
        Admission().done(T0)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("max_in_flight", -1, "max_in_flight must be >= 0"),
        ("min_in_flight", 0, "min_in_flight must be >= 1"),
        ("window_ns", 0, "window_ns must be >= 1"),
        ("ewma_weight", 0.0, r"ewma_weight must lie in \(0, 1\]"),
    ],
)
def test_bad_settings_are_refused(field: str, value: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdmissionConfig(**{field: value})  # type: ignore[arg-type]
