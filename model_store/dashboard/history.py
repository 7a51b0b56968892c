"""What the dashboard remembers of the fleet's reports: charts for the last hour and a timeline.

The device table keeps only each device's latest report; the dashboard also wants how latency
and errors moved, and what happened when. :class:`FleetHistory` is handed every report the
:class:`~model_store.fleet_view.FleetView` folds in (its listener hook) and keeps, in memory:

- per model and pool, fixed ``resolution_s`` buckets of requests and errors (deltas of the
  devices' cumulative counters), the mean of the p50s and the highest p99 reported in them,
  for ``retention_s``; older buckets are dropped. A device's first report of a version is its
  baseline (its counts so far are not charted); a counter that went down restarted from zero.
- each device's latest health details (slots and their states, execution provider, resources);
- the latest ``max_events`` device events and online/offline changes.

Edge devices are the ``edge`` pool. Gateways report their own pools (``local``, remote Triton
or KServe pools, edge pools as they see them) per interval, through
:meth:`FleetHistory.observe_gateway` (``GatewayStats`` from ``ef/v1/gw/{gateway}/stats``);
their series carry the gateway's id, the devices' an empty one. Time is the controller's
receive time, passed in; nothing here reads a clock. Thread-safe: one lock around every
method; :meth:`FleetHistory.wait_for` waits on it for a condition, so tests need not poll.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from edgefabric import topics
from edgefabric.errors import InvalidInputError
from edgefabric.wire.v1.fleet_pb2 import DeviceStatus, Event, Health
from edgefabric.wire.v1.gateway_pb2 import GatewayStats
from model_store.fleet_records import Report

__all__ = [
    "EDGE_POOL",
    "MAX_GATEWAY_SERIES",
    "DeviceHealth",
    "FleetHistory",
    "Point",
    "Series",
    "TimelineEvent",
    "decode_gateway_stats",
]

EDGE_POOL = "edge"
MAX_GATEWAY_SERIES = 1024
"""Models and pools one gateway report may carry (the gateway keeps as many per interval)."""
_ERROR_KINDS = frozenset({Event.INSTALL_FAILED, Event.REJECTED})
_WARNING_KINDS = frozenset({Event.ROLLED_BACK})


@dataclass(frozen=True)
class TimelineEvent:
    """One line of the timeline. ``source``: device, rollout or audit; ``level``: info,
    warning or error."""

    at_s: float
    source: str
    kind: str
    subject: str
    text: str
    level: str = "info"

    def to_json(self) -> dict[str, object]:
        """The ``/api/events`` form."""
        return {
            "at_s": self.at_s,
            "source": self.source,
            "kind": self.kind,
            "subject": self.subject,
            "text": self.text,
            "level": self.level,
        }


@dataclass(frozen=True)
class DeviceHealth:
    """A device's latest health details beyond what the device table keeps."""

    received_s: float
    slots: tuple[Mapping[str, object], ...]
    execution_provider: str
    cpu_percent: float
    rss_bytes: int
    metadata_age_s: float | None
    outbox_pending: int


@dataclass(frozen=True)
class Point:
    """One chart point: the bucket starting at ``t_s``; latencies None without reports."""

    t_s: float
    requests: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class Series:
    """One model in one pool over a window, oldest point first; ``gateway``: the gateway that
    reported it, ``""`` for what devices report."""

    model: str
    pool: str
    points: tuple[Point, ...]
    gateway: str = ""


@dataclass(slots=True)
class _Bucket:
    requests: int = 0
    errors: int = 0
    p50_sum: float = 0.0
    p50_count: int = 0
    p99_max: float | None = None

    def add(self, other: _Bucket) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.p50_sum += other.p50_sum
        self.p50_count += other.p50_count
        if other.p99_max is not None:
            self.p99_max = max(self.p99_max or 0.0, other.p99_max)


@dataclass
class _State:
    buckets: dict[tuple[int, str, str, str], _Bucket] = field(default_factory=dict)
    counters: dict[tuple[str, str, int], tuple[int, int]] = field(default_factory=dict)
    health: dict[str, DeviceHealth] = field(default_factory=dict)
    oldest_bucket: int = 0


class FleetHistory:
    """Recent charts, health details and events of the fleet (see the module doc)."""

    def __init__(
        self,
        *,
        retention_s: float = 3600.0,
        resolution_s: float = 10.0,
        max_events: int = 1000,
        pool: str = EDGE_POOL,
    ) -> None:
        if not resolution_s > 0:
            raise ValueError(f"resolution_s must be positive, got {resolution_s}")
        if not retention_s >= resolution_s:
            raise ValueError(
                f"retention_s must be at least resolution_s ({resolution_s}), got {retention_s}"
            )
        if max_events < 1:
            raise ValueError(f"max_events must be 1 or more, got {max_events}")
        self.retention_s = retention_s
        self.resolution_s = resolution_s
        self._pool = pool
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._state = _State()
        self._events: deque[TimelineEvent] = deque(maxlen=max_events)
        self._seen: deque[tuple[str, int, int]] = deque(maxlen=max_events)
        self._seen_set: set[tuple[str, int, int]] = set()

    # -- folding reports in ------------------------------------------------------------------

    def observe(self, device_id: str, report: Report, received_s: float, retained: bool) -> None:
        """Fold one decoded report in (the signature of a fleet view listener)."""
        with self._lock:
            if isinstance(report, Health):
                self._health(device_id, report, received_s)
            elif isinstance(report, Event):
                self._event(device_id, report, received_s)
            elif not retained:  # a replayed status is old news, not a change
                self._status(device_id, report, received_s)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[FleetHistory], bool], timeout_s: float) -> bool:
        """Wait until ``predicate(self)`` holds, re-checked after every report; False when
        ``timeout_s`` passed first. The predicate runs under the lock (it may read)."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout_s)

    def _health(self, device_id: str, health: Health, received_s: float) -> None:
        state = self._state
        state.health[device_id] = DeviceHealth(
            received_s=received_s,
            slots=tuple(
                {
                    "model": slot.model,
                    "version": int(slot.version),
                    "state": slot.state,
                    "reason": slot.reason,
                    "active": slot.active,
                }
                for slot in health.slots
            ),
            execution_provider=health.execution_provider,
            cpu_percent=health.cpu_percent,
            rss_bytes=int(health.rss_bytes),
            metadata_age_s=health.metadata_age_s if health.metadata_age_s >= 0 else None,
            outbox_pending=int(health.outbox_pending),
        )
        index = math.floor(received_s / self.resolution_s)
        self._prune(index)
        for model in health.models:
            counter_key = (device_id, model.model, int(model.version))
            counts = (int(model.requests), int(model.errors))
            before = state.counters.get(counter_key)
            state.counters[counter_key] = counts
            if before is None:
                delta = (0, 0)  # the baseline: what came before is not in this window
            elif counts[0] < before[0] or counts[1] < before[1]:
                delta = counts  # the device restarted its counters
            else:
                delta = (counts[0] - before[0], counts[1] - before[1])
            bucket = state.buckets.setdefault((index, model.model, self._pool, ""), _Bucket())
            bucket.requests += delta[0]
            bucket.errors += delta[1]
            if model.requests and model.p99_ms > 0:
                bucket.p50_sum += model.p50_ms
                bucket.p50_count += 1
                bucket.p99_max = max(bucket.p99_max or 0.0, model.p99_ms)

    def observe_gateway(self, gateway_id: str, stats: GatewayStats, received_s: float) -> None:
        """Fold in one interval a gateway reported: its counts go to the bucket of
        ``received_s``; a latency that is not a finite positive number is left out."""
        with self._lock:
            index = math.floor(received_s / self.resolution_s)
            self._prune(index)
            for pool in stats.pools:
                key = (index, pool.model, pool.pool, gateway_id)
                bucket = self._state.buckets.setdefault(key, _Bucket())
                bucket.requests += int(pool.requests)
                bucket.errors += int(pool.errors)
                if _latency(pool.p50_ms) and _latency(pool.p99_ms):
                    bucket.p50_sum += pool.p50_ms
                    bucket.p50_count += 1
                    bucket.p99_max = max(bucket.p99_max or 0.0, pool.p99_ms)
            self._changed.notify_all()

    def _prune(self, index: int) -> None:
        state = self._state
        oldest = index - math.ceil(self.retention_s / self.resolution_s)
        if oldest <= state.oldest_bucket:
            return
        state.oldest_bucket = oldest
        for key in [key for key in state.buckets if key[0] < oldest]:
            del state.buckets[key]

    def _event(self, device_id: str, event: Event, received_s: float) -> None:
        key = (device_id, int(event.event_id), int(event.at_ms))
        if event.event_id and key in self._seen_set:
            return  # replayed from the device's outbox
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(key)
        self._seen_set.add(key)
        kind = Event.Kind.Name(event.kind) if event.kind in Event.Kind.values() else "UNKNOWN"
        what = f"{event.model}:{event.version}" if event.model else ""
        text = " ".join(part for part in (kind, what, event.message) if part)
        level = (
            "error"
            if event.kind in _ERROR_KINDS
            else "warning"
            if event.kind in _WARNING_KINDS
            else "info"
        )
        at_s = event.at_ms / 1000.0 if event.at_ms > 0 else received_s
        self._events.append(TimelineEvent(at_s, "device", kind, device_id, text, level))

    def _status(self, device_id: str, status: DeviceStatus, received_s: float) -> None:
        if status.online:
            agent = f" (agent {status.agent_version})" if status.agent_version else ""
            event = TimelineEvent(received_s, "device", "ONLINE", device_id, f"online{agent}")
        else:
            how = "stopped" if status.at_ms > 0 else "connection lost (Last Will)"
            event = TimelineEvent(
                received_s, "device", "OFFLINE", device_id, f"offline: {how}", "warning"
            )
        self._events.append(event)

    # -- reading -------------------------------------------------------------------------------

    def health(self) -> dict[str, DeviceHealth]:
        """Each device's latest health details."""
        with self._lock:
            return dict(self._state.health)

    def events(self) -> list[TimelineEvent]:
        """The kept device events, in the order they arrived."""
        with self._lock:
            return list(self._events)

    def series(self, window_s: float, now_s: float, *, max_points: int = 60) -> list[Series]:
        """Per model, pool and reporting gateway, ``window_s`` up to ``now_s`` in at most
        ``max_points`` points (each a whole number of buckets), oldest first; sorted by model,
        pool, then gateway (devices' series first)."""
        if not 0 < window_s <= self.retention_s:
            raise ValueError(
                f"window {window_s:g} s is outside what is kept: expected 0 < window <= "
                f"{self.retention_s:g} s"
            )
        if max_points < 1:
            raise ValueError(f"max_points must be 1 or more, got {max_points}")
        resolution = self.resolution_s
        per_point = max(1, math.ceil(window_s / resolution / max_points))
        count = math.ceil(window_s / resolution / per_point)
        end = math.floor(now_s / resolution) + 1  # the bucket after the current one
        first = end - count * per_point
        merged: dict[tuple[str, str, str], list[_Bucket]] = {}
        with self._lock:
            for (index, model, pool, gateway), bucket in self._state.buckets.items():
                if first <= index < end:
                    key = (model, pool, gateway)
                    points = merged.setdefault(key, [_Bucket() for _ in range(count)])
                    points[(index - first) // per_point].add(bucket)
        return [
            Series(
                model,
                pool,
                tuple(
                    Point(
                        t_s=(first + i * per_point) * resolution,
                        requests=b.requests,
                        errors=b.errors,
                        p50_ms=b.p50_sum / b.p50_count if b.p50_count else None,
                        p99_ms=b.p99_max,
                    )
                    for i, b in enumerate(points)
                ),
                gateway,
            )
            for (model, pool, gateway), points in sorted(merged.items())
        ]


def _latency(value: float) -> bool:
    return math.isfinite(value) and value > 0


def decode_gateway_stats(topic: str, payload: bytes) -> tuple[str, GatewayStats]:
    """``(gateway id, report)`` from one message on ``ef/v1/gw/{gateway}/stats``.

    ``InvalidInputError`` says what is wrong: another topic, a payload that is not a
    ``GatewayStats``, a report naming another gateway than its topic (the broker ACL vouches
    for the topic only), or more than ``MAX_GATEWAY_SERIES`` models and pools.
    """
    gateway_id = topics.parse_gateway_stats(topic)
    if gateway_id is None:
        raise InvalidInputError(
            f"topic {topic!r} is not a gateway statistics topic: expected "
            f"{topics.gateway_stats('{gateway}')}"
        )
    stats = GatewayStats()
    try:
        stats.ParseFromString(payload)
    except DecodeError as exc:
        raise InvalidInputError(
            f"gateway statistics on {topic}: {len(payload)} bytes that are not a GatewayStats "
            f"message ({exc}); the sender speaks another wire version, or is not a gateway"
        ) from None
    if stats.gateway_id != gateway_id:
        raise InvalidInputError(
            f"gateway statistics on {topic} name gateway {stats.gateway_id!r}: a gateway "
            f"reports under its own name only, dropped"
        )
    if len(stats.pools) > MAX_GATEWAY_SERIES:
        raise InvalidInputError(
            f"gateway statistics on {topic} carry {len(stats.pools)} models and pools, more "
            f"than the {MAX_GATEWAY_SERIES} a report may; dropped"
        )
    return gateway_id, stats
