"""``edgefabric store serve``: TUF files over MQTT, the fleet's reports, the rollout controller.

The process keeps the online role fresh: it re-signs the timestamp (and anything else about
to expire) before devices would see it expire, checking every ``refresh_interval_s``.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType

from edgefabric.mqtt import BrokerAddress, MqttClient
from model_store.controller import RolloutController
from model_store.distribution import DEFAULT_CHUNK_SIZE, DistributionServer, RepoResponder
from model_store.fleet_db import fleet_database_path
from model_store.fleet_view import FleetView
from model_store.store import ModelStore

__all__ = ["StoreServer", "StoreServerOptions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreServerOptions:
    """Knobs of the serving process."""

    broker: BrokerAddress
    client_id: str = "edgefabric-store"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    refresh_interval_s: float = 600.0
    refresh_within: timedelta = timedelta(hours=6)
    controller_interval_s: float = 0.5


class StoreServer:
    """The store's long-running side: distribution over MQTT and metadata freshness."""

    def __init__(self, store: ModelStore, options: StoreServerOptions) -> None:
        self._store = store
        self._options = options
        self._repository = store.tuf()
        self._mqtt = MqttClient(options.broker, options.client_id)
        responder = RepoResponder(
            self._repository.read_metadata, store.blobs.open, options.chunk_size
        )
        self._distribution = DistributionServer(self._mqtt, responder)
        self.fleet = FleetView(self._mqtt, fleet_database_path(store.home))
        self._stopping = threading.Event()
        self._controller_thread: threading.Thread | None = None

    def start(self) -> None:
        """Connect, refresh metadata about to expire, answer requests, run the controller."""
        self.refresh()
        self._mqtt.connect()
        self._distribution.start()
        self.fleet.start()
        self._controller_thread = threading.Thread(
            target=self._run_controller, name="rollout-controller", daemon=True
        )
        self._controller_thread.start()

    def _run_controller(self) -> None:
        """The controller's thread, with a registry connection of its own (SQLite's rule)."""
        store = ModelStore(self._store.home, actor="controller")
        try:
            controller = RolloutController(store, self._mqtt, self.fleet)
            controller.run(self._stopping, self._options.controller_interval_s)
        finally:
            store.close()

    def refresh(self) -> bool:
        """Re-sign what expires within ``refresh_within``; True when anything was written."""
        refreshed = self._repository.refresh_timestamp(within=self._options.refresh_within)
        if refreshed:
            log.info("re-signed metadata that was about to expire")
        return refreshed

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT, refreshing metadata on schedule."""

        def request_stop(signum: int, frame: FrameType | None) -> None:
            self._stopping.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, request_stop)
        self.start()
        print(f"edgefabric store serving the repository on {self._options.broker.url}", flush=True)
        while not self._stopping.wait(self._options.refresh_interval_s):
            self.refresh()
        self.stop()

    def stop(self) -> None:
        """Stop the controller, stop answering, save the fleet table and disconnect."""
        self._stopping.set()
        if self._controller_thread is not None:
            self._controller_thread.join(timeout=30)
        self.fleet.stop()
        self._distribution.stop()
        self._mqtt.close()
