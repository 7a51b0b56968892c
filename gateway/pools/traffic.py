"""What every pool keeps about its traffic: lifecycle, counters, latency, change listeners."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from edgefabric.errors import (
    EdgefabricError,
    InvalidInputError,
    ModelNotFoundError,
    RequestCancelledError,
)

__all__ = ["EWMA_ALPHA", "PoolState", "PoolStats", "PoolTraffic", "ewma"]

log = logging.getLogger(__name__)

EWMA_ALPHA = 0.2
"""Weight of the newest latency in :attr:`PoolStats.latency_ewma_s`."""

# Errors that are the request's own fault, not the backend's: not counted as failures.
_CALLER_FAULTS = (InvalidInputError, ModelNotFoundError, RequestCancelledError)


def ewma(previous: float | None, sample: float) -> float:
    """The exponentially weighted moving average after ``sample``."""
    return sample if previous is None else previous + EWMA_ALPHA * (sample - previous)


class PoolState(enum.Enum):
    """Lifecycle: NEW -> RUNNING (``start``) -> STOPPED (``stop``)."""

    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of the pool's inference traffic.

    ``failures`` counts requests the backend or the connection failed (unreachable, not ready,
    overloaded, deadline, internal), not those rejected for their own fault (bad input, unknown
    model, cancelled). ``latency_ewma_s`` follows successful requests only.
    ``per_channel`` is the number of inference requests sent on each connection (or agent).
    """

    in_flight: int
    latency_ewma_s: float | None
    requests: int
    failures: int
    last_error: str
    per_channel: tuple[int, ...]


class PoolTraffic:
    """Request counters, the latency EWMA and the listeners told about health changes."""

    def __init__(self, pool_name: str) -> None:
        self._pool_name = pool_name
        self.requests = 0
        self.failures = 0
        self.last_error = ""
        self.latency_ewma_s: float | None = None
        self._listeners: list[Callable[[], None]] = []

    def sent(self) -> None:
        """One more inference request."""
        self.requests += 1

    def succeeded(self, elapsed_s: float) -> None:
        """A request answered after ``elapsed_s``."""
        self.latency_ewma_s = ewma(self.latency_ewma_s, elapsed_s)

    def failed(self, error: EdgefabricError) -> None:
        """A request failed; the backend's fault unless the error is the caller's own."""
        if not isinstance(error, _CALLER_FAULTS):
            self.failures += 1
        self.last_error = str(error)

    def snapshot(self, in_flight: int, per_channel: tuple[int, ...]) -> PoolStats:
        """The counters as a :class:`PoolStats`."""
        return PoolStats(
            in_flight=in_flight,
            latency_ewma_s=self.latency_ewma_s,
            requests=self.requests,
            failures=self.failures,
            last_error=self.last_error,
            per_channel=per_channel,
        )

    def add_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` on :meth:`notify`; returns a function that removes it again."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    def notify(self) -> None:
        """Tell every listener; a listener's bug is logged, never raised into the pool."""
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:
                log.exception("pool '%s': listener failed", self._pool_name)
