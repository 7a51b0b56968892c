"""The sans-I/O dynamic batching core: queues, batch formation, timeouts, admission.

No asyncio, threads or clocks here: every method that depends on time takes ``now_ns`` (any
monotonic nanosecond clock), so tests drive it with plain integers. A driver (see
:mod:`edgefabric.batching.driver`) owns the timer and the futures and follows one contract:

    after submit, cancel, batch_done or a timer: events = core.poll(now_ns), act on each event,
    then arm one timer for core.next_wakeup_ns()

Order. Levels are strict: every queued request of level 1 ranks ahead of level 2, and so on.
Within a level, earliest deadline first; requests without a deadline come after those with
one; equals are served first come, first served. A batch takes the best-ranked request and then
the next best of the same group (same input names, dtypes and non-batch dims) up to
``max_batch_size`` rows; it stops at the first one that does not fit, so order holds within a
group. Requests of other groups are skipped, not blocked behind.

Launch. A batch starts at once when it reaches a preferred size or ``max_batch_size`` (it is
cut at the largest preferred size it reaches), or when the next request of its group does not
fit, or (``skip_idle_delay``) while requests arrive clearly further apart than
``max_queue_delay_us`` (an EWMA of the gaps, each counted up to three delays, above 1.5 delays):
then waiting would not find company and only adds latency. The margin matters: a server that is
saturated by per-request work sees gaps near its per-request cost even under heavy load, and
there waiting is what forms batches. Otherwise it starts when its oldest request has waited
``max_queue_delay_us``, or earlier when waiting longer would make one of its requests miss its
deadline (estimated run time).
At most ``max_concurrent_batches`` run at once. The best-ranked batch goes first; while it is
still filling, a due batch of another group may take a free instance when that does not delay
the best-ranked one (another instance stays free, or it should finish before that one is due).

Admission. ``submit`` refuses at once, instead of queueing work that is bound to fail:
``OverloadedError`` (with ``retry_after_ms``) when the level holds ``max_queue_size`` requests,
``DeadlineExceededError`` when the request cannot finish by its deadline even optimistically:
the batches ahead of it (same or better rank, any group, full batches) and the one it joins,
at the measured execution time per batch size (an EWMA), on the earliest free instances. With
no measurements yet, the estimate is zero and nothing is shed for its deadline.

Timeouts. A request's queue timeout (its level's, or its own shorter one) fires on time, even
while every instance is busy. REJECT answers it at once. DELAY keeps it, ranked behind every
request of its level (and of higher levels) that has not timed out, as Triton does. Under strict
priority that alone could starve it forever, so delayed requests *age*: for every further
timeout period they wait they rise one level, and after ``level + 1`` periods in all they rank
ahead of every level (by deadline, then arrival, among such requests), so the wait of a DELAY
request is bounded by ``(level + 1) * timeout`` plus the batches of requests that aged before
it. Levels without a timeout never age. A deadline (the client's) always ends a request.

Ordering. With ``preserve_ordering``, results of requests that ran are released in submission
order (``Released`` events); requests that leave the queue early (timeout, deadline, cancel)
are answered at once and hold nobody back.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import itertools
import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

from edgefabric.batching.config import BatchingConfig, TimeoutAction
from edgefabric.errors import DeadlineExceededError, InvalidInputError, OverloadedError

__all__ = ["BatchReady", "BatchingCore", "Event", "Expired", "ExpiryReason", "Released"]

_EWMA_WEIGHT = 0.2
_GAP_CAP = 3
_SPARSE_MARGIN = 1.5


class ExpiryReason(enum.Enum):
    """Why a request left the queue without running."""

    TIMEOUT = "queue_timeout"
    """Its queue timeout fired under the REJECT action."""
    DEADLINE = "deadline"
    """Its deadline passed while it waited."""


@dataclass(frozen=True, slots=True)
class BatchReady:
    """Start this batch now: merge ``item_ids`` (in this order) and run them once."""

    batch_id: int
    item_ids: tuple[int, ...]
    rows: int


@dataclass(frozen=True, slots=True)
class Expired:
    """``item_id`` left the queue and will never run; answer it with an error."""

    item_id: int
    reason: ExpiryReason


@dataclass(frozen=True, slots=True)
class Released:
    """Results of these finished items may be delivered now, in this order."""

    item_ids: tuple[int, ...]


Event = BatchReady | Expired | Released


class _Timer(enum.IntEnum):
    TIMEOUT = 0
    AGE = 1
    DEADLINE = 2


# (tier, 0 if a deadline else 1, deadline, seq): lower ranks first.
_Key = tuple[int, int, int, int]


@dataclass(slots=True)
class _Item:
    item_id: int
    rows: int
    group: Hashable
    level: int
    arrival_ns: int
    deadline_ns: int | None
    timeout_ns: int
    action: TimeoutAction
    seq: int
    key: _Key
    ages: int = 0


@dataclass(slots=True)
class _Running:
    item_ids: tuple[int, ...]
    rows: int
    started_ns: int


@dataclass(slots=True)
class _Plan:
    """A group's next batch: its requests in rank order, and when it is due."""

    items: list[_Item]
    rows: int
    immediate: bool
    launch_at_ns: int
    complete: bool = False
    """It holds every queued request of its group and has room for more."""
    oldest_ns: int = 0
    earliest_deadline_ns: int | None = None

    def due(self, now_ns: int) -> bool:
        return self.immediate or now_ns >= self.launch_at_ns


class _ExecEstimate:
    """Execution time per batch size: an EWMA per measured size, interpolated between them."""

    def __init__(self) -> None:
        self._ewma: dict[int, float] = {}
        self._sizes: list[int] = []

    def observe(self, rows: int, ns: int) -> None:
        old = self._ewma.get(rows)
        if old is None:
            bisect.insort(self._sizes, rows)
            self._ewma[rows] = float(ns)
        else:
            self._ewma[rows] = old + _EWMA_WEIGHT * (ns - old)

    def estimate(self, rows: int) -> int:
        if not self._sizes:
            return 0
        exact = self._ewma.get(rows)
        if exact is not None:
            return round(exact)
        index = bisect.bisect_left(self._sizes, rows)
        if index == len(self._sizes):
            return round(self._ewma[self._sizes[-1]])
        high = self._sizes[index]
        low = self._sizes[index - 1] if index else 0
        low_ns = self._ewma[low] if index else 0.0
        return round(low_ns + (self._ewma[high] - low_ns) * (rows - low) / (high - low))


class BatchingCore:
    """Queues and batch formation of one model version; see the module docstring."""

    def __init__(self, config: BatchingConfig, *, label: str = "") -> None:
        self.config = config
        self._label = label
        self._now = -(2**62)
        self._seq = itertools.count()
        self._batch_ids = itertools.count(1)
        self._items: dict[int, _Item] = {}
        self._heaps: dict[Hashable, list[tuple[_Key, int]]] = {}
        self._group_size: dict[Hashable, int] = {}
        self._plans: dict[Hashable, _Plan] = {}
        self._cut_sizes = {*config.preferred_batch_sizes, config.max_batch_size}
        # (at, tie-break, item id, item seq, kind); an entry is live while its item is queued
        self._timers: list[tuple[int, int, int, int, _Timer]] = []
        self._depth = dict.fromkeys(range(1, config.levels + 1), 0)
        self._running: dict[int, _Running] = {}
        self._exec = _ExecEstimate()
        self._gap_ewma_ns: float | None = None
        self._last_arrival_ns: int | None = None
        self._sparse = False
        self._draining = False
        self._order: deque[int] = deque()
        self._finished: set[int] = set()
        self._dropped: set[int] = set()
        self._releasable: list[int] = []

    # -- queries ------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Requests waiting in the queue."""
        return len(self._items)

    @property
    def running(self) -> int:
        """Batches started and not yet done."""
        return len(self._running)

    def queue_depths(self) -> dict[int, int]:
        """Requests waiting per priority level (1 = highest)."""
        return dict(self._depth)

    def estimate_exec_ns(self, rows: int) -> int:
        """Estimated execution time of a batch of ``rows`` rows (0 before any measurement)."""
        return self._exec.estimate(rows)

    def next_wakeup_ns(self) -> int | None:
        """When the driver must call :meth:`poll` next (``None``: only after other calls)."""
        times: list[int] = []
        while self._timers and self._timer_item(self._timers[0]) is None:
            heapq.heappop(self._timers)
        if self._timers:
            times.append(self._timers[0][0])
        if self._releasable:
            times.append(self._now)
        if len(self._running) < self.config.max_concurrent_batches:
            plans = self._ranked_plans()
            if plans:
                head = plans[0]
                times.append(self._now if head.immediate else head.launch_at_ns)
            # The others count once they fall due; one due now waits for the head (see poll).
            times.extend(p.launch_at_ns for p in plans[1:] if not p.due(self._now))
        return min(times) if times else None

    # -- commands -----------------------------------------------------------------------------

    def submit(
        self,
        item_id: int,
        rows: int,
        group: Hashable,
        *,
        priority: int = 0,
        deadline_ns: int | None = None,
        timeout_us: int = 0,
        now_ns: int,
    ) -> None:
        """Queue a request of ``rows`` rows, or refuse it with a project error."""
        self._advance(now_ns)
        if item_id in self._items:
            raise ValueError(f"item id {item_id} is already queued")
        if self._draining:
            raise RuntimeError("the batching core is draining and takes no new requests")
        level = self.config.level_for(priority)
        if not 1 <= rows <= self.config.max_batch_size:
            raise InvalidInputError(
                f"{self._label}the request has {rows} rows; this model takes 1 to "
                f"{self.config.max_batch_size} rows per request (max_batch_size)"
            )
        policy = self.config.policy_for(level)
        if policy.max_queue_size and self._depth[level] >= policy.max_queue_size:
            rows_queued = sum(i.rows for i in self._items.values() if i.level <= level)
            retry_ms = max(1, math.ceil(self._estimate_finish_ns(rows_queued, now_ns) / 1e6))
            raise OverloadedError(
                f"{self._label}the queue of priority level {level} is full "
                f"({policy.max_queue_size} requests); retry after {retry_ms} ms",
                retry_after_ms=retry_ms,
            )
        self._observe_arrival(now_ns)
        seq = next(self._seq)
        key: _Key = (2 * level, *_deadline_rank(deadline_ns), seq)
        if deadline_ns is not None:
            self._admit_deadline(rows, key, deadline_ns, now_ns)
        item = _Item(
            item_id=item_id,
            rows=rows,
            group=group,
            level=level,
            arrival_ns=now_ns,
            deadline_ns=deadline_ns,
            timeout_ns=policy.timeout_us(timeout_us) * 1000,
            action=policy.timeout_action,
            seq=seq,
            key=key,
        )
        self._items[item_id] = item
        self._depth[level] += 1
        self._group_size[group] = self._group_size.get(group, 0) + 1
        heapq.heappush(self._heaps.setdefault(group, []), (key, item_id))
        self._add_to_plan(item)
        if item.timeout_ns:
            kind = _Timer.AGE if item.action is TimeoutAction.DELAY else _Timer.TIMEOUT
            self._push_timer(now_ns + item.timeout_ns, item, kind)
        if deadline_ns is not None:
            self._push_timer(deadline_ns, item, _Timer.DEADLINE)
        if self.config.preserve_ordering:
            self._order.append(item_id)

    def cancel(self, item_id: int) -> bool:
        """Take a queued request out at once; ``False`` when it is not queued (ran or gone)."""
        if item_id not in self._items:
            return False
        self._remove(item_id)
        self._drop(item_id)
        return True

    def poll(self, now_ns: int) -> list[Event]:
        """Fire due timeouts and deadlines, start the batches due now, release results."""
        self._advance(now_ns)
        events: list[Event] = []
        while self._timers and self._timers[0][0] <= now_ns:
            entry = heapq.heappop(self._timers)
            item = self._timer_item(entry)
            if item is None:
                continue
            kind = entry[4]
            if kind is _Timer.AGE:
                self._age(item)
                continue
            self._remove(item.item_id)
            self._drop(item.item_id)
            reason = ExpiryReason.TIMEOUT if kind is _Timer.TIMEOUT else ExpiryReason.DEADLINE
            events.append(Expired(item.item_id, reason))
        while len(self._running) < self.config.max_concurrent_batches:
            plan = self._next_launch(now_ns)
            if plan is None:
                break
            events.append(self._launch(plan.items, now_ns))
        if self._releasable:
            events.append(Released(tuple(self._releasable)))
            self._releasable.clear()
        return events

    def batch_done(self, batch_id: int, exec_ns: int | None, now_ns: int) -> None:
        """A batch finished; its instance is free.

        ``exec_ns`` (how long it ran) feeds the execution-time estimate; pass ``None`` for a
        batch that failed, whose time says nothing about the next one.
        """
        self._advance(now_ns)
        batch = self._running.pop(batch_id, None)
        if batch is None:
            raise ValueError(f"batch {batch_id} is not running")
        if exec_ns is not None:
            self._exec.observe(batch.rows, max(exec_ns, 0))
            self._plans.clear()  # deadline-driven launch times use the estimate
        if not self.config.preserve_ordering:
            self._releasable.extend(batch.item_ids)
            return
        self._finished.update(batch.item_ids)
        self._release_in_order()

    def drain(self) -> None:
        """Take no new requests and start queued ones without waiting to fill batches."""
        self._draining = True
        self._plans.clear()

    # -- internals ----------------------------------------------------------------------------

    def _advance(self, now_ns: int) -> None:
        if now_ns < self._now:
            raise ValueError(f"now_ns went backwards: {now_ns} after {self._now}")
        self._now = now_ns

    def _observe_arrival(self, now_ns: int) -> None:
        """Feed the inter-arrival EWMA; gaps count at most ``_GAP_CAP`` delays, so one idle
        spell is forgotten after a few quick arrivals."""
        last = self._last_arrival_ns
        self._last_arrival_ns = now_ns
        if last is None:
            return
        cap = _GAP_CAP * max(self.config.max_queue_delay_us * 1000, 1)
        gap = min(now_ns - last, cap)
        old = self._gap_ewma_ns
        ewma = gap if old is None else old + _EWMA_WEIGHT * (gap - old)
        self._gap_ewma_ns = ewma
        sparse = (
            self.config.skip_idle_delay
            and ewma > _SPARSE_MARGIN * self.config.max_queue_delay_us * 1000
        )
        if sparse is not self._sparse:
            self._sparse = sparse
            self._plans.clear()  # every filling batch's launch time changes

    def _push_timer(self, at_ns: int, item: _Item, kind: _Timer) -> None:
        heapq.heappush(self._timers, (at_ns, next(self._seq), item.item_id, item.seq, kind))
        if len(self._timers) > 4 * len(self._items) + 64:
            self._timers = [t for t in self._timers if self._timer_item(t) is not None]
            heapq.heapify(self._timers)

    def _timer_item(self, entry: tuple[int, int, int, int, _Timer]) -> _Item | None:
        item = self._items.get(entry[2])
        return item if item is not None and item.seq == entry[3] else None

    def _age(self, item: _Item) -> None:
        """One more timeout period passed for a DELAY item: demote first, then rise."""
        item.ages += 1
        base = 2 * item.level + 1
        tier = base if item.ages == 1 else max(1, base - 2 * (item.ages - 1))
        item.key = (tier, *item.key[1:])
        heapq.heappush(self._heaps[item.group], (item.key, item.item_id))
        self._plans.pop(item.group, None)
        if tier > 1:
            self._push_timer(item.arrival_ns + (item.ages + 1) * item.timeout_ns, item, _Timer.AGE)

    def _remove(self, item_id: int) -> _Item:
        item = self._items.pop(item_id)
        self._depth[item.level] -= 1
        self._plans.pop(item.group, None)
        left = self._group_size[item.group] - 1
        if left == 0:
            del self._group_size[item.group]
            del self._heaps[item.group]
            return item
        self._group_size[item.group] = left
        heap = self._heaps[item.group]
        if len(heap) > 2 * left + 32:
            self._heaps[item.group] = [(i.key, i.item_id) for i in self._live(heap)]
            heapq.heapify(self._heaps[item.group])
        return item

    def _live(self, heap: list[tuple[_Key, int]]) -> list[_Item]:
        live = []
        for key, item_id in heap:
            item = self._items.get(item_id)
            if item is not None and item.key == key:
                live.append(item)
        return live

    def _drop(self, item_id: int) -> None:
        if self.config.preserve_ordering:
            self._dropped.add(item_id)
            self._release_in_order()

    def _release_in_order(self) -> None:
        order = self._order
        while order and (order[0] in self._finished or order[0] in self._dropped):
            head = order.popleft()
            if head in self._finished:
                self._finished.discard(head)
                self._releasable.append(head)
            else:
                self._dropped.discard(head)

    def _ranked_plans(self) -> list[_Plan]:
        """Every group's next batch, best-ranked first (plans are cached per group)."""
        for group in self._heaps:
            if group not in self._plans:
                self._plans[group] = self._plan(group)
        return sorted(self._plans.values(), key=lambda plan: plan.items[0].key)

    def _next_launch(self, now_ns: int) -> _Plan | None:
        """The batch to start now, if any.

        The best-ranked batch first. While it is still filling, a batch of another group that
        is due may use a free instance, but only one that does not delay it: another instance
        stays free, or the batch should finish before the best-ranked one is due.
        """
        plans = self._ranked_plans()
        if not plans:
            return None
        head = plans[0]
        if head.due(now_ns):
            return head
        spare = self.config.max_concurrent_batches - len(self._running) - 1
        for plan in plans[1:]:
            if plan.due(now_ns) and (
                spare > 0 or now_ns + self._exec.estimate(plan.rows) <= head.launch_at_ns
            ):
                return plan
        return None

    def _plan(self, group: Hashable) -> _Plan:
        """The batch that the best-ranked requests of ``group`` would form now."""
        heap = self._heaps[group]
        limit = self.config.max_batch_size
        popped: list[_Item] = []
        taken: list[_Item] = []
        rows = 0
        while heap and rows < limit:
            key, item_id = heapq.heappop(heap)
            item = self._items.get(item_id)
            if item is None or item.key != key:
                continue  # stale: the item left or was re-ranked
            popped.append(item)
            if rows + item.rows > limit:
                break
            taken.append(item)
            rows += item.rows
        for item in popped:
            heapq.heappush(heap, (item.key, item.item_id))
        return self._cut(taken, full=len(popped) > len(taken) or rows == limit)

    def _cut(self, taken: list[_Item], *, full: bool) -> _Plan:
        cumulative = list(itertools.accumulate(item.rows for item in taken))
        preferred = [i for i, total in enumerate(cumulative) if total in self._cut_sizes]
        if preferred:
            cut = preferred[-1] + 1
            return _Plan(taken[:cut], cumulative[cut - 1], True, self._now)
        deadlines = [item.deadline_ns for item in taken if item.deadline_ns is not None]
        plan = _Plan(
            taken,
            cumulative[-1],
            full or self._draining,
            0,
            complete=not full,
            oldest_ns=min(item.arrival_ns for item in taken),
            earliest_deadline_ns=min(deadlines, default=None),
        )
        self._time(plan)
        return plan

    def _time(self, plan: _Plan) -> None:
        """When a filling batch is due: its delay, earlier for a deadline, or at once while
        requests arrive further apart than the delay (waiting would not find company)."""
        delay_ns = self.config.max_queue_delay_us * 1000
        launch_at = plan.oldest_ns + delay_ns
        if self._sparse:
            launch_at = plan.oldest_ns
        if plan.earliest_deadline_ns is not None:
            run_ns = self._exec.estimate(plan.rows)
            launch_at = min(launch_at, plan.earliest_deadline_ns - run_ns)
        plan.launch_at_ns = launch_at

    def _add_to_plan(self, item: _Item) -> None:
        """Update the group's cached plan in place when ``item`` ranks last (the common case)."""
        plan = self._plans.get(item.group)
        if plan is None or not plan.complete or item.key < plan.items[-1].key or self._draining:
            self._plans.pop(item.group, None)
            return
        rows = plan.rows + item.rows
        if rows > self.config.max_batch_size:  # it does not fit: the batch is full
            plan.immediate, plan.complete = True, False
            return
        plan.items.append(item)
        plan.rows = rows
        if rows in self._cut_sizes:
            plan.immediate, plan.complete = True, False
            return
        if item.deadline_ns is not None:
            earliest = plan.earliest_deadline_ns
            plan.earliest_deadline_ns = (
                item.deadline_ns if earliest is None else min(earliest, item.deadline_ns)
            )
        self._time(plan)

    def _launch(self, items: list[_Item], now_ns: int) -> BatchReady:
        batch_id = next(self._batch_ids)
        ids = tuple(item.item_id for item in items)
        rows = sum(item.rows for item in items)
        for item_id in ids:
            self._remove(item_id)
        self._running[batch_id] = _Running(ids, rows, now_ns)
        return BatchReady(batch_id, ids, rows)

    def _admit_deadline(self, rows: int, key: _Key, deadline_ns: int, now_ns: int) -> None:
        left_ms = (deadline_ns - now_ns) / 1e6
        if deadline_ns <= now_ns:
            raise DeadlineExceededError(
                f"{self._label}the request's deadline passed {-left_ms:.3f} ms before it "
                f"could be queued"
            )
        ahead = sum(item.rows for item in self._items.values() if item.key < key)
        finish_ns = self._estimate_finish_ns(ahead + rows, now_ns)
        if now_ns + finish_ns > deadline_ns:
            raise DeadlineExceededError(
                f"{self._label}the request would finish in about {finish_ns / 1e6:.3f} ms "
                f"({ahead} rows queued ahead of it) but its deadline is in {left_ms:.3f} ms; "
                f"shed at admission: retry with a later deadline or a higher priority"
            )

    def _estimate_finish_ns(self, rows_through: int, now_ns: int) -> int:
        """Optimistic time until ``rows_through`` queued rows (in rank order) have run."""
        limit = self.config.max_batch_size
        slots = self.config.max_concurrent_batches
        free_in = sorted(
            max(0, batch.started_ns + self._exec.estimate(batch.rows) - now_ns)
            for batch in self._running.values()
        )
        free_in += [0] * (slots - len(free_in))
        free_in.sort()
        batches = max(1, math.ceil(rows_through / limit))
        rounds, slot = divmod(batches - 1, slots)
        last_rows = rows_through - (batches - 1) * limit
        return free_in[slot] + rounds * self._exec.estimate(limit) + self._exec.estimate(last_rows)


def _deadline_rank(deadline_ns: int | None) -> tuple[int, int]:
    return (1, 0) if deadline_ns is None else (0, deadline_ns)
