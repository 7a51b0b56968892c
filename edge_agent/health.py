"""What the agent reports on ``ef/v1/dev/{device}/health``: slots, latency, errors, resources.

:class:`LatencyWindow` is fed once per finished request (model, version, seconds, ok) and keeps
cumulative request and error counts with latency percentiles over a sliding window;
:class:`ProcessSampler` measures this process; :func:`build_health` puts one report together.
All three are pure apart from the clock and ``/proc``, which are injected in tests.
"""

from __future__ import annotations

import math
import mmap
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from edge_agent.slots import ModelSlots
from edgefabric.wire.v1 import fleet_pb2

__all__ = ["LatencyStats", "LatencyWindow", "ProcessSampler", "build_health"]

_STATM = "/proc/self/statm"


def _rss_bytes(statm_path: str = _STATM) -> int:
    """Resident set size now (Linux), else the peak resident size (other POSIX), else 0."""
    try:
        with open(statm_path, "rb") as statm:
            return int(statm.read().split()[1]) * mmap.PAGESIZE
    except (OSError, IndexError, ValueError):
        pass
    try:
        import resource  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # kB outside macOS


class ProcessSampler:
    """CPU percent (of one core, since the previous sample) and RSS bytes of this process.

    CPU time is ``time.process_time`` (user + system, every thread; portable and finer than
    ``/proc/self/stat`` ticks). RSS is read from ``/proc/self/statm`` on Linux; elsewhere it
    falls back to the peak size from ``resource.getrusage``. The first sample covers the time
    since construction. Several busy threads can report more than 100 percent.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        cpu_seconds: Callable[[], float] | None = None,
        rss_bytes: Callable[[], int] | None = None,
    ) -> None:
        self._clock = clock
        self._cpu_seconds = cpu_seconds or time.process_time
        self._rss_bytes = rss_bytes or _rss_bytes
        self._last = (clock(), self._cpu_seconds())

    def sample(self) -> tuple[float, int]:
        """``(cpu_percent, rss_bytes)``; CPU percent is 0.0 when no time passed."""
        now, cpu = self._clock(), self._cpu_seconds()
        last_now, last_cpu = self._last
        self._last = (now, cpu)
        wall = now - last_now
        percent = 100.0 * (cpu - last_cpu) / wall if wall > 0 else 0.0
        return max(percent, 0.0), max(self._rss_bytes(), 0)


class LatencyStats(NamedTuple):
    """One model version's counts since the agent started, and percentiles of its window."""

    requests: int
    errors: int
    p50_ms: float
    p99_ms: float


@dataclass(slots=True)
class _Series:
    requests: int = 0
    errors: int = 0
    samples: deque[tuple[float, float]] = field(default_factory=deque)  # (when, latency_s)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` of them at or below it."""
    rank = max(math.ceil(q * len(sorted_values)), 1)
    return sorted_values[rank - 1]


class LatencyWindow:
    """Per (model, version): request and error counts and p50/p99 latency over a sliding window.

    Counts are cumulative. Percentiles cover the successful requests among the last
    ``max_samples`` that finished within the last ``max_age_s`` seconds (``None``: no age
    limit); a failed request's time says little about the model (it may never have run), so
    it only counts as an error. Thread-safe.
    """

    def __init__(
        self,
        *,
        max_samples: int = 1024,
        max_age_s: float | None = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be 1 or more, got {max_samples}")
        if max_age_s is not None and not max_age_s > 0:
            raise ValueError(f"max_age_s must be positive or None, got {max_age_s}")
        self.max_samples = max_samples
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._series: dict[tuple[str, int], _Series] = {}

    def record(self, model: str, version: int, latency_s: float, ok: bool) -> None:
        """One finished request: ``latency_s`` from arrival to answer, ``ok`` when it succeeded."""
        if not (math.isfinite(latency_s) and latency_s >= 0):
            raise ValueError(
                f"model {model!r} version {version}: latency must be finite seconds >= 0, "
                f"got {latency_s!r}"
            )
        now = self._clock()
        with self._lock:
            series = self._series.get((model, version))
            if series is None:
                series = self._series[(model, version)] = _Series(
                    samples=deque(maxlen=self.max_samples)
                )
            series.requests += 1
            if ok:
                series.samples.append((now, latency_s))
            else:
                series.errors += 1

    def forget(self, model: str, version: int) -> None:
        """Stop reporting a version (removed from the device); unknown ones are ignored."""
        with self._lock:
            self._series.pop((model, version), None)

    def snapshot(self) -> dict[tuple[str, int], LatencyStats]:
        """Every version recorded so far; percentiles are 0.0 when its window is empty."""
        horizon = None if self.max_age_s is None else self._clock() - self.max_age_s
        report = {}
        with self._lock:
            for key, series in self._series.items():
                if horizon is not None:
                    while series.samples and series.samples[0][0] < horizon:
                        series.samples.popleft()
                latencies = sorted(latency for _, latency in series.samples)
                p50 = _percentile(latencies, 0.50) * 1000.0 if latencies else 0.0
                p99 = _percentile(latencies, 0.99) * 1000.0 if latencies else 0.0
                report[key] = LatencyStats(series.requests, series.errors, p50, p99)
        return report


def build_health(
    *,
    device_id: str,
    now_ms: int,
    slots: Iterable[ModelSlots],
    latency: LatencyWindow,
    execution_provider: str,
    metadata_age_s: float | None,
    cpu_percent: float,
    rss_bytes: int,
    applied_sequence: int,
    outbox_pending: int,
    self_tests: Mapping[tuple[str, int], bool],
) -> fleet_pb2.Health:
    """One health report.

    ``slots`` gives a :class:`~fleet_pb2.SlotReport` per version on the device (state, failure
    reason, whether active). A :class:`~fleet_pb2.ModelHealth` goes out per version that is
    active, has a self-test result (``self_tests``: passed or not, by (model, version)) or has
    recorded requests, sorted. ``metadata_age_s`` None (never refreshed) is sent as -1.
    """
    report = fleet_pb2.Health(
        device_id=device_id,
        at_ms=now_ms,
        execution_provider=execution_provider,
        metadata_age_s=-1.0 if metadata_age_s is None else metadata_age_s,
        cpu_percent=cpu_percent,
        rss_bytes=max(rss_bytes, 0),
        applied_sequence=max(applied_sequence, 0),
        outbox_pending=max(outbox_pending, 0),
    )
    active: set[tuple[str, int]] = set()
    for model in sorted(slots, key=lambda s: s.name):
        if model.active is not None:
            active.add((model.name, model.active))
        for version, state in sorted(model.versions.items()):
            report.slots.add(
                model=model.name,
                version=version,
                state=state.value,
                reason=model.reason(version),
                active=version == model.active,
            )
    stats = latency.snapshot()
    for name, version in sorted(active | set(stats) | set(self_tests)):
        requests, errors, p50_ms, p99_ms = stats.get((name, version), LatencyStats(0, 0, 0.0, 0.0))
        report.models.add(
            model=name,
            version=version,
            requests=requests,
            errors=errors,
            p50_ms=p50_ms,
            p99_ms=p99_ms,
            self_test_passed=self_tests.get((name, version), False),
        )
    return report
