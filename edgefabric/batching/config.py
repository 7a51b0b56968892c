"""Dynamic batching settings, read from a Triton ``ModelConfig``'s ``dynamic_batching`` block.

Units are in the names. Priority levels follow Triton: ``1`` is the highest, ``priority_levels``
the lowest, and a model with ``priority_levels == 0`` has one level (``1``). Request priority
``0`` means "the default level".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tritonclient.grpc import model_config_pb2 as mc

from edgefabric.errors import InvalidInputError
from edgefabric.models.config import instance_count

__all__ = ["BatchingConfig", "QueuePolicy", "TimeoutAction"]


class TimeoutAction(enum.Enum):
    """What happens to a request whose queue timeout fires."""

    REJECT = "REJECT"
    """Answer it at once with DEADLINE_EXCEEDED."""
    DELAY = "DELAY"
    """Keep it, behind every request of its level (and higher) that has not timed out."""


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """The queue rules of one priority level (Triton ``ModelQueuePolicy``).

    ``default_timeout_us == 0`` means no queue timeout; ``max_queue_size == 0`` no bound.
    With ``allow_timeout_override`` a request's own ``timeout`` may shorten the timeout (never
    lengthen it); unlike Triton it also applies when the level has no default timeout.
    """

    timeout_action: TimeoutAction = TimeoutAction.REJECT
    default_timeout_us: int = 0
    allow_timeout_override: bool = False
    max_queue_size: int = 0

    def __post_init__(self) -> None:
        if self.default_timeout_us < 0:
            raise ValueError(
                f"default_timeout_us must be >= 0 (0: no timeout), got {self.default_timeout_us}"
            )
        if self.max_queue_size < 0:
            raise ValueError(
                f"max_queue_size must be >= 0 (0: unbounded), got {self.max_queue_size}"
            )

    def timeout_us(self, requested_us: int) -> int:
        """The queue timeout of a request that asked for ``requested_us`` (0: none asked)."""
        default = self.default_timeout_us
        if self.allow_timeout_override and requested_us > 0:
            return requested_us if default == 0 else min(requested_us, default)
        return default

    @classmethod
    def from_proto(cls, policy: mc.ModelQueuePolicy) -> QueuePolicy:
        """Read a Triton ``ModelQueuePolicy``."""
        return cls(
            timeout_action=TimeoutAction(
                mc.ModelQueuePolicy.TimeoutAction.Name(policy.timeout_action)
            ),
            default_timeout_us=int(policy.default_timeout_microseconds),
            allow_timeout_override=bool(policy.allow_timeout_override),
            max_queue_size=int(policy.max_queue_size),
        )


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """How one model version batches requests.

    ``max_batch_size`` and ``preferred_batch_sizes`` count rows (dim 0), as in Triton.
    ``max_concurrent_batches`` is how many batches may run at once (the instance count).
    """

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    preserve_ordering: bool = False
    priority_levels: int = 0
    default_priority_level: int = 0
    default_queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    priority_queue_policies: Mapping[int, QueuePolicy] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    max_concurrent_batches: int = 1
    skip_idle_delay: bool = True
    """Start a batch without waiting ``max_queue_delay_us`` when the arrival rate (an EWMA of
    the gaps between requests) says the next request is due only after the delay ends; Triton
    always waits. See docs/adr/0004."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 row, got {self.max_batch_size}")
        bad = [s for s in self.preferred_batch_sizes if not 1 <= s <= self.max_batch_size]
        if bad:
            raise ValueError(
                f"preferred_batch_sizes must lie in 1..max_batch_size ({self.max_batch_size}), "
                f"got {bad}"
            )
        object.__setattr__(
            self, "preferred_batch_sizes", tuple(sorted(set(self.preferred_batch_sizes)))
        )
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.priority_levels < 0:
            raise ValueError(
                f"priority_levels must be >= 0 (0: no priorities), got {self.priority_levels}"
            )
        if self.priority_levels == 0 and self.default_priority_level not in (0, 1):
            raise ValueError(
                f"default_priority_level must be 0 when priority_levels is 0, "
                f"got {self.default_priority_level}"
            )
        if self.priority_levels > 0 and not 1 <= self.default_priority_level <= self.levels:
            raise ValueError(
                f"default_priority_level must lie in 1..priority_levels ({self.priority_levels}),"
                f" got {self.default_priority_level}"
            )
        outside = sorted(k for k in self.priority_queue_policies if not 1 <= k <= self.levels)
        if outside:
            raise ValueError(
                f"priority_queue_policies keys must lie in 1..{self.levels}, got {outside}"
            )
        object.__setattr__(
            self, "priority_queue_policies", MappingProxyType(dict(self.priority_queue_policies))
        )
        if self.max_concurrent_batches < 1:
            raise ValueError(
                f"max_concurrent_batches must be >= 1, got {self.max_concurrent_batches}"
            )

    @property
    def levels(self) -> int:
        """How many priority levels the queue has (at least one)."""
        return max(self.priority_levels, 1)

    @property
    def default_level(self) -> int:
        """The level of requests that give priority 0."""
        return self.default_priority_level or 1

    def level_for(self, priority: int) -> int:
        """The queue level of a request with ``priority`` (0: the default level)."""
        if priority == 0:
            return self.default_level
        if not 1 <= priority <= self.levels:
            raise InvalidInputError(
                f"priority {priority} is out of range: this model takes 0 (default) or "
                f"1 (highest) to {self.levels} (lowest)"
            )
        return priority

    def policy_for(self, level: int) -> QueuePolicy:
        """The queue policy of ``level``."""
        return self.priority_queue_policies.get(level, self.default_queue_policy)

    @classmethod
    def from_model_config(cls, config: mc.ModelConfig) -> BatchingConfig | None:
        """The model's batching settings; ``None`` when it does not batch dynamically.

        Raises ``ValueError`` naming the model when the block is inconsistent.
        """
        if config.max_batch_size <= 0 or not config.HasField("dynamic_batching"):
            return None
        block = config.dynamic_batching
        instances = instance_count(config)
        try:
            return cls(
                max_batch_size=int(config.max_batch_size),
                preferred_batch_sizes=tuple(int(s) for s in block.preferred_batch_size),
                max_queue_delay_us=int(block.max_queue_delay_microseconds),
                preserve_ordering=bool(block.preserve_ordering),
                priority_levels=int(block.priority_levels),
                default_priority_level=int(block.default_priority_level),
                default_queue_policy=QueuePolicy.from_proto(block.default_queue_policy),
                priority_queue_policies={
                    int(level): QueuePolicy.from_proto(policy)
                    for level, policy in block.priority_queue_policy.items()
                },
                max_concurrent_batches=max(instances, 1),
            )
        except ValueError as exc:
            raise ValueError(f"model {config.name!r}: dynamic_batching: {exc}") from None
