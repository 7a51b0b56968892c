"""The sans-I/O batching core, driven by an integer clock: no loop, no threads, no sleeps."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefabric.batching.config import BatchingConfig, QueuePolicy, TimeoutAction
from edgefabric.batching.core import (
    BatchingCore,
    BatchReady,
    Event,
    Expired,
    ExpiryReason,
    Released,
)
from edgefabric.errors import DeadlineExceededError, InvalidInputError, OverloadedError

pytestmark = pytest.mark.unit

US = 1_000
MS = 1_000_000
T0 = 5_000 * MS  # any monotonic origin


def make(**settings: Any) -> BatchingCore:
    return BatchingCore(BatchingConfig(**{"max_batch_size": 8, **settings}))


def batches(events: list[Event]) -> list[tuple[int, ...]]:
    return [e.item_ids for e in events if isinstance(e, BatchReady)]


def expired(events: list[Event]) -> dict[int, ExpiryReason]:
    return {e.item_id: e.reason for e in events if isinstance(e, Expired)}


def released(events: list[Event]) -> list[int]:
    return [i for e in events if isinstance(e, Released) for i in e.item_ids]


def submit(
    core: BatchingCore,
    item_id: int,
    now: int,
    *,
    rows: int = 1,
    group: Hashable = "g",
    **kwargs: Any,
) -> None:
    core.submit(item_id, rows, group, now_ns=now, **kwargs)


def occupy(core: BatchingCore, now: int, item_id: int = 999, group: Hashable = "busy") -> int:
    """Start a batch that keeps the only instance busy; returns its batch id."""
    submit(core, item_id, now, group=group, rows=core.config.max_batch_size)
    (ready,) = [e for e in core.poll(now) if isinstance(e, BatchReady)]
    return ready.batch_id


def train(core: BatchingCore, rows: int, exec_ns: int, now: int) -> None:
    """Teach the execution-time estimate that ``rows`` rows take ``exec_ns``."""
    submit(core, -1, now, rows=rows, group="train")
    (ready,) = [e for e in core.poll(now) if isinstance(e, BatchReady)]
    core.batch_done(ready.batch_id, exec_ns, now)
    core.poll(now)


# -- launch ------------------------------------------------------------------------------------


def test_batch_launches_at_once_when_max_batch_size_is_reached() -> None:
    core = make(max_batch_size=4, max_queue_delay_us=1000)
    for item_id in range(3):
        submit(core, item_id, T0)
    assert batches(core.poll(T0)) == []
    assert core.next_wakeup_ns() == T0 + 1 * MS
    submit(core, 3, T0 + 10 * US)
    assert batches(core.poll(T0 + 10 * US)) == [(0, 1, 2, 3)]


def test_batch_launches_when_the_next_request_does_not_fit() -> None:
    core = make(max_batch_size=4, max_queue_delay_us=1000)
    submit(core, 0, T0, rows=3)
    assert batches(core.poll(T0)) == []
    submit(core, 1, T0, rows=2)
    assert batches(core.poll(T0)) == [(0,)]
    assert core.queued == 1


def test_batch_launches_when_its_oldest_request_waited_the_queue_delay() -> None:
    core = make(max_queue_delay_us=500)
    submit(core, 0, T0)
    submit(core, 1, T0 + 100 * US)
    assert batches(core.poll(T0 + 100 * US)) == []
    assert core.next_wakeup_ns() == T0 + 500 * US
    assert batches(core.poll(T0 + 499 * US)) == []
    assert batches(core.poll(T0 + 500 * US)) == [(0, 1)]
    assert core.next_wakeup_ns() is None


def test_zero_queue_delay_launches_whatever_is_queued() -> None:
    core = make()
    submit(core, 0, T0, rows=3)
    assert batches(core.poll(T0)) == [(0,)]


def test_preferred_batch_size_launches_at_once() -> None:
    core = make(preferred_batch_sizes=(2,), max_queue_delay_us=10_000)
    submit(core, 0, T0)
    assert batches(core.poll(T0)) == []
    submit(core, 1, T0 + US)
    assert batches(core.poll(T0 + US)) == [(0, 1)]


def test_batch_is_cut_at_the_largest_preferred_size_it_reaches() -> None:
    core = make(preferred_batch_sizes=(2, 4), max_queue_delay_us=10_000)
    busy = occupy(core, T0)
    for item_id in range(5):
        submit(core, item_id, T0)
    assert batches(core.poll(T0)) == []
    core.batch_done(busy, 1 * MS, T0 + 1 * MS)
    assert batches(core.poll(T0 + 1 * MS)) == [(0, 1, 2, 3)]
    assert core.queued == 1


def test_requests_with_different_shapes_are_never_merged() -> None:
    core = make(max_concurrent_batches=2)
    submit(core, 0, T0, group=("x", (3,)))
    submit(core, 1, T0, group=("x", (4,)))
    submit(core, 2, T0, group=("x", (3,)))
    assert batches(core.poll(T0)) == [(0, 2), (1,)]


def test_other_groups_do_not_block_a_batch() -> None:
    core = make(max_batch_size=2, max_queue_delay_us=10_000)
    submit(core, 0, T0, group="a")
    submit(core, 1, T0, group="b")
    submit(core, 2, T0, group="a")
    assert batches(core.poll(T0)) == [(0, 2)]


def test_a_full_batch_beats_a_smaller_preferred_size() -> None:
    core = make(max_batch_size=4, preferred_batch_sizes=(2,), max_queue_delay_us=10_000)
    busy = occupy(core, T0)
    for item_id in range(5):
        submit(core, item_id, T0)
    core.batch_done(busy, MS, T0 + MS)
    assert batches(core.poll(T0 + MS)) == [(0, 1, 2, 3)]


def test_a_due_batch_of_another_group_takes_a_free_instance() -> None:
    core = make(max_batch_size=2, max_queue_delay_us=10_000, max_concurrent_batches=2)
    submit(core, 0, T0, group="a")  # best-ranked, still filling
    submit(core, 1, T0 + US, group="b")
    submit(core, 2, T0 + US, group="b")
    assert batches(core.poll(T0 + US)) == [(1, 2)]
    assert core.next_wakeup_ns() == T0 + 10 * MS


@pytest.mark.parametrize(("other_run_ms", "starts_at_once"), [(5, True), (20, False)])
def test_a_due_batch_of_another_group_never_delays_the_best_ranked_one(
    other_run_ms: int, starts_at_once: bool
) -> None:
    core = make(max_batch_size=2, max_queue_delay_us=10_000)
    train(core, 2, other_run_ms * MS, T0)
    submit(core, 0, T0, group="a")  # due at T0 + 10 ms
    submit(core, 1, T0, group="b")
    submit(core, 2, T0, group="b")  # due now, runs about other_run_ms
    assert batches(core.poll(T0)) == ([(1, 2)] if starts_at_once else [])
    if not starts_at_once:
        assert core.next_wakeup_ns() == T0 + 10 * MS
        assert batches(core.poll(T0 + 10 * MS)) == [(0,)]


def test_concurrent_batches_are_limited_to_the_instance_count() -> None:
    core = make(max_batch_size=1, max_concurrent_batches=2)
    for item_id in range(3):
        submit(core, item_id, T0)
    first = [e for e in core.poll(T0) if isinstance(e, BatchReady)]
    assert [e.item_ids for e in first] == [(0,), (1,)]
    assert core.running == 2
    assert core.next_wakeup_ns() is None
    core.batch_done(first[0].batch_id, MS, T0 + MS)
    assert batches(core.poll(T0 + MS)) == [(2,)]


def test_drain_launches_without_waiting_for_the_delay() -> None:
    core = make(max_queue_delay_us=10_000)
    submit(core, 0, T0)
    assert batches(core.poll(T0)) == []
    core.drain()
    assert batches(core.poll(T0)) == [(0,)]
    with pytest.raises(RuntimeError, match="draining"):
        submit(core, 1, T0)


# -- order -------------------------------------------------------------------------------------


def test_priority_levels_are_strict() -> None:
    core = make(max_batch_size=1, priority_levels=2, default_priority_level=2)
    busy = occupy(core, T0)
    submit(core, 0, T0, priority=2)
    submit(core, 1, T0 + US, priority=0)  # the default level: 2
    submit(core, 2, T0 + 2 * US, priority=1)
    order: list[int] = []
    now = T0 + 3 * US
    for _ in range(3):
        core.batch_done(busy, MS, now)
        events = core.poll(now)
        (ready,) = [e for e in events if isinstance(e, BatchReady)]
        order.extend(ready.item_ids)
        busy = ready.batch_id
    assert order == [2, 0, 1]


def test_earliest_deadline_first_within_a_level_then_no_deadline_fifo() -> None:
    core = make(max_batch_size=1)
    busy = occupy(core, T0)
    submit(core, 0, T0)
    submit(core, 1, T0, deadline_ns=T0 + 900 * MS)
    submit(core, 2, T0, deadline_ns=T0 + 300 * MS)
    submit(core, 3, T0)
    submit(core, 4, T0, deadline_ns=T0 + 300 * MS)
    order: list[int] = []
    for _ in range(5):
        core.batch_done(busy, MS, T0)
        (ready,) = [e for e in core.poll(T0) if isinstance(e, BatchReady)]
        order.extend(ready.item_ids)
        busy = ready.batch_id
    assert order == [2, 4, 1, 0, 3]


def test_a_batch_fills_in_rank_order() -> None:
    core = make(max_batch_size=2, max_queue_delay_us=10_000)
    busy = occupy(core, T0)
    submit(core, 0, T0)
    submit(core, 1, T0, deadline_ns=T0 + 50 * MS)
    submit(core, 2, T0, deadline_ns=T0 + 40 * MS)
    core.batch_done(busy, MS, T0)
    assert batches(core.poll(T0)) == [(2, 1)]


# -- admission ---------------------------------------------------------------------------------


def test_full_level_is_overloaded_with_a_retry_after() -> None:
    core = make(
        max_batch_size=1,
        priority_levels=2,
        default_priority_level=2,
        priority_queue_policies={2: QueuePolicy(max_queue_size=2)},
    )
    occupy(core, T0)
    submit(core, 0, T0)
    submit(core, 1, T0)
    with pytest.raises(OverloadedError, match="priority level 2 is full") as caught:
        submit(core, 2, T0)
    assert caught.value.retry_after_ms > 0
    submit(core, 3, T0, priority=1)  # another level has its own bound
    assert core.queue_depths() == {1: 1, 2: 2}


def test_retry_after_grows_with_the_measured_backlog() -> None:
    core = make(max_batch_size=1, default_queue_policy=QueuePolicy(max_queue_size=3))
    train(core, 1, 20 * MS, T0)
    occupy_id = occupy(core, T0)
    for item_id in range(3):
        submit(core, item_id, T0)
    with pytest.raises(OverloadedError) as caught:
        submit(core, 9, T0)
    # one running and three queued batches of about 20 ms each
    assert caught.value.retry_after_ms == 80
    assert occupy_id > 0


def test_deadline_that_cannot_be_met_is_shed_at_admission() -> None:
    core = make(max_batch_size=1)
    train(core, 1, 10 * MS, T0)
    occupy(core, T0)  # busy until about T0 + 10 ms
    submit(core, 0, T0, deadline_ns=T0 + 20 * MS)  # runs next: until about T0 + 20 ms
    with pytest.raises(DeadlineExceededError, match="shed at admission"):
        submit(core, 1, T0, deadline_ns=T0 + 25 * MS)
    submit(core, 2, T0, deadline_ns=T0 + 35 * MS)
    assert core.queued == 2


def test_admission_counts_only_requests_ranked_ahead() -> None:
    core = make(max_batch_size=1)
    train(core, 1, 10 * MS, T0)
    occupy(core, T0)
    for item_id in range(5):
        submit(core, item_id, T0)  # no deadline: ranked behind any deadline
    submit(core, 9, T0, deadline_ns=T0 + 25 * MS)


def test_nothing_is_shed_for_its_deadline_before_any_measurement() -> None:
    core = make(max_batch_size=1)
    occupy(core, T0)
    for item_id in range(50):
        submit(core, item_id, T0, deadline_ns=T0 + 1)


def test_a_deadline_already_passed_is_refused() -> None:
    core = make()
    with pytest.raises(DeadlineExceededError, match="passed"):
        submit(core, 0, T0, deadline_ns=T0)


def test_invalid_requests_are_invalid_input() -> None:
    core = make(max_batch_size=4, priority_levels=2, default_priority_level=1)
    with pytest.raises(InvalidInputError, match="priority 3 is out of range"):
        submit(core, 0, T0, priority=3)
    with pytest.raises(InvalidInputError, match=r"has 5 rows.*1 to 4 rows"):
        submit(core, 0, T0, rows=5)
    with pytest.raises(InvalidInputError, match="has 0 rows"):
        submit(core, 0, T0, rows=0)
    assert core.queued == 0


# -- timeouts and deadlines --------------------------------------------------------------------


def test_reject_timeout_fires_on_time_while_every_instance_is_busy() -> None:
    core = make(default_queue_policy=QueuePolicy(default_timeout_us=2000))
    busy = occupy(core, T0)
    submit(core, 0, T0 + 100 * US)
    assert core.next_wakeup_ns() == T0 + 2100 * US
    assert expired(core.poll(T0 + 2099 * US)) == {}
    assert expired(core.poll(T0 + 2100 * US)) == {0: ExpiryReason.TIMEOUT}
    assert core.queued == 0
    core.batch_done(busy, MS, T0 + 3 * MS)
    assert batches(core.poll(T0 + 3 * MS)) == []


def test_request_timeout_override_shortens_the_queue_timeout() -> None:
    policy = QueuePolicy(default_timeout_us=5000, allow_timeout_override=True)
    core = make(default_queue_policy=policy)
    occupy(core, T0)
    submit(core, 0, T0, timeout_us=1000)
    assert expired(core.poll(T0 + 1 * MS)) == {0: ExpiryReason.TIMEOUT}


def test_deadline_expires_a_waiting_request() -> None:
    core = make()
    occupy(core, T0)
    submit(core, 0, T0, deadline_ns=T0 + 3 * MS)
    assert core.next_wakeup_ns() == T0 + 3 * MS
    assert expired(core.poll(T0 + 3 * MS)) == {0: ExpiryReason.DEADLINE}


def test_batch_starts_early_when_the_delay_would_miss_a_deadline() -> None:
    core = make(max_queue_delay_us=10_000)
    train(core, 8, 16 * MS, T0)  # a full batch starts at once; 1 row: about 2 ms
    submit(core, 0, T0, deadline_ns=T0 + 5 * MS)
    assert batches(core.poll(T0)) == []
    assert core.next_wakeup_ns() == T0 + 3 * MS
    assert batches(core.poll(T0 + 3 * MS)) == [(0,)]


def test_early_start_follows_new_measurements() -> None:
    core = make(max_batch_size=2, max_queue_delay_us=10_000)
    submit(core, 0, T0, deadline_ns=T0 + 8 * MS)
    assert batches(core.poll(T0)) == []
    assert core.next_wakeup_ns() == T0 + 8 * MS  # nothing measured yet
    train(core, 2, 6 * MS, T0 + MS)  # 1 row: about 3 ms
    assert core.next_wakeup_ns() == T0 + 5 * MS


def test_delay_action_demotes_a_timed_out_request_behind_its_level() -> None:
    policy = QueuePolicy(TimeoutAction.DELAY, default_timeout_us=1000)
    core = make(max_batch_size=1, default_queue_policy=policy)
    busy = occupy(core, T0)
    submit(core, 0, T0)
    submit(core, 1, T0 + 500 * US)
    assert expired(core.poll(T0 + 1200 * US)) == {}  # 0 timed out, and was kept
    core.batch_done(busy, MS, T0 + 1200 * US)
    assert batches(core.poll(T0 + 1200 * US)) == [(1,)]


def test_delayed_requests_age_instead_of_starving() -> None:
    low = QueuePolicy(TimeoutAction.DELAY, default_timeout_us=1000)
    core = make(
        max_batch_size=1,
        priority_levels=2,
        default_priority_level=1,
        priority_queue_policies={2: low},
    )
    busy = occupy(core, T0)
    submit(core, 0, T0, priority=2)
    served: list[int] = []
    now = T0
    next_id = 1
    while 0 not in served:  # a steady stream of level-1 requests
        now += 250 * US
        submit(core, next_id, now, priority=1)
        next_id += 1
        core.batch_done(busy, 250 * US, now)
        (ready,) = [e for e in core.poll(now) if isinstance(e, BatchReady)]
        served.extend(ready.item_ids)
        busy = ready.batch_id
        assert now < T0 + 10 * MS, "the level-2 request starved"
    # demoted at 1 ms, level 1 at 2 ms, ahead of every level at 3 ms
    assert now == T0 + 3 * MS


def test_levels_without_a_timeout_stay_strictly_below() -> None:
    core = make(max_batch_size=1, priority_levels=2, default_priority_level=1)
    busy = occupy(core, T0)
    submit(core, 0, T0, priority=2)
    now = T0
    for item_id in range(1, 40):
        now += MS
        submit(core, item_id, now, priority=1)
        core.batch_done(busy, MS, now)
        (ready,) = [e for e in core.poll(now) if isinstance(e, BatchReady)]
        assert ready.item_ids == (item_id,)
        busy = ready.batch_id


# -- cancel and ordering -----------------------------------------------------------------------


def test_cancel_takes_a_request_out_of_the_queue_and_it_never_runs() -> None:
    core = make(max_queue_delay_us=1000, default_queue_policy=QueuePolicy(default_timeout_us=50))
    submit(core, 0, T0)
    submit(core, 1, T0, deadline_ns=T0 + MS)
    assert core.cancel(0)
    assert core.queue_depths() == {1: 1}
    assert not core.cancel(0)
    events = core.poll(T0 + MS)
    assert batches(events) == []
    assert expired(events) == {1: ExpiryReason.TIMEOUT}
    assert core.next_wakeup_ns() is None


def test_cancel_of_a_running_request_is_refused() -> None:
    core = make()
    submit(core, 0, T0)
    core.poll(T0)
    assert not core.cancel(0)


def test_results_are_released_as_batches_finish_without_preserve_ordering() -> None:
    core = make(max_batch_size=1, max_concurrent_batches=2)
    submit(core, 0, T0)
    submit(core, 1, T0)
    _first, second = [e.batch_id for e in core.poll(T0) if isinstance(e, BatchReady)]
    core.batch_done(second, MS, T0 + MS)
    assert released(core.poll(T0 + MS)) == [1]


def test_preserve_ordering_releases_results_in_submission_order() -> None:
    core = make(max_batch_size=1, max_concurrent_batches=2, preserve_ordering=True)
    submit(core, 0, T0)
    submit(core, 1, T0)
    first, second = [e.batch_id for e in core.poll(T0) if isinstance(e, BatchReady)]
    core.batch_done(second, MS, T0 + MS)
    assert released(core.poll(T0 + MS)) == []
    core.batch_done(first, MS, T0 + 2 * MS)
    assert released(core.poll(T0 + 2 * MS)) == [0, 1]


def test_preserve_ordering_does_not_wait_for_requests_that_left_the_queue() -> None:
    core = make(
        max_batch_size=3,
        preferred_batch_sizes=(1,),
        max_queue_delay_us=10_000,
        preserve_ordering=True,
        priority_levels=2,
        default_priority_level=2,
        default_queue_policy=QueuePolicy(default_timeout_us=1000),
    )
    submit(core, 0, T0, priority=1)
    (busy,) = [e.batch_id for e in core.poll(T0) if isinstance(e, BatchReady)]
    submit(core, 1, T0, rows=2, group="b")  # waits for the delay, then times out
    submit(core, 2, T0 + 100 * US, rows=2, group="c")  # will be cancelled
    submit(core, 3, T0 + 100 * US, priority=1)
    core.batch_done(busy, 200 * US, T0 + 200 * US)
    events = core.poll(T0 + 200 * US)
    assert released(events) == [0]
    assert batches(events) == [(3,)]
    core.batch_done(next(e.batch_id for e in events if isinstance(e, BatchReady)), 1, T0 + 300 * US)
    assert released(core.poll(T0 + 300 * US)) == []  # 3 waits for 1 and 2
    assert core.cancel(2)
    assert released(core.poll(T0 + 400 * US)) == []
    events = core.poll(T0 + 1 * MS)
    assert expired(events) == {1: ExpiryReason.TIMEOUT}
    assert released(events) == [3]


# -- misuse and estimates ----------------------------------------------------------------------


def test_time_must_not_go_backwards() -> None:
    core = make()
    core.poll(T0)
    with pytest.raises(ValueError, match="went backwards"):
        core.poll(T0 - 1)


def test_unknown_batch_and_duplicate_ids_are_errors() -> None:
    core = make(max_queue_delay_us=100)
    submit(core, 0, T0)
    with pytest.raises(ValueError, match="already queued"):
        submit(core, 0, T0)
    with pytest.raises(ValueError, match="batch 42 is not running"):
        core.batch_done(42, 0, T0)


def test_an_item_id_may_be_reused_once_it_left_the_queue() -> None:
    core = make()
    submit(core, 0, T0, deadline_ns=T0 + 5 * MS)
    (busy,) = [e.batch_id for e in core.poll(T0) if isinstance(e, BatchReady)]
    core.batch_done(busy, MS, T0 + MS)
    core.poll(T0 + MS)
    occupy(core, T0 + MS)
    submit(core, 0, T0 + MS)  # no deadline this time
    assert core.next_wakeup_ns() is None
    assert expired(core.poll(T0 + 5 * MS)) == {}


def test_execution_estimate_is_an_ewma_interpolated_between_sizes() -> None:
    core = make()
    assert core.estimate_exec_ns(4) == 0
    train(core, 2, 10 * MS, T0)
    train(core, 2, 20 * MS, T0)  # EWMA weight 0.2: 12 ms
    train(core, 8, 30 * MS, T0)
    assert core.estimate_exec_ns(2) == 12 * MS
    assert core.estimate_exec_ns(1) == 6 * MS
    assert core.estimate_exec_ns(5) == 21 * MS
    assert core.estimate_exec_ns(16) == 30 * MS


def test_failed_batches_do_not_teach_the_estimate() -> None:
    core = make()
    submit(core, 0, T0)
    (ready,) = [e for e in core.poll(T0) if isinstance(e, BatchReady)]
    core.batch_done(ready.batch_id, None, T0 + 1)
    assert core.estimate_exec_ns(1) == 0


# -- properties --------------------------------------------------------------------------------

_op = st.one_of(
    st.tuples(st.just("submit"), st.integers(1, 4), st.sampled_from("ab"), st.integers(0, 2),
              st.one_of(st.none(), st.integers(1, 5 * MS))),
    st.tuples(st.just("cancel"), st.integers(0, 40)),
    st.tuples(st.just("done"), st.integers(0, 3), st.integers(0, 2 * MS)),
    st.tuples(st.just("tick"), st.integers(0, 3 * MS)),
)  # fmt: skip


@st.composite
def _configs(draw: st.DrawFn) -> BatchingConfig:
    max_batch_size = draw(st.integers(4, 9))
    policy = st.builds(
        QueuePolicy,
        st.sampled_from(TimeoutAction),
        st.sampled_from([0, 700, 2000]),
        st.booleans(),
        st.sampled_from([0, 3, 6]),
    )
    return BatchingConfig(
        max_batch_size=max_batch_size,
        preferred_batch_sizes=tuple(
            draw(st.lists(st.integers(1, max_batch_size), max_size=2, unique=True))
        ),
        max_queue_delay_us=draw(st.sampled_from([0, 500, 5000])),
        preserve_ordering=draw(st.booleans()),
        priority_levels=2,
        default_priority_level=2,
        default_queue_policy=draw(policy),
        priority_queue_policies={1: draw(policy)},
        max_concurrent_batches=draw(st.integers(1, 2)),
    )


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_op, max_size=60), config=_configs())
def test_every_request_ends_exactly_once_and_batches_respect_limits(
    ops: list[tuple[Any, ...]], config: BatchingConfig
) -> None:
    preserve = config.preserve_ordering
    limit = config.max_batch_size
    core = BatchingCore(config)
    rows: dict[int, int] = {}
    groups: dict[int, str] = {}
    ended: dict[int, str] = {}
    running: dict[int, tuple[int, ...]] = {}
    released_order: list[int] = []

    def poll(now: int) -> None:
        for event in core.poll(now):
            if isinstance(event, BatchReady):
                assert sum(rows[i] for i in event.item_ids) == event.rows <= limit
                assert len({groups[i] for i in event.item_ids}) == 1
                assert not set(event.item_ids) & set(ended)
                running[event.batch_id] = event.item_ids
            elif isinstance(event, Expired):
                assert event.item_id not in ended
                ended[event.item_id] = event.reason.value
            else:
                released_order.extend(event.item_ids)
        assert core.running == len(running) <= config.max_concurrent_batches
        in_flight = {i for ids in running.values() for i in ids}
        assert core.queued == len(set(rows) - set(ended) - in_flight)
        wakeup = core.next_wakeup_ns()
        assert wakeup is None or wakeup > now
        _assert_cached_plans_are_fresh(core)

    def finish(batch_id: int, exec_ns: int, now: int) -> None:
        core.batch_done(batch_id, exec_ns, now)
        for item_id in running.pop(batch_id):
            ended[item_id] = "ran"

    now = T0
    for op in ops:
        if op[0] == "submit":
            _, n, group, priority, deadline_in = op
            item_id = len(rows)
            try:
                core.submit(
                    item_id,
                    n,
                    group,
                    priority=priority,
                    deadline_ns=None if deadline_in is None else now + deadline_in,
                    now_ns=now,
                )
            except (OverloadedError, DeadlineExceededError):
                ended[item_id] = "refused"
            rows[item_id], groups[item_id] = n, group
        elif op[0] == "cancel":
            if core.cancel(op[1]):
                assert op[1] not in ended
                ended[op[1]] = "cancelled"
        elif op[0] == "done" and running:
            now += op[2]
            finish(sorted(running)[op[1] % len(running)], op[2], now)
        elif op[0] == "tick":
            now += op[1]
        poll(now)
    core.drain()
    while running or core.queued:
        now += 1
        for batch_id in sorted(running):
            finish(batch_id, 1, now)
        poll(now)
    assert sorted(released_order) == sorted(i for i, how in ended.items() if how == "ran")
    assert set(ended) == set(rows)
    if preserve:
        assert released_order == sorted(released_order)


def _assert_cached_plans_are_fresh(core: BatchingCore) -> None:
    """White-box: every plan the core updated in place equals one formed from scratch."""
    for group, cached in core._plans.items():
        fresh = core._plan(group)
        assert [i.item_id for i in cached.items] == [i.item_id for i in fresh.items]
        assert (cached.rows, cached.immediate) == (fresh.rows, fresh.immediate)
        if not fresh.immediate:
            assert cached.launch_at_ns == fresh.launch_at_ns
