"""The asyncio driver of :class:`~edgefabric.batching.core.BatchingCore`.

It owns what the core leaves out: one timer (``loop.call_later`` for the core's next wakeup),
one future per waiting request, and one task per running batch. Every decision (order, launch,
timeouts, admission) stays in the core. Loop-bound objects are created inside the running loop
on first use, and the scheduler stays bound to that loop.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgefabric.batching.config import BatchingConfig
from edgefabric.batching.core import BatchingCore, BatchReady, Expired, ExpiryReason, Released
from edgefabric.batching.merge import batch_rows, group_key, merge, split
from edgefabric.errors import (
    DeadlineExceededError,
    EdgefabricError,
    InternalError,
    ModelNotReadyError,
    OverloadedError,
)
from edgefabric.inference import InferenceRequest, Tensors
from edgefabric.metrics import ServingMetrics
from edgefabric.runtime.base import LoadedModel
from edgefabric.stats import VersionStats
from edgefabric.telemetry import tracing

__all__ = ["BatchScheduler"]

log = logging.getLogger(__name__)

_Outcome = Tensors | EdgefabricError


@dataclass(slots=True, eq=False)
class _Waiter:
    inputs: Tensors
    output_names: tuple[str, ...]
    submitted_ns: int
    future: asyncio.Future[Tensors]


class BatchScheduler:
    """Batches concurrent :meth:`infer` calls of one model version into fewer model runs.

    ``clock_ns`` must tick on the clock of ``InferenceRequest.deadline_s`` (``time.monotonic``).
    Statistics: queue time per request and one execution per batch go to ``stats``; answering
    (success and failure counts) stays with the caller.
    """

    def __init__(
        self,
        config: BatchingConfig,
        model: LoadedModel,
        stats: VersionStats,
        metrics: ServingMetrics | None = None,
        *,
        model_name: str = "",
        version: str = "",
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.config = config
        self._model = model
        self._stats = stats
        self._metrics = metrics
        self._model_name = model_name
        self._version = version
        self._clock_ns = clock_ns
        name = f"model {model_name!r}" + (f" version {version}" if version else "")
        self._label = f"{name}: " if model_name else ""
        self._core = BatchingCore(config, label=self._label)
        self._ids = itertools.count()
        self._waiters: dict[int, _Waiter] = {}
        self._results: dict[int, _Outcome] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._closed = False

    @property
    def queue_depths(self) -> dict[int, int]:
        """Requests waiting per priority level (1 = highest)."""
        return self._core.queue_depths()

    @property
    def running_batches(self) -> int:
        """Batches running now."""
        return self._core.running

    async def infer(self, request: InferenceRequest, output_names: Sequence[str]) -> Tensors:
        """Queue ``request``, run it in a batch, and return its ``output_names`` outputs.

        Raises ``OverloadedError`` or ``DeadlineExceededError`` at admission,
        ``DeadlineExceededError`` when its queue timeout or deadline passes while it waits,
        the model's error when its batch fails, ``ModelNotReadyError`` once closed.
        """
        loop = self._bind()
        if self._closed:
            raise ModelNotReadyError(f"{self._label}the batcher is closed (model unloading)")
        rows = batch_rows(request.inputs)
        item_id = next(self._ids)
        now_ns = self._clock_ns()
        deadline_ns = None if request.deadline_s is None else round(request.deadline_s * 1e9)
        try:
            self._core.submit(
                item_id,
                rows,
                group_key(request.inputs),
                priority=request.priority,
                deadline_ns=deadline_ns,
                timeout_us=request.timeout_us,
                now_ns=now_ns,
            )
        except OverloadedError:
            self._count_shed("queue_full")
            raise
        except DeadlineExceededError:
            self._count_shed("deadline_admission")
            raise
        future: asyncio.Future[Tensors] = loop.create_future()
        self._waiters[item_id] = _Waiter(request.inputs, tuple(output_names), now_ns, future)
        try:
            self._pump()
            with tracing.span("batch", attributes={"edgefabric.rows": rows}):
                return await future
        except asyncio.CancelledError:
            if self._core.cancel(item_id):
                self._pump()
            raise
        finally:
            del self._waiters[item_id]

    async def close(self) -> None:
        """Take no new requests; run the queued ones at once and return when all are done."""
        self._closed = True
        if self._loop is None:
            return
        self._core.drain()
        self._pump()
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._update_depths()

    # -- internals ----------------------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("this BatchScheduler is bound to another event loop")
        return loop

    def _pump(self) -> None:
        """Poll the core, act on its events, and re-arm the one timer."""
        now_ns = self._clock_ns()
        for event in self._core.poll(now_ns):
            if isinstance(event, BatchReady):
                self._start(event, now_ns)
            elif isinstance(event, Expired):
                self._expire(event, now_ns)
            elif isinstance(event, Released):
                self._release(event)
        self._update_depths()
        self._arm_timer(now_ns)

    def _arm_timer(self, now_ns: int) -> None:
        wake_ns = self._core.next_wakeup_ns()
        if wake_ns == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = wake_ns
        if wake_ns is not None:
            delay_s = max(0, wake_ns - now_ns) / 1e9
            self._timer = asyncio.get_running_loop().call_later(delay_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._pump()

    def _start(self, batch: BatchReady, now_ns: int) -> None:
        # A caller cancelled in this loop iteration has not reached core.cancel yet: leave
        # it out here so that it never runs.
        members = {
            item_id: waiter
            for item_id in batch.item_ids
            if not (waiter := self._waiters[item_id]).future.done()
        }
        queue_ns = [now_ns - waiter.submitted_ns for waiter in members.values()]
        if self._metrics is not None and members:
            rows = sum(batch_rows(waiter.inputs) for waiter in members.values())
            self._metrics.observe_batch(
                self._model_name, self._version, rows, [ns / 1e9 for ns in queue_ns]
            )
        task = asyncio.get_running_loop().create_task(self._run(batch.batch_id, members, queue_ns))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch_id: int, members: dict[int, _Waiter], queue_ns: list[int]) -> None:
        if not members:
            self._finish(batch_id, {}, None)
            return
        waiters = list(members.values())
        started_ns = self._clock_ns()
        names = list(dict.fromkeys(name for w in waiters for name in w.output_names))
        try:
            merged, row_counts = merge([waiter.inputs for waiter in waiters])
            outputs, timings = await self._model.infer(merged, names)
            parts = split(outputs, row_counts)
            picked = [_pick(part, w.output_names) for part, w in zip(parts, waiters, strict=True)]
        except asyncio.CancelledError:
            stopped = ModelNotReadyError(f"{self._label}the batch was cancelled while it ran")
            self._finish(batch_id, dict.fromkeys(members, stopped), None)
            raise
        except EdgefabricError as exc:
            self._finish(batch_id, dict.fromkeys(members, exc), None)
            return
        except Exception as exc:  # a model that broke the seam's contract; keep serving
            log.error("%sbatch %d failed", self._label, batch_id, exc_info=exc)
            error = InternalError(f"{self._label}{type(exc).__name__} while running a batch")
            self._finish(batch_id, dict.fromkeys(members, error), None)
            return
        self._stats.record_batch(timings, sum(row_counts), queue_ns)
        if self._metrics is not None:
            compute_ns = timings.input_ns + timings.infer_ns + timings.output_ns
            self._metrics.observe_compute(self._model_name, self._version, compute_ns / 1e9)
        self._finish(
            batch_id, dict(zip(members, picked, strict=True)), self._clock_ns() - started_ns
        )

    def _finish(self, batch_id: int, outcomes: dict[int, _Outcome], exec_ns: int | None) -> None:
        for item_id, outcome in outcomes.items():
            # Each request raises its own copy: one exception object raised in many
            # coroutines would collect all their tracebacks.
            self._results[item_id] = (
                copy.copy(outcome) if isinstance(outcome, Exception) else outcome
            )
        self._core.batch_done(batch_id, exec_ns, self._clock_ns())
        self._pump()

    def _expire(self, event: Expired, now_ns: int) -> None:
        waiter = self._waiters[event.item_id]
        if waiter.future.done():
            return
        waited_ms = (now_ns - waiter.submitted_ns) / 1e6
        if event.reason is ExpiryReason.TIMEOUT:
            self._count_shed("queue_timeout")
            message = f"waited {waited_ms:.3f} ms in the batch queue, past its queue timeout"
        else:
            self._count_shed("deadline")
            message = f"the deadline passed after {waited_ms:.3f} ms in the batch queue"
        waiter.future.set_exception(DeadlineExceededError(f"{self._label}{message}"))

    def _release(self, event: Released) -> None:
        for item_id in event.item_ids:
            outcome = self._results.pop(item_id, None)
            waiter = self._waiters.get(item_id)
            if outcome is None or waiter is None or waiter.future.done():
                continue
            if isinstance(outcome, EdgefabricError):
                waiter.future.set_exception(outcome)
            else:
                waiter.future.set_result(outcome)

    def _update_depths(self) -> None:
        if self._metrics is None:
            return
        for level, depth in self._core.queue_depths().items():
            self._metrics.set_queue_depth(self._model_name, self._version, level, depth)

    def _count_shed(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.count_shed(self._model_name, self._version, reason)


def _pick(outputs: Tensors, names: Sequence[str]) -> Tensors:
    missing = [name for name in names if name not in outputs]
    if missing:
        raise InternalError(f"the model returned no output {missing}; it returned {list(outputs)}")
    return {name: outputs[name] for name in names}
