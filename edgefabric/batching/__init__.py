"""Dynamic batching: a sans-I/O core (:mod:`.core`), numpy merging (:mod:`.merge`) and a thin
asyncio driver (:mod:`.driver`), configured from Triton's ``dynamic_batching`` block."""

from edgefabric.batching.config import BatchingConfig, QueuePolicy, TimeoutAction
from edgefabric.batching.core import (
    BatchingCore,
    BatchReady,
    Event,
    Expired,
    ExpiryReason,
    Released,
)
from edgefabric.batching.driver import BatchScheduler

__all__ = [
    "BatchReady",
    "BatchScheduler",
    "BatchingConfig",
    "BatchingCore",
    "Event",
    "Expired",
    "ExpiryReason",
    "QueuePolicy",
    "Released",
    "TimeoutAction",
]
