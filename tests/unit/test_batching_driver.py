"""The asyncio driver, on an event loop with virtual time: no sleeps, no sockets, no threads.

:class:`VirtualLoop` never waits: when every task is blocked it jumps its clock to the next
timer. The scheduler reads the same clock, so "2 ms later" is exact and instant. Model runs
block on events the test sets.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from edgefabric.batching import BatchingConfig, BatchScheduler, QueuePolicy, TimeoutAction
from edgefabric.errors import (
    DeadlineExceededError,
    InvalidInputError,
    ModelNotReadyError,
    OverloadedError,
)
from edgefabric.inference import InferenceRequest, Tensors
from edgefabric.kserve.datatypes import DATATYPES
from edgefabric.metrics import ServingMetrics
from edgefabric.models.config import GraphTensor
from edgefabric.runtime.base import RunTimings
from edgefabric.stats import VersionStats

pytestmark = pytest.mark.unit

US = 1_000
MS = 1_000_000


class _JumpSelector(selectors.BaseSelector):
    """Polls real file descriptors without blocking; an idle wait moves virtual time instead."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop
        self._inner = selectors.DefaultSelector()

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def get_map(self) -> Any:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._inner.select(0)
        if ready or timeout == 0 or self._loop.wake_idle_waiters():
            return ready
        if timeout is None:
            raise RuntimeError("deadlock: every task waits and no timer is set")
        self._loop.now_ns += max(1, round(timeout * 1e9))
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves when nothing else can run."""

    def __init__(self) -> None:
        self.now_ns = 1_000_000 * MS
        self._idle: list[asyncio.Future[None]] = []
        super().__init__(_JumpSelector(self))

    def time(self) -> float:
        return self.now_ns / 1e9

    def clock_ns(self) -> int:
        return self.now_ns

    def wake_idle_waiters(self) -> bool:
        waiters, self._idle = self._idle, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        return bool(waiters)

    async def settle(self) -> None:
        """Run every task until all of them wait; no virtual time passes."""
        waiter = self.create_future()
        self._idle.append(waiter)
        await waiter

    async def advance(self, ns: int) -> None:
        """Let ``ns`` of virtual time pass, running whatever falls due on the way."""
        waiter = self.create_future()
        self.call_at((self.now_ns + ns) / 1e9, waiter.set_result, None)
        await waiter
        await self.settle()


def run(test: Callable[[VirtualLoop], Awaitable[None]]) -> None:
    """Run ``test`` on a fresh virtual loop (``asyncio.run`` with a loop factory)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualLoop)
        await test(loop)

    with asyncio.Runner(loop_factory=VirtualLoop) as runner:
        runner.run(main())


@dataclass
class Call:
    inputs: Tensors
    output_names: list[str]
    release: asyncio.Event = field(default_factory=asyncio.Event)
    error: Exception | None = None


class FakeModel:
    """A row-wise model (y = 2x + 1, z = row sums) whose runs wait for the test."""

    def __init__(self, *, gated: bool = True) -> None:
        self.gated = gated
        self.calls: list[Call] = []
        self.running = 0
        self.most_running = 0

    @property
    def graph_inputs(self) -> Sequence[GraphTensor]:
        return [GraphTensor("x", DATATYPES["FP32"], (None, 2))]

    @property
    def graph_outputs(self) -> Sequence[GraphTensor]:
        return [
            GraphTensor("y", DATATYPES["FP32"], (None, 2)),
            GraphTensor("z", DATATYPES["FP32"], (None,)),
        ]

    @property
    def execution_provider(self) -> str:
        return "FakeExecutionProvider"

    async def infer(
        self, inputs: Tensors, output_names: Sequence[str]
    ) -> tuple[Tensors, RunTimings]:
        call = Call(inputs, list(output_names))
        self.calls.append(call)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gated:
                await call.release.wait()
        finally:
            self.running -= 1
        if call.error is not None:
            raise call.error
        return _compute(inputs, output_names), RunTimings(queue_ns=7, infer_ns=100)

    def close(self) -> None:
        pass


def _compute(inputs: Tensors, output_names: Sequence[str]) -> Tensors:
    x = inputs["x"].astype(np.float32)
    everything = {"y": x * np.float32(2) + np.float32(1), "z": x.sum(axis=1)}
    return {name: everything[name] for name in output_names}


def _as_bytes(tensors: Tensors) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    return {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in tensors.items()}


def request(rows: int = 1, start: float = 0.0, **fields: Any) -> InferenceRequest:
    """``rows`` rows whose first value is ``start``."""
    x = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2) + np.float32(start)
    return InferenceRequest(model_name="m", inputs={"x": x}, **fields)


def config(**settings: Any) -> BatchingConfig:
    return BatchingConfig(**{"max_batch_size": 8, **settings})


def scheduler(
    loop: VirtualLoop,
    model: FakeModel,
    *,
    stats: VersionStats | None = None,
    metrics: ServingMetrics | None = None,
    **settings: Any,
) -> BatchScheduler:
    return BatchScheduler(
        config(**settings),
        model,
        stats or VersionStats(),
        metrics,
        model_name="m",
        version="1",
        clock_ns=loop.clock_ns,
    )


def spawn(
    sched: BatchScheduler, req: InferenceRequest, names: Sequence[str] = ("y",)
) -> asyncio.Task[Tensors]:
    return asyncio.get_running_loop().create_task(sched.infer(req, names))


# -- batching ----------------------------------------------------------------------------------


def test_concurrent_requests_run_as_one_batch_with_results_as_if_alone() -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel()
        sched = scheduler(loop, model, max_batch_size=5, max_queue_delay_us=1000)
        requests = [request(1, 0.1), request(2, 10.3), request(1, 20.7)]
        tasks = [spawn(sched, r, ["y", "z"]) for r in requests]
        await loop.settle()
        assert model.calls == []
        assert sched.queue_depths == {1: 3}
        tasks.append(spawn(sched, request(1, 30.0), ["y"]))
        await loop.settle()
        (call,) = model.calls
        assert call.inputs["x"].shape == (5, 2)
        call.release.set()
        await loop.settle()
        for task, req in zip(tasks, requests, strict=False):
            alone = _compute(req.inputs, ["y", "z"])
            assert _as_bytes(task.result()) == _as_bytes(alone)
        assert list(tasks[3].result()) == ["y"]
        await sched.close()

    run(body)


def test_a_lone_request_waits_exactly_the_queue_delay() -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel(gated=False)
        sched = scheduler(loop, model, max_queue_delay_us=2000)
        task = spawn(sched, request())
        await loop.advance(2 * MS - 1 * US)
        assert model.calls == []
        await loop.advance(2 * US)
        assert len(model.calls) == 1
        assert task.done()
        await sched.close()

    run(body)


def test_requests_with_different_shapes_run_in_separate_batches() -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel(gated=False)
        sched = scheduler(loop, model, max_concurrent_batches=2)
        wide = InferenceRequest(model_name="m", inputs={"x": np.ones((1, 3), np.float32)})
        tasks = [spawn(sched, request()), spawn(sched, wide)]
        await loop.settle()
        assert sorted(c.inputs["x"].shape for c in model.calls) == [(1, 2), (1, 3)]
        assert tasks[1].result()["y"].shape == (1, 3)
        await sched.close()

    run(body)


def test_concurrent_batches_are_limited_to_the_instance_count() -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel()
        sched = scheduler(loop, model, max_batch_size=1, max_concurrent_batches=2)
        tasks = [spawn(sched, request(start=i)) for i in range(5)]
        await loop.settle()
        assert model.running == 2
        while not all(task.done() for task in tasks):
            for call in model.calls:
                call.release.set()
            await loop.settle()
        assert model.most_running == 2
        assert len(model.calls) == 5
        await sched.close()

    run(body)


def test_strict_priority_through_the_driver() -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel()
        sched = scheduler(
            loop, model, max_batch_size=1, priority_levels=2, default_priority_level=2
        )
        first = spawn(sched, request(start=0))
        await loop.settle()
        low = spawn(sched, request(start=1), ["y"])
        high = spawn(sched, request(start=2, priority=1), ["y"])
        await loop.settle()
        model.gated = False
        model.calls[0].release.set()
        await loop.settle()
        assert [c.inputs["x"][0, 0] for c in model.calls] == [0, 2, 1]
        assert all(t.done() for t in (first, low, high))
        await sched.close()

    run(body)


# -- timeouts, deadlines, cancellation ---------------------------------------------------------


def test_reject_timeout_fires_on_time_while_a_long_batch_runs() -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel()
        metrics = ServingMetrics()
        sched = scheduler(
            loop,
            model,
            metrics=metrics,
            max_batch_size=1,
            default_queue_policy=QueuePolicy(default_timeout_us=2000),
        )
        running = spawn(sched, request())
        await loop.settle()
        waiting = spawn(sched, request())
        await loop.advance(2 * MS - 1)
        assert not waiting.done()
        await loop.advance(1)
        assert waiting.done()
        with pytest.raises(DeadlineExceededError, match="past its queue timeout"):
            waiting.result()
        assert not running.done()
        assert _sample(metrics, "edgefabric_batch_shed_total", reason="queue_timeout") == 1
        model.calls[0].release.set()
        await loop.settle()
        assert running.done()
        assert len(model.calls) == 1
        await sched.close()

    run(body)


def test_deadline_passing_in_the_queue_answers_deadline_exceeded() -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel()
        sched = scheduler(loop, model, max_batch_size=1)
        running = spawn(sched, request())
        await loop.settle()
        waiting = spawn(sched, request(deadline_s=(loop.now_ns + 3 * MS) / 1e9))
        await loop.advance(3 * MS)
        with pytest.raises(DeadlineExceededError, match=r"deadline passed after 3\.000 ms"):
            waiting.result()
        model.calls[0].release.set()
        await running
        await sched.close()

    run(body)


def test_delay_action_keeps_a_timed_out_request_and_runs_it_later() -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel()
        policy = QueuePolicy(TimeoutAction.DELAY, default_timeout_us=1000)
        sched = scheduler(loop, model, max_batch_size=1, default_queue_policy=policy)
        running = spawn(sched, request(start=0))
        await loop.settle()
        old = spawn(sched, request(start=1))
        await loop.advance(500 * US)
        fresh = spawn(sched, request(start=2))
        await loop.advance(700 * US)  # old timed out: delayed, not rejected
        assert not old.done()
        model.gated = False
        model.calls[0].release.set()
        await loop.settle()
        assert [c.inputs["x"][0, 0] for c in model.calls] == [0, 2, 1]
        assert all(t.done() for t in (running, fresh, old))
        await sched.close()

    run(body)


def test_cancelled_caller_leaves_the_queue_at_once_and_never_runs() -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel()
        sched = scheduler(loop, model, max_batch_size=1)
        running = spawn(sched, request(start=0))
        await loop.settle()
        doomed = spawn(sched, request(start=1))
        await loop.settle()
        assert sched.queue_depths == {1: 1}
        doomed.cancel()
        await loop.settle()
        assert doomed.cancelled()
        assert sched.queue_depths == {1: 0}
        model.calls[0].release.set()
        await loop.settle()
        assert running.done()
        assert len(model.calls) == 1
        await sched.close()

    run(body)


def test_cancelled_caller_in_a_running_batch_does_not_disturb_the_others() -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel()
        sched = scheduler(loop, model, max_batch_size=2, max_queue_delay_us=1000)
        gone, kept = spawn(sched, request(start=0)), spawn(sched, request(start=1))
        await loop.settle()
        gone.cancel()
        await loop.settle()
        model.calls[0].release.set()
        await loop.settle()
        assert gone.cancelled()
        assert kept.result()["y"].shape == (1, 2)
        await sched.close()

    run(body)


# -- admission ---------------------------------------------------------------------------------


def test_full_queue_is_overloaded_with_retry_after_and_counted() -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel()
        metrics = ServingMetrics()
        sched = scheduler(
            loop,
            model,
            metrics=metrics,
            max_batch_size=1,
            default_queue_policy=QueuePolicy(max_queue_size=1),
        )
        running = spawn(sched, request())
        await loop.settle()
        queued = spawn(sched, request())
        await loop.settle()
        with pytest.raises(OverloadedError) as caught:
            await sched.infer(request(), ["y"])
        assert caught.value.retry_after_ms > 0
        assert _sample(metrics, "edgefabric_batch_shed_total", reason="queue_full") == 1
        assert _sample(metrics, "edgefabric_batch_queue_depth", priority="1") == 1
        model.gated = False
        model.calls[0].release.set()
        await asyncio.gather(running, queued)
        await sched.close()

    run(body)


def test_unmeetable_deadline_is_shed_at_admission() -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel()
        metrics = ServingMetrics()
        sched = scheduler(loop, model, metrics=metrics, max_batch_size=1)
        first = spawn(sched, request())
        await loop.advance(10 * MS)
        model.calls[0].release.set()
        await first  # measured: about 10 ms per batch
        second = spawn(sched, request())
        await loop.settle()  # runs until about 10 ms from now
        with pytest.raises(DeadlineExceededError, match="shed at admission"):
            await sched.infer(request(deadline_s=(loop.now_ns + 15 * MS) / 1e9), ["y"])
        assert _sample(metrics, "edgefabric_batch_shed_total", reason="deadline_admission") == 1
        model.gated = False
        model.calls[1].release.set()
        await second
        await sched.close()

    run(body)


def test_invalid_priority_is_invalid_input() -> None:
    async def body(loop: VirtualLoop) -> None:
        sched = scheduler(loop, FakeModel())
        with pytest.raises(InvalidInputError, match="priority 2 is out of range"):
            await sched.infer(request(priority=2), ["y"])
        with pytest.raises(InvalidInputError, match="share dim 0"):
            await sched.infer(
                InferenceRequest(
                    model_name="m", inputs={"x": np.ones((1, 2)), "w": np.ones((2, 2))}
                ),
                ["y"],
            )
        await sched.close()

    run(body)


# -- ordering, errors, statistics, lifecycle ---------------------------------------------------


@pytest.mark.parametrize("preserve", [True, False])
def test_preserve_ordering_answers_in_submission_order(preserve: bool) -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel()
        sched = scheduler(
            loop, model, max_batch_size=1, max_concurrent_batches=2, preserve_ordering=preserve
        )
        first, second = spawn(sched, request(start=0)), spawn(sched, request(start=1))
        answered: list[str] = []
        first.add_done_callback(lambda _: answered.append("first"))
        second.add_done_callback(lambda _: answered.append("second"))
        await loop.settle()
        model.calls[1].release.set()
        await loop.settle()
        assert second.done() is not preserve
        model.calls[0].release.set()
        await loop.settle()
        assert answered == (["first", "second"] if preserve else ["second", "first"])
        await sched.close()

    run(body)


def test_model_error_reaches_every_request_of_the_batch() -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel()
        sched = scheduler(loop, model, max_batch_size=3, max_queue_delay_us=1000)
        tasks = [spawn(sched, request(start=i)) for i in range(3)]
        await loop.settle()
        (call,) = model.calls
        call.error = InvalidInputError("the model rejected the input: NaN")
        call.release.set()
        await loop.settle()
        errors = [task.exception() for task in tasks]
        assert all(isinstance(e, InvalidInputError) for e in errors)
        assert {str(e) for e in errors} == {"the model rejected the input: NaN"}
        assert len({id(e) for e in errors}) == 3
        follow_up = spawn(sched, request())  # the scheduler keeps serving
        await loop.advance(1 * MS)
        model.calls[1].release.set()
        await follow_up
        await sched.close()

    run(body)


def test_unexpected_model_exception_becomes_internal_error() -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel()
        sched = scheduler(loop, model)
        task = spawn(sched, request())
        await loop.settle()
        model.calls[0].error = KeyError("boom")
        model.calls[0].release.set()
        await loop.settle()
        with pytest.raises(Exception, match="KeyError while running a batch"):
            task.result()
        await sched.close()

    run(body)


def test_statistics_record_queue_time_per_request_and_one_execution_per_batch() -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel(gated=False)
        stats = VersionStats()
        metrics = ServingMetrics()
        sched = scheduler(loop, model, stats=stats, metrics=metrics, max_queue_delay_us=1000)
        first = spawn(sched, request(2))
        await loop.advance(400 * US)
        second = spawn(sched, request(1))
        await loop.advance(600 * US)
        await asyncio.gather(first, second)
        assert stats.execution_count == 1
        assert stats.inference_count == 3
        assert (stats.queue.count, stats.queue.ns) == (2, 1000 * US + 600 * US + 2 * 7)
        assert stats.batches[3].compute_infer.count == 1
        assert stats.success.count == 0  # the data plane counts answers
        assert _sample(metrics, "edgefabric_batch_size_rows_sum") == 3
        assert _sample(metrics, "edgefabric_batch_queue_seconds_count") == 2
        await sched.close()

    run(body)


def test_close_runs_queued_requests_at_once_then_refuses_new_ones() -> None:
    async def body(loop: VirtualLoop) -> None:
        model = FakeModel(gated=False)
        sched = scheduler(loop, model, max_queue_delay_us=1_000_000)
        task = spawn(sched, request())
        await loop.settle()
        started = loop.now_ns
        await sched.close()
        assert task.done()
        assert loop.now_ns == started
        with pytest.raises(ModelNotReadyError, match="closed"):
            await sched.infer(request(), ["y"])

    run(body)


def test_a_scheduler_stays_on_its_first_loop() -> None:
    sched = BatchScheduler(config(), FakeModel(gated=False), VersionStats())

    async def use() -> None:
        await sched.infer(request(), ["y"])

    asyncio.run(use())
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(use())


def _sample(metrics: ServingMetrics, name: str, **labels: str) -> float:
    wanted = {"model": "m", "version": "1", **labels}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name} {wanted}")
