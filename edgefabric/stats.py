"""Per model version inference statistics, shaped like KServe v2 ``ModelStatistics``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from edgefabric.runtime.base import RunTimings

__all__ = ["BatchStats", "Duration", "VersionStats"]


@dataclass(slots=True)
class Duration:
    """A count of events and their summed duration."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        """Record ``count`` events that took ``ns`` in total."""
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class BatchStats:
    """Compute time of executions of one batch size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class VersionStats:
    """Counters of one model version. Requests are counted once; executions once per batch."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)

    def record_success(self, total_ns: int) -> None:
        """One request answered, ``total_ns`` after it arrived."""
        self.success.add(total_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_execution(self, timings: RunTimings, rows: int, *, requests: int) -> None:
        """One execution of ``rows`` rows serving ``requests`` requests."""
        self.queue.add(timings.queue_ns * requests, requests)
        self._record_compute(timings, rows, requests)

    def record_batch(self, timings: RunTimings, rows: int, queue_ns: Sequence[int]) -> None:
        """One batched execution of ``rows`` rows serving ``len(queue_ns)`` requests.

        ``queue_ns[i]`` is how long request ``i`` waited in the batcher; the runtime's own
        ``timings.queue_ns`` is added to each, so queue time counts once per request.
        """
        requests = len(queue_ns)
        self.queue.add(sum(queue_ns) + timings.queue_ns * requests, requests)
        self._record_compute(timings, rows, requests)

    def _record_compute(self, timings: RunTimings, rows: int, requests: int) -> None:
        self.compute_input.add(timings.input_ns * requests, requests)
        self.compute_infer.add(timings.infer_ns * requests, requests)
        self.compute_output.add(timings.output_ns * requests, requests)
        self.inference_count += rows
        self.execution_count += 1
        batch = self.batches.setdefault(rows, BatchStats())
        batch.compute_input.add(timings.input_ns)
        batch.compute_infer.add(timings.infer_ns)
        batch.compute_output.add(timings.output_ns)

    def record_failure(self, total_ns: int) -> None:
        """One request that failed after it was admitted."""
        self.fail.add(total_ns)
