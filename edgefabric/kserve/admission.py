"""Early admission control for ModelInfer: refuse at once what cannot be answered in time.

Sans-I/O (every call takes ``now_ns``), so tests drive it with integers. The servicer asks
:meth:`Admission.admit` before it decodes anything; a refusal costs a status and no exception.

The wait a new request faces follows from Little's law: with ``n`` requests in flight and a
measured completion rate ``r``, it finishes in about ``(n + 1) / r``. A request whose
remaining deadline is shorter is refused with DEADLINE_EXCEEDED now, instead of queueing,
burning CPU and failing later (or worse, making the requests behind it fail). Past
``max_in_flight`` requests in flight, any request is refused with RESOURCE_EXHAUSTED and a
retry hint. Below ``min_in_flight`` everything is admitted, so an idle server, whose rate is
unknown or stale, never refuses for its estimate.

The completion rate is measured over windows of at least ``window_ns`` during which the server
had work in flight (idle time does not count) and smoothed with an EWMA.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

__all__ = ["Admission", "AdmissionConfig", "Refusal", "RefusalReason"]


class RefusalReason(enum.Enum):
    """Why a request was refused at admission."""

    DEADLINE = "admission_deadline"
    """Its deadline is shorter than the wait the requests in flight predict."""
    IN_FLIGHT = "admission_in_flight"
    """``max_in_flight`` requests are in flight already."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused request: why, the message for the client, and when to retry."""

    reason: RefusalReason
    message: str
    retry_after_ms: int


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """Admission settings. ``max_in_flight`` 0: no cap (deadlines are still checked)."""

    max_in_flight: int = 0
    min_in_flight: int = 4
    window_ns: int = 20_000_000
    ewma_weight: float = 0.3

    def __post_init__(self) -> None:
        if self.max_in_flight < 0:
            raise ValueError(f"max_in_flight must be >= 0 (0: no cap), got {self.max_in_flight}")
        if self.min_in_flight < 1:
            raise ValueError(f"min_in_flight must be >= 1, got {self.min_in_flight}")
        if self.window_ns < 1:
            raise ValueError(f"window_ns must be >= 1, got {self.window_ns}")
        if not 0 < self.ewma_weight <= 1:
            raise ValueError(f"ewma_weight must lie in (0, 1], got {self.ewma_weight}")


class Admission:
    """In-flight accounting and the admit/refuse decision; see the module docstring."""

    def __init__(self, config: AdmissionConfig | None = None) -> None:
        self.config = config or AdmissionConfig()
        self.in_flight = 0
        self._rate_per_ns = 0.0
        self._window_start_ns = 0
        self._window_done = 0

    @property
    def rate_per_s(self) -> float:
        """The smoothed completion rate (0 before the first full window)."""
        return self._rate_per_ns * 1e9

    def predicted_wait_ns(self) -> int | None:
        """How long a request admitted now should take (``None``: no estimate yet)."""
        if self._rate_per_ns <= 0:
            return None
        return math.ceil((self.in_flight + 1) / self._rate_per_ns)

    def admit(self, now_ns: int, remaining_ns: int | None) -> Refusal | None:
        """Count the request in (and return ``None``) or return why it is refused.

        ``remaining_ns``: time left until the request's deadline (``None``: no deadline).
        Every admitted request must be matched by one :meth:`done`.
        """
        config = self.config
        if self.in_flight == 0:
            self._window_start_ns, self._window_done = now_ns, 0  # idle time does not count
        elif self.in_flight >= config.min_in_flight:
            wait_ns = self.predicted_wait_ns()
            retry_ms = 1 if wait_ns is None else max(1, math.ceil(wait_ns / 1e6))
            if config.max_in_flight and self.in_flight >= config.max_in_flight:
                return Refusal(
                    RefusalReason.IN_FLIGHT,
                    f"the server has {self.in_flight} requests in flight, its limit "
                    f"(max_in_flight); retry after {retry_ms} ms",
                    retry_ms,
                )
            if wait_ns is not None and remaining_ns is not None and wait_ns > remaining_ns:
                return Refusal(
                    RefusalReason.DEADLINE,
                    f"overloaded: a request admitted now would take about {wait_ns / 1e6:.1f} ms "
                    f"({self.in_flight} in flight) but its deadline is in "
                    f"{max(remaining_ns, 0) / 1e6:.1f} ms; shed at admission: retry after "
                    f"{retry_ms} ms or with a later deadline",
                    retry_ms,
                )
        self.in_flight += 1
        return None

    def done(self, now_ns: int) -> None:
        """An admitted request was answered (with any outcome)."""
        if self.in_flight <= 0:
            raise ValueError("done() without a matching admitted request")
        self.in_flight -= 1
        self._window_done += 1
        elapsed = now_ns - self._window_start_ns
        if elapsed >= self.config.window_ns:
            sample = self._window_done / elapsed
            old = self._rate_per_ns
            self._rate_per_ns = (
                sample if old <= 0 else old + self.config.ewma_weight * (sample - old)
            )
            self._window_start_ns, self._window_done = now_ns, 0
