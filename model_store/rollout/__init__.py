"""Staged fleet rollouts: the spec an operator writes, a sans-I/O engine, and its storage.

:mod:`.spec` parses and validates what was asked for, :mod:`.core` decides what happens next
from the fleet's reports and an injected clock, :mod:`.persist` keeps rollouts in the registry.
"""

from model_store.rollout.core import (
    ACTIVE_PHASES,
    TRANSITIONS,
    Action,
    Assign,
    DeviceProgress,
    DeviceStep,
    DeviceView,
    GatePolicy,
    Revert,
    Rollout,
    RolloutEngine,
    RolloutPhase,
    cohorts,
)
from model_store.rollout.persist import RolloutStore, new_rollout_id
from model_store.rollout.spec import Gate, GateKind, RolloutSpec

__all__ = [
    "ACTIVE_PHASES",
    "TRANSITIONS",
    "Action",
    "Assign",
    "DeviceProgress",
    "DeviceStep",
    "DeviceView",
    "Gate",
    "GateKind",
    "GatePolicy",
    "Revert",
    "Rollout",
    "RolloutEngine",
    "RolloutPhase",
    "RolloutSpec",
    "RolloutStore",
    "cohorts",
    "new_rollout_id",
]
