"""The rollout controller: runs inside ``edgefabric store serve`` and drives every rollout.

Each tick, for every active rollout: take the fleet's latest reports (:class:`FleetView`),
let the sans-I/O engine decide (``RolloutEngine.tick``), save the new state in the registry,
then make each touched device's signed desired state match what the rollout says it should run
(comparing with what that device was last sent, so nothing is sent twice). Because the last
step is derived from the saved state, a controller killed at any point converges on restart:
whatever it had decided but not yet published is published on its first tick. Operator
commands (pause, resume, abort, rollback) change the saved state from the CLI; the next tick
acts on them.

Progress is published retained on ``ef/v1/rollouts/{id}`` (JSON, for dashboards and tests).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping

from edgefabric import topics
from edgefabric.errors import EdgefabricError, TransportError
from edgefabric.mqtt import MqttClient
from model_store.fleet import desired_models, set_model
from model_store.fleet_view import FleetView
from model_store.rollout import (
    ACTIVE_PHASES,
    DeviceView,
    Rollout,
    RolloutEngine,
    RolloutPhase,
    RolloutStore,
)
from model_store.store import ModelStore

__all__ = ["RolloutController", "rollout_summary"]

log = logging.getLogger(__name__)

# Completed rollouts keep handing their version to devices that join their selector later.
_TICKED = ACTIVE_PHASES | {RolloutPhase.COMPLETED}


def rollout_summary(rollout: Rollout) -> dict[str, object]:
    """What ``ef/v1/rollouts/{id}`` carries: phase, stage and device counts per step."""
    return {
        "id": rollout.id,
        "model": rollout.spec.model,
        "version": rollout.spec.version,
        "phase": rollout.phase.value,
        "stage": rollout.stage + 1,
        "stages": len(rollout.spec.stages),
        "devices": {step.value: count for step, count in rollout.counts().items()},
        "reason": rollout.reason,
    }


class RolloutController:
    """Ticks the rollouts; :meth:`run` in a thread, :meth:`tick` directly in tests."""

    def __init__(
        self,
        store: ModelStore,
        mqtt: MqttClient,
        fleet: FleetView,
        *,
        engine: RolloutEngine | None = None,
        clock: Callable[[], float] = time.time,
        on_progress: Callable[[Mapping[str, object]], None] | None = None,
    ) -> None:
        self._store = store
        self._mqtt = mqtt
        self._fleet = fleet
        self._engine = engine or RolloutEngine()
        self._clock = clock
        self._rollouts = RolloutStore(store.registry)
        self._published: dict[str, str] = {}
        self._on_progress = on_progress  # every ticked rollout's summary (metrics)

    def tick(self) -> None:
        """One pass over the active rollouts (and completed ones that still hand out versions)."""
        now = self._clock()
        fleet = self._fleet.devices(now)
        for rollout in self._rollouts.list():
            if rollout.phase not in _TICKED:
                continue
            with self._store.registry.transaction():
                current = self._rollouts.get(rollout.id)  # the CLI may have changed it
                before = current.to_json()
                self._engine.tick(current, fleet, now)
                if current.to_json() != before:
                    self._rollouts.save(current)
            self._publish_desired(current, fleet)
            self._publish_progress(current)
            if self._on_progress is not None:
                self._on_progress(rollout_summary(current))

    def run(self, stopping: threading.Event, interval_s: float) -> None:
        """Tick every ``interval_s`` until ``stopping`` is set; errors are logged, not fatal."""
        while not stopping.is_set():
            try:
                self.tick()
            except (EdgefabricError, OSError) as exc:
                log.warning("rollout tick failed (retrying): %s", exc)
            stopping.wait(interval_s)

    def _publish_desired(self, rollout: Rollout, fleet: Mapping[str, DeviceView]) -> None:
        if rollout.phase is RolloutPhase.PAUSED:
            return
        model = rollout.spec.model
        for action in self._engine.desired_actions(rollout):
            wanted = action.version
            sent = desired_models(self._store, action.device_id).get(model)
            if sent == wanted:
                continue
            try:
                set_model(
                    self._store,
                    self._mqtt,
                    action.device_id,
                    model,
                    wanted,
                    rollout_id=rollout.id,
                )
            except TransportError as exc:
                log.warning("desired state for %s not sent yet: %s", action.device_id, exc)
                return

    def _publish_progress(self, rollout: Rollout) -> None:
        payload = json.dumps(rollout_summary(rollout), sort_keys=True)
        if self._published.get(rollout.id) == payload:
            return
        try:
            self._mqtt.publish(topics.rollout_status(rollout.id), payload.encode(), retain=True)
        except TransportError as exc:
            log.info("rollout progress not published: %s", exc)
            return
        self._published[rollout.id] = payload
