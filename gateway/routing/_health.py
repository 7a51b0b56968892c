"""Passive outlier ejection and recent latencies, per target; fed outcomes and ``now``.

A target's ejection state::

    ADMITTED --N consecutive retryable failures--> EJECTED --eject_for_s passes--> HALF_OPEN
    HALF_OPEN --trial succeeds--> ADMITTED         HALF_OPEN --trial fails--> EJECTED

A half-open target joins one plan at a time: its trial is out until an outcome is recorded
or ``trial_timeout_s`` passes (the plan may never have used it). Failures the caller caused
(``retryable=False``) neither count nor re-admit. Outcomes of requests sent before an
ejection that arrive while it lasts are ignored.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Ejector", "LatencyWindow"]


@dataclass
class _State:
    failures: int = 0
    ejected_until_s: float | None = None
    """Set from the ejection until the target is re-admitted (half-open once it passes)."""
    trial_until_s: float | None = None


@dataclass
class Ejector:
    """Ejection bookkeeping for every target that has reported an outcome."""

    after_failures: int
    eject_for_s: float
    trial_timeout_s: float
    _states: dict[str, _State] = field(default_factory=dict)

    def unavailable_reason(self, key: str, now_s: float) -> str | None:
        """Why ``key`` cannot take a request now, or ``None`` when it can."""
        state = self._states.get(key)
        if state is None or state.ejected_until_s is None:
            return None
        if now_s < state.ejected_until_s:
            return f"ejected for {state.ejected_until_s - now_s:.1f} s more"
        if state.trial_until_s is not None and now_s < state.trial_until_s:
            return "re-admission trial in flight"
        return None

    def reserve_trial(self, key: str, now_s: float) -> None:
        """Mark a half-open target's one trial as out (no-op for admitted targets)."""
        state = self._states.get(key)
        if state is not None and state.ejected_until_s is not None:
            state.trial_until_s = now_s + self.trial_timeout_s

    def record(self, key: str, *, ok: bool, retryable: bool, now_s: float) -> None:
        """Count one outcome."""
        state = self._states.setdefault(key, _State())
        if state.ejected_until_s is not None and now_s < state.ejected_until_s:
            return
        half_open = state.ejected_until_s is not None
        if ok:
            self._states[key] = _State()
        elif not retryable:
            state.trial_until_s = None
        elif half_open:
            self._eject(state, now_s)
        else:
            state.failures += 1
            if state.failures >= self.after_failures:
                self._eject(state, now_s)

    def ejected(self, now_s: float) -> frozenset[str]:
        """Targets sitting out an ejection now (half-open ones are not)."""
        return frozenset(
            key
            for key, state in self._states.items()
            if state.ejected_until_s is not None and now_s < state.ejected_until_s
        )

    def _eject(self, state: _State, now_s: float) -> None:
        state.failures = 0
        state.ejected_until_s = now_s + self.eject_for_s
        state.trial_until_s = None


class LatencyWindow:
    """The last ``size`` latencies of one target."""

    def __init__(self, size: int) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, latency_s: float) -> None:
        """Remember one latency, forgetting the oldest beyond the window."""
        self._samples.append(latency_s)

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile (``q`` in (0, 1]); ``None`` when empty."""
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        rank = math.ceil(round(q * len(ordered), 9))  # q * n may land a hair above a whole rank
        return ordered[max(rank, 1) - 1]
