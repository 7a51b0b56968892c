"""The batcher pays its queue delay only when waiting can pay off (docs/adr/0004).

Sans-I/O, integer clock: requests that arrive further apart than ``max_queue_delay_us`` start
at once; bursts still wait for company; ``skip_idle_delay=False`` keeps Triton's behaviour.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefabric.batching.config import BatchingConfig
from edgefabric.batching.core import BatchingCore, BatchReady, Event

pytestmark = pytest.mark.unit

US = 1_000
MS = 1_000_000
T0 = 7_000 * MS
DELAY_US = 500


def make(**settings: Any) -> BatchingCore:
    config = {"max_batch_size": 8, "max_queue_delay_us": DELAY_US, **settings}
    return BatchingCore(BatchingConfig(**config))


def run_one(core: BatchingCore, item_id: int, now: int) -> tuple[int, ...]:
    """Submit, then drive the core to the launch of that request; returns its batch."""
    core.submit(item_id, 1, "g", now_ns=now)
    events: list[Event] = core.poll(now)
    ready = [e for e in events if isinstance(e, BatchReady)]
    if not ready:
        wake = core.next_wakeup_ns()
        assert wake is not None
        now = wake
        ready = [e for e in core.poll(now) if isinstance(e, BatchReady)]
    (batch,) = ready
    core.batch_done(batch.batch_id, 100 * US, now)
    return batch.item_ids


def test_sparse_arrivals_start_at_once_after_the_first() -> None:
    core = make()
    core.submit(0, 1, "g", now_ns=T0)
    assert core.poll(T0) == []  # no rate known yet: the first request waits, as Triton's do
    assert core.next_wakeup_ns() == T0 + DELAY_US * US
    (first,) = core.poll(T0 + DELAY_US * US)
    assert isinstance(first, BatchReady)
    core.batch_done(first.batch_id, 100 * US, T0 + DELAY_US * US)
    for i in range(1, 6):  # one request every 2 ms: nobody comes within 500 us
        now = T0 + 2 * MS * i
        core.submit(i, 1, "g", now_ns=now)
        events = core.poll(now)
        assert [e.item_ids for e in events if isinstance(e, BatchReady)] == [(i,)], i
        batch = next(e for e in events if isinstance(e, BatchReady))
        core.batch_done(batch.batch_id, 100 * US, now)


def started(events: list[Event]) -> list[BatchReady]:
    return [e for e in events if isinstance(e, BatchReady)]


def teach_sparse(core: BatchingCore, now: int) -> int:
    """A few requests 2 ms apart, each run at once; returns the time after the last."""
    for i in range(-5, 0):
        now += 2 * MS
        run_one(core, i, now)
    assert started(core.poll(now)) == []
    return now


@pytest.mark.parametrize("instances", [1, 2])
def test_requests_accumulate_while_every_instance_is_busy(instances: int) -> None:
    """Starting at once is only for a free instance: while every instance runs a batch,
    sparse arrivals queue up (no wakeup is even armed for them) and leave together, up to
    ``max_batch_size``, the moment an instance is free."""
    core = make(max_concurrent_batches=instances)
    now = teach_sparse(core, T0)
    running = []
    for i in range(instances):  # sparse: each takes a free instance at once
        now += 2 * MS
        core.submit(100 + i, 1, "g", now_ns=now)
        (batch,) = started(core.poll(now))
        running.append(batch.batch_id)
    for i in range(10):  # 2 ms apart, far beyond the delay, but no instance is free
        now += 2 * MS
        core.submit(i, 1, "g", now_ns=now)
        assert started(core.poll(now)) == [], f"request {i} started on a busy instance"
        assert core.next_wakeup_ns() is None
    core.batch_done(running.pop(0), 20 * MS, now)
    (first,) = started(core.poll(now))
    assert first.item_ids == tuple(range(8))  # max_batch_size
    assert started(core.poll(now + 10 * MS)) == []  # the rest waits for the next free one
    now += 10 * MS
    core.batch_done(first.batch_id if instances == 1 else running.pop(0), 20 * MS, now)
    (second,) = started(core.poll(now))
    assert second.item_ids == (8, 9)


def test_a_freed_instance_takes_a_preferred_size_and_the_rest_keeps_waiting() -> None:
    core = make(preferred_batch_sizes=(4,))
    now = teach_sparse(core, T0)
    now += 2 * MS
    core.submit(100, 1, "g", now_ns=now)
    (busy,) = started(core.poll(now))
    for i in range(6):
        now += 2 * MS
        core.submit(i, 1, "g", now_ns=now)
        assert started(core.poll(now)) == []
    core.batch_done(busy.batch_id, 12 * MS, now)
    (batch,) = started(core.poll(now))
    assert batch.item_ids == (0, 1, 2, 3)
    assert core.queued == 2


def test_gaps_just_above_the_delay_still_wait() -> None:
    """A server saturated by per-request work sees gaps near that cost (here 1.2 delays) even
    under heavy load; there waiting is what forms batches, so only gaps above 1.5 delays count
    as sparse."""
    core = make()
    now = T0
    for i in range(20):
        now += 600 * US
        core.submit(i, 1, "g", now_ns=now)
        events = core.poll(now)
        assert not [e for e in events if isinstance(e, BatchReady)], f"request {i} started at once"
        (batch,) = core.poll(now + DELAY_US * US)
        assert isinstance(batch, BatchReady)
        core.batch_done(batch.batch_id, 100 * US, now + DELAY_US * US)


def test_a_burst_still_waits_for_company() -> None:
    core = make()
    for i in range(4):  # 50 us apart: the next one is expected well inside the delay
        core.submit(i, 1, "g", now_ns=T0 + 50 * US * i)
        assert core.poll(T0 + 50 * US * i) == []
    (batch,) = core.poll(T0 + DELAY_US * US)
    assert isinstance(batch, BatchReady)
    assert batch.item_ids == (0, 1, 2, 3)


def test_triton_behaviour_when_disabled() -> None:
    core = make(skip_idle_delay=False)
    for i in range(4):
        now = T0 + 2 * MS * i
        core.submit(i, 1, "g", now_ns=now)
        events = core.poll(now)
        assert not [e for e in events if isinstance(e, BatchReady)], "it waits its full delay"
        assert core.next_wakeup_ns() == now + DELAY_US * US
        (batch,) = core.poll(now + DELAY_US * US)
        assert isinstance(batch, BatchReady)
        core.batch_done(batch.batch_id, 100 * US, now + DELAY_US * US)


def test_an_idle_spell_is_forgotten_after_a_few_quick_arrivals() -> None:
    core = make()
    now = T0
    for i in range(3):  # sparse: teaches a long gap
        now += 10 * MS
        run_one(core, i, now)
        now += MS
    now += 60_000 * MS  # a minute of silence, then a burst 20 us apart
    ids = []
    for i in range(100, 112):
        now += 20 * US
        core.submit(i, 1, "g", now_ns=now)
        for e in core.poll(now):
            if isinstance(e, BatchReady):
                ids.append(e.item_ids)
                core.batch_done(e.batch_id, 100 * US, now)
    wake = core.next_wakeup_ns()
    assert wake is not None
    tail = [e.item_ids for e in core.poll(wake) if isinstance(e, BatchReady)]
    # only the first few of the burst went alone; the rest waited and were batched together
    everything = ids + tail
    assert sum(len(batch) for batch in everything) == 12
    assert len([batch for batch in everything if len(batch) == 1]) <= 4
    assert max(len(batch) for batch in everything) >= 8


@settings(max_examples=80, deadline=None)
@given(
    gaps_us=st.lists(st.integers(min_value=0, max_value=5_000), min_size=1, max_size=40),
    skip=st.booleans(),
)
def test_every_request_runs_once_within_its_delay(gaps_us: list[int], skip: bool) -> None:
    """Whatever the arrivals, each request starts once, at most ``max_queue_delay_us`` late."""
    core = make(skip_idle_delay=skip, max_batch_size=64)
    arrived: dict[int, int] = {}
    launched: dict[int, int] = {}

    def poll(at: int) -> None:
        for e in core.poll(at):
            if isinstance(e, BatchReady):
                assert not launched.keys() & set(e.item_ids)
                launched.update(dict.fromkeys(e.item_ids, at))
                core.batch_done(e.batch_id, None, at)

    now = T0
    for item_id, gap in enumerate(gaps_us):
        while (wake := core.next_wakeup_ns()) is not None and wake <= now + gap * US:
            poll(max(wake, now))
        now += gap * US
        core.submit(item_id, 1, "g", now_ns=now)
        arrived[item_id] = now
        poll(now)
    while (wake := core.next_wakeup_ns()) is not None:
        poll(max(wake, now))
    assert launched.keys() == arrived.keys()
    for item_id, at in launched.items():
        assert arrived[item_id] <= at <= arrived[item_id] + DELAY_US * US
